"""``deepserve serve SOURCE ...``: serve model files, folders, archives and repositories directly.

Each source is imported (``deepserve.imports``) into one temporary store that is served beside the
main store and removed at exit. Big files are linked, not copied: the source is served in place.
A source given as a URI (``s3://``, ``gs://``, ``https://``, ``file://``) is first copied into the
store cache (``deepserve.remote_store.fetch_source``: verified, and reused by the next start) and
imported from there.
A source whose model name is already in the main store is refused (the store's model would hide
it), as is a source deepserve cannot serve: one line, exit code 2, before anything is served.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from deepserve.imports import ImportOptions, SourceError, import_source
from deepserve.remote_store import RemoteStore, fetch_source, store_uri
from deepserve.store import MODEL_NAME

log = logging.getLogger(__name__)


def store_models(store: Path, uri: str | None) -> set[str]:
    """The model names of the main store (``uri``: it is in object storage, listed now;
    RemoteStoreError)."""
    if uri is not None:
        return set(RemoteStore(uri, store).refresh())
    if not store.is_dir():
        return set()
    return {p.name for p in store.iterdir() if p.is_dir() and MODEL_NAME.match(p.name)}


@contextmanager
def sources_store(
    sources: list[Path | str], opts: ImportOptions, main_models: Collection[str], *, cache: Path
) -> Iterator[Path]:
    """A temporary store holding ``sources`` (``opts.store`` is ignored; ``cache``: where URI
    sources are copied to); raises SourceError or RemoteStoreError."""
    if opts.name is not None and len(sources) > 1:
        raise SourceError("--name names one model; pass one SOURCE with it, or leave it out")
    store = Path(tempfile.mkdtemp(prefix="deepserve-sources-"))
    try:
        for source in sources:
            uri = store_uri(source)
            shown = uri or os.fspath(source)
            local = fetch_source(uri, cache) if uri is not None else Path(source)
            for version_dir in import_source(local, _options(opts, store)):
                name = version_dir.parent.name
                if name in main_models:
                    raise SourceError(
                        f"{shown}: model name {name!r} is already in the store being served; "
                        "pass --name to serve it under another name"
                    )
                log.info("serving %s as model %s version %s", shown, name, version_dir.name)
        yield store
    finally:
        shutil.rmtree(store, ignore_errors=True)


def _options(opts: ImportOptions, store: Path) -> ImportOptions:
    return ImportOptions(
        store=store, name=opts.name, task=opts.task, labels=opts.labels, handler=opts.handler,
        runtime=opts.runtime, link=True,
    )  # fmt: skip
