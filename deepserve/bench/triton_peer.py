"""`--compare triton`: Triton Inference Server through PyTriton, serving the same model.onnx.

PyTriton (``nvidia-pytriton`` on PyPI) bundles a real tritonserver. It lives in a tools venv of
its own, ``$DEEPSERVE_TOOLS_DIR/pytriton-venv`` (default /opt/deepserve-tools; .ci/tools.sh makes
it), which the bench creates on first use unless ``--no-install`` is given. ``triton_host.py``
runs in it: tritonserver on free loopback ports, one Python-backend model named like ours, with
the inputs and outputs of the version's model.json, whose batches PyTriton hands to a callable
running model.onnx in ONNX Runtime (the same onnxruntime version as ours). Triton's dynamic
batcher gets deepserve's max batch size for the model and a small queue delay (--triton-delay-us).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from deepserve.bench import launcher
from deepserve.bench.peers import PeerContext, PeerServer, PeerSkipped, needs_onnx_file
from deepserve.bench.server_stats import fetch_json
from deepserve.bench.targets import grpc_target, http_target

PYTRITON = "nvidia-pytriton==0.7.0"
VENV_NAME = "pytriton-venv"
HOST = Path(__file__).with_name("triton_host.py")
_EXCEPTION = re.compile(r"\b(\w+(?:Error|Exception)): (.+)")


def tools_dir() -> Path:
    return Path(os.environ.get("DEEPSERVE_TOOLS_DIR") or "/opt/deepserve-tools")


def venv_python() -> Path:
    return tools_dir() / VENV_NAME / "bin" / "python"


def usable(python: Path) -> bool:
    if not python.is_file():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import pytriton, onnxruntime"], capture_output=True, timeout=120
    )
    return probe.returncode == 0


def install(python: Path) -> None:
    """Create the tools venv and pip install PyTriton and our onnxruntime version into it."""
    venv = python.parent.parent
    base = getattr(sys, "_base_executable", sys.executable)
    ort = f"onnxruntime=={metadata.version('onnxruntime')}"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for cmd in ([base, "-m", "venv", str(venv)], [*pip, PYTRITON, ort]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["exit status " + str(done.returncode)])[-1]
            raise PeerSkipped(f"--compare triton skipped: installing {PYTRITON} into {venv} failed ({last})")


def find_or_install(ctx: PeerContext) -> Path:
    python = venv_python()
    if usable(python):
        return python
    if not ctx.install_tools:
        raise PeerSkipped(f"--compare triton skipped: no PyTriton at {python} (bash .ci/tools.sh, "
                          f"or run without --no-install)")  # fmt: skip
    with ctx.console.status(f"installing {PYTRITON} into {python.parent.parent} (once) ..."):
        install(python)
    if not usable(python):
        raise PeerSkipped(f"--compare triton skipped: {python} cannot import pytriton after installing it")
    return python


def failure_reason(log: Path) -> str:
    """One line from a failed start's log: the host's own diagnosis, else the last exception."""
    text = log.read_text(errors="replace").replace("\\n", "\n") if log.is_file() else ""
    for line in text.splitlines():
        if "triton_host: cannot start:" in line:
            return line.split("cannot start:", 1)[1].strip()
    found = _EXCEPTION.findall(text)
    if found:
        kind, message = found[-1]
        return f"{kind}: {message.strip()[:200]}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def _argv(ctx: PeerContext, ports: tuple[int, int, int], workspace: Path) -> list[str]:
    assert ctx.info.version_dir is not None
    http, grpc, metrics = ports
    argv = [str(HOST), "--version-dir", str(ctx.info.version_dir), "--name", ctx.info.name,
            "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
            "--max-batch", str(ctx.batching.max_batch), "--delay-us", str(ctx.batching.delay_us),
            "--workspace", str(workspace)]  # fmt: skip
    return argv + (["--threads", str(ctx.threads)] if ctx.threads else [])


def start_triton(ctx: PeerContext) -> PeerServer:
    needs_onnx_file(ctx, "triton")
    python = find_or_install(ctx)
    ports = (launcher.free_port(), launcher.free_port(), launcher.free_port())
    url, grpc_url, log = f"http://127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", ctx.out / "triton.log"
    # PyTriton's workspace holds unix sockets: a short path under /tmp (a socket path has 108 bytes)
    workspace = Path(tempfile.mkdtemp(prefix="ds-pytriton-"))
    ctx.stack.callback(shutil.rmtree, workspace, ignore_errors=True)
    with ctx.console.status("starting Triton through PyTriton ..."):
        try:
            server = launcher.start(_argv(ctx, ports, workspace / "ws"), url, log, timeout=180,
                                    python=str(python), ready_path=f"/v2/models/{ctx.info.name}/ready",
                                    grpc_target=grpc_url, own_group=True)  # fmt: skip
        except launcher.ServerStartError:
            raise PeerSkipped(f"--compare triton skipped: {failure_reason(log)} (log: {log})") from None
    ctx.stack.callback(server.stop)
    pid, info, shape = server.process.pid, ctx.info, ctx.shape
    formats = ctx.formats if ctx.protocol in ("http", "both") else []
    targets = [http_target(info, url, f, shape, label="triton", server_pid=pid) for f in formats]
    if ctx.protocol in ("grpc", "both"):
        targets.append(grpc_target(info, url, grpc_url, shape, label="triton", server_pid=pid))
    version = (fetch_json(f"{url}/v2") or {}).get("version", "?")
    b = ctx.batching
    note = (f"Triton {version} via {PYTRITON}: model.onnx in onnxruntime {metadata.version('onnxruntime')} "
            f"behind Triton's dynamic batcher (max batch {b.max_batch}, queue delay {b.delay_us} us), "
            f"ready in {server.ready_s:.1f} s")  # fmt: skip
    return PeerServer("triton", targets, note, v2_url=url, v2_grpc=grpc_url, v2_formats=formats)
