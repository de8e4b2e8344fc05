"""Image generation (VAE decoder, DCGAN generator): latents -> PNG files.

KServe v2 serves the graph's ``images`` FP32 [-1, C, H, W] in [0, 1] and a derived ``png``
BYTES [-1] (one PNG file per row). TorchServe-style answer: ``{"images": [base64 PNG, ...]}``.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from deepserve.handlers.base import Tensors
from deepserve.handlers.graph import GraphHandler
from deepserve.handlers.image import encode_png
from deepserve.store import TensorSpec

PNG_OUTPUT = TensorSpec(name="png", datatype="BYTES", shape=[-1])


class ImageGenerationHandler(GraphHandler):
    @property
    def extra_outputs(self) -> list[TensorSpec]:
        return [PNG_OUTPUT]

    def derive(self, outputs: Tensors) -> Tensors:
        images = outputs[self.spec.outputs[0].name]  # (n, C, H, W)
        files = np.empty(len(images), dtype=object)
        files[:] = [encode_png(img) for img in images]
        return {"png": files}

    def answer(self, outputs: Tensors, parameters: dict[str, Any]) -> Any:
        return {"images": [base64.b64encode(f).decode("ascii") for f in outputs["png"]]}
