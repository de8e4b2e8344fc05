"""Task "raw": an imported graph's tensors in, its tensors out, nothing of ours in between.

KServe v2 serves exactly the graph's signature (model.json ``inputs`` / ``outputs``). TorchServe-
style JSON bodies are decoded by ``TensorCodec`` (``{"input": nested list, ...}``, or the nested
list alone for a one-input graph); the answer is ``{"output": nested list, ...}`` with every
output, batch dimension included as the graph gives it.
"""

from __future__ import annotations

from typing import Any

from deepserve.handlers.base import Tensors
from deepserve.handlers.codec import InputCodec
from deepserve.handlers.graph import GraphHandler
from deepserve.handlers.tensor_codec import TensorCodec


class RawHandler(GraphHandler):
    def make_codec(self) -> InputCodec:
        # always the graph's tensors: an input named "features" or "latent" means nothing here
        return TensorCodec(list(self.spec.inputs), batched=self.spec.batched)

    def answer(self, outputs: Tensors, parameters: dict[str, Any]) -> Any:
        return {t.name: outputs[t.name].tolist() for t in self.outputs}
