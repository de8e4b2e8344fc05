"""Triton's perf_analyzer drives a served image classifier as it is (marked e2e).

digits-cnn serves ``pixels`` and the optional ``image``: perf_analyzer must accept the model with data
for ``pixels`` alone, over HTTP and gRPC. Skips, saying why, where the binary is not installed
(deepserve/bench/tools/install_perf_analyzer.sh; .ci/tools.sh runs it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deepserve.bench import perf_analyzer
from deepserve.bench.model_info import from_server
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e
MODEL = "digits-cnn"


def _pixels_only(server: Server, out: Path) -> Path:
    """Random pixel rows as perf_analyzer --input-data JSON: shape without the batch dim (it adds it)."""
    (spec,) = [s for s in server.models() if s["name"] == MODEL]
    shape = [int(d) for d in spec["inputs"][0]["shape"][1:]]  # type: ignore[index]
    rng = np.random.default_rng(0)
    rows = [rng.random(shape, dtype=np.float32) for _ in range(4)]
    data = [{"pixels": {"content": r.reshape(-1).tolist(), "shape": shape}} for r in rows]
    path = out / "pixels.json"
    path.write_text(json.dumps({"data": data}))
    return path


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_drives_digits_cnn_on_pixels(server: Server, tmp_path: Path, protocol: str) -> None:
    binary = perf_analyzer.find_binary()
    if binary is None:
        pytest.skip("perf_analyzer is not installed (bash deepserve/bench/tools/install_perf_analyzer.sh)")
    if not any(s["name"] == MODEL for s in server.models()):
        pytest.skip(f"the store has no {MODEL}")
    target = server.http if protocol == "http" else server.grpc
    csv_path = tmp_path / "pa.csv"
    # short windows and a loose stability rule: the test asks "does it run", not "how fast"
    cmd = [str(binary), "-m", MODEL, "-u", target, "-i", protocol, "--concurrency-range", "1",
           "-p", "500", "-r", "4", "-s", "100", "--input-data", str(_pixels_only(server, tmp_path)),
           "-f", str(csv_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=perf_analyzer._env(binary), timeout=180)
    output = proc.stdout + proc.stderr
    assert "error" not in output.lower(), output[-2000:]
    rows = perf_analyzer._parse_csv(csv_path, protocol) if proc.returncode == 0 and csv_path.is_file() else []
    rows = rows or perf_analyzer._last_pass(proc.stdout, protocol, 1)  # no stable window on a busy machine
    assert rows and rows[0]["infer_per_s"] > 0, output[-2000:]


def test_bench_without_a_store_sends_the_graph_form(server: Server) -> None:
    """From the served metadata + config alone: the optional alternative (image / text) is left out,
    attention_mask kept (the bench tokenises), and the batch dimension is known."""
    served = {str(s["name"]) for s in server.models()}
    for name, expected in [(MODEL, ["pixels"]), ("docs-classifier", ["input_ids", "attention_mask"])]:
        if name not in served:
            continue
        info = from_server(server.base_url, name)
        assert [i.name for i in info.inputs] == expected and info.max_batch_size > 0
