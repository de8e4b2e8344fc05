"""``--mar``: a TorchServe archive of a version directory, built by torch-model-archiver.

The archive holds the same files as the version (model.json first among them) and the thin
TorchServe adapter ``handlers/torchserve.py`` as its handler; that adapter runs deepserve's own
handlers, so TorchServe serves exactly what ``deepserve serve`` serves. Archives go to
``<store>/torchserve/<name>.mar``, a directory TorchServe can use as its ``--model-store``.
TorchServe is optional (in limited maintenance): without the archiver the step is skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from deepserve.export.errors import ExportError

HANDLER = Path(__file__).resolve().parent.parent / "handlers" / "torchserve.py"
HANDLER_MODULE = "deepserve.handlers.torchserve"


def archiver() -> str | None:
    found = shutil.which("torch-model-archiver")
    if found:
        return found
    beside = Path(sys.executable).with_name("torch-model-archiver")  # the venv's, when not on PATH
    return str(beside) if beside.is_file() else None


def build_mar(version_dir: Path, *, out_dir: Path | None = None) -> Path | None:
    """Write ``<store>/torchserve/<name>.mar``; None (with a message on stderr) if it cannot be built."""
    tool = archiver()
    if tool is None:
        print(
            "deepserve export: --mar skipped: torch-model-archiver is not installed "
            "(pip install 'deepserve[torchserve]')",
            file=sys.stderr,
        )
        return None
    if not HANDLER.is_file():
        print(
            f"deepserve export: --mar skipped: the TorchServe adapter {HANDLER} ({HANDLER_MODULE}) "
            "is not in this checkout",
            file=sys.stderr,
        )
        return None
    out_dir = out_dir or version_dir.parent.parent / "torchserve"
    out_dir.mkdir(parents=True, exist_ok=True)
    return _archive(tool, version_dir, out_dir)


def _archive(tool: str, version_dir: Path, out_dir: Path) -> Path:
    name, version = version_dir.parent.name, version_dir.name
    files = sorted(p for p in version_dir.iterdir() if p.is_file())
    serialized = version_dir / ("model.pt" if (version_dir / "model.pt").is_file() else "model.onnx")
    extra = [str(p) for p in files if p != serialized]
    cmd = [
        tool,
        "--model-name",
        name,
        "--version",
        version,
        "--serialized-file",
        str(serialized),
        "--handler",
        str(HANDLER),
        "--extra-files",
        ",".join(extra),
        "--export-path",
        str(out_dir),
        "-f",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise ExportError(f"torch-model-archiver failed for {name} v{version}: {done.stderr.strip()[-500:]}")
    return out_dir / f"{name}.mar"
