"""The models the server holds: one entry per store version, with its state, handler and batcher.

Store layout: ``<store>/<name>/<version>/model.json`` with integer versions (highest = default).
Several stores may be served (``model_store`` then ``extra_model_stores``); a name is read from the
first store that holds it.
A store in object storage (``model_store_uri``, deepserve.remote_store) is listed at load and each
version copied into ``model_store`` as it loads, so a version that cannot be downloaded or verified
fails like one that does not load.
A model that fails to load is reported ``failed`` with the reason; the others serve.
Run-time load/unload accepts only names that are directories of the store (no paths, no URLs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from deepserve.handlers.base import Handler
from deepserve.handlers.runtime import runtime_provider
from deepserve.remote_store import RemoteStore, RemoteStoreError
from deepserve.service.batching import DynamicBatcher
from deepserve.service.devices import DevicePlacer, parse_devices
from deepserve.service.errors import InvalidRequestError, ModelNotFoundError, ModelNotReadyError
from deepserve.service.metrics import Metrics
from deepserve.service.settings import Settings
from deepserve.service.stats import ModelStatistics
from deepserve.store import MODEL_NAME, is_plain_model_name

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed", "unloading"]
TRITON_STATE = {"loading": "LOADING", "ready": "READY", "failed": "UNAVAILABLE", "unloading": "UNLOADING"}


@dataclass(eq=False)
class ModelEntry:
    name: str
    version: int
    state: State = "loading"
    reason: str = ""
    handler: Handler | None = None
    batcher: DynamicBatcher | None = None
    engine: Any = None  # service.engine.GenerationEngine for text-generation models
    stats: ModelStatistics = field(init=False)
    load_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.stats = ModelStatistics(self.name, str(self.version))

    @property
    def ready(self) -> bool:
        return self.state == "ready"


def _placement(handler: Handler | None) -> tuple[str, str]:
    """(provider, device) labels of a loaded handler; a user handler without them says unknown."""
    return runtime_provider(handler), str(getattr(handler, "device", None) or "unknown")


def check_model_name(name: str) -> str:
    """Names come from clients on load/unload: only plain store directory names pass."""
    if not is_plain_model_name(name):
        raise InvalidRequestError(
            f"model name {name!r} is not a plain model-store name (letters, digits, '.', '_', '-'; "
            "no paths or URLs)"
        )
    return name


class Registry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._models: dict[str, dict[int, ModelEntry]] = {}
        self._lock = asyncio.Lock()
        self.loading_done = False
        uri = settings.model_store_uri
        self.remote = RemoteStore(uri, settings.model_store) if uri is not None else None
        # deepserve.service.devices: which GPU each model lands on (resolved at the first load)
        self.placer: DevicePlacer | None = None
        # called with what changed after models were loaded or unloaded (the server: heap.settle)
        self.after_change: Callable[[str], None] | None = None

    # -- lookup ----------------------------------------------------------------------------------
    def get(self, name: str, version: str | int | None = None) -> ModelEntry:
        """The entry that serves ``name`` (highest version unless one is named); must be ready."""
        entry = self.find(name, version)
        if entry.state != "ready":
            why = f": {entry.reason}" if entry.reason else ""
            raise ModelNotReadyError(f"model {name!r} version {entry.version} is {entry.state}{why}")
        return entry

    def find(self, name: str, version: str | int | None = None) -> ModelEntry:
        versions = self._models.get(name)
        if not versions:
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFoundError(f"model {name!r} is not served (models: {known})")
        if version in (None, ""):
            return versions[max(versions)]
        try:
            return versions[int(version)]
        except (ValueError, KeyError):
            have = ", ".join(str(v) for v in sorted(versions))
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r} (versions: {have})"
            ) from None

    def stats_for(self, name: str) -> ModelStatistics | None:
        """Statistics of the default version, or None for a name the server does not hold."""
        versions = self._models.get(name)
        return versions[max(versions)].stats if versions else None

    def entries(self) -> list[ModelEntry]:
        return [e for versions in self._models.values() for e in versions.values()]

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    @property
    def ready(self) -> bool:
        """Every model loaded and ready: a broken model keeps the server unready (readiness tells the
        truth: a replica missing a model must not get traffic for it) unless
        ``ready_with_failed_models``; an empty store is never ready."""
        entries = self.entries()
        tolerated = ("ready", "failed") if self.settings.ready_with_failed_models else ("ready",)
        fine = all(e.state in tolerated for e in entries) and any(e.ready for e in entries)
        return self.loading_done and fine

    # -- store -----------------------------------------------------------------------------------
    @property
    def stores(self) -> list[Path]:
        return [self.settings.model_store, *self.settings.extra_model_stores]

    def _listing(self) -> dict[str, tuple[Path, list[int]]]:
        """Name -> its directory in the first store that holds it, and the versions there."""
        found: dict[str, tuple[Path, list[int]]] = {}
        for store in self.stores:
            for name, versions in self._store_models(store).items():
                found.setdefault(name, (store / name, versions))
        return found

    def _store_models(self, store: Path) -> dict[str, list[int]]:
        if self.remote is not None and store == self.remote.local:
            return self.remote.versions()  # as last listed: the copies are made as versions load
        if not store.is_dir():
            return {}
        return {
            d.name: sorted(
                int(v.name) for v in d.iterdir() if v.name.isdigit() and (v / "model.json").is_file()
            )
            for d in sorted(p for p in store.iterdir() if p.is_dir() and MODEL_NAME.match(p.name))
        }

    def scan(self) -> dict[str, list[int]]:
        wanted = self.settings.load_models
        return {n: v for n, (_, v) in self._listing().items() if v and (wanted is None or n in wanted)}

    def version_dir(self, name: str, version: int) -> Path:
        model_dir = self._listing().get(name, (self.settings.model_store / name, []))[0]
        return model_dir / str(version)

    async def _refresh_remote(self) -> None:
        """List the store in object storage again (new uploads show up); RemoteStoreError."""
        if self.remote is not None:
            await asyncio.to_thread(self.remote.refresh)

    async def load_store(self) -> None:
        """Load every store model, two at a time (the machines have two cores)."""
        limit = asyncio.Semaphore(2)
        await self._refresh_remote()

        async def one(name: str, version: int) -> None:
            async with limit:
                await self._load_version(name, version)

        plan = [(n, v) for n, versions in self.scan().items() for v in versions]
        for name, version in plan:
            self._models.setdefault(name, {})[version] = ModelEntry(name, version)
        await asyncio.gather(*(one(n, v) for n, v in plan))
        self.loading_done = True
        self._changed("the start-up load")

    async def add_handler(self, handler: Handler, version: int = 1, engine: Any = None) -> ModelEntry:
        """Serve an already-built handler (tests, embedding the server in a program);
        ``engine`` replaces the generation engine a text-generation handler would get."""
        entry = ModelEntry(handler.spec.name, version)
        self._models.setdefault(entry.name, {})[version] = entry
        await self._activate(entry, handler, engine)
        return entry

    async def _load_version(self, name: str, version: int) -> None:
        entry = self._models[name][version]
        version_dir = self.version_dir(name, version)
        t0 = time.perf_counter()
        try:
            if self.remote is not None and version_dir.parent.parent == self.remote.local:
                version_dir = await asyncio.to_thread(self.remote.fetch, name, version)
            # placed here on the event loop, not in the worker thread: parallel loads deal the GPUs
            # out in the store's order, with no race on the round-robin turn
            device = self._device_for(name, self.settings.override(name).device)
            handler = await asyncio.to_thread(self._build_handler, name, version_dir, device)
            entry.load_seconds = time.perf_counter() - t0
            await self._activate(entry, handler)
        except Exception as exc:  # a broken model is reported, the others serve
            if isinstance(exc, RemoteStoreError):  # one line says it all: no traceback
                log.error("model %s version %s failed to load: %s", name, version, exc)
            else:
                log.exception("model %s version %s failed to load", name, version)
            entry.state, entry.reason = "failed", f"{type(exc).__name__}: {exc}"
            self.metrics.model_ready.labels(name, str(version)).set(0)
            return
        self.metrics.model_load_seconds.labels(name, str(version)).set(entry.load_seconds)
        log.info("model %s version %s ready in %.2f s on %s", name, version, entry.load_seconds, device)

    def _build_handler(self, name: str, version_dir: Path, device: str) -> Handler:
        from deepserve.handlers import load_handler

        override = self.settings.override(name)
        handler: Handler = load_handler(
            version_dir,
            device=device,
            precision=override.precision,
            runtime=override.runtime,
            threads=self.settings.threads,
            spinning=self.settings.ort_spinning,
            trt_cache_dir=self.settings.trt_cache_dir,
        )
        return handler

    def _device_for(self, name: str, pinned: str | None) -> str:
        if self.placer is None:
            devices = parse_devices(self.settings.devices)
            self.placer = DevicePlacer(devices, self.settings.resolved_device())
        return self.placer.place(name, pinned)

    async def _activate(self, entry: ModelEntry, handler: Handler, engine: Any = None) -> None:
        s, override = self.settings, self.settings.override(entry.name)
        # the operator's per-model override, then the model's own wish (a Triton config's
        # dynamic_batching), then the server-wide setting
        own = handler.spec.batching
        delay_ms = override.max_queue_delay_ms
        if delay_ms is None and own is not None:
            delay_ms = own.max_queue_delay_ms
        delay_ms = s.max_queue_delay_ms if delay_ms is None else delay_ms
        preferred = own.preferred_batch_sizes if own is not None and own.preferred_batch_sizes else None
        rows = min(override.max_batch_size or s.max_batch_size, handler.max_batch_size or 1)
        if handler.max_batch_size == 0:
            log.info("model %s has no batch axis: each request runs alone (batching off)", entry.name)
        entry.handler = handler
        entry.batcher = DynamicBatcher(
            handler.predict_batch,
            model=entry.name,
            max_batch_size=max(1, rows),
            max_delay=delay_ms / 1000.0,
            preferred_sizes=preferred or s.preferred_batch_sizes,
            max_queue=override.max_queue_size or s.max_queue_size,
            max_tokens=s.max_batch_tokens,
            item_rows=handler.item_rows,
            item_cost=handler.item_cost,
            default_timeout=s.request_timeout_s,
            # user code (a handler the user brings) may block: it always runs in the worker thread,
            # where a deadline still answers its callers
            inline_below=s.inline_compute_ms / 1000.0 if handler.spec.handler is None else 0.0,
            metrics=self.metrics,
            stats=entry.stats,
        )  # fmt: skip
        await entry.batcher.start()
        if engine is not None:
            entry.engine = engine
            await engine.start()
        elif handler.spec.task == "text-generation":
            entry.engine = await self._start_engine(entry, handler)
        entry.state, entry.reason = "ready", ""
        self.metrics.model_ready.labels(entry.name, str(entry.version)).set(1)
        # what the session really got (TensorRT, CUDA or CPU), and on which device it was placed
        self.metrics.model_provider.labels(entry.name, str(entry.version), *_placement(handler)).set(1)
        # expose the autoscaler's input at 0 before the first request, so the HPA has a value
        self.metrics.inflight_child(entry.name)

    async def _start_engine(self, entry: ModelEntry, handler: Handler) -> Any:
        from deepserve.service.engine import GenerationEngine

        engine = GenerationEngine(
            handler,  # type: ignore[arg-type]  # task "text-generation" => TextGenerationHandler
            self.metrics,
            entry.name,
            max_running=self.settings.max_running_sequences,
            max_waiting=self.settings.max_waiting_sequences,
            prefill_chunk=self.settings.prefill_chunk_tokens,
        )
        await engine.start()
        return engine

    # -- run-time management -------------------------------------------------------------------
    async def load(self, name: str) -> list[ModelEntry]:
        check_model_name(name)
        async with self._lock:
            try:
                await self._refresh_remote()
            except RemoteStoreError as exc:
                raise ModelNotReadyError(f"model {name!r} cannot be loaded: {exc}") from None
            versions = self.scan().get(name)
            if not versions:
                stores = ", ".join(str(p) for p in self.stores)
                raise ModelNotFoundError(f"model {name!r} is not in the model store ({stores})")
            if name in self._models:
                await self._stop_model(name)
            self._models[name] = {v: ModelEntry(name, v) for v in versions}
            for version in versions:
                await self._load_version(name, version)
            self._changed(f"loading {name}")
            return list(self._models[name].values())

    async def unload(self, name: str) -> None:
        check_model_name(name)
        async with self._lock:
            if name not in self._models:
                raise ModelNotFoundError(f"model {name!r} is not loaded")
            await self._stop_model(name)
            self._changed(f"unloading {name}")

    def _changed(self, what: str) -> None:
        if self.after_change is not None:
            self.after_change(what)

    async def _stop_model(self, name: str) -> None:
        entries = list(self._models.get(name, {}).values())
        for entry in entries:
            entry.state = "unloading"
        await asyncio.gather(*(self._stop_entry(e, self.settings.drain_timeout_s) for e in entries))
        self._models.pop(name, None)
        for entry in entries:  # unloaded on purpose: no series left at 0 to fire the not-ready alert
            with contextlib.suppress(KeyError):
                self.metrics.model_ready.remove(entry.name, str(entry.version))
            with contextlib.suppress(KeyError):
                self.metrics.model_provider.remove(entry.name, str(entry.version), *_placement(entry.handler))

    async def _stop_entry(self, entry: ModelEntry, timeout: float) -> None:
        deadline = time.monotonic() + timeout  # one for the model: its engine and batcher share it
        if entry.engine is not None:
            await entry.engine.stop(drain=True, timeout=timeout)
        if entry.batcher is not None:
            await entry.batcher.stop(drain=True, timeout=max(0.0, deadline - time.monotonic()))
        self.metrics.model_ready.labels(entry.name, str(entry.version)).set(0)

    async def stop(self, timeout: float) -> None:
        """Drain every model (shutdown): queued work finishes within ``timeout``."""
        for entry in self.entries():
            entry.state = "unloading"
        await asyncio.gather(*(self._stop_entry(e, timeout) for e in self.entries()))

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        rows = [
            {"name": e.name, "version": str(e.version), "state": TRITON_STATE[e.state], "reason": e.reason}
            for e in self.entries()
        ]
        loaded = set(self._models)
        for name, versions in self.scan().items():
            if name not in loaded:
                rows += [{"name": name, "version": str(v), "state": "UNAVAILABLE", "reason": "unloaded"}
                         for v in versions]  # fmt: skip
        rows.sort(key=lambda r: (r["name"], int(r["version"])))
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows
