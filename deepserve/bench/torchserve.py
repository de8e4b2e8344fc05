"""`--compare torchserve`: TorchServe serving the same model's .mar, beside deepserve in the same run.

Needs the ``torchserve`` command (``pip install 'deepserve[torchserve]'``: its workers import
deepserve's handler, so it shares the project's Python) and Java (the system's, e.g. Debian's
openjdk-17-jre-headless). The .mar comes from the export path (``deepserve export --mar`` puts
``<name>.mar`` in the store's torchserve/ folder, or next to the version); when there is none the
bench builds one from the version directory into the run's folder. TorchServe is started on
loopback with token auth off, the model registered with a batch size of 8, a 5 ms batch delay and
2 workers, and the same rows are posted as JSON to /predictions/{model}: a protocol perf_analyzer
does not speak, so only the bench's own generator drives it. Its working directory and logs go
to a temporary folder (named in the message when it fails to start).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from deepserve.bench import codec
from deepserve.bench.inputs import ModelInfo, make_samples
from deepserve.bench.launcher import free_port
from deepserve.bench.peers import PeerContext, PeerServer, PeerSkipped, needs_http
from deepserve.bench.sweep import Target

BATCH_SIZE, BATCH_DELAY_MS, WORKERS = 8, 5, 2


def find_mar(info: ModelInfo) -> Path | None:
    if info.version_dir is None:
        return None
    for candidate in (
        info.version_dir.parent.parent / "torchserve" / f"{info.name}.mar",  # where export --mar puts it
        info.version_dir / f"{info.name}.mar",
        info.version_dir.parent / f"{info.name}.mar",
        *info.version_dir.glob("*.mar"),
    ):
        if candidate.is_file():
            return candidate
    return None


def mar_for(info: ModelInfo, out: Path) -> Path:
    """The version's .mar, built into ``out`` from the version directory when the store has none."""
    found = find_mar(info)
    if found is not None:
        return found
    if info.version_dir is None:
        raise PeerSkipped("--compare torchserve skipped: needs a local store version (--store) for its .mar")
    try:
        from deepserve.export.mar import build_mar
    except ImportError as e:
        raise PeerSkipped(
            f"--compare torchserve skipped: no {info.name}.mar and cannot build one ({e})"
        ) from e
    built = build_mar(info.version_dir, out_dir=out / "torchserve")
    if built is None:
        raise PeerSkipped(f"--compare torchserve skipped: no {info.name}.mar; torch-model-archiver is needed "
                          "to build it (pip install 'deepserve[torchserve]')")  # fmt: skip
    return built


def _wait(url: str, timeout: float) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def _requests(info: ModelInfo, host: str, rows: int = 1) -> list[bytes]:
    bodies = []
    for s in make_samples(info, 64, rows=rows):
        payload = json.dumps({k: v.tolist() for k, v in s.items()}).encode()
        bodies.append(
            codec.http_request(
                "POST", f"/predictions/{info.name}", host, payload, {"Content-Type": "application/json"}
            )
        )
    return bodies


def _executable() -> str:
    beside = Path(sys.executable).with_name("torchserve")  # the venv's, when it is not on PATH
    exe = shutil.which("torchserve") or (str(beside) if beside.is_file() else None)
    if exe is None or shutil.which("java") is None:
        raise PeerSkipped("--compare torchserve skipped: `torchserve` (pip install 'deepserve[torchserve]') "
                          "and java (apt-get install openjdk-17-jre-headless) are needed")  # fmt: skip
    return exe


class _TorchServe:
    """One TorchServe process tree in a temporary home; ``stop`` ends it and removes the home."""

    def __init__(self, exe: str, mar: Path) -> None:
        self.exe, self.port, self.mgmt = exe, free_port(), free_port()
        # TorchServe writes logs/ into its working directory, a line per request: keep them out of
        # the results folder (a results run once committed 300 MB of them)
        self.home = Path(tempfile.mkdtemp(prefix="deepserve-torchserve-"))
        logs = str(self.home / "logs")
        # TMPDIR: torchserve keeps its pid file there, and `torchserve --stop` ends whichever server
        # that file names: with the shared /tmp it could stop another session's TorchServe
        self.env = {**os.environ, "LOG_LOCATION": logs, "METRICS_LOCATION": logs, "TMPDIR": str(self.home)}
        (self.home / "ts.properties").write_text(
            f"inference_address=http://127.0.0.1:{self.port}\nmanagement_address=http://127.0.0.1:{self.mgmt}\n"
            f"metrics_address=http://127.0.0.1:{free_port()}\ndisable_token_authorization=true\n"
            f"enable_model_api=true\nmodel_store={mar.parent}\n"
        )
        self.log = (self.home / "torchserve.log").open("wb")
        argv = [exe, "--start", "--foreground", "--ts-config", str(self.home / "ts.properties"),
                "--model-store", str(mar.parent), "--ncs"]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, cwd=self.home, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def register(self, mar: Path, name: str) -> None:
        url = (f"http://127.0.0.1:{self.mgmt}/models?url={mar.name}&model_name={name}&batch_size={BATCH_SIZE}"
               f"&max_batch_delay={BATCH_DELAY_MS}&initial_workers={WORKERS}&synchronous=true")  # fmt: skip
        urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=300).read()

    def stop(self, keep_home: bool = False) -> None:
        subprocess.run([self.exe, "--stop"], cwd=self.home, env=self.env, capture_output=True, timeout=60)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
        if not keep_home:  # the request logs are not needed; a failed start's are kept for reading
            shutil.rmtree(self.home, ignore_errors=True)


def start_torchserve(ctx: PeerContext) -> PeerServer:
    info = ctx.info
    needs_http(ctx, "torchserve")
    exe, mar = _executable(), mar_for(info, ctx.out).resolve()  # TorchServe runs in a folder of its own
    with ctx.console.status(f"starting TorchServe with {mar.name} ..."):
        ts = _TorchServe(exe, mar)
        try:
            if not _wait(f"http://127.0.0.1:{ts.port}/ping", 120):
                raise PeerSkipped(
                    f"--compare torchserve skipped: TorchServe did not start (see {ts.home}/torchserve.log)"
                )
            ts.register(mar, info.name)
        except (PeerSkipped, OSError) as e:
            ts.stop(keep_home=True)
            why = (
                str(e)
                if isinstance(e, PeerSkipped)
                else f"--compare torchserve skipped: registering {mar.name} failed ({e})"
            )
            raise PeerSkipped(why) from None
    ctx.stack.callback(ts.stop)
    rows = ctx.shape.rows
    requests = _requests(info, f"127.0.0.1:{ts.port}", rows)
    target = Target("torchserve http/json", "http", requests, port=ts.port, model=info.name,
                    items_per_request=rows, stats=False, server_pid=ts.proc.pid)  # fmt: skip
    note = (f"TorchServe {mar.name}: batch {BATCH_SIZE}, {BATCH_DELAY_MS} ms batch delay, {WORKERS} workers, "
            "JSON rows on /predictions (the bench's own generator only)")  # fmt: skip
    return PeerServer("torchserve", [target], note)
