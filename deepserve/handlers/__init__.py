"""Task logic between the service and the runtimes: ``load_handler`` picks the handler by task.

    handler = load_handler(Path("model_store/digits-cnn/1"))      # opened and ready
    item = handler.preprocess(PayloadRequest(png_bytes))
    [out] = handler.predict_batch([item])
    handler.postprocess(out, request)                             # {"7": 0.98, "1": 0.01, ...}

Served KServe v2 signature (``Handler.inputs`` / ``outputs``): the graph's own tensors plus

    task / input kind          extra input            extra output
    classification, image      image BYTES [-1, 1]    probabilities FP32 [-1, K]
    classification, tabular    -                      probabilities FP32 [-1, K]
    classification, text       text BYTES [-1, 1]     probabilities FP32 [-1, K]
    regression                 -                      -
    embedding, text / image    text / image BYTES     -
    embedding with clusters    text / image BYTES     cluster INT64 [-1, 1], cluster_distance FP32 [-1, 1]
    image-generation           seed INT64 [-1, 1]     png BYTES [-1]

A request sends either the graph's inputs or the one extra input, never both: the extra input is
``optional`` in the signature (Triton's model config ``optional: true``), so tools that fill every
required input (perf_analyzer) send the graph's tensors only. ``postprocess`` of a
``TensorRequest`` returns the served tensors (only ``request.outputs`` when given); of a
``PayloadRequest``, the JSON-able TorchServe/OpenAI-style answer documented in each task module.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from deepserve.handlers.base import Handler, ModelLoadError
from deepserve.store import ModelSpec

# task -> "module:Class", imported lazily (text generation is written and loaded separately).
HANDLERS = {
    "classification": "deepserve.handlers.classification:ClassificationHandler",
    "regression": "deepserve.handlers.regression:RegressionHandler",
    "embedding": "deepserve.handlers.embedding:EmbeddingHandler",
    "image-generation": "deepserve.handlers.image_generation:ImageGenerationHandler",
    "text-generation": "deepserve.handlers.generation:TextGenerationHandler",
    "raw": "deepserve.handlers.raw:RawHandler",
}
# model.json ``handler.kind`` -> the loader of user code (imports: your handler, a TorchServe archive).
USER_HANDLERS = {
    "python": "deepserve.handlers.custom:load_custom_handler",
    "torchserve": "deepserve.handlers.hosted_torchserve:load_torchserve_handler",
}


def read_spec(version_dir: Path) -> ModelSpec:
    path = version_dir / "model.json"
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing; {version_dir} is not a model-store version (deepserve export)"
        )
    try:
        return ModelSpec.read(version_dir)
    except (ValidationError, ValueError, OSError) as exc:
        raise ModelLoadError(f"{path} is corrupt or from another schema version: {exc}; re-export") from exc


def load_handler(
    version_dir: Path,
    *,
    device: str = "cpu",
    precision: str | None = None,
    runtime: str | None = None,
    threads: int | None = None,
    spinning: bool = True,
    load: bool = True,
    trt_cache_dir: Path | None = None,
) -> Handler:
    """The handler for the version in ``version_dir``, loaded unless ``load=False`` (then call ``load()``).

    ``threads``: cores this model's runtime may use (default: all this process may use; torch's
    process-wide count is changed only when given). ``spinning=False`` stops ONNX Runtime's idle
    threads from spinning, which frees the CPU for a co-located HTTP server at some latency cost.
    """
    from deepserve.handlers.graph import GraphHandler

    version_dir = Path(version_dir)
    spec = read_spec(version_dir)
    if spec.handler is not None:  # user code: it gets the device and loads itself
        module_name, function = USER_HANDLERS[spec.handler.kind].split(":")
        loader = getattr(importlib.import_module(module_name), function)
        user: Handler = loader(spec, version_dir, device=device, load=load)
        return user
    module_name, class_name = HANDLERS[spec.task].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    options: dict[str, Any] = {"device": device, "precision": precision, "runtime": runtime}
    options["threads"] = threads
    if issubclass(cls, GraphHandler) or spec.task == "text-generation":
        options["spinning"] = spinning
        options["trt_cache_dir"] = trt_cache_dir
    handler: Handler = cls(spec, version_dir, **options)
    if load:
        handler.load()
    return handler
