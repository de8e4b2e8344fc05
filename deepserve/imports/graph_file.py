"""``deepserve import model.onnx`` / ``model.pt2``: a graph file, served with the signature it declares.

    import_graph_file(Path("resnet.onnx"), ImportOptions(store=store, task="classification", labels=path))

The signature is read from the file itself: ONNX Runtime's view of an ONNX graph (loading it is
also the proof that ONNX Runtime can serve it), the program's own signature of a torch.export
file. Symbolic dimensions become -1. A graph whose every input and output starts with a dynamic
dimension has a batch axis and is batched (up to ``DEFAULT_MAX_BATCH_SIZE`` rows a run); any
other graph is served at its fixed shapes, one request a run (model.json ``max_batch_size`` 0).

TorchScript files record no input dtypes or shapes, so they are not guessed at: the error says
to save the model with torch.export or ONNX, or to describe it in a Triton config.pbtxt
(``platform: "pytorch_libtorch"``, see ``deepserve.imports.triton``).

``--task`` says what the first output is (classification: logits [-1, K], K = the ``--labels``;
regression: [-1] or [-1, T]; embedding: [-1, D]); the default, raw, serves the tensors as they
are. The file is copied (symlinked with ``opts.link``) into the version as ``model.onnx`` /
``model.pt2``, an ONNX file's external-data files with it. No parity check runs: the file is
its own reference.
"""

from __future__ import annotations

import importlib.util
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepserve.imports.base import (
    TASKS,
    ImportOptions,
    SourceError,
    place,
    read_labels,
    spec_fields,
    write_version,
)
from deepserve.store import Datatype, Format, ModelSpec, Precision, TensorSpec, Variant

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 64  # rows a batched run may take, as the zoo's exports write it
NO_PARITY = "imported file: served as given, nothing to compare it against"
ORT_HINT = "pip install 'deepserve[serve]'"
TORCH_HINT = "pip install 'deepserve[train]'"
# fp16 graphs segfault in this optimiser at session creation (onnxruntime#28392), as in serving.
FP16_DISABLED_OPTIMIZERS = ["NchwcTransformer"]

ORT_DATATYPES: dict[str, Datatype] = {
    "tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64", "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
}  # fmt: skip
# torch dtype -> (served datatype, precision): bf16 is fed as FP32 (numpy has no bf16; the runtime casts)
TORCH_DATATYPES: dict[str, tuple[Datatype, Precision]] = {
    "float32": ("FP32", "fp32"), "float16": ("FP16", "fp16"), "bfloat16": ("FP32", "bf16"),
    "float64": ("FP64", "fp32"), "int64": ("INT64", "fp32"), "int32": ("INT32", "fp32"),
    "int16": ("INT16", "fp32"), "int8": ("INT8", "fp32"), "uint8": ("UINT8", "fp32"),
    "bool": ("BOOL", "fp32"),
}  # fmt: skip
FLOATS = ("FP16", "FP32", "FP64", "BF16")


@dataclass(frozen=True)
class Signature:
    """A graph's tensors as it declares them: KServe datatypes, -1 for dynamic dimensions."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: Precision  # what the graph computes in (its floating inputs' type)
    # ONNX initializers a request may override: inputs with a default (Triton's ``optional`` inputs)
    defaults: frozenset[str] = frozenset()

    def fixed_first_dim(self) -> TensorSpec | None:
        """The first tensor whose first dimension is not dynamic (None: the graph has a batch axis)."""
        return next((t for t in [*self.inputs, *self.outputs] if not t.shape or t.shape[0] != -1), None)


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def served_outputs(outputs: list[TensorSpec], fmt: Format) -> list[TensorSpec]:
    """Declared outputs as the runtimes hand them out: ONNX Runtime serves fp16 as FP32, torch every float."""
    as_fp32 = {"FP16"} if fmt == "onnx" else set(FLOATS)
    return [t.model_copy(update={"datatype": "FP32"}) if t.datatype in as_fp32 else t for t in outputs]


# -- ONNX ------------------------------------------------------------------------------------------
def onnx_session(path: Path, shown: Path) -> Any:
    """An ONNX Runtime session on ``path`` (CPU, quiet); ``shown`` names the file in errors."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise SourceError(f"reading {shown.name} needs ONNX Runtime, which is not installed: {ORT_HINT}")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(
            str(path),
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=FP16_DISABLED_OPTIMIZERS,
        )
    except Exception as exc:  # ORT raises its own untyped errors for foreign or corrupt files
        raise SourceError(
            f"ONNX Runtime cannot load {shown}: {one_line(exc)}; check that it is a complete ONNX model "
            "(re-export it)"
        ) from exc


