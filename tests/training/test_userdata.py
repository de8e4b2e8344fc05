"""`deepserve train csv|images|text`: custom data trains; malformed data exits 2 with a one-line reason."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from deepserve.training.checkpoint import load_checkpoint
from deepserve.training.train import main


def write_csv(path: Path, rows: int = 40, label: str = "kind") -> Path:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 3, generator=g)
    lines = [f"a,b,c,{label}"]
    lines += [f"{r[0]:.3f},{r[1]:.3f},{r[2]:.3f},{'big' if sum(r) > 0 else 'small'}" for r in x.tolist()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_images(root: Path, classes: dict[str, int], per_class: int = 6, mode: str = "RGB") -> Path:
    for name, shade in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            color = (shade + 3 * i, 40, 255 - shade) if mode == "RGB" else shade + 3 * i
            Image.new(mode, (12, 10), color).save(root / name / f"{i}.png")
    return root


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main([*argv, "--threads", "1", "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.err


def test_custom_csv_trains_classifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run(
        [
            "csv",
            str(write_csv(tmp_path / "d.csv")),
            "--label",
            "kind",
            "--quick",
            "--out",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert code == 0
    ckpt = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    assert ckpt.meta["labels"] == ["big", "small"] and ckpt.meta["recipe"] == "custom"
    assert ckpt.meta["name"] == "d"  # `deepserve export` names the model after the data file
    assert ckpt.meta["preprocessing"]["features"] == ["a", "b", "c"]
    assert ckpt.build()(torch.zeros(2, 3)).shape == (2, 2)


def test_custom_csv_regression_reports_r2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["x,y"] + [f"{i},{2 * i + 0.5}" for i in range(30)]
    (tmp_path / "r.csv").write_text("\n".join(rows), encoding="utf-8")
    code, _ = run(
        ["csv", str(tmp_path / "r.csv"), "--label", "y", "--quick", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 0
    report = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert report["task"] == "regression" and "r2" in report["test"]


def test_custom_image_folder_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_images(tmp_path / "imgs", {"cats": 10, "dogs": 200})
    code, _ = run(
        ["images", str(folder), "--image-size", "8", "--quick", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 0
    ckpt = load_checkpoint(tmp_path / "o" / "checkpoint.pt")
    prep = ckpt.meta["preprocessing"]
    assert (prep["channels"], prep["height"], prep["width"]) == (3, 8, 8)
    assert ckpt.meta["labels"] == ["cats", "dogs"]


def test_custom_text_trains_language_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 80, encoding="utf-8")
    code, _ = run(["text", str(text), "--context", "16", "--quick", "--out", str(tmp_path / "o")], capsys)
    assert code == 0
    assert load_checkpoint(tmp_path / "o" / "checkpoint.pt").meta["generation"]["context_length"] == 16


def bad_cases(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "empty").mkdir()
    write_images(tmp / "noimg", {"a": 1})
    (tmp / "noimg" / "b").mkdir()
    (tmp / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 200)
    (tmp / "latin1.csv").write_bytes(b"x,y\n" + "caf\xe9,1\n".encode("latin-1") * 20)
    write_csv(tmp / "few.csv", rows=4)
    (tmp / "text.csv").write_text(
        "a,kind\n" + "".join(f"{'z' if i == 7 else i},{i % 2}\n" for i in range(20))
    )
    (tmp / "short.txt").write_text("tiny", encoding="utf-8")
    (tmp / "blank.txt").write_text("", encoding="utf-8")
    return [
        (["csv", str(write_csv(tmp / "ok.csv")), "--label", "price"], "label column 'price' not found"),
        (["csv", str(tmp / "few.csv"), "--label", "kind"], "too few rows"),
        (["csv", str(tmp / "latin1.csv"), "--label", "y"], "not UTF-8"),
        (["csv", str(tmp / "text.csv"), "--label", "kind"], "column 'a' is not numeric (row 9"),
        (["csv", str(tmp / "text.csv"), "--label", "kind"], "pass --one-hot a to one-hot encode it"),
        (["csv", str(tmp / "ok.csv"), "--label", "kind", "--one-hot", "d"], "--one-hot column(s) d are not"),
        (["csv", str(tmp / "ok.csv"), "--label", "kind", "--augment", "flip"], "--augment applies to image"),
        (["csv", str(tmp / "ok.csv"), "--label", "kind", "--grad-checkpoint"], "--grad-checkpoint applies"),
        (["digits-cnn", "--grad-checkpoint"], "not 'resnet'"),
        (["digits-dcgan", "--profile"], "trains with the GAN loop"),
        (["csv", str(tmp / "missing.csv"), "--label", "y"], "not found"),
        (["csv", str(tmp / "ok.csv")], "needs --label"),
        (["images", str(tmp / "empty")], "is empty"),
        (["images", str(tmp / "noimg")], "class folder 'b'"),
        (["text", str(tmp / "latin1.txt")], "not UTF-8"),
        (["text", str(tmp / "short.txt")], "text too short"),
        (["text", str(tmp / "blank.txt")], "is empty"),
        (["no-such-recipe"], "unknown recipe 'no-such-recipe'"),
        (["digits-cnn", "--epochs", "0"], "--epochs must be at least 1"),
    ]


def test_bad_user_data_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in bad_cases(tmp_path):
        code, err = run(argv, capsys)
        assert code == 2, argv
        assert expected in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err


def test_a_tiny_folder_gets_enough_steps_to_learn(tmp_path: Path) -> None:
    """A dozen images are one optimizer step an epoch: the default 30 epochs would be 30 steps.
    Without --epochs a run on your data is planned for at least MIN_STEPS; with it, as asked."""
    from deepserve.training.train import build_parser, overrides
    from deepserve.training.userjobs import MIN_STEPS, make_user_job

    folder = write_images(tmp_path / "imgs", {"cats": 10, "dogs": 200})
    args = build_parser().parse_args(["images", str(folder), "--image-size", "8"])
    job, _ = make_user_job(args, overrides(args))
    assert len(job.data.train) < job.cfg.batch_size  # one (partial) batch an epoch
    assert job.cfg.epochs >= MIN_STEPS
    # 45 images, 36 to train: the loader drops the partial second batch, so one step an epoch
    from deepserve.training.config import TrainConfig
    from deepserve.training.userjobs import optimizer_steps_per_epoch

    assert optimizer_steps_per_epoch(36, TrainConfig(batch_size=32)) == 1
    assert optimizer_steps_per_epoch(100, TrainConfig(batch_size=32)) == 3
    assert optimizer_steps_per_epoch(100, TrainConfig(batch_size=32, grad_accum=2)) == 2
    args = build_parser().parse_args(["images", str(folder), "--image-size", "8", "--epochs", "7"])
    assert make_user_job(args, overrides(args))[0].cfg.epochs == 7


@pytest.mark.parametrize(
    "stem, name",
    [("houses", "houses"), ("My data (v2)", "My-data-v2"), ("_data", "data"), ("a..b", "a.b"),
     ("...", "custom"), ("x" * 300, "x" * 128)],
)
def test_the_default_model_name_is_always_one_export_accepts(stem: str, name: str) -> None:
    from deepserve.store import is_plain_model_name
    from deepserve.training.userjobs import default_model_name

    assert default_model_name(stem) == name and is_plain_model_name(name)
