"""``python -m deepserve.service`` as a subprocess for the gRPC end-to-end tests: a one-model store
made in a second, a self-signed certificate, and a start that waits for readiness over HTTP or HTTPS.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.service.grpc_env import free_port

REPO = Path(__file__).resolve().parents[2]
MODEL, FEATURES = "rows", 4


def tiny_store(root: Path) -> Path:
    """One tabular classifier (``rows``: FP32 ``features`` of width 4 -> 2 logits), ONNX fp32."""
    import torch

    from deepserve.store import TabularPreprocessing, TensorSpec
    from tests.handlers.tiny import RowNet, write_version

    torch.manual_seed(0)
    write_version(
        root,
        MODEL,
        RowNet(FEATURES, 2),
        (torch.randn(2, FEATURES),),
        task="classification",
        inputs=[TensorSpec(name="features", datatype="FP32", shape=[-1, FEATURES])],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=[-1, 2])],
        files=[("onnx", "fp32", True)],
        labels=["no", "yes"],
        preprocessing=TabularPreprocessing(
            features=[f"f{i}" for i in range(FEATURES)], mean=[0.0] * FEATURES, std=[1.0] * FEATURES
        ),
    )
    return root


def self_signed(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for localhost and 127.0.0.1, made with the openssl command line."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass
class Served:
    http: str  # base URL, http:// or https://
    grpc: str  # host:port
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        """SIGTERM, then the exit code (-9 when it had to be killed)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return -9


def start(store: Path, log: Path, cert: Path | None = None, key: Path | None = None, **env: str) -> Served:
    http_port, grpc_port = free_port(), free_port()
    environ = {**os.environ, "DEEPSERVE_DRAIN_TIMEOUT_S": "10", **env}
    if cert is not None and key is not None:
        environ |= {"DEEPSERVE_TLS_CERTFILE": str(cert), "DEEPSERVE_TLS_KEYFILE": str(key)}
    cmd = [sys.executable, "-m", "deepserve.service", "--store", str(store), "--host", "127.0.0.1",
           "--http-port", str(http_port), "--grpc-port", str(grpc_port)]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=sink, stderr=subprocess.STDOUT)
    scheme = "https" if cert is not None else "http"
    served = Served(f"{scheme}://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process, log)
    verify = ssl.create_default_context(cafile=cert) if cert is not None else True
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{served.http}/v2/health/ready", timeout=1, verify=verify).status_code == 200:
                return served
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not ready in 60 s:\n{log.read_text()[-3000:]}")
