"""``deepserve import model.mar``: a TorchServe archive, its handler run unchanged.

    import_mar(Path("densenet161.mar"), ImportOptions(store=Path("model_store")))

The archive is unpacked into the version directory as it is (TorchServe's ``model_dir``:
``MAR-INF/MANIFEST.json``, the serialized model, the handler, extra files), and model.json says
``handler: {kind: "torchserve", file: <the manifest's handler>}``, so the server hosts it with
``deepserve.handlers.hosted_torchserve``. From the manifest: the model name (the default
``--name``), the handler (a built-in name or a file of the archive, ``file.py:function`` too) and
model-config.yaml, whose ``batchSize`` / ``maxBatchDelay`` become ``max_batch_size`` /
``batching.max_queue_delay_ms`` (without one: ``DEFAULT_MAX_BATCH_SIZE``; deepserve's batcher
retries a batch a handler cannot take one request at a time, so a handler written for batch
size 1 still answers right).

Refused with one line, before anything is written: a file that is not a zip archive, an archive
without MAR-INF/MANIFEST.json or without a handler, a handler file that is missing or does not
compile (file:line), an entry that would land outside the version (``..``, absolute, links).

An archive that ``deepserve export --mar`` wrote (deepserve's own adapter, with model.json
inside) is imported as the deepserve version it carries, served natively.

Importing checks the archive's code compiles, and nothing more; serving it runs it (the threat
model in docs/handlers.md).
"""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from deepserve.imports.base import ImportOptions, SourceError, now, read_labels, spec_fields, write_version
from deepserve.store import BatchingSpec, HandlerRef, ModelSpec, Task, TensorSpec

MANIFEST = "MAR-INF/MANIFEST.json"
DEFAULT_MAX_BATCH_SIZE = 8
# TorchServe 0.12's ts/torch_handler modules that are handlers
BUILT_INS = frozenset({
    "base_handler", "image_classifier", "text_classifier", "object_detector", "image_segmenter",
    "dali_image_classifier", "densenet_handler", "vllm_handler", "trt_llm_handler",
})  # fmt: skip
CLASSIFIERS = frozenset({"image_classifier", "text_classifier", "dali_image_classifier"})
UNBATCHED = frozenset({"text_classifier"})  # "DOES NOT SUPPORT BATCH!" says its source
MAR_TASKS: tuple[Task, ...] = ("classification", "regression", "raw")
INPUTS = [TensorSpec(name="data", datatype="BYTES", shape=[-1])]
OUTPUTS = [TensorSpec(name="output", datatype="BYTES", shape=[-1])]


def import_mar(source: Path, opts: ImportOptions) -> list[Path]:
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(
            f"{source} is not a zip archive ({exc}); build it with torch-model-archiver "
            "(the default --archive-format)"
        ) from exc
    with archive:
        members = safe_members(archive, source)
        if "model.json" in members:
            return [_import_deepserve_archive(archive, members, source, opts)]
        model = read_manifest(archive, members, source)
        handler = str(model.get("handler") or "")
        if not handler:
            raise SourceError(
                f"{source.name} has no handler in {MANIFEST}; rebuild it with torch-model-archiver "
                "--handler HANDLER (a built-in name such as image_classifier, or your handler file)"
            )
        _check_code(archive, members, source, handler, model)
        config = read_model_config(archive, members, source, model)
        spec_opts = opts.named(str(model.get("modelName") or source.stem))

        def fill(tmp: Path, version: int) -> ModelSpec:
            extract(archive, members, tmp)
            return _spec(spec_opts, version, source, handler, config, tmp)

        return [write_version(spec_opts, fill)]


def safe_members(archive: zipfile.ZipFile, source: Path) -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by name; one that would land outside the version is refused."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        path = PurePosixPath(info.filename.replace("\\", "/"))
        mode = info.external_attr >> 16
        if path.is_absolute() or ".." in path.parts or ":" in path.parts[0] or stat.S_ISLNK(mode):
            raise SourceError(
                f"{source.name} holds {info.filename!r}, which would land outside the model directory "
                "(absolute path, '..' or a link); rebuild the archive with torch-model-archiver"
            )
        if not info.is_dir():
            members[path.as_posix()] = info
    return members


def read_manifest(
    archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], source: Path
) -> dict[str, Any]:
    if MANIFEST not in members:
        raise SourceError(
            f"{source.name} has no {MANIFEST}: not a TorchServe archive; build it with torch-model-archiver"
        )
    try:
        manifest = json.loads(archive.read(members[MANIFEST]).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(
            f"{source.name}: {MANIFEST} is not valid JSON ({exc}); rebuild the archive"
        ) from exc
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(model, dict):
        raise SourceError(f"{source.name}: {MANIFEST} has no 'model' section; rebuild the archive")
    return model


def handler_file(handler: str) -> str:
    """The file TorchServe imports for ``handler`` (``TsModelLoader._load_handler_file``'s rule)."""
    stem = handler.split(":", 1)[0].split("/")[-1].removesuffix(".py")
    return f"{stem}.py"


def _check_code(
    archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], source: Path, handler: str,
    model: dict[str, Any],
) -> None:  # fmt: skip
    """The handler resolves (a file of the archive, else a built-in) and the archive's model code compiles."""
    file = handler_file(handler)
    if file not in members and handler not in BUILT_INS:
        raise SourceError(
            f"{source.name}: handler {handler!r} is neither a file of the archive ({file} is missing) nor a "
            f"TorchServe built-in ({', '.join(sorted(BUILT_INS))}); rebuild it with the handler file"
        )
    model_file = str(model.get("modelFile") or "")
    for name in (file, model_file):
        if name in members:
            compile_check(archive.read(members[name]), name, source)
    serialized = str(model.get("serializedFile") or "")
    if serialized and serialized not in members:
        raise SourceError(f"{source.name}: the manifest's serializedFile {serialized} is not in the archive")


