"""``deepserve import <repository>``: a Triton model repository (or one model folder), served as is.

    repo/resnet/config.pbtxt       platform, max_batch_size, input / output, dynamic_batching
    repo/resnet/1/model.onnx       one store version per version folder, with the same number
    repo/resnet/labels.txt         an output's label_filename: the model is served as a classifier

config.pbtxt is parsed with protobuf's text format into Triton's own ``ModelConfig`` message
(tritonclient's model_config_pb2), so a typo is a parse error with its line and column. What
carries over:

    platform / backend        onnxruntime_onnx | onnxruntime (ONNX), pytorch_libtorch | pytorch (TorchScript)
    max_batch_size            > 0: shapes are [-1] + dims and requests are batched; 0: dims as is, run alone
    input / output            name, data_type, dims, optional (inputs), label_filename (the first output)
    dynamic_batching          max_queue_delay_microseconds, preferred_batch_size -> model.json batching
                              (without it the server's batching settings apply; Triton would not batch)
    version_policy            latest (Triton's default: the newest 1), all, specific
    default_model_filename    the file in each version folder
    instance_group            accepted, said in the log: deepserve runs one instance (scale with replicas)

Every other field that is set is refused with its name (``check_fields`` walks ``ListFields()``
against ``ALLOWED``): ensembles, sequence batching, backend parameters, optimization, warmup,
decoupled transactions, ... Without ``input`` / ``output`` in the config the graph's own are
used (Triton's auto-complete). The config is checked against the ONNX file's own signature (names,
datatypes, dims); a TorchScript file records only its ``forward`` argument names, which the
config's inputs must follow (``<name>__<index>`` or the argument names). Every model and version
is checked before any is written, so a bad one leaves the store as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from deepserve.imports.base import ImportOptions, SourceError, place, read_labels, spec_fields, write_version
from deepserve.imports.graph_file import (
    Signature,
    check_runtime,
    place_onnx,
    read_onnx_signature,
    resolve_task,
    served_outputs,
    torchscript_arguments,
)
from deepserve.store import BatchingSpec, Datatype, Format, ModelSpec, Precision, TensorSpec, Variant

log = logging.getLogger(__name__)

RUNTIMES: dict[str, Format] = {
    "onnxruntime_onnx": "onnx", "onnxruntime": "onnx",
    "pytorch_libtorch": "torchscript", "pytorch": "torchscript",
}  # fmt: skip
DEFAULT_FILES: dict[Format, str] = {"onnx": "model.onnx", "torchscript": "model.pt"}
# Fields carried over, per message type; any other set field is refused. instance_group is taken whole.
ALLOWED: dict[str, set[str]] = {
    "ModelConfig": {"name", "platform", "backend", "version_policy", "max_batch_size", "input", "output",
                    "dynamic_batching", "instance_group", "default_model_filename",
                    "model_transaction_policy"},
    "ModelInput": {"name", "data_type", "dims", "reshape", "optional"},
    "ModelOutput": {"name", "data_type", "dims", "reshape", "label_filename"},
    "ModelTensorReshape": {"shape"},
    "ModelDynamicBatching": {"preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering"},
    "ModelVersionPolicy": {"latest", "all", "specific"},
    "Latest": {"num_versions"}, "All": set(), "Specific": {"versions"},
    "ModelTransactionPolicy": set(),  # decoupled: false is the default, so only `true` shows up
}  # fmt: skip
TAKEN_WHOLE = {"instance_group"}
WHY = {
    "ensemble_scheduling": "ensembles: import each step model on its own and chain them in the client",
    "sequence_batching": "stateful sequence batching",
    "decoupled": "decoupled (streaming) responses",
    "optimization": "backend optimisation settings: deepserve uses its own ONNX Runtime settings",
    "parameters": "backend parameters",
    "model_warmup": "warmup requests",
}


def check_fields(message: Any, where: str, path: str = "") -> None:
    """Refuse the first set field ``ALLOWED`` does not list, naming it by its dotted path."""
    allowed = ALLOWED.get(message.DESCRIPTOR.name, set())
    for field, value in message.ListFields():
        dotted = f"{path}.{field.name}" if path else field.name
        if field.name not in allowed:
            why = f" ({WHY[field.name]})" if field.name in WHY else ""
            raise SourceError(
                f"{where}: {dotted} is not supported by deepserve{why}; remove it from "
                "config.pbtxt or serve this model with Triton"
            )
        if field.message_type is None or field.name in TAKEN_WHOLE:
            continue
        for item in value if field.is_repeated else [value]:
            check_fields(item, where, dotted)


def read_config(folder: Path) -> pb.ModelConfig:
    path = folder / "config.pbtxt"
    try:
        config = text_format.Parse(path.read_text(encoding="utf-8"), pb.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError, OSError) as exc:
        raise SourceError(f"{path}: not a Triton model configuration: {exc}") from exc
    check_fields(config, str(path))
    if config.name and config.name != folder.name:
        raise SourceError(
            f"{path}: name {config.name!r} differs from its folder {folder.name!r}; Triton "
            "needs them equal, so rename one"
        )
    return config


def runtime_of(config: pb.ModelConfig, folder: Path, where: str) -> Format:
    given = [
        (key, value) for key, value in (("platform", config.platform), ("backend", config.backend)) if value
    ]
    for key, value in given:
        if value not in RUNTIMES:
            hint = (
                "; wrap your model.py as a deepserve handler (--handler FILE:CLASS)"
                if value == "python"
                else ", export the model to ONNX"
            )
            raise SourceError(
                f"{where}: {key} {value!r} is not supported: deepserve serves onnxruntime_onnx "
                f"(ONNX) and pytorch_libtorch (TorchScript) models{hint}"
            )
    kinds = {RUNTIMES[value] for _, value in given}
    if len(kinds) > 1:
        raise SourceError(f"{where}: platform {config.platform!r} and backend {config.backend!r} disagree")
    if kinds:
        return kinds.pop()
    # Neither given: Triton goes by the model file, and so do we.
    names = {config.default_model_filename} if config.default_model_filename else set(DEFAULT_FILES.values())
    files = {p.name for p in folder.glob("[0-9]*/*") if p.name in names}
    kinds = {fmt for fmt, name in DEFAULT_FILES.items() if name in files}
    kinds |= {"onnx" for name in files if name.endswith(".onnx")}
    if len(kinds) != 1:
        raise SourceError(
            f'{where}: no platform or backend; add platform: "onnxruntime_onnx" (or "pytorch_libtorch")'
        )
    return kinds.pop()


def chosen_versions(folder: Path, config: pb.ModelConfig, filename: str, where: str) -> list[int]:
    """The version folders Triton would serve under ``version_policy``, each holding ``filename``."""
    found = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    policy = config.version_policy.WhichOneof("policy_choice")
    if policy == "all":
        chosen = found
    elif policy == "specific":
        chosen = sorted(set(config.version_policy.specific.versions))
    else:
        chosen = found[-max(1, config.version_policy.latest.num_versions) :]
    if not chosen:
        raise SourceError(f"{where}: no numbered version folder; put the model at {folder}/1/{filename}")
    for version in chosen:
        if version < 1 or not (folder / str(version) / filename).is_file():
            raise SourceError(
                f"{where}: version {version} has no {filename} (expected {folder / str(version) / filename})"
            )
    return chosen


def config_tensor(tensor: Any, batched: bool, where: str, role: str) -> TensorSpec:
    datatype = pb.DataType.Name(tensor.data_type).removeprefix("TYPE_")
    if datatype in ("INVALID", "STRING", "BF16"):
        raise SourceError(
            f"{where}: {role} {tensor.name!r} has data_type TYPE_{datatype}; deepserve serves "
            "numeric and bool tensors (not strings or bf16)"
        )
    if tensor.HasField("reshape") and list(tensor.reshape.shape) != list(tensor.dims):
        raise SourceError(
            f"{where}: {role} {tensor.name!r} reshape is not supported; give dims the graph's "
            "own shape and drop reshape"
        )
    dims = list(tensor.dims)
    typed: Datatype = datatype  # TYPE_<X> names match the KServe names
    optional = role == "input" and tensor.optional
    return TensorSpec(
        name=tensor.name, datatype=typed, shape=[-1, *dims] if batched else dims, optional=optional
    )


def agree(config: TensorSpec, graph: TensorSpec) -> bool:
    """Same datatype and rank, each dimension equal or dynamic on one side."""
    dims = zip(config.shape, graph.shape, strict=False)
    same = len(config.shape) == len(graph.shape) and all(-1 in (c, g) or c == g for c, g in dims)
    return config.datatype == graph.datatype and same


def match_graph(
    tensors: list[TensorSpec],
    graph: list[TensorSpec],
    role: str,
    where: str,
    file: str,
    defaults: frozenset[str] = frozenset(),
) -> None:
    """Config tensors against the ONNX file's: every name known, every required graph input listed."""
    by_name, names = {t.name: t for t in graph}, [t.name for t in graph]
    for t in tensors:
        if t.name in defaults and t.optional:
            continue  # an initializer the request may override
        if t.name not in by_name:
            raise SourceError(
                f"{where}: {role} {t.name!r} is not an {role} of {file}, whose {role}s are {names}"
            )
        if not agree(t, by_name[t.name]):
            g = by_name[t.name]
            raise SourceError(
                f"{where}: {role} {t.name!r} is {t.datatype} {t.shape} in config.pbtxt but "
                f"{g.datatype} {g.shape} in {file}"
            )
        if t.optional:
            raise SourceError(f"{where}: input {t.name!r} is optional in config.pbtxt but {file} requires it")
    listed = {t.name for t in tensors}
    missing = [n for n in names if n not in listed]
    if role == "input" and missing:
        raise SourceError(
            f"{where}: {file} input(s) {missing} are missing from config.pbtxt, which lists {sorted(listed)}"
        )


