"""The variant files of one version: how each is written and how parity runs it.

Order matters: the fp16 and int8 ONNX files are converted from ``model.onnx``. Each step returns
a runner taking and returning named numpy arrays, with the fp32 graph's signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepserve.export.onnx_graph import ort_session, write_onnx
from deepserve.export.parity import Runner, ort_runner, torch_runner
from deepserve.export.plan import GraphPlan
from deepserve.export.precision import CastIO, write_fp16_onnx, write_int8_onnx
from deepserve.export.pt2 import cpu_has_bf16, load_pt2, write_pt2
from deepserve.export.torchscript import load_torchscript, write_torchscript
from deepserve.store import Format, Precision


@dataclass(frozen=True)
class Step:
    file: str
    format: Format
    precision: Precision
    write: Callable[[GraphPlan, Path], None]
    load: Callable[[GraphPlan, Path], Runner]
    slow: bool = False  # skipped by quick store builds (recorded as not built)


def dynamic_shapes(module: torch.nn.Module, plan: GraphPlan) -> Any:
    """``plan.dynamic`` (dims by input name) in the form torch.export matches against ``module``'s
    signature: by parameter name, or positionally under the name of a ``*args`` forward (CastIO;
    the GPT step, whose per-layer cache inputs are one ``*inputs``)."""
    params = inspect.signature(module.forward).parameters.values()
    varargs = next((p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    if varargs is None:
        return plan.dynamic
    return {varargs: tuple(plan.dynamic[n] for n in plan.input_names)}


def _onnx(plan: GraphPlan, path: Path) -> None:
    write_onnx(
        plan.module,
        plan.example,
        path,
        input_names=plan.input_names,
        output_names=plan.output_names,
        dynamic_shapes=dynamic_shapes(plan.module, plan),
    )


def _load_onnx(fp16: bool) -> Callable[[GraphPlan, Path], Runner]:
    return lambda plan, path: ort_runner(ort_session(path, fp16=fp16))


def _torchscript(dtype: torch.dtype | None) -> Callable[[GraphPlan, Path], None]:
    def write(plan: GraphPlan, path: Path) -> None:
        module = plan.module if dtype is None else CastIO(plan.module, dtype)
        write_torchscript(module, plan.example, path)

    return write


def _pt2(dtype: torch.dtype | None) -> Callable[[GraphPlan, Path], None]:
    def write(plan: GraphPlan, path: Path) -> None:
        module = plan.module if dtype is None else CastIO(plan.module, dtype)
        write_pt2(module, plan.example, dynamic_shapes(module, plan), path)

    return write


def _load_torch(loader: Callable[[Path], torch.nn.Module]) -> Callable[[GraphPlan, Path], Runner]:
    return lambda plan, path: torch_runner(loader(path), plan.input_names, plan.output_names)


def steps(plan: GraphPlan) -> list[Step]:
    out = [
        Step("model.onnx", "onnx", "fp32", _onnx, _load_onnx(False)),
        Step("model.fp16.onnx", "onnx", "fp16", lambda p, f: _fp16(f), _load_onnx(True)),
        Step("model.pt", "torchscript", "fp32", _torchscript(None), _load_torch(load_torchscript)),
        Step(
            "model.fp16.pt",
            "torchscript",
            "fp16",
            _torchscript(torch.float16),
            _load_torch(load_torchscript),
            slow=True,
        ),
        Step("model.pt2", "pt2", "fp32", _pt2(None), _load_torch(load_pt2)),
    ]
    if cpu_has_bf16():
        out.append(
            Step("model.bf16.pt2", "pt2", "bf16", _pt2(torch.bfloat16), _load_torch(load_pt2), slow=True)
        )
    if plan.int8:
        out.insert(2, Step("model.int8.onnx", "onnx", "int8", lambda p, f: _int8(f), _load_onnx(False)))
    return out


def _fp16(path: Path) -> None:
    write_fp16_onnx(path.with_name("model.onnx"), path)


def _int8(path: Path) -> None:
    write_int8_onnx(path.with_name("model.onnx"), path)
