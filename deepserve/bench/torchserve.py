"""`--compare torchserve`: the same sweep against TorchServe serving the same model's .mar.

Needs the ``torchserve`` command and Java; the .mar comes from the export path
(``deepserve export --mar`` puts ``<name>.mar`` in the version directory or next to it). TorchServe
is started on loopback with token auth off and a batch size of 8, the model registered, and the
same rows posted as JSON to /predictions/{model}. Skips with a clear message when anything is
missing. Its working directory and logs go to a temporary folder, named in the message.
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

from rich.console import Console

from deepserve.bench import codec, runner
from deepserve.bench.inputs import ModelInfo, make_samples
from deepserve.bench.launcher import free_port
from deepserve.bench.sweep import LevelResult, RunConfig, Target


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


def _requests(info: ModelInfo, host: str) -> list[bytes]:
    bodies = []
    for s in make_samples(info, 64):
        payload = json.dumps({k: v.tolist() for k, v in s.items()}).encode()
        bodies.append(
            codec.http_request(
                "POST", f"/predictions/{info.name}", host, payload, {"Content-Type": "application/json"}
            )
        )
    return bodies


def compare_torchserve(
    info: ModelInfo, mode: str, levels: list[float], cfg: RunConfig, console: Console, out: Path
) -> tuple[list[LevelResult], str]:
    beside = Path(sys.executable).with_name("torchserve")  # the venv's, when it is not on PATH
    exe, mar = shutil.which("torchserve") or (str(beside) if beside.is_file() else None), find_mar(info)
    if exe is None or shutil.which("java") is None:
        return [], "--compare torchserve skipped: `torchserve` (pip install torchserve) and java are needed"
    if mar is None:
        return [], f"--compare torchserve skipped: no {info.name}.mar; export with `deepserve export --mar`"
    port, mgmt = free_port(), free_port()
    # TorchServe writes logs/ into its working directory, a line per request: keep them out of the
    # results folder (a results run once committed 300 MB of them)
    home = Path(tempfile.mkdtemp(prefix="deepserve-torchserve-"))
    env = {**os.environ, "LOG_LOCATION": str(home / "logs"), "METRICS_LOCATION": str(home / "logs")}
    (home / "ts.properties").write_text(
        f"inference_address=http://127.0.0.1:{port}\nmanagement_address=http://127.0.0.1:{mgmt}\n"
        f"metrics_address=http://127.0.0.1:{free_port()}\ndisable_token_authorization=true\n"
        f"enable_model_api=true\nmodel_store={mar.parent}\n"
    )
    log = (home / "torchserve.log").open("wb")
    proc = subprocess.Popen(
        [
            exe,
            "--start",
            "--foreground",
            "--ts-config",
            str(home / "ts.properties"),
            "--model-store",
            str(mar.parent),
            "--ncs",
        ],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    measured = False
    try:
        if not _wait(f"http://127.0.0.1:{port}/ping", 120):
            return [], f"--compare torchserve: TorchServe did not start (see {home}/torchserve.log)"
        register = (
            f"http://127.0.0.1:{mgmt}/models?url={mar.name}&model_name={info.name}"
            f"&batch_size=8&max_batch_delay=5&initial_workers=2&synchronous=true"
        )
        urllib.request.urlopen(urllib.request.Request(register, method="POST"), timeout=300).read()
        target = Target(
            "torchserve http/json",
            "http",
            _requests(info, f"127.0.0.1:{port}"),
            port=port,
            model=info.name,
            stats=False,
            server_pid=proc.pid,
        )
        results = runner.sweep([target], mode, levels, cfg, console)
        measured = True
        return results, f"TorchServe {mar.name}: measured (batch 8, 2 workers; its CPU is not counted)"
    finally:
        subprocess.run([exe, "--stop"], cwd=home, env=env, capture_output=True, timeout=60)
        proc.terminate()
        proc.wait(30)
        log.close()
        if measured:  # the request logs are not needed; a failure's are kept for reading
            shutil.rmtree(home, ignore_errors=True)
