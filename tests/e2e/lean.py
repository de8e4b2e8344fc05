"""The serving-only venvs: ``pip install -e '.[serve]'`` into a fresh venv, no torch allowed.

    python -m tests.e2e.lean          # build (or reuse) .venv-serve/ and, if a newer Python is
                                      # here, .venv-serve-3.13/ (or -3.12); .ci/run does this once

``ensure_venv`` reuses a venv whose stamp (the hash of pyproject.toml and the interpreter's
version) matches and rebuilds it otherwise, so a test never runs against stale dependencies.
The newer Python is ``DEEPSERVE_NEWER_PYTHON`` if set, else the first python3.13 / python3.12
that runs, on PATH or under pyenv.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NEWER = ("3.13", "3.12")
STAMP = "deepserve-lean-stamp"
FORBIDDEN = ("torch", "sklearn", "matplotlib", "onnx", "onnxscript", "rich")


def _version(python: str) -> str | None:
    """``3.13.0`` for a working interpreter, None otherwise (a pyenv shim of an unselected version)."""
    try:
        out = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def base_python() -> str:
    """The interpreter the dev venv was made from (3.11)."""
    return str(getattr(sys, "_base_executable", sys.executable))


def newer_python() -> str | None:
    """A Python 3.12/3.13 interpreter on this machine, or None."""
    given = os.environ.get("DEEPSERVE_NEWER_PYTHON")
    if given:
        return given if _version(given) else None
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for minor in NEWER:
        found = [shutil.which(f"python{minor}")]
        found += [
            str(p) for p in sorted(pyenv_root.glob(f"versions/{minor}.*/bin/python{minor}"), reverse=True)
        ]
        for python in found:
            version = python and _version(python)
            if version and version.startswith(minor + "."):
                return python
    return None


def _minor(python: str) -> str:
    return ".".join((_version(python) or "").split(".")[:2])


def tag(python: str) -> str:
    """``py313`` for a Python 3.13 interpreter (a test id)."""
    return "py" + _minor(python).replace(".", "")


def venv_dir(python: str) -> Path:
    minor = _minor(python)
    return REPO / (".venv-serve" if minor == "3.11" else f".venv-serve-{minor}")


def _stamp(python: str) -> str:
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes())
    digest.update((_version(python) or "").encode())
    return digest.hexdigest()


def ensure_venv(python: str, venv: Path | None = None) -> Path:
    """A venv with ``-e '.[serve]'`` for ``python``; returns its interpreter. Raises if torch got in."""
    venv = venv or venv_dir(python)
    stamp = venv / STAMP
    interpreter = venv / "bin" / "python"
    if not (stamp.is_file() and stamp.read_text() == _stamp(python) and _version(str(interpreter))):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(interpreter), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "-e", f"{REPO}[serve]"], check=True, cwd=REPO)
        stamp.write_text(_stamp(python))
    installed = installed_forbidden(interpreter)
    if installed:
        raise RuntimeError(f"`pip install -e '.[serve]'` installed {installed} into {venv}")
    return interpreter


def installed_forbidden(interpreter: Path) -> list[str]:
    """The training / export packages importable from ``interpreter`` (none in a serving venv)."""
    code = f"import importlib.util as u; print(' '.join(m for m in {FORBIDDEN!r} if u.find_spec(m)))"
    out = subprocess.run([str(interpreter), "-I", "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def main() -> int:
    pythons = [base_python()]
    newer = newer_python()
    if newer is None:
        print(
            f"lean venv: no Python {' / '.join(NEWER)} on this machine; the lean-serve test runs on 3.11 only"
        )
    else:
        pythons.append(newer)
    for python in pythons:
        venv = ensure_venv(python).parent.parent
        print(f"lean venv: {venv} (Python {_version(python)}, '.[serve]', no torch)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
