"""``deepserve import SOURCE --handler FILE:CLASS``: your own handler class (docs/handlers.md).

    import_custom_handler(Path("scaler/"), ImportOptions(store=store, handler="handler.py:Scaler"))

SOURCE is a folder (copied whole into the version directory: the handler, its weights, its
helper modules) or one file (copied, the handler beside it). FILE is relative to SOURCE (to the
folder holding SOURCE when it is a file), or any path; CLASS may be left out when the file
defines one ``CustomHandler`` subclass. model.json gets ``handler: {kind: "python", ...}`` and
the signature the class declares (``inputs``, ``outputs``, ``max_batch_size``, ``task``,
``labels``); there are no graph variants: the handler opens its own files.

The file must compile (a SyntaxError is refused with file:line), and it is imported once, in a
child process, to read the class's signature: **importing runs the user's code**, as serving it
does (docs/handlers.md, Threat model). A failure there is refused with the file and line, and
nothing is left in the store.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from deepserve.imports.base import (
    TASKS,
    ImportOptions,
    SourceError,
    place,
    read_labels,
    spec_fields,
    write_version,
)
from deepserve.store import HandlerRef, ModelSpec, TensorSpec

DEFAULT_MAX_BATCH_SIZE = 8  # rows a run may take when the class does not say
SIGNATURE_TIMEOUT_S = 120.0
SKIPPED = {"__pycache__", ".git", "model.json"}
# the child that imports the handler: deepserve comes from where this process has it
_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from deepserve.imports.custom import signature_main; sys.exit(signature_main(sys.argv[2:]))"
)


def import_custom_handler(source: Path, opts: ImportOptions) -> list[Path]:
    assert opts.handler is not None
    file_part, class_name = split_handler_option(opts.handler)
    source = Path(source)
    root = source if source.is_dir() else source.parent
    handler = locate_handler(file_part, root)
    inside = source.is_dir() and _is_within(handler, source)
    relative = handler.relative_to(source).as_posix() if inside else handler.name
    compile_check(handler, relative)
    if source.is_dir() and (source / "model.json").exists():
        raise SourceError(f"{source} holds a model.json of its own; deepserve writes that file, rename yours")
    opts = opts.named(source.name if source.is_dir() else source.stem)

    def fill(tmp: Path, version: int) -> ModelSpec:
        if source.is_dir():
            for child in sorted(source.iterdir()):
                if child.name not in SKIPPED:
                    place(child, tmp / child.name, link=opts.link)
        else:
            place(source, tmp / source.name, link=opts.link)
        if not (tmp / relative).exists():
            place(handler, tmp / relative, link=opts.link)
        signature = read_signature(tmp, relative, class_name)
        return _spec(opts, version, source, relative, signature)

    return [write_version(opts, fill)]


def split_handler_option(value: str) -> tuple[str, str | None]:
    """``FILE:CLASS`` -> (FILE, CLASS); ``FILE`` alone -> (FILE, None) (a drive letter is no class)."""
    file, sep, cls = value.rpartition(":")
    if sep and file and cls.isidentifier():
        return file, cls
    return value, None


def locate_handler(file: str, root: Path) -> Path:
    for candidate in (root / file, Path(file)):
        if candidate.is_file():
            return candidate
    raise SourceError(f"--handler file {file} is neither in {root} nor a path to a file; check the path")


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def compile_check(path: Path, shown: str) -> None:
    try:
        compile(path.read_bytes(), shown, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise SourceError(
            f"{shown}:{exc.lineno}: SyntaxError: {exc.msg}; fix the handler and import it again"
        ) from exc
    except (ValueError, OSError) as exc:
        raise SourceError(f"{shown} is not readable Python source ({exc})") from exc


def read_signature(version_dir: Path, relative: str, class_name: str | None) -> dict[str, Any]:
    """The class's declared signature, read by importing the file in a child process (the user's
    import-time code runs there, not in this process)."""
    package_parent = str(Path(__file__).resolve().parents[2])
    with tempfile.TemporaryDirectory(prefix="deepserve-signature-") as scratch:
        out = Path(scratch) / "signature.json"
        cmd = [
            sys.executable,
            "-c",
            _CHILD,
            package_parent,
            str(version_dir),
            relative,
            class_name or "",
            str(out),
        ]
        try:
            done = subprocess.run(
                cmd, cwd=scratch, capture_output=True, text=True, timeout=SIGNATURE_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise SourceError(f"importing {relative} took over {SIGNATURE_TIMEOUT_S:.0f} s; "
                              "move slow work from import time into load()") from exc  # fmt: skip
        if not out.is_file():
            tail = " ".join(done.stderr.split())[-300:] or f"exit code {done.returncode}"
            raise SourceError(f"importing {relative} crashed the checking process: {tail}")
        answer: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    if "error" in answer:
        raise SourceError(f"{answer['error']}; fix the handler and import it again")
    return answer


def _spec(
    opts: ImportOptions, version: int, source: Path, relative: str, signature: dict[str, Any]
) -> ModelSpec:
    task = opts.task or signature["task"]
    if task not in TASKS:
        raise SourceError(
            f"task {task!r} is not available for a handler of yours; use one of {', '.join(TASKS)}"
        )
    labels = read_labels(opts.labels) if opts.labels else signature["labels"]
    class_name = signature["class_name"]
    try:
        return ModelSpec(**spec_fields(
            opts, version, source, task=task, architecture=f"python:{relative}:{class_name}",
            inputs=signature["inputs"], outputs=signature["outputs"],
            max_batch_size=signature["max_batch_size"], labels=labels, variants=[],
            handler=HandlerRef(kind="python", file=relative, class_name=class_name),
        ))  # fmt: skip
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SourceError(f"{class_name}: {where}: {first['msg']}; fix the class's signature") from exc


# -- the child process ------------------------------------------------------------------------------
def signature_main(argv: list[str]) -> int:
    """``version_dir relative class_name out``: import the handler, write its signature (or the
    error, one line) as JSON to ``out``."""
    from deepserve.handlers.base import ModelLoadError
    from deepserve.handlers.custom import (
        describe_user_error,
        find_handler_class,
        import_user_file,
        user_imports,
    )

    root, relative, class_name, out = Path(argv[0]), argv[1], argv[2] or None, Path(argv[3])
    try:
        with user_imports(root):
            module = import_user_file(root / relative, "deepserve_user_signature_check")
            answer = signature_of(find_handler_class(module, class_name))
    except ModelLoadError as exc:
        answer = {"error": str(exc)}
    except (Exception, SystemExit) as exc:  # the user's import-time code failed
        answer = {"error": describe_user_error(exc, root, f"import of {relative}")}
    out.write_text(json.dumps(answer), encoding="utf-8")
    return 0


def signature_of(cls: type) -> dict[str, Any]:
    def declared(name: str, default: Any) -> Any:
        value = inspect.getattr_static(cls, name, default)
        return default if isinstance(value, property) else value

    def tensors(name: str) -> list[Any]:
        value = declared(name, [])
        if not isinstance(value, list | tuple):
            raise TypeError(f"{cls.__name__}.{name} must be a list of TensorSpec, got {type(value).__name__}")
        return [t.model_dump() if isinstance(t, TensorSpec) else t for t in value]

    return {
        "class_name": cls.__name__,
        "inputs": tensors("inputs"),
        "outputs": tensors("outputs"),
        "max_batch_size": declared("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
        "task": declared("task", "raw"),
        "labels": list(declared("labels", [])),
    }


if __name__ == "__main__":  # pragma: no cover - the child runs through _CHILD
    raise SystemExit(signature_main(sys.argv[1:]))