def _ort_tensor(arg: Any, shown: Path, role: str) -> TensorSpec:
    datatype = ORT_DATATYPES.get(arg.type)
    if datatype is None:
        raise SourceError(
            f"{shown.name}: {role} {arg.name!r} is {arg.type}; deepserve serves numeric and bool tensors "
            "only (re-export the graph without string, sequence or map values, e.g. skl2onnx zipmap=False)"
        )
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


def read_onnx_signature(path: Path, shown: Path | None = None) -> Signature:
    """The signature ONNX Runtime sees in ``path`` (a SourceError when it cannot load it)."""
    shown = shown or path
    session = onnx_session(path, shown)
    inputs = [_ort_tensor(arg, shown, "input") for arg in session.get_inputs()]
    outputs = [_ort_tensor(arg, shown, "output") for arg in session.get_outputs()]
    types = {t.datatype for t in inputs}
    defaults = frozenset(arg.name for arg in session.get_overridable_initializers())
    return Signature(inputs, outputs, "fp16" if "FP16" in types else "fp32", defaults)


def external_data(path: Path) -> list[str]:
    """Files (relative to the ONNX file) holding its external-data weights; [] without the onnx package."""
    if importlib.util.find_spec("onnx") is None:
        return []
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    return sorted({ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)})


def place_onnx(src: Path, dst: Path, *, link: bool) -> None:
    """``src`` at ``dst`` with the external-data files it names beside it, at the same relative paths."""
    place(src, dst, link=link)
    for relative in external_data(src):
        target = dst.parent / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        place(src.parent / relative, target, link=link)
    if importlib.util.find_spec("onnx") is None:  # external data cannot be listed: prove the copy loads
        onnx_session(dst, src)


# -- torch.export / TorchScript ------------------------------------------------------------------------
def require_torch(shown: Path) -> Any:
    if importlib.util.find_spec("torch") is None:
        raise SourceError(f"{shown.name} is a torch file; reading it needs torch: {TORCH_HINT}")
    import torch

    return torch


def _torch_tensor(value: Any, name: str, shown: Path, torch: Any) -> tuple[TensorSpec, Precision]:
    if not isinstance(value, torch.Tensor):
        raise SourceError(
            f"{shown.name}: {name!r} is not a tensor ({type(value).__name__}); export a "
            "program whose inputs and outputs are tensors"
        )
    found = TORCH_DATATYPES.get(str(value.dtype).removeprefix("torch."))
    if found is None:
        raise SourceError(
            f"{shown.name}: {name!r} is {value.dtype}; deepserve serves numeric and bool tensors"
        )
    datatype, precision = found
    shape = [d if isinstance(d, int) else -1 for d in value.shape]  # SymInt: a dynamic dimension
    return TensorSpec(name=name, datatype=datatype, shape=shape), precision


def _output_names(out_spec: Any, shown: Path) -> list[str]:
    """``output`` for one tensor, ``output_<i>`` for a tuple, the keys of a dict."""
    if out_spec.is_leaf():
        return ["output"]
    leaves = all(out_spec.child(i).is_leaf() for i in range(out_spec.num_children))
    if leaves and out_spec.type in (tuple, list):
        return [f"output_{i}" for i in range(out_spec.num_children)]
    if leaves and out_spec.type is dict:
        return [str(key) for key in out_spec.context]
    raise SourceError(
        f"{shown.name}: forward returns nested values; return a tensor, a tuple or a dict of tensors"
    )


