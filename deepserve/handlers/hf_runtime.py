"""Format "transformers": a Hugging Face folder run by transformers itself (``import --runtime torch``).

The folder is loaded and wrapped by the same modules the ONNX export traces
(``deepserve.imports.hf_modules``): classification logits, pooled sentence embeddings, or the
causal LM's cached step with the stacked KV cache. Inputs and outputs therefore carry the names an
exported graph would have, and the task handlers (and the generation engine) serve either file.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from deepserve.handlers.base import ModelLoadError
from deepserve.handlers.torch_runtime import TorchRuntime
from deepserve.store import ModelSpec, Variant


def load_hf_runtime(
    path: Path, variant: Variant, spec: ModelSpec, *, device: str, threads: int | None
) -> TorchRuntime:
    """``path``: the HF folder of the version (config.json + weights); its model in float32 on ``device``."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    # Imported by name: the wrappers live with the importer (they are what it exports to ONNX), outside
    # the handlers' strict type check, and import torch and transformers.
    modules = importlib.import_module("deepserve.imports.hf_modules")
    try:
        module = modules.load_module(path, spec.task).to(device)
    except (modules.FolderError, OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"transformers cannot load {path} as a {spec.task} model: {exc}") from exc
    return TorchRuntime(module, spec, kind="transformers", file=path.name, precision=variant.precision,
                        device=device, float_dtype=torch.float32)  # fmt: skip
