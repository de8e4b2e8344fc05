"""The data-plane timing tool runs real calls: a request built from the model's own metadata is
answered (a bad one would raise), and the time it reports is what those calls took."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepserve.bench.tools import plane_calls


def test_it_times_answered_calls(tiny_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        plane_calls.main(
            ["--store", str(tiny_store), "--model", "tiny-mlp", "--calls", "50", "--warmup", "5"]
        )
        == 0
    )
    line = capsys.readouterr().out.strip()
    assert line.startswith("tiny-mlp: ") and line.endswith("us per call (50 sequential calls, no transport)")
    assert 1 < float(line.split()[1]) < 100_000


def test_an_unknown_model_is_refused_by_name(tiny_store: Path) -> None:
    with pytest.raises(Exception, match="nope"):
        plane_calls.main(["--store", str(tiny_store), "--model", "nope", "--calls", "1"])
