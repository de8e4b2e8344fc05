"""The JSON TorchServe's management API answers with, from the registry's entries.

Shapes follow TorchServe's frontend (``DescribeModelResponse``, ``ListModelsResponse``) and the
examples of its docs/management_api.md. What differs, because deepserve is one process:

- a model runs one worker (its batcher's thread): ``minWorkers`` / ``maxWorkers`` are 1, and
  ``workers`` lists it while the model serves (none while it loads or after it failed);
- ``memoryUsage`` is 0 (memory is the process's, not a model's), ``pid`` is the server's;
- a worker's ``gpu`` / ``gpuUsage`` say the GPU the model was placed on (``gpuId::1``, TorchServe's
  prefix of that string, without its NVML figures: those are the ``deepserve_gpu_*`` gauges);
- ``modelVersion`` is the store's integer version ("1", "2"), not the archive's manifest version;
- ``batchSize`` / ``maxBatchDelay`` are what the batcher runs with (the server's
  ``DEEPSERVE_MAX_BATCH_SIZE`` caps a model's own batch size).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from deepserve.handlers.runtime import device_index, is_cuda
from deepserve.service.dataplane import DataPlane
from deepserve.service.errors import ModelNotFoundError
from deepserve.service.registry import ModelEntry
from deepserve.store import ModelSpec

LIST_LIMIT = 100  # TorchServe's default and largest page


class ModelVersionNotFoundError(ModelNotFoundError):
    """TorchServe's ModelVersionNotFoundException (404): the model is there, not this version."""


def entries_for(plane: DataPlane, name: str, version: str | None) -> list[ModelEntry]:
    """The entries ``/models/{name}[/{version}]`` means: the default one, the named one, or "all"."""
    registry = plane.registry
    versions = registry.versions(name)
    if not versions:
        known = ", ".join(registry.names()) or "none"
        raise ModelNotFoundError(f"Model not found: {name} (registered: {known})")
    if version == "all":
        return [registry.find(name, v) for v in versions]
    if version is None:
        return [registry.find(name)]
    if not version.isdigit() or int(version) not in versions:
        have = ", ".join(str(v) for v in versions)
        raise ModelVersionNotFoundError(
            f"Model version: {version} does not exist for model: {name} (versions: {have}; deepserve "
            "versions are the store's integers)"
        )
    return [registry.find(name, version)]


def describe(plane: DataPlane, entry: ModelEntry, started: float, at_startup: bool) -> dict[str, Any]:
    spec = spec_of(plane, entry)
    settings, batcher = plane.settings, entry.batcher
    if batcher is not None:
        batch, delay_ms, capacity = batcher.max_batch_size, batcher.max_delay * 1000, batcher.max_queue
    else:  # not running (failed): what the model asks for
        batch = max(1, min(spec.max_batch_size if spec else 1, settings.max_batch_size))
        delay_ms, capacity = settings.max_queue_delay_ms, settings.max_queue_size
    depth = plane.metrics.registry.get_sample_value("deepserve_queue_depth", {"model": entry.name})
    pending = int(depth or 0)
    return {
        "modelName": entry.name,
        "modelVersion": str(entry.version),
        "modelUrl": model_url(settings.model_store, entry.name, spec),
        "runtime": "python",
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": batch,
        "maxBatchDelay": round(delay_ms),
        "loadedAtStartup": at_startup,
        "workers": [_worker(plane, entry, started)] if entry.state in ("ready", "unloading") else [],
        "jobQueueStatus": {"remainingCapacity": max(0, capacity - pending), "pendingRequests": pending},
    }


def _worker(plane: DataPlane, entry: ModelEntry, started: float) -> dict[str, Any]:
    gpu = _gpu_id(getattr(entry.handler, "device", None) or plane.settings.resolved_device())
    return {
        "id": f"{entry.name}-{entry.version}",
        "startTime": _java_date(started),
        "status": "READY" if entry.state == "ready" else "UNLOADING",
        "memoryUsage": 0,
        "pid": os.getpid(),
        "gpu": gpu is not None,
        "gpuUsage": "N/A" if gpu is None else f"gpuId::{gpu}",
    }


def _gpu_id(device: object) -> int | None:
    """The GPU of a handler's device (cuda:1 -> 1, plain cuda -> 0); None on the CPU. The handler's,
    not the server's: DEEPSERVE_DEVICES puts models on different GPUs."""
    text = str(device)
    if not is_cuda(text):
        return None
    try:
        return device_index(text)
    except ValueError:  # a user handler's own device string: some GPU, which one it does not say
        return 0


def _java_date(at: float) -> str:
    """TorchServe's date format (GSON ``yyyy-MM-dd'T'HH:mm:ss.SSS'Z'``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def spec_of(plane: DataPlane, entry: ModelEntry) -> ModelSpec | None:
    if entry.handler is not None:
        return entry.handler.spec
    try:
        return ModelSpec.read(plane.registry.version_dir(entry.name, entry.version))
    except (OSError, ValueError):  # a version that failed to load may have a broken model.json
        return None


def model_url(store: Path, name: str, spec: ModelSpec | None) -> str:
    """What ``url=`` registers it again: its source when that is a file of the store (the .mar), else
    the model's own store directory."""
    if spec is not None and spec.imported_from and spec.source:
        source = Path(spec.source)
        root = store.resolve()
        if source.is_absolute() and source.is_relative_to(root):
            return source.relative_to(root).as_posix()
    return name


def list_models(plane: DataPlane, limit: int, page_token: int) -> dict[str, Any]:
    """``GET /models``: TorchServe's ``ApiUtils.getModelList``, its paging rules included (a full last
    page still carries a ``nextPageToken``, which then gives an empty page)."""
    limit = LIST_LIMIT if limit > LIST_LIMIT or limit < 0 else limit
    page_token = max(0, page_token)
    names = plane.model_names()
    answer: dict[str, Any] = {}
    last = page_token + limit
    if last > len(names):
        last = len(names)
    else:
        answer["nextPageToken"] = str(last)
    models = []
    for name in names[page_token:last]:
        entry = plane.registry.find(name)
        models.append({"modelName": name, "modelUrl": model_url(plane.settings.model_store, name,
                                                                 spec_of(plane, entry))})  # fmt: skip
    answer["models"] = models
    return answer
