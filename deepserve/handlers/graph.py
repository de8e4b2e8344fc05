"""The part every one-pass handler shares: open the runtime, decode inputs, batch, run, split.

Subclasses (classification, regression, embedding, image generation) add only what is theirs:
``derive`` (extra outputs computed once per batch, e.g. probabilities or PNG files),
``transform`` (per-request options on outputs, e.g. L2 normalisation) and ``answer`` (the
JSON-able TorchServe / OpenAI-style result). ``postprocess`` of a KServe v2 ``TensorRequest``
returns the served output tensors (restricted to ``request.outputs`` when given).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deepserve.handlers import runtime as runtimes
from deepserve.handlers.base import (
    BatchSizeMismatchError,
    Handler,
    InvalidInputError,
    ModelLoadError,
    Request,
    TensorRequest,
    Tensors,
)
from deepserve.handlers.batch import concat_items, split_rows
from deepserve.handlers.codec import InputCodec, codec_for
from deepserve.handlers.runtime import Runtime, open_eager, open_runtime, select_variant
from deepserve.store import ModelSpec, TensorSpec

log = logging.getLogger(__name__)


class GraphHandler(Handler):
    def __init__(
        self,
        spec: ModelSpec,
        version_dir: Path,
        *,
        device: str = "cpu",
        precision: str | None = None,
        runtime: str | None = None,
        threads: int | None = None,
        spinning: bool = True,
        trt_cache_dir: Path | None = None,
    ) -> None:
        super().__init__(spec)
        self.trt_cache_dir = trt_cache_dir  # TensorRT's engine cache (GPUs only)
        self.version_dir = version_dir
        self.device, self.precision, self.runtime_name, self.threads = device, precision, runtime, threads
        self.spinning = spinning
        self.codec = self.make_codec()
        self._runtime: Runtime | None = None
        self._served_inputs: list[TensorSpec] | None = None
        self._served_outputs: list[TensorSpec] | None = None

    def make_codec(self) -> InputCodec:
        return codec_for(self.spec, self.version_dir)

    # -- served signature ---------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorSpec]:
        """The graph's inputs, then the codec's extra ones (``image`` / ``text`` / ``seed``, optional).

        Triton can only say "required" or "optional", not "one of": the graph's inputs stay
        required, so tools that fill every required input (perf_analyzer, tritonclient's
        generators) send the graph's form; a request may still send the extra input alone.
        """
        if self._served_inputs is None:
            optional = self.codec.optional_inputs  # e.g. attention_mask: all ones when left out
            graph = [t.model_copy(update={"optional": t.name in optional}) for t in self.spec.inputs]
            self._served_inputs = [*graph, *self.codec.extra_inputs]
        return self._served_inputs

    @property
    def optional_inputs(self) -> set[str]:
        """Served inputs a request may leave out (Triton model config ``optional: true``)."""
        return {t.name for t in self.inputs if t.optional}

    @property
    def outputs(self) -> list[TensorSpec]:
        if self._served_outputs is None:  # built once: select() runs on every KServe request
            self._served_outputs = [*self.spec.outputs, *self.extra_outputs]
        return self._served_outputs

    @property
    def extra_outputs(self) -> list[TensorSpec]:
        return []

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise ModelLoadError(f"{self.spec.name} v{self.spec.version} is not loaded; call load() first")
        return self._runtime

    # -- the four verbs --------------------------------------------------------------------------
    def load(self) -> None:
        if self._runtime is not None:
            return
        if self.runtime_name == "eager":
            self._runtime = open_eager(self.version_dir, device=self.device, precision=self.precision,
                                       threads=self.threads)  # fmt: skip
            return
        try:
            variant = select_variant(self.spec, device=self.device, precision=self.precision,
                                     runtime=self.runtime_name, version_dir=self.version_dir)  # fmt: skip
        except ModelLoadError as exc:
            self._runtime = self._eager_fallback(exc)
            return
        self._runtime = open_runtime(
            self.version_dir, variant, device=self.device, threads=self.threads, spinning=self.spinning,
            trt_cache_root=self.trt_cache_dir,
        )  # fmt: skip

    def _eager_fallback(self, exc: ModelLoadError) -> Runtime:
        """No variant can serve: rebuild from the source checkpoint, unless an override asked otherwise."""
        if not self.spec.rebuildable or self.runtime_name is not None or self.precision is not None:
            raise exc
        if not runtimes.torch_available():  # eager needs torch too: the variant says what to install
            raise exc
        log.warning("%s; falling back to eager from the source checkpoint", exc)
        try:
            return open_eager(self.version_dir, device=self.device, threads=self.threads)
        except ModelLoadError as eager_exc:
            raise ModelLoadError(f"{exc} The eager fallback failed too: {eager_exc}") from eager_exc

    def preprocess(self, request: Request) -> Tensors:
        if isinstance(request, TensorRequest):
            return self.codec.from_tensors(request.tensors)
        return self.codec.from_payload(request.body, request.parameters)

    def predict_batch(self, items: list[Tensors]) -> list[Tensors]:
        if not items:
            return []
        if not self.spec.batched:  # no batch axis: each item is the graph's whole input, run alone
            return [self.run_whole(item) for item in items]
        rows = [self.item_rows(item) for item in items]
        outputs = self.runtime.run(concat_items(items, self.codec.pad_values))
        outputs = {**outputs, **self.derive(outputs)}
        parts = split_rows(outputs, rows)
        if any(len(out) != n for part, n in zip(parts, rows, strict=True) for out in part.values()):
            raise BatchSizeMismatchError(f"{self.spec.name}: outputs do not match the {sum(rows)} input rows")
        return parts

    def run_whole(self, item: Tensors) -> Tensors:
        outputs = self.runtime.run(item)
        return {**outputs, **self.derive(outputs)}

    def postprocess(self, outputs: Tensors, request: Request) -> Any:
        outputs = self.transform(outputs, request.parameters)
        if isinstance(request, TensorRequest):
            return self.select(outputs, request.outputs)
        return self.answer(outputs, request.parameters)

    # -- hooks for the task handlers -------------------------------------------------------------
    def item_rows(self, item: Tensors) -> int:
        # Without a batch axis a request's tensors are one whole run, whatever their first dimension.
        return super().item_rows(item) if self.spec.batched else 1

    def item_cost(self, item: Tensors) -> int:
        ids = item.get("input_ids")
        if ids is None or ids.ndim < 2:
            return self.item_rows(item)
        return int(ids.shape[0] * ids.shape[1])

    def derive(self, outputs: Tensors) -> Tensors:
        return {}

    def transform(self, outputs: Tensors, parameters: dict[str, Any]) -> Tensors:
        return outputs

    def answer(self, outputs: Tensors, parameters: dict[str, Any]) -> Any:
        raise NotImplementedError

    def select(self, outputs: Tensors, names: list[str] | None) -> Tensors:
        if names is None:
            return {t.name: outputs[t.name] for t in self.outputs}
        served = [t.name for t in self.outputs]
        unknown = [n for n in names if n not in served]
        if unknown:
            raise InvalidInputError(f"unknown output(s) {unknown}; this model serves {served}")
        return {n: outputs[n] for n in names}
