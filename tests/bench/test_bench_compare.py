"""`--compare`: the peer list, the side-by-side rows and their rendering, and peers that cannot run."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from rich.console import Console

from deepserve.bench import compare, pages, triton_host, triton_peer
from deepserve.bench.__main__ import parse_args
from deepserve.bench.inputs import InputSpec, ModelInfo
from deepserve.bench.peers import Batching, PeerContext, start_peers
from deepserve.bench.sweep import LevelResult
from deepserve.bench.targets import Shape


def test_compare_takes_a_comma_separated_list_of_peers() -> None:
    assert parse_args(["m", "--compare", "triton,torchserve,naive"]).compare == [
        "triton",
        "torchserve",
        "naive",
    ]
    assert parse_args(["m", "--compare", "torchserve"]).compare == ["torchserve"]  # the old spelling
    assert parse_args(["m", "--compare", " Naive, triton,naive "]).compare == ["naive", "triton"]
    assert parse_args(["m"]).compare is None


@pytest.mark.parametrize("value", ["triton,tfserving", ",", ""])
def test_an_unknown_peer_is_refused_in_one_line(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["m", "--compare", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--compare" in err and "triton, torchserve, naive" in err
    if "tfserving" in value:
        assert "unknown peer 'tfserving'" in err


def _result(target: str, level: float, rps: float, p50: float = 1.0, stable: bool = True) -> LevelResult:
    latency = {"p50_ms": p50, "p90_ms": p50, "p95_ms": p50, "p99_ms": 2 * p50, "max_ms": 3 * p50}
    return LevelResult(target, "concurrency", level, int(rps), 1.0, rps, rps, latency, {}, {}, stable,
                       0.01, 0.01, "", [], 5.0)  # fmt: skip


RECORDED = [
    _result("deepserve http/json", 1, 1700.0, 0.5),
    _result("deepserve http/json", 8, 3400.0, 2.3),
    _result("deepserve grpc", 1, 1000.0, 0.9),
    _result("triton http/json", 1, 420.0, 2.4),
    _result("triton http/json", 8, 890.0, 8.0),
    _result("triton grpc", 1, 300.0, 2.8),
    _result("torchserve http/json", 8, 880.0, 8.4),
    _result("naive-fastapi http/json", 1, 3500.0, 0.27, stable=False),
    _result("naive-fastapi http/json", 8, 3300.0, 2.1),
]


def _pa(
    server: str, run: str, level: float, tput: float, p50: float | None = None, stable: bool = True
) -> dict:
    row = {"server": server, "run": run, "level": level, "infer_per_s": tput, "stable": stable}
    return row | ({"p50_ms": p50} if p50 is not None else {})


PA_ROWS = [
    _pa("deepserve", "perf_analyzer http/json", 8, 3371.0, 2.4),
    _pa("triton", "perf_analyzer http/json", 8, 888.0, 8.9),
    _pa("deepserve", "perf_analyzer grpc/binary", 8, 3600.0),
    _pa("triton", "perf_analyzer grpc/binary", 8, 1100.0, stable=False),
]
PEERS = ["triton", "torchserve", "naive-fastapi"]


def test_comparison_rows_put_every_server_of_a_level_side_by_side() -> None:
    rows = compare.build(RECORDED, PA_ROWS, "deepserve", PEERS)
    keys = [(r.generator, r.protocol, r.level) for r in rows]
    assert keys == [("bench", "http/json", 1), ("bench", "http/json", 8), ("bench", "grpc", 1),
                    ("perf_analyzer", "http/json", 8), ("perf_analyzer", "grpc", 8)]  # fmt: skip
    c8 = rows[1]
    assert c8.throughput == {
        "deepserve": 3400.0,
        "triton": 890.0,
        "torchserve": 880.0,
        "naive-fastapi": 3300.0,
    }
    assert c8.ratio["triton"] == pytest.approx(3400 / 890) and c8.ratio["torchserve"] == pytest.approx(
        3400 / 880
    )
    assert rows[0].ratio["naive-fastapi"] == pytest.approx(1700 / 3500) and "torchserve" not in rows[0].ratio
    assert rows[0].unsettled == ["naive-fastapi"] and rows[4].unsettled == ["triton"]
    assert rows[3].ratio == {"triton": pytest.approx(3371 / 888)}
    assert compare.behind(rows) == ["bench http/json c=1 vs naive-fastapi (0.49x)"]
    # a round trip through results.json keeps the rows
    assert compare.from_dicts([r.as_dict() for r in rows]) == rows


def test_comparison_renders_as_markdown_terminal_table_and_plot(tmp_path: Path) -> None:
    rows = compare.build(RECORDED, PA_ROWS, "deepserve", PEERS)
    text = compare.markdown(rows, "deepserve", PEERS)
    lines = text.splitlines()
    assert lines[0].startswith("| generator | protocol | level | deepserve /s (p50 ms) | triton /s (p50 ms)")
    assert lines[0].rstrip(" |").endswith("deepserve/naive-fastapi")
    assert (
        "| bench | http/json | c=1 | 1,700 (0.50) | 420 (2.40) | - | ~3,500 (0.27) | 4.05x | - | **0.49x** |"
        in lines
    )
    assert "| perf_analyzer | grpc | c=8 | 3,600 (-) | ~1,100 (-) | - | - | 3.27x | - | - |" in lines
    Console(width=300, record=True).print(compare.table(rows, "deepserve", PEERS))
    png = compare.plot(rows, "deepserve", PEERS, tmp_path / "compare.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert compare.plot([], "deepserve", PEERS, tmp_path / "none.png") is None
    doc = {
        "label": "deepserve",
        "peers": {p: f"{p} ran" for p in PEERS},
        "comparison": [r.as_dict() for r in rows],
    }
    section = pages.comparison_section(doc)
    assert "- triton: triton ran" in section and "**0.49x**" in section and compare.UNSETTLED_NOTE in section


def _ctx(info: ModelInfo, tmp_path: Path, stack: ExitStack, **kw: object) -> PeerContext:
    console = Console(quiet=True)
    return PeerContext(info, ["json"], "both", Shape(), tmp_path, console, stack, Batching(32, 100), **kw)  # type: ignore[arg-type]


def test_peers_that_cannot_run_are_skipped_in_one_line_each(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = ModelInfo("m", "classification", [InputSpec("features", "FP32", [-1, 4])], max_batch_size=8)
    with ExitStack() as stack:
        started, notes = start_peers(["naive", "triton"], _ctx(remote, tmp_path, stack))
    assert started == []
    assert [n.split(" skipped:")[0] for n in notes] == ["--compare naive", "--compare triton"]
    assert all(": needs a local store version with model.onnx" in n and "\n" not in n for n in notes)

    monkeypatch.setenv("DEEPSERVE_TOOLS_DIR", str(tmp_path / "no-tools"))
    local = ModelInfo(
        "tiny-mlp", "classification", remote.inputs, 32, version_dir=tiny_store / "tiny-mlp" / "1"
    )
    with ExitStack() as stack:
        started, notes = start_peers(["triton"], _ctx(local, tmp_path, stack, install_tools=False))
    assert started == []
    assert notes == [f"--compare triton skipped: no PyTriton at {tmp_path}/no-tools/pytriton-venv/bin/python "
                     "(bash .ci/tools.sh, or run without --no-install)"]  # fmt: skip


def test_http_only_peers_are_skipped_in_a_grpc_run(tiny_store: Path, tmp_path: Path) -> None:
    local = ModelInfo("tiny-mlp", "classification", [], 32, version_dir=tiny_store / "tiny-mlp" / "1")
    with ExitStack() as stack:
        ctx = _ctx(local, tmp_path, stack)
        ctx.protocol = "grpc"
        started, notes = start_peers(["naive", "torchserve"], ctx)
    assert started == []
    assert notes == [f"--compare {p} skipped: it speaks HTTP only and this run is --protocol grpc"
                     for p in ("naive", "torchserve")]  # fmt: skip


def test_torchserve_is_skipped_clearly_without_its_tools(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))  # no torchserve beside it either
    local = ModelInfo("tiny-mlp", "classification", [], 32, version_dir=tiny_store / "tiny-mlp" / "1")
    with ExitStack() as stack:
        started, (note,) = start_peers(["torchserve"], _ctx(local, tmp_path, stack))
    assert started == [] and note.startswith("--compare torchserve skipped: `torchserve`") and "java" in note


# how a failed stub start reads in the log: Triton prints the traceback on one line, newlines escaped
STUB_FAILURE = (
    'I1207 00:55:16.640481 15910 pb_stub.cc:366] "Failed to initialize Python stub: '
    "TritonModelException: Model initialize error: Traceback (most recent call last):\\n"
    '  File \\"/tmp/f/1/model.py\\", line 419\\n'
    "AttributeError: '_thread.RLock' object has no attribute '_recursion_count'\\n\\n\\n"
    'At:\\n  model.py(454)"\n'
    'Traceback (most recent call last):\n  File "triton_host.py", line 1\n'
)


def test_a_failed_triton_start_is_said_in_one_line(tmp_path: Path) -> None:
    log = tmp_path / "triton.log"
    log.write_text(STUB_FAILURE)
    assert triton_peer.failure_reason(log) == (
        "AttributeError: '_thread.RLock' object has no attribute '_recursion_count'"
    )
    log.write_text("triton_host: cannot start: tritonserver cannot load GLIBC_2.38 on this machine\n")
    assert triton_peer.failure_reason(log) == "tritonserver cannot load GLIBC_2.38 on this machine"
    assert triton_peer.failure_reason(tmp_path / "absent.log") == "no output"


def test_the_host_names_the_libraries_ldd_cannot_find() -> None:
    ldd = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibpython3.12.so.1.0 => not found\n"
        "\tlibcudart-0952.so.12 => /x/nvidia_pytriton.libs/libcudart-0952.so.12 (0x00007f82)\n"
        "/x/tritonserver: /lib/libc.so.6: version `GLIBC_2.38' not found (required by /x/tritonserver)\n"
    )
    assert triton_host.missing_libraries(ldd) == ["GLIBC_2.38", "libpython3.12.so.1.0"]
    assert triton_host.missing_libraries("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n") == []


def test_the_naive_server_answers_what_perf_analyzer_reads_first(tiny_store: Path) -> None:
    from fastapi.testclient import TestClient

    from deepserve.bench.naive_server import create_app

    client = TestClient(create_app(tiny_store / "tiny-mlp" / "1", "tiny-mlp"))
    assert client.get("/v2").json()["name"] == "naive-fastapi"
    meta = client.get("/v2/models/tiny-mlp").json()
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    config = client.get("/v2/models/tiny-mlp/config").json()
    assert config["max_batch_size"] == 32  # model.json's
    assert config["input"] == [{"name": "features", "data_type": "TYPE_FP32", "dims": [4]}]
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 0, 0, 0]}]}
    out = client.post("/v2/models/tiny-mlp/infer", json=body).json()["outputs"][0]
    assert out["data"] == pytest.approx([0.0, 0.1, 0.2])  # row 0 of W = arange(12).reshape(4, 3) / 10
