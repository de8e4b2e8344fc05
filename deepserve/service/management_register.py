"""``POST /models``: register a model from the model store, through the data plane.

The ``url`` (``management_sources.store_path``) is either a store model's own directory, which is
loaded as it is, or a source that ``deepserve.imports`` takes (a TorchServe .mar above all), which
is imported into the store as its next version first. ``batch_size`` / ``max_batch_delay`` are
written into that new version's model.json (``max_batch_size`` and ``batching.max_queue_delay_ms``,
where the archive's model-config.yaml ``batchSize`` / ``maxBatchDelay`` go too, and as in
TorchServe the request's values win over the archive's); the version keeps them across restarts.

Then the model is loaded with ``DataPlane.load_model`` (token, drain and store rules applied
there). A load that fails removes the version this request imported, so a broken archive never
stays in the store for the next start to fail on, and the model returns to what it served before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepserve.imports import ImportOptions, SourceError, import_source
from deepserve.service.dataplane import Credentials, DataPlane
from deepserve.service.errors import (
    DeepserveError,
    InternalError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
)
from deepserve.service.management_sources import is_store_model, store_path
from deepserve.store import BatchingSpec, ModelSpec, is_plain_model_name

log = logging.getLogger(__name__)


class ConflictError(DeepserveError):
    """TorchServe's 409 ConflictStatusException: the model is already registered."""

    status = 409


@dataclass(frozen=True)
class Registration:
    """The parameters of ``POST /models`` that deepserve honours (TorchServe's names)."""

    url: str
    model_name: str | None = None
    batch_size: int | None = None  # None: the archive's own (model-config.yaml), else the importer's
    max_batch_delay: int | None = None  # milliseconds
    initial_workers: int | None = None
    synchronous: bool = True  # TorchServe's default for registration

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> Registration:
        """From the query string, or the JSON body TorchServe also accepts."""
        name = params.get("model_name") or None
        if name is not None and not is_plain_model_name(str(name)):
            raise InvalidRequestError(
                f"model_name {name!r} is not a plain model name (letters, digits, '.', '_', '-')"
            )
        workers = integer(params, "initial_workers")
        if workers is not None and workers not in (0, 1):
            raise InvalidRequestError(
                f"initial_workers={workers} cannot be met: deepserve runs one worker per model (its batcher "
                "fills each run); scale out with replicas instead, and pass 0 or 1"
            )
        size, delay = integer(params, "batch_size"), integer(params, "max_batch_delay")
        if size is not None and size < 1:
            raise InvalidRequestError(f"batch_size must be at least 1, got {size}")
        if delay is not None and delay < 0:
            raise InvalidRequestError(f"max_batch_delay must be 0 or more milliseconds, got {delay}")
        return cls(str(params.get("url") or ""), None if name is None else str(name), size, delay, workers,
                   boolean(params, "synchronous", default=True))  # fmt: skip


def integer(params: Mapping[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value))
    except ValueError:
        raise InvalidRequestError(f"{key} must be an integer, got {value!r}") from None


def boolean(params: Mapping[str, Any], key: str, *, default: bool) -> bool:
    """Java's ``Boolean.parseBoolean``, as TorchServe reads flags: only "true" (any case) is true."""
    value = params.get(key)
    if value is None:
        return default
    return value is True or str(value).lower() == "true"


@dataclass(frozen=True)
class Placed:
    """A store version this registration serves; ``imported``: written by this request."""

    name: str
    version: int
    imported: bool