def compile_check(code: bytes, name: str, source: Path) -> None:
    try:
        compile(code, name, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise SourceError(
            f"{source.name}: {name}:{exc.lineno}: SyntaxError: {exc.msg}; "
            "fix the handler and rebuild the archive"
        ) from exc
    except ValueError as exc:  # NUL bytes
        raise SourceError(f"{source.name}: {name} is not Python source ({exc})") from exc


def read_model_config(
    archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], source: Path, model: dict[str, Any]
) -> dict[str, Any]:
    """The archive's model-config.yaml (``configFile`` in the manifest), or {} without one."""
    name = str(model.get("configFile") or "")
    if not name:
        return {}
    if name not in members:
        raise SourceError(f"{source.name}: the manifest's configFile {name} is not in the archive")
    try:
        import yaml
    except ImportError as exc:
        raise SourceError(f"reading {name} needs PyYAML: pip install 'deepserve[torchserve]'") from exc
    try:
        config = yaml.safe_load(archive.read(members[name]))
    except yaml.YAMLError as exc:
        raise SourceError(f"{source.name}: {name} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(config, dict):
        raise SourceError(f"{source.name}: {name} holds no settings (a YAML mapping such as batchSize: 8)")
    return config


def extract(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], into: Path) -> None:
    for name, info in members.items():
        target = into.joinpath(*PurePosixPath(name).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)


def _batch_settings(handler: str, config: dict[str, Any], source: Path) -> tuple[int, BatchingSpec | None]:
    size, delay = config.get("batchSize"), config.get("maxBatchDelay")
    for key, value in (("batchSize", size), ("maxBatchDelay", delay)):
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
            raise SourceError(
                f"{source.name}: model-config.yaml {key} must be a non-negative number, got {value!r}"
            )
    if size is None:
        size = 1 if handler in UNBATCHED else DEFAULT_MAX_BATCH_SIZE
    batching = BatchingSpec(max_queue_delay_ms=float(delay)) if delay is not None else None
    return max(1, int(size)), batching


def _task(opts: ImportOptions, handler: str) -> Task:
    if opts.task is None:
        return "classification" if handler in CLASSIFIERS else "raw"
    task = next((t for t in MAR_TASKS if t == opts.task), None)
    if task is None:
        raise SourceError(
            f"--task {opts.task} is not available for a TorchServe archive: its handler answers as it does "
            f"in TorchServe; use one of {', '.join(MAR_TASKS)}"
        )
    return task


def _labels(opts: ImportOptions, into: Path) -> list[str]:
    """--labels, else the archive's index_to_name.json (the labels TorchServe's classifiers use)."""
    if opts.labels is not None:
        return read_labels(opts.labels)
    try:
        mapping = json.loads((into / "index_to_name.json").read_text(encoding="utf-8"))
        ordered = sorted(mapping.items(), key=lambda kv: int(kv[0]))
    except (OSError, ValueError, AttributeError, TypeError):
        return []  # labels are for the record here: the handler maps classes itself
    return [str(v[-1] if isinstance(v, list) else v) for _, v in ordered]


def _spec(
    opts: ImportOptions, version: int, source: Path, handler: str, config: dict[str, Any], into: Path
) -> ModelSpec:
    max_batch_size, batching = _batch_settings(handler, config, source)
    task = _task(opts, handler)
    return ModelSpec(**spec_fields(
        opts, version, source, task=task, architecture=f"torchserve:{handler}", inputs=INPUTS,
        outputs=OUTPUTS, max_batch_size=max_batch_size, labels=_labels(opts, into), variants=[],
        handler=HandlerRef(kind="torchserve", file=handler), batching=batching,
    ))  # fmt: skip


def _import_deepserve_archive(
    archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], source: Path, opts: ImportOptions
) -> Path:
    """A .mar of ``deepserve export --mar``: the version it carries, served natively (hosting its
    adapter would only run deepserve inside deepserve)."""
    try:
        carried = ModelSpec.model_validate_json(archive.read(members["model.json"]))
    except (ValidationError, ValueError) as exc:
        raise SourceError(
            f"{source.name} holds a model.json that is not deepserve's ({exc.__class__.__name__}); "
            "rebuild it with deepserve export --mar"
        ) from exc
    opts = opts.named(carried.name)

    def fill(tmp: Path, version: int) -> ModelSpec:
        extract(archive, {n: i for n, i in members.items() if n != "model.json"}, tmp)
        update = {"name": opts.name, "version": version, "created": now(), "source": str(source)}
        return carried.model_copy(update=update)

    return write_version(opts, fill)
