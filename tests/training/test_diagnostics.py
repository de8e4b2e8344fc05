"""Training diagnostics: gradient norms per step and layer group, their warnings, and --profile's trace."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from deepserve.training.diagnostics import GradMonitor
from deepserve.training.train import main


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(2, 2)
        self.head = nn.Linear(2, 1)


def _set_grads(model: TwoLayers, body: float, head: float) -> None:
    for p in model.body.parameters():
        p.grad = torch.full_like(p, body)
    for p in model.head.parameters():
        p.grad = torch.full_like(p, head)


def test_norms_per_group_and_in_total() -> None:
    model = TwoLayers()
    monitor = GradMonitor(model)
    _set_grads(model, 1.0, 2.0)
    row = monitor.measure(1, 1)
    assert row["grad_norm.body"] == pytest.approx(6**0.5)  # 6 entries of 1
    assert row["grad_norm.head"] == pytest.approx(2 * 3**0.5)  # 3 entries of 2
    assert row["grad_norm"] == pytest.approx((6 + 12) ** 0.5)
    model.body.weight.grad = model.body.bias.grad = None  # a frozen group has no norm
    assert "grad_norm.body" not in monitor.measure(2, 1)
    summary = monitor.epoch_summary()
    assert summary["grad_norm_max"] == pytest.approx(18**0.5)
    assert summary["grad_norm.body"] == pytest.approx(6**0.5)


@pytest.mark.parametrize(
    ("grads", "message"),
    [
        ((1e4, 1e4), "gradient norm exploded at step 6"),
        ((float("nan"), 1.0), "gradient norm is nan at step 6"),
        ((1e-9, 1e-9), "gradient norm vanished at step 6"),
        ((1e-8, 1.0), "gradients vanished in layer group(s) body at step 6"),
    ],
)
def test_a_warning_once_when_the_norm_explodes_or_vanishes(
    grads: tuple[float, float], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = TwoLayers()
    monitor = GradMonitor(model)
    with caplog.at_level(logging.WARNING, logger="deepserve.training"):
        for step in range(1, 6):
            _set_grads(model, 1.0, 1.0)
            monitor.measure(step, 1)
        assert not caplog.records  # steady norms: nothing to say
        for step in (6, 7):
            _set_grads(model, *grads)
            monitor.measure(step, 1)
    assert caplog.records[0].getMessage().startswith(message)
    assert len(caplog.records) == 1  # once per kind and run, not every step


def test_amp_overflow_is_not_an_explosion(caplog: pytest.LogCaptureFixture) -> None:
    model = TwoLayers()
    monitor = GradMonitor(model, overflow_ok=True)  # fp16 GradScaler: inf steps are skipped, by design
    _set_grads(model, float("inf"), 1.0)
    with caplog.at_level(logging.WARNING, logger="deepserve.training"):
        assert monitor.measure(1, 1)["grad_norm"] == float("inf")
    assert not caplog.records


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_metrics_csv_and_steps_csv_carry_gradient_norms(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["digits-cnn", "--quick", "--out", str(out), "--threads", "1", "--no-progress"]) == 0
    epochs, steps = _rows(out / "metrics.csv"), _rows(out / "steps.csv")
    groups = ["stem", "stages.0", "stages.1", "fc"]
    for column in ["grad_norm", "grad_norm_max", *(f"grad_norm.{g}" for g in groups)]:
        assert column in epochs[0] and float(epochs[0][column]) > 0, column
    assert [int(r["step"]) for r in steps] == list(range(1, len(steps) + 1)) and len(steps) == 6
    assert all(float(r["grad_norm.fc"]) > 0 for r in steps)
    with Image.open(out / "curves.png") as png:
        assert png.width > 1200  # three panels: loss, metrics, gradient norms


def test_profile_writes_a_chrome_trace_and_prints_top_operators(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["digits-cnn", "--quick", "--profile", "--out", str(out), "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    trace = json.loads((out / "trace.json").read_text(encoding="utf-8"))
    ops = [e for e in trace["traceEvents"] if e.get("cat") == "cpu_op"]
    assert ops and {"aten::convolution_backward", "aten::addmm"} <= {e["name"] for e in ops}
    assert all("ts" in e and "dur" in e for e in ops)
    steps = {e["name"] for e in trace["traceEvents"] if str(e.get("name", "")).startswith("ProfilerStep#")}
    assert len(steps) == 3  # the recorded steps: after one skipped and one warm-up step
    err = capsys.readouterr().err
    assert f"profiler trace: {out / 'trace.json'}" in err and "Self CPU" in err
