"""Write k-means centroids into a NEW version of an embedding model (the served one is never changed).

The new version holds the source version's files (hard links where the file system allows, else
copies: versions are immutable once written, so sharing their bytes is safe), ``clusters.npy``
and a ``model.json`` with the same signature plus a ``clusters`` entry. It is built in a staged
directory and renamed into place, so a server watching the store sees all of it or nothing.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from deepserve.store import ClusterSpec, ModelSpec
from deepserve.version_dir import resolve_version, staged_version

CENTROIDS_FILE = "clusters.npy"


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a plain copy
        shutil.copy2(src, dst)
    return dst


def write_clustered_version(source_dir: Path, centroids: np.ndarray, clusters: ClusterSpec) -> Path:
    """``<store>/<name>/<next version>`` beside ``source_dir``: its files + ``centroids`` (k, D)."""
    spec = ModelSpec.read(source_dir)
    model_dir = source_dir.parent  # the name the store serves it under
    version = resolve_version(model_dir, None, force=False)
    skip = {"model.json", clusters.file} | ({spec.clusters.file} if spec.clusters else set())

    def top_level_skips(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n in skip] if Path(folder) == source_dir else []

    with staged_version(model_dir.parent, model_dir.name, version) as tmp:
        shutil.copytree(
            source_dir, tmp, dirs_exist_ok=True, copy_function=_link_or_copy, ignore=top_level_skips
        )
        np.save(tmp / clusters.file, np.asarray(centroids, dtype=np.float32), allow_pickle=False)
        created = datetime.now(UTC).isoformat()
        spec.model_copy(update={"version": version, "clusters": clusters, "created": created}).write(tmp)
    return model_dir / str(version)
