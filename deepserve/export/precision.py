"""Lower-precision variants: fp16 / int8 ONNX conversions and fp16 / bf16 torch wrappers.

Every variant keeps the fp32 graph's signature (FP32 in, FP32 out; integer inputs untouched), so
the server can swap files without changing what it sends.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from pathlib import Path

import onnx
import torch
from torch import nn

from deepserve.export.onnx_graph import check_onnx, require_onnxruntime


class CastIO(nn.Module):
    """Run ``inner`` in ``dtype`` but take and return float32 tensors (integer tensors pass through)."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = copy.deepcopy(inner).to(dtype).eval()
        self.dtype = dtype

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        cast = [a.to(self.dtype) if a.is_floating_point() else a for a in args]
        out = self.inner(*cast)
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return out.float()


def write_fp16_onnx(src: Path, dst: Path) -> Path:
    """onnxruntime's own converter (onnxconverter-common 1.16 breaks on ``mask.to(x.dtype)``)."""
    require_onnxruntime()
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with contextlib.redirect_stdout(io.StringIO()):
        half = convert_float_to_float16(model, keep_io_types=True)
    _topological_sort(half.graph)  # the converter appends its input Casts at the end of the node list
    onnx.save(half, str(dst))
    check_onnx(dst, fp16=True)
    return dst


def _names_used(node: onnx.NodeProto) -> set[str]:
    """A node's inputs, including values its subgraphs (If / Loop / Scan bodies) read from outside."""
    used = {n for n in node.input if n}
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for inner in g.node:
                used |= _names_used(inner)
    return used


def _topological_sort(graph: onnx.GraphProto) -> None:
    produced_by = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    deps = [{produced_by[n] for n in _names_used(node) if n in produced_by} for node in graph.node]
    order: list[int] = []
    done: set[int] = set()
    while len(order) < len(graph.node):
        ready = [i for i in range(len(graph.node)) if i not in done and deps[i] <= done]
        if not ready:
            raise ValueError("ONNX graph has a cycle; cannot sort it")
        order += ready
        done |= set(ready)
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def write_int8_onnx(src: Path, dst: Path) -> Path:
    """Dynamic int8 with per-channel weights (per-tensor costs MiniLM cosine 0.92 vs 0.99)."""
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(
        logging.ERROR
    )  # quantize_dynamic logs a "consider pre-processing" warning on the root logger
    try:
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    check_onnx(dst, fp16=False)
    return dst
