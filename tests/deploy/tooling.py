"""Where tests/deploy finds the external tools `.ci/tools.sh` installs, and a skip when one is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# .ci/tools.sh puts checkov's venv and the npm packages here
TOOLS_DIR = Path(os.environ.get("DEEPSERVE_TOOLS_DIR", "/opt/deepserve-tools"))
INSTALL_HINT = "install it with `bash .ci/tools.sh` (as root)"


def find_tool(name: str) -> str | None:
    """A tool on PATH, next to this interpreter (the project venv) or in the tools dir."""
    candidates = [
        Path(sys.executable).parent / name,
        TOOLS_DIR / "checkov-venv" / "bin" / name,
        TOOLS_DIR / "node" / "node_modules" / ".bin" / name,
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed: {INSTALL_HINT}")
    return path


def require_node_modules(*packages: str) -> Path:
    """The npm tools dir, after checking node and the named packages are there."""
    require_tool("node")
    modules = TOOLS_DIR / "node" / "node_modules"
    missing = [p for p in packages if not (modules / p).is_dir()]
    if missing:
        pytest.skip(f"npm packages {missing} are not in {modules}: {INSTALL_HINT}")
    return modules


def run_tool(
    args: list[str],
    *,
    input_text: str | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a tool and fail the test with its whole output when it exits non-zero."""
    proc = subprocess.run(
        args,
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args[:3])}... exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
