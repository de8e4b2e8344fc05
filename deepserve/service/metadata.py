"""What the server tells about itself and its models: KServe v2 metadata, Triton's model config
and statistics. Plain functions over the registry, shared by the HTTP routes and the gRPC servicer.
"""

from __future__ import annotations

from typing import Any

from deepserve import __version__
from deepserve.service.registry import ModelEntry, Registry

SERVER_NAME = "deepserve"
SERVER_VERSION = __version__
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "statistics", "parameters"]
_PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch", "pt2": "pytorch_torch_export"}


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


def platform(entry: ModelEntry) -> str:
    variant = getattr(entry.handler, "variant", None)
    return _PLATFORMS.get(getattr(variant, "format", ""), "python")


def model_metadata(registry: Registry, name: str, version: str | None = None) -> dict[str, Any]:
    entry = registry.get(name, version)
    handler = entry.handler
    assert handler is not None
    return {
        "name": name,
        "versions": [str(v) for v in registry.versions(name)],
        "platform": platform(entry),
        # KServe v2 tensor metadata is name, datatype, shape: gRPC's TensorMetadata has no
        # ``optional`` field (tritonclient would fail to parse it), so that lives in the config only
        "inputs": [t.model_dump(exclude={"optional"}) for t in handler.inputs],
        "outputs": [t.model_dump(exclude={"optional"}) for t in handler.outputs],
    }


def model_ready(registry: Registry, name: str, version: str | None = None) -> bool:
    return registry.find(name, version).ready


def model_config(registry: Registry, name: str, version: str | None = None) -> dict[str, Any]:
    """Triton's ModelConfig as JSON (what ``/v2/models/{m}/config`` serves): ``dims`` leave out the batch
    dimension, as in Triton when ``max_batch_size`` > 0 (a model without a batch axis says 0 and
    gives whole shapes); an input a request may leave out says ``optional: true`` (perf_analyzer
    then needs no data for it)."""
    entry = registry.get(name, version)
    assert entry.handler is not None and entry.batcher is not None
    batched = entry.handler.max_batch_size > 0
    skip = 1 if batched else 0

    def tensor(t: Any) -> dict[str, Any]:
        datatype = "TYPE_STRING" if t.datatype == "BYTES" else f"TYPE_{t.datatype}"
        return {"name": t.name, "data_type": datatype, "dims": list(t.shape[skip:])}

    def model_input(t: Any) -> dict[str, Any]:
        return {**tensor(t), "optional": True} if t.optional else tensor(t)  # ModelOutput has no such field

    return {
        "name": name,
        "platform": platform(entry),
        "backend": "deepserve",
        "version_policy": {"latest": {"num_versions": len(registry.versions(name))}},
        "max_batch_size": entry.batcher.max_batch_size if batched else 0,
        "input": [model_input(t) for t in entry.handler.inputs],
        "output": [tensor(t) for t in entry.handler.outputs],
        "dynamic_batching": {
            "preferred_batch_size": entry.batcher.preferred_sizes,
            "max_queue_delay_microseconds": int(entry.batcher.max_delay * 1e6),
        },
        "model_transaction_policy": {"decoupled": False},
        "parameters": {"task": {"string_value": entry.handler.spec.task}},
    }


def statistics(registry: Registry, name: str | None = None, version: str | None = None) -> dict[str, Any]:
    if name is None:
        entries = [e for e in registry.entries() if e.ready]
    elif version in (None, ""):
        entries = [registry.find(name, v) for v in registry.versions(name)] or [registry.find(name)]
    else:
        entries = [registry.find(name, version)]
    return {"model_stats": [e.stats.as_json() for e in entries]}