class Registrar:
    """Registrations, one at a time: an import and its load are not interleaved with another's."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.store = plane.settings.model_store
        self.registered_at: dict[str, float] = {}  # names registered here since start -> when
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    async def place(self, reg: Registration) -> list[Placed]:
        """The versions ``reg.url`` stands for, importing it into the store when it is a source."""
        uri = self.plane.settings.model_store_uri
        if uri is not None:  # the local copy follows the remote listing: an import there would not be served
            raise InvalidRequestError(
                f"the model store is {uri} (a local copy of object storage): register models by uploading "
                "them there and loading them by name (POST /v2/repository/models/<name>/load)"
            )
        path, root = store_path(reg.url, self.store), self.store.resolve()
        async with self._lock:
            if is_store_model(path, self.store):
                return self._store_model(path, reg)
            top = root / path.relative_to(root).parts[0]
            if top != path and is_store_model(top, self.store):
                raise InvalidRequestError(
                    f"url {reg.url!r} is inside the store model {top.name!r}; register it as url={top.name}"
                )
            if path.is_dir() and path.parent == root and reg.model_name in (None, path.name):
                raise InvalidRequestError(
                    f"url {reg.url!r} is a folder at the top of the model store, where model {path.name!r} "
                    "would keep its versions: pass model_name=<another name>, or move it into a subfolder"
                )
            return await asyncio.to_thread(self._import, path, reg)

    def _store_model(self, path: Path, reg: Registration) -> list[Placed]:
        name = path.name
        if reg.model_name not in (None, name):
            raise InvalidRequestError(
                f"{name!r} is a model of the store: it keeps its name; leave model_name out"
            )
        if reg.batch_size is not None or reg.max_batch_delay is not None:
            raise InvalidRequestError(
                f"batch_size / max_batch_delay apply to an archive this call imports; model {name!r} is "
                "already in the store: set its batching with DEEPSERVE_MODELS (per-model overrides) instead"
            )
        if name in self.plane.model_names():
            raise ConflictError(f"model {name!r} is already registered; DELETE /models/{name} first")
        versions = sorted(int(v.name) for v in path.iterdir() if v.name.isdigit())
        return [Placed(name, versions[-1], imported=False)]

    def _import(self, path: Path, reg: Registration) -> list[Placed]:
        try:
            written = import_source(path, ImportOptions(store=self.store, name=reg.model_name))
        except SourceError as exc:
            raise InvalidRequestError(f"url {reg.url!r}: {exc}") from None
        try:
            for version_dir in written:
                apply_batching(version_dir, reg.batch_size, reg.max_batch_delay)
        except InvalidRequestError:
            for version_dir in written:
                shutil.rmtree(version_dir, ignore_errors=True)
            raise
        return [Placed(d.parent.name, int(d.name), imported=True) for d in written]

    async def load(self, placed: list[Placed], credentials: Credentials) -> None:
        async with self._lock:
            for name in dict.fromkeys(p.name for p in placed):
                await self._load_one(name, [p for p in placed if p.name == name and p.imported], credentials)

    def load_later(self, placed: list[Placed], credentials: Credentials) -> None:
        """``synchronous=false``: the load runs on; its failure is logged (and rolled back)."""
        task = asyncio.create_task(self.load(placed, credentials))
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("registering in the background failed: %s", task.exception())

    async def _load_one(self, name: str, mine: list[Placed], credentials: Credentials) -> None:
        served_before = name in self.plane.model_names()
        try:
            await self.plane.load_model(name, credentials)
        except ModelNotReadyError as exc:
            if not mine:
                raise
            await asyncio.to_thread(self._remove, mine)
            await self._restore(name, served_before, credentials)
            raise InternalError(f"{exc.message}; the version this call imported was removed") from None
        self.registered_at[name] = time.time()

    def _remove(self, mine: list[Placed]) -> None:
        for placed in mine:
            model_dir = self.store / placed.name
            shutil.rmtree(model_dir / str(placed.version), ignore_errors=True)
            with contextlib.suppress(OSError):  # its only version: no empty model directory left either
                model_dir.rmdir()

    async def _restore(self, name: str, served_before: bool, credentials: Credentials) -> None:
        """The model as it was before the failed load: its older versions served again, or unloaded."""
        try:
            if served_before:
                await self.plane.load_model(name, credentials)
            else:
                with contextlib.suppress(ModelNotFoundError):
                    await self.plane.unload_model(name, credentials)
        except DeepserveError as exc:  # the answer is about the failed registration; say this in the log
            log.error("model %s could not be restored after a failed registration: %s", name, exc.message)

    def forget(self, name: str) -> None:
        self.registered_at.pop(name, None)


def apply_batching(version_dir: Path, batch_size: int | None, max_batch_delay: int | None) -> None:
    """Write the request's batch settings into the version's model.json (replaced atomically)."""
    if batch_size is None and max_batch_delay is None:
        return
    spec = ModelSpec.read(version_dir)
    update: dict[str, Any] = {}
    if batch_size is not None and spec.max_batch_size == 0 and batch_size > 1:
        raise InvalidRequestError(
            f"model {spec.name!r} has no batch axis (its graph runs one request at a time): batch_size="
            f"{batch_size} cannot apply; leave batch_size out"
        )
    if batch_size is not None and spec.max_batch_size > 0:
        update["max_batch_size"] = batch_size
    if max_batch_delay is not None:
        batching = spec.batching or BatchingSpec()
        update["batching"] = batching.model_copy(update={"max_queue_delay_ms": float(max_batch_delay)})
    if not update:
        return
    with tempfile.TemporaryDirectory(dir=version_dir.parent, prefix=".batching-") as tmp:
        spec.model_copy(update=update).write(Path(tmp))
        Path(tmp, "model.json").replace(version_dir / "model.json")