def libtorch_order(
    tensors: list[TensorSpec], arguments: list[str] | None, where: str, role: str
) -> list[TensorSpec]:
    """TorchScript is called by position: ``<name>__<index>`` names give it, else forward's argument names."""
    index = {t.name: t.name.rpartition("__")[2] for t in tensors}
    if all("__" in t.name and index[t.name].isdigit() for t in tensors):
        ordered = sorted(tensors, key=lambda t: int(index[t.name]))
        if [int(index[t.name]) for t in ordered] == list(range(len(tensors))):
            return ordered
    if arguments is not None and sorted(arguments) == sorted(t.name for t in tensors):
        return sorted(tensors, key=lambda t: arguments.index(t.name))
    if role == "output":
        return tensors
    raise SourceError(
        f"{where}: pytorch_libtorch inputs must be named <name>__0, <name>__1, ... or after "
        f"forward's arguments {arguments}; config.pbtxt lists {[t.name for t in tensors]}"
    )


@dataclass(frozen=True)
class VersionPlan:
    """One store version to write: checked, not yet written."""

    opts: ImportOptions  # named, with the version number
    file: Path
    variant: Variant
    fields: dict[str, Any]  # ModelSpec fields besides the common ones


def dynamic_batching(config: pb.ModelConfig, where: str) -> BatchingSpec | None:
    if not config.HasField("dynamic_batching"):
        return None
    if config.max_batch_size <= 0:
        raise SourceError(f"{where}: dynamic_batching needs max_batch_size > 0 (the graph's batch axis)")
    batching = config.dynamic_batching
    too_big = [s for s in batching.preferred_batch_size if s < 1 or s > config.max_batch_size]
    if too_big:
        raise SourceError(
            f"{where}: dynamic_batching.preferred_batch_size {too_big} outside "
            f"1..max_batch_size {config.max_batch_size}"
        )
    return BatchingSpec(
        max_queue_delay_ms=batching.max_queue_delay_microseconds / 1000.0,
        preferred_batch_sizes=list(batching.preferred_batch_size),
    )