def read_pt2_signature(path: Path) -> Signature:
    """Names, dtypes and dynamic dimensions from a torch.export program's own signature."""
    how = "save one with torch.export.save(torch.export.export(model, example_inputs), 'model.pt2')"
    if not zipfile.is_zipfile(path):
        raise SourceError(f"{path} is not a torch.export program (not a zip archive); {how}")
    torch = require_torch(path)
    export_log = logging.getLogger("torch.export")  # it logs a traceback before raising; ours is one line
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for a foreign or corrupt file
        raise SourceError(
            f"{path} is not a torch.export program torch can load ({one_line(exc)}); {how}"
        ) from exc
    finally:
        export_log.setLevel(level)
    args, kwargs = program.call_spec.in_spec.child(0), program.call_spec.in_spec.child(1)
    if kwargs.num_children or not all(args.child(i).is_leaf() for i in range(args.num_children)):
        raise SourceError(
            f"{path.name}: forward takes keyword or nested inputs; export it with one tensor "
            "per positional argument"
        )
    nodes = {n.name: n for n in program.graph.nodes}
    user_inputs = [
        _torch_tensor(nodes[n].meta.get("val"), n, path, torch) for n in program.graph_signature.user_inputs
    ]
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    values = {getattr(a, "name", None): a.meta.get("val") for a in output_node.args[0] if hasattr(a, "meta")}
    names = _output_names(program.call_spec.out_spec, path)
    outputs = [
        _torch_tensor(values.get(node), name, path, torch)[0]
        for name, node in zip(names, program.graph_signature.user_outputs, strict=True)
    ]
    precisions = {p for _, p in user_inputs}
    precision: Precision = next((p for p in ("fp16", "bf16") if p in precisions), "fp32")
    return Signature([s for s, _ in user_inputs], outputs, precision)


def torchscript_arguments(path: Path) -> list[str]:
    """The names of a TorchScript module's ``forward`` arguments (all its file records of its inputs)."""
    require_torch(path)
    import torch

    from deepserve.handlers.torch_runtime import quiet_jit

    try:
        with quiet_jit():
            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:  # torch raises many types for a foreign or corrupt file
        raise SourceError(
            f"torch cannot load {path} as TorchScript ({one_line(exc)}); re-save it with "
            "torch.jit.save, or export to ONNX"
        ) from exc
    return [arg.name for arg in module.forward.schema.arguments[1:]]  # [0] is self


def torchscript_refusal(path: Path) -> SourceError:
    """Why a ``.pt`` file is not imported on its own, and what to do instead."""
    how = (
        "save the model with torch.export (torch.export.save(torch.export.export(model, example), "
        "'model.pt2')) or ONNX and import that"
    )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return SourceError(f"{path} is not a TorchScript archive (not a zip file); {how}")
    if not any("/code/" in n for n in names):
        return SourceError(
            f"{path} is a torch.save checkpoint (weights or a pickled module), not a graph; {how}"
        )
    return SourceError(
        f"{path.name} is TorchScript, which records no input shapes or dtypes; {how}, or serve it from a "
        'Triton model folder whose config.pbtxt (platform: "pytorch_libtorch") lists its inputs and outputs'
    )


# -- the task --------------------------------------------------------------------------------------------
def resolve_task(
    opts: ImportOptions, outputs: list[TensorSpec], where: str, labels: list[str] | None = None
) -> tuple[str, list[str]]:
    """(task, labels) from ``--task`` / ``--labels`` (or labels the source carries), checked against the
    first output: what the task handler reads."""
    labels = read_labels(opts.labels) or list(labels or [])
    task = opts.task or ("classification" if labels else "raw")
    if task not in TASKS:
        raise SourceError(f"--task {task} does not fit {where}; choose one of {', '.join(TASKS)}")
    if labels and task != "classification":
        raise SourceError(
            f"labels (--labels, or a Triton label_filename) go with --task classification, not {task}"
        )
    if task != "raw":
        check_first_output(task, outputs, labels, where)
    return task, labels


