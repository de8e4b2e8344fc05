"""Model stores and sources in object storage: ``s3://``, ``gs://``, ``https://`` (``http://``) and
``file://`` URIs, served from a local copy.

    DEEPSERVE_MODEL_STORE=s3://bucket/store deepserve serve    # every <name>/<version>/ under it
    deepserve serve s3://bucket/models/model.onnx              # one source, imported as usual
    deepserve import gs://bucket/models/bert/ --store model_store

A store URI is listed once at start (one LIST request on S3 and GCS; an HTTP server must serve
index pages, as ``python -m http.server`` and nginx's autoindex do) and each
``<name>/<version>/`` holding a ``model.json`` is copied into
``<store_cache>/<last part of the URI>-<hash of the URI>/<name>/<version>`` as the server loads it,
in the background like any model load (liveness answers meanwhile, readiness waits). A source is
copied into ``<store_cache>/<its base name>-<hash>/1/<base name>`` before it is imported. How a
copy is made and verified, and what a second start reuses: ``deepserve.remote_tree``.

Failures, and why they differ:

- the store cannot be listed (wrong credentials, no such bucket, endpoint unreachable, nothing
  under the URI): ``deepserve serve`` stops at start with one line and exit code 2, as for a local
  store that does not exist. It is a configuration error that no model could outlive, and a
  server that stays up but never ready hides it where a crash-looping pod's log shows it;
- one version cannot be downloaded or fails verification (forbidden, cut short, corrupt): that
  model is ``failed`` with the one-line reason and the others serve, as for a model that does not
  load; nothing of it is left in the cache, so the next start tries it again.

The copy stays in the cache: restarts and rolling updates on the same node skip the download.
``kserve-storage`` (KServe's storage initializer) is not used: it copies a whole storageUri
without verifying it, and in KServe that initializer already runs before deepserve starts.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from deepserve.remote_tree import RemoteFile, RemoteStoreError, RemoteTree, localize
from deepserve.store import is_plain_model_name

__all__ = ["RemoteStore", "RemoteStoreError", "cache_dir", "default_cache_root", "fetch_source", "store_uri"]

SCHEMES = ("s3", "gs", "gcs", "http", "https", "file")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(/+)(.*)$", re.DOTALL)


def store_uri(value: str | os.PathLike[str]) -> str | None:
    """``value`` as a URI deepserve fetches, or None for a local path; RemoteStoreError for an
    unknown scheme. Takes the ``Path`` that argparse's ``type=Path`` made of a URI too ("s3://b/k"
    becomes ``Path("s3:/b/k")``): its scheme is one of ours, so no local path reads like that."""
    text = os.fspath(value)
    match = _URI.match(text)
    if match is None:
        return None
    scheme, slashes, rest = match[1].lower(), match[2], match[3]
    if scheme not in SCHEMES:
        if len(slashes) == 1:  # "c:/x", "name:/x": a local path after all
            return None
        raise RemoteStoreError(
            f"{text}: unsupported URI scheme {scheme}:// (use one of {', '.join(SCHEMES)})"
        )
    if len(slashes) == 1:  # the form a Path gives: one slash where there were two (three for file:)
        return f"{scheme}:///{rest}" if scheme == "file" else f"{scheme}://{rest}"
    return f"{scheme}:{slashes}{rest}"


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/deepserve/stores``, or ``~/.cache/deepserve/stores``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deepserve" / "stores"


def cache_dir(uri: str, cache_root: Path) -> Path:
    """The cache's folder for ``uri``: readable (the URI's last part) and unique (a hash of the URI,
    whether or not it ends in "/")."""
    uri = uri.rstrip("/")
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", uri.rsplit("/", 1)[-1]).strip("-.") or "root"
    return cache_root / f"{tail[:40]}-{hashlib.sha256(uri.encode()).hexdigest()[:16]}"


class RemoteStore:
    """A model store at ``uri`` and its local copy ``local`` (the server's ``model_store``)."""

    def __init__(self, uri: str, local: Path) -> None:
        self.uri = uri
        self.local = local
        self._tree: RemoteTree | None = None  # fsspec is imported at the first listing, not before
        self._versions: dict[tuple[str, int], list[RemoteFile]] = {}

    def refresh(self) -> dict[str, list[int]]:
        """List the store (network): name -> versions that hold a model.json; RemoteStoreError."""
        if self._tree is None:
            self._tree = RemoteTree(self.uri)
        listed = self._tree.list(folder=True)
        try:  # now, so a cache that cannot be written is one line at start too
            self.local.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RemoteStoreError(
                f"cannot create the store cache {self.local}: {exc.strerror or exc}; set "
                "DEEPSERVE_STORE_CACHE to a writable directory"
            ) from None
        grouped: dict[tuple[str, int], list[RemoteFile]] = defaultdict(list)
        for file in listed:
            parts = file.path.split("/", 2)  # <name>/<version>/<path in the version>
            if len(parts) == 3 and is_plain_model_name(parts[0]) and re.fullmatch(r"[1-9][0-9]*", parts[1]):
                grouped[(parts[0], int(parts[1]))].append(replace(file, path=parts[2]))
        self._versions = {k: v for k, v in grouped.items() if any(f.path == "model.json" for f in v)}
        return self.versions()

    def versions(self) -> dict[str, list[int]]:
        """What the last ``refresh`` found (no network)."""
        found: dict[str, list[int]] = defaultdict(list)
        for name, version in sorted(self._versions):
            found[name].append(version)
        return dict(found)

    def fetch(self, name: str, version: int) -> Path:
        """The local copy of one version: cached, or downloaded and verified now; RemoteStoreError."""
        files = self._versions.get((name, version))
        if files is None or self._tree is None:
            raise RemoteStoreError(f"{self.uri} has no {name}/{version}/model.json (at the last listing)")
        return localize(self._tree, files, self.local, name, version)


def fetch_source(uri: str, cache_root: Path) -> Path:
    """A model file or folder at ``uri``, copied (or found) in the cache: its local path, under its
    own base name (importers name models after it); RemoteStoreError."""
    tree = RemoteTree(uri)
    is_dir = tree.is_dir()
    files = tree.list(folder=is_dir)
    if not files:
        raise RemoteStoreError(f"{uri}: nothing there; check the path")
    cached = cache_dir(uri, cache_root)
    base = uri.rstrip("/").rsplit("/", 1)[-1]
    # a file lands as <cached>/1/<base>, a folder's files under <cached>/1/<base>/
    return localize(tree, files, cached.parent, cached.name, 1, under=base if is_dir else "") / base