def version_tensors(config: pb.ModelConfig, fmt: Format, file: Path, where: str) -> Signature:
    """The served inputs and outputs of one version: the config's, checked against the file's own."""
    batched = config.max_batch_size > 0
    inputs = [config_tensor(t, batched, where, "input") for t in config.input]
    outputs = [config_tensor(t, batched, where, "output") for t in config.output]
    if fmt == "torchscript":
        return libtorch_tensors(inputs, outputs, file, where)
    graph = read_onnx_signature(file)
    fixed = next((t for t in graph.inputs if not t.shape or t.shape[0] != -1), None)
    if batched and fixed is not None:
        raise SourceError(f"{where}: max_batch_size {config.max_batch_size} but {file.name} input "
                          f"{fixed.name!r} has no dynamic first dimension ({fixed.shape}); "
                          "set max_batch_size: 0")  # fmt: skip
    if inputs:  # none listed: the graph's own (Triton's auto-complete)
        match_graph(inputs, graph.inputs, "input", where, file.name, graph.defaults)
    if outputs:
        match_graph(outputs, graph.outputs, "output", where, file.name)
    return Signature(inputs or graph.inputs, served_outputs(outputs or graph.outputs, fmt), graph.precision)


def libtorch_tensors(
    inputs: list[TensorSpec], outputs: list[TensorSpec], file: Path, where: str
) -> Signature:
    """A TorchScript file records only its forward's argument names: the config must give the rest."""
    arguments = torchscript_arguments(file)
    if len(arguments) != len(inputs) or not outputs:
        raise SourceError(f"{where}: {file.name}'s forward takes {arguments}; config.pbtxt must list as "
                          f"many inputs (it lists {len(inputs)}) and the outputs it returns")  # fmt: skip
    precision: Precision = "fp16" if any(t.datatype == "FP16" for t in inputs) else "fp32"
    ordered = libtorch_order(inputs, arguments, where, "input")
    return Signature(ordered, served_outputs(libtorch_order(outputs, None, where, "output"), "torchscript"),
                     precision)  # fmt: skip


