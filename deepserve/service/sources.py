"""``deepserve serve SOURCE ...``: serve model files, folders, archives and repositories directly.

Each source is imported (``deepserve.imports``) into one temporary store that is served beside the
main store and removed at exit. Big files are linked, not copied: the source is served in place.
A source whose model name is already in the main store is refused (the store's model would hide
it), as is a source deepserve cannot serve: one line, exit code 2, before anything is served.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deepserve.imports import ImportOptions, SourceError, import_source

log = logging.getLogger(__name__)


@contextmanager
def sources_store(sources: list[Path], opts: ImportOptions, main_store: Path) -> Iterator[Path]:
    """A temporary store holding ``sources`` (``opts.store`` is ignored); raises SourceError."""
    if opts.name is not None and len(sources) > 1:
        raise SourceError("--name names one model; pass one SOURCE with it, or leave it out")
    store = Path(tempfile.mkdtemp(prefix="deepserve-sources-"))
    try:
        for source in sources:
            written = import_source(source, _options(opts, store))
            for version_dir in written:
                name = version_dir.parent.name
                if (main_store / name).is_dir():
                    raise SourceError(
                        f"{source}: model name {name!r} is already in the store {main_store}; "
                        "pass --name to serve it under another name"
                    )
                log.info("serving %s as model %s version %s", source, name, version_dir.name)
        yield store
    finally:
        shutil.rmtree(store, ignore_errors=True)


def _options(opts: ImportOptions, store: Path) -> ImportOptions:
    return ImportOptions(
        store=store, name=opts.name, task=opts.task, labels=opts.labels, handler=opts.handler,
        runtime=opts.runtime, link=True,
    )  # fmt: skip