def check_first_output(task: str, outputs: list[TensorSpec], labels: list[str], where: str) -> None:
    first = outputs[0]
    wants = {
        "classification": "logits [-1, K]",
        "embedding": "vectors [-1, D]",
        "regression": "[-1] or [-1, T]",
    }
    rank, last = len(first.shape), (first.shape[-1] if first.shape else -1)
    fits = rank == 2 if task != "regression" else rank == 1 or (rank == 2 and last > 0)
    if first.datatype not in FLOATS or not fits:
        raise SourceError(
            f"{where}: --task {task} reads the first output as {wants[task]}, but "
            f"{first.name!r} is {first.datatype} {first.shape}; use --task raw"
        )
    if task != "classification":
        return
    if any(t.name == "probabilities" for t in outputs):
        raise SourceError(
            f"{where}: an output is named 'probabilities', the name classification adds; "
            "rename it or use --task raw"
        )
    if last < 0 and not labels:
        raise SourceError(
            f"{where}: output {first.name!r} has a dynamic class count; pass --labels FILE, "
            "one label per class"
        )
    if labels and last > 0 and len(labels) != last:
        raise SourceError(
            f"{where}: {len(labels)} labels for the {last} classes of output {first.name!r}; "
            "give one label per class"
        )


def batch_size_for(signature: Signature, where: str) -> int:
    """``DEFAULT_MAX_BATCH_SIZE`` with a batch axis, else 0 (each request runs alone; said in the log)."""
    fixed = signature.fixed_first_dim()
    if fixed is None:
        return DEFAULT_MAX_BATCH_SIZE
    log.warning("%s: %r has the fixed shape %s, no dynamic batch axis: served at that shape, one request "
                "a run (batching off)", where, fixed.name, fixed.shape)  # fmt: skip
    return 0


def import_graph_file(source: Path, opts: ImportOptions) -> list[Path]:
    """One store version serving ``source`` (.onnx or .pt2) as it is."""
    opts = opts.named(source.stem)
    if source.suffix == ".pt":
        raise torchscript_refusal(source)
    fmt: Format = "onnx" if source.suffix == ".onnx" else "pt2"
    check_runtime(opts, fmt, source.name)
    signature = read_onnx_signature(source) if fmt == "onnx" else read_pt2_signature(source)
    outputs = served_outputs(signature.outputs, fmt)
    task, labels = resolve_task(opts, outputs, source.name)
    max_batch_size = batch_size_for(signature, source.name)
    fields = {"task": task, "architecture": f"imported {fmt} file", "inputs": signature.inputs,
              "outputs": outputs, "max_batch_size": max_batch_size, "labels": labels}  # fmt: skip
    file = f"model.{fmt}"
    variant = Variant(file=file, format=fmt, precision=signature.precision, usable=True, reason=NO_PARITY)

    def fill(tmp: Path, version: int) -> ModelSpec:
        (place_onnx if fmt == "onnx" else place)(source, tmp / file, link=opts.link)
        return ModelSpec(**spec_fields(opts, version, source.resolve(), variants=[variant], **fields))

    return [write_version(opts, fill)]


def check_runtime(opts: ImportOptions, fmt: Format, where: str) -> None:
    """``--runtime`` chooses for sources that could go either way; a graph file runs in its own runtime."""
    own = "onnx" if fmt == "onnx" else "torch"
    if opts.runtime is not None and opts.runtime != own:
        raise SourceError(f"--runtime {opts.runtime} does not fit {where}, which runs on {own}; leave it out")