def labelled_first(config: pb.ModelConfig, folder: Path, where: str) -> tuple[str | None, list[str]]:
    """(the output a label_filename names, its labels)."""
    labelled = [i for i, t in enumerate(config.output) if t.label_filename]
    if not labelled:
        return None, []
    if len(labelled) > 1:
        raise SourceError(f"{where}: label_filename on {len(labelled)} outputs; deepserve classifies by one")
    first = config.output[labelled[0]]
    return first.name, read_labels(folder / first.label_filename)


def first_output(
    outputs: list[TensorSpec], labelled: str | None, fmt: Format, where: str
) -> list[TensorSpec]:
    """The labelled output first (classification reads the first): moved for ONNX (outputs go by name),
    required for TorchScript (outputs go by position)."""
    if labelled is None or outputs[0].name == labelled:
        return outputs
    if fmt == "torchscript":
        raise SourceError(
            f"{where}: output.label_filename is on {labelled!r}, not on the first output "
            f"{outputs[0].name!r}; TorchScript outputs go by position, so classify the first"
        )
    return sorted(outputs, key=lambda t: t.name != labelled)


def plan_model(folder: Path, opts: ImportOptions) -> list[VersionPlan]:
    where = str(folder / "config.pbtxt")
    config = read_config(folder)
    fmt = runtime_of(config, folder, where)
    check_runtime(opts, fmt, where)
    filename = config.default_model_filename or DEFAULT_FILES[fmt]
    if config.max_batch_size < 0:
        raise SourceError(f"{where}: max_batch_size {config.max_batch_size} is negative")
    batching = dynamic_batching(config, where)
    if config.instance_group:
        count = sum(max(1, g.count) for g in config.instance_group)
        log.warning("%s: instance_group (%d instances) ignored: deepserve runs one instance per model; "
                    "scale with replicas", where, count)  # fmt: skip
    labelled, labels = labelled_first(config, folder, where)
    plans = []
    for version in chosen_versions(folder, config, filename, where):
        file = folder / str(version) / filename
        signature = version_tensors(config, fmt, file, where)
        outputs = first_output(signature.outputs, labelled, fmt, where)
        task, task_labels = resolve_task(opts, outputs, where, labels=labels)
        check_free(opts, version)
        variant = Variant(file=DEFAULT_FILES[fmt], format=fmt, precision=signature.precision, usable=True,
                          reason="imported from a Triton repository: served as given")  # fmt: skip
        fields = {"task": task, "architecture": f"imported triton {fmt} model", "inputs": signature.inputs,
                  "outputs": outputs, "max_batch_size": config.max_batch_size, "labels": task_labels,
                  "batching": batching}  # fmt: skip
        plans.append(VersionPlan(replace(opts, version=version), file, variant, fields))
    return plans


def check_free(opts: ImportOptions, version: int) -> None:
    """Refuse before anything is written when a version is already in the store (without --force)."""
    assert opts.name is not None
    existing = opts.store / opts.name / str(version)
    if existing.exists() and not opts.force:
        raise SourceError(
            f"{existing} already exists; pass --force to replace it (Triton version folders "
            "keep their numbers)"
        )


def write_plan(plan: VersionPlan) -> Path:
    def fill(tmp: Path, version: int) -> ModelSpec:
        place_file = place_onnx if plan.variant.format == "onnx" else place
        place_file(plan.file, tmp / plan.variant.file, link=plan.opts.link)
        source = plan.file.resolve()
        return ModelSpec(**spec_fields(plan.opts, version, source, variants=[plan.variant], **plan.fields))

    return write_version(plan.opts, fill)


def model_folders(source: Path, opts: ImportOptions) -> list[tuple[Path, ImportOptions]]:
    """(folder, options named after it): ``source`` itself, or every model folder of a repository."""
    if (source / "config.pbtxt").is_file():
        return [(source, opts.named(source.name))]
    folders = sorted(p for p in source.iterdir() if (p / "config.pbtxt").is_file())
    given = [
        f"--{key}"
        for key, value in (("name", opts.name), ("task", opts.task), ("labels", opts.labels))
        if value is not None
    ]
    if given and len(folders) > 1:
        raise SourceError(
            f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} to one model; {source} "
            f"holds {len(folders)}: import a model "
            "folder on its own, or set it in its config.pbtxt"
        )
    return [(folder, opts.named(folder.name)) for folder in folders]


def import_triton(source: Path, opts: ImportOptions) -> list[Path]:
    """One store version per served version of every model in ``source``, numbered as in the repository."""
    if opts.version is not None:
        raise SourceError("--version does not apply to a Triton model: its versions are its numbered folders")
    plans = [plan for folder, named in model_folders(source, opts) for plan in plan_model(folder, named)]
    return [write_plan(plan) for plan in plans]
