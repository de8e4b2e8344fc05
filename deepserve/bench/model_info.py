"""Find out what to send: the model's model.json in a store, or the server's metadata.

model.json (deepserve.store.ModelSpec) is preferred: it names the task, the tokenizer and the graph
files the in-process ceiling runs. Without a store the served metadata (GET /v2/models/{m}) gives
the input signature, and the task is inferred from the input names (model_store/README.md, graph
conventions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepserve.bench.inputs import InputSpec, ModelInfo
from deepserve.bench.server_stats import model_config, model_metadata


class ModelNotFoundBenchError(LookupError):
    """The model is neither in the given store nor known to the server."""


def version_dir(store: Path, name: str) -> Path:
    """The default (highest integer) version directory of ``name`` in ``store``."""
    versions = [p for p in (store / name).glob("*") if p.name.isdigit() and (p / "model.json").is_file()]
    if not versions:
        raise ModelNotFoundBenchError(
            f"no version of model {name!r} with a model.json under {store / name}; "
            f"export it first (deepserve export ...) or pass the right --store"
        )
    return max(versions, key=lambda p: int(p.name))


def from_store(store: Path, name: str) -> ModelInfo:
    from deepserve.store import ModelSpec

    vdir = version_dir(store, name)
    spec = ModelSpec.read(vdir)
    inputs = [InputSpec(t.name, t.datatype, list(t.shape)) for t in spec.inputs]
    if spec.task == "text-generation":
        inputs = [InputSpec("text_input", "BYTES", [-1])]
    return ModelInfo(
        name=name,
        task=spec.task,
        inputs=inputs,
        max_batch_size=spec.max_batch_size,
        preprocessing=spec.preprocessing.model_dump() if spec.preprocessing else {},
        generation=spec.generation.model_dump() if spec.generation else {},
        version_dir=vdir,
    )


def _task_from_inputs(names: set[str]) -> str:
    if "text_input" in names:
        return "text-generation"
    if "latent" in names:
        return "image-generation"
    if "features" in names:
        return "classification"
    return "classification" if "pixels" in names else "embedding"


def from_server(url: str, name: str) -> ModelInfo:
    meta: dict[str, Any] | None = model_metadata(url, name)
    if meta is None:
        raise ModelNotFoundBenchError(
            f"{url} does not know model {name!r} (GET /v2/models/{name} failed); "
            f"check the name with GET {url}/v2/models or pass --store"
        )
    config = model_config(url, name)
    # An optional input is an alternative form (image / text / seed: sending it with the graph's
    # tensors is refused) or one the tokenizer builds anyway (attention_mask): send the graph's form.
    optional = {str(t.get("name")) for t in config.get("input", []) if t.get("optional")}
    skip = optional - {"attention_mask"}
    inputs = [
        InputSpec(t["name"], t["datatype"], [int(d) for d in t["shape"]])
        for t in meta.get("inputs", [])
        if t["name"] not in skip
    ]
    task = _task_from_inputs({i.name for i in inputs})
    return ModelInfo(name=name, task=task, inputs=inputs, max_batch_size=int(config.get("max_batch_size", 0)))


def resolve(name: str, *, store: Path | None, url: str | None) -> ModelInfo:
    if store is not None and (store / name).is_dir():
        return from_store(store, name)
    if url is None:
        raise ModelNotFoundBenchError(f"model {name!r} is not in store {store}; pass --store or --url")
    return from_server(url, name)
