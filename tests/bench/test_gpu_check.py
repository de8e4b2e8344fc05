"""bench/gpu_check.sh in its CI form: ``--cpu --no-venv`` runs every step of the GPU check on the CPU
with tiny sizes and this interpreter (no venv: making one downloads torch), and says what it skips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _run(*args: str, tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.mark.e2e
@pytest.mark.slow
def test_the_cpu_dry_run_walks_every_step_and_writes_its_page(tmp_path: Path) -> None:
    out = tmp_path / "page"
    done = _run("--cpu", "--no-venv", "--out", str(out), tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for step in ("1 venv", "2 environment", "3 gpu-marked tests", "4 model store", "5 two server starts",
                 "6 throughput sweep", "7 results page"):  # fmt: skip
        assert step in done.stdout
    page = (out / "REPORT.md").read_text()
    assert "DRY RUN on the CPU" in page and "| digits-cnn | CPUExecutionProvider |" in page
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "cpu"
    assert [s["provider"] for s in summary["starts"]] == [{"digits-cnn": "CPUExecutionProvider"}] * 2
    [level] = summary["sweep"]["digits-cnn"]
    assert level["clients"] == 1 and level["items_per_s"] > 0
    assert any("TensorRT engine cache hit: needs CUDA" in s for s in summary["skipped"])
    assert any("gpu tests only collected" in s for s in summary["skipped"])
    assert not list(tmp_path.glob("gpu-check.*")), "a successful run leaves no work folder"


def test_an_unknown_option_is_one_clear_line(tmp_path: Path) -> None:
    done = _run("--gpus", "2", tmp_path=tmp_path, timeout=10)
    assert done.returncode == 2
    assert done.stderr.strip() == "gpu_check.sh: unknown option --gpus (see --help)"
