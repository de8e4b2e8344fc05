"""What every importer shares: the options, the one error, and writing a store version atomically.

An importer turns a user's source (a graph file, a Hugging Face folder, a TorchServe archive, a
Triton repository, a handler file) into a normal model-store version: ``model.json`` + the files
it names (+ ``parity.json`` where a conversion ran). The server then serves it like a built-in
model, with batching, queues, deadlines, metrics and every protocol.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepserve.store import ModelSpec, Task, is_plain_model_name
from deepserve.version_dir import VersionExistsError, resolve_version, staged_version

TASKS: tuple[Task, ...] = ("classification", "regression", "embedding", "raw")


class SourceError(Exception):
    """The source cannot be imported; the message is one line saying what is wrong and what to do."""


@dataclass(frozen=True)
class ImportOptions:
    store: Path
    name: str | None = None  # None: derived from the source (file stem, folder name, manifest, repo)
    version: int | None = None  # None: the next free version
    task: str | None = None  # classification / regression / embedding / raw (text-generation for HF)
    labels: Path | None = None  # one label per line
    handler: str | None = None  # "FILE:CLASS" of a deepserve handler
    runtime: str | None = None  # "onnx" (convert where needed) or "torch" (serve the torch model)
    force: bool = False  # replace an existing --version
    link: bool = False  # symlink big files instead of copying them (`deepserve serve SOURCE`)
    kind: str | None = None  # the importer (set by import_source): model.json ``imported_from``

    def named(self, default: str) -> ImportOptions:
        """These options with ``name`` filled in from the source when the user gave none."""
        name = self.name or default
        if not is_plain_model_name(name):
            raise SourceError(
                f"model name {name!r} is not a plain store name (letters, digits, '.', '_', '-'); "
                "pass --name"
            )
        return replace(self, name=name)


def read_labels(path: Path | None) -> list[str]:
    """``--labels FILE``: one label per line, blank lines ignored."""
    if path is None:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read --labels {path}: {exc}") from exc
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise SourceError(f"--labels {path} holds no labels; write one label per line")
    return labels


def now() -> str:
    return datetime.now(UTC).isoformat()


def torch_version() -> str:
    """The torch that wrote the version, without importing torch where the import did not need it."""
    import importlib.metadata

    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def place(src: Path, dst: Path, *, link: bool) -> None:
    """Put ``src`` at ``dst``: a symlink when ``link`` (serving in place), else a copy (a store
    version must stand on its own: the source may change or go away after the import)."""
    if link:
        os.symlink(src.resolve(), dst, target_is_directory=src.is_dir())
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=False)
    else:
        shutil.copy2(src, dst)


@contextmanager
def new_version(opts: ImportOptions) -> Iterator[tuple[Path, int]]:
    """An empty staging directory and its version number; renamed into ``store/name/version`` only
    when the block ends without an error, so a failed import leaves nothing behind."""
    assert opts.name is not None, "call ImportOptions.named() first"
    try:
        version = resolve_version(opts.store / opts.name, opts.version, force=opts.force)
    except VersionExistsError as exc:
        raise SourceError(str(exc)) from exc
    with staged_version(opts.store, opts.name, version) as tmp:
        yield tmp, version


def write_version(opts: ImportOptions, fill: Callable[[Path, int], ModelSpec]) -> Path:
    """Stage a version, let ``fill(tmp, version)`` put its files there and return its spec, then
    validate that spec and write model.json. Returns the final version directory."""
    with new_version(opts) as (tmp, version):
        spec = fill(tmp, version)
        if opts.kind is not None and spec.imported_from is None:
            spec = spec.model_copy(update={"imported_from": opts.kind})
        for variant in spec.variants:
            if not (tmp / variant.file).exists():
                raise SourceError(f"internal: variant file {variant.file} was not written")
        spec.write(tmp)
    assert opts.name is not None
    return opts.store / opts.name / str(version)


def spec_fields(opts: ImportOptions, version: int, source: Path | str, **fields: Any) -> dict[str, Any]:
    """The ModelSpec fields every imported version has."""
    return {
        "name": opts.name,
        "version": version,
        "created": now(),
        "torch_version": torch_version(),
        "source": str(source),
        **fields,
    }
