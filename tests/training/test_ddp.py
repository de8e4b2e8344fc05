"""`torchrun --nproc_per_node 2` trains with DDP on the gloo backend and only rank 0 writes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deepserve.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_torchrun_two_processes_write_one_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "deepserve.training.train",
        "digits-cnn",
        "--quick",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 1 neither writes nor reports
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt.meta["recipe"] == "digits-cnn" and ckpt.meta["metrics"]["accuracy"] >= 0
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "curves.png",
        "metrics.csv",
        "metrics.json",
        "steps.csv",
    ]
