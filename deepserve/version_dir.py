"""Model-store version directories, written atomically.

A version is built in a hidden temporary directory beside its final place and renamed into
``<store>/<name>/<version>`` only when complete, so the server never sees a half-written
version and a failed export or import leaves nothing behind. Shared by ``deepserve export``
and ``deepserve import`` (which a serving-only install runs too, so nothing here needs torch).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class VersionExistsError(ValueError):
    """The target version directory already exists (pass ``--force`` to replace it)."""


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def resolve_version(model_dir: Path, version: int | None, *, force: bool) -> int:
    """Default: highest existing + 1 (or 1). An existing explicit version needs ``force``."""
    if version is None:
        return max(versions(model_dir), default=0) + 1
    if version < 1:
        raise VersionExistsError(f"version must be a positive integer, got {version}")
    if (model_dir / str(version)).exists() and not force:
        raise VersionExistsError(
            f"{model_dir / str(version)} already exists; pass --force to replace it or pick another --version"
        )
    return version


@contextmanager
def staged_version(store: Path, name: str, version: int) -> Iterator[Path]:
    """Yield an empty temp dir; on success it becomes ``store/name/version`` (replacing any old one)."""
    model_dir = store / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=model_dir))
    try:
        yield tmp
        tmp.chmod(0o755)
        final = model_dir / str(version)
        if final.exists():  # --force: move the old one aside first, so the swap is two renames
            old = Path(tempfile.mkdtemp(prefix=f".{version}.old-", dir=model_dir))
            os.replace(final, old / "v")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if not any(model_dir.iterdir()):  # a failed first export leaves no empty model dir either
            model_dir.rmdir()
