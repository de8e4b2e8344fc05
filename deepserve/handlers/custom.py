"""Your own Python handler: subclass ``CustomHandler`` in a file beside your model (docs/handlers.md).

    class Scaler(CustomHandler):
        inputs = [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])]
        outputs = [TensorSpec(name="y", datatype="FP32", shape=[-1, 4])]
        max_batch_size = 16

        def load(self) -> None:
            self.scale = np.load(self.model_dir / "scale.npy")

        def predict_batch(self, items):
            x = self.concat(items)["x"]                     # (B, 4): the rows of every request
            return self.split({"y": x * self.scale}, items)

The contract is the built-in handlers' own (``handlers/base.py``): ``load`` once, ``preprocess``
per request, ``predict_batch`` per batch (items from many requests, in one worker thread),
``postprocess`` per request. The class attributes are the signature ``deepserve import --handler``
writes into model.json; the defaults of ``preprocess`` / ``postprocess`` check KServe v2 tensors
against it and answer TorchServe-style JSON ``{"x": [[...]]}`` bodies.

Loading runs the user's code (threat model in docs/handlers.md): only files inside the version
directory are loaded, under a module name of their own per model and version, so two models'
``handler.py`` never collide. A failure in the file's import, ``__init__`` or ``load`` is a
``ModelLoadError`` naming the user's file and line; the registry reports that model failed and
serves the others.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
import threading
import traceback
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import numpy as np

from deepserve.handlers.base import (
    Handler,
    InvalidInputError,
    ModelLoadError,
    Request,
    TensorRequest,
    Tensors,
)
from deepserve.handlers.batch import concat_items, split_rows
from deepserve.handlers.tensors import check_names, check_tensor, describe
from deepserve.store import ModelSpec, TensorSpec

__all__ = ["CustomHandler", "load_custom_handler"]

# sys.path and sys.modules are process-wide: one user import at a time (the registry loads two
# models at once, each in its own thread).
_IMPORT_LOCK = threading.RLock()


class CustomHandler(Handler):
    """Base of a user's handler: subclasses implement ``load`` and ``predict_batch`` and declare
    their signature as class attributes, which ``deepserve import --handler`` writes into
    model.json: ``inputs`` / ``outputs`` (lists of ``TensorSpec``), ``max_batch_size`` (default 8;
    0: no batch axis, each request runs alone), ``task`` ("raw", "classification", "regression",
    "embedding") and ``labels``.

    ``self.model_dir`` is the version directory (your files are there), ``self.device`` the
    server's device ("cpu", "cuda:0").
    """

    def __init__(self, spec: ModelSpec, model_dir: Path, device: str = "cpu") -> None:
        super().__init__(spec)
        self.model_dir = Path(model_dir)
        self.device = device

    @abstractmethod
    def load(self) -> None:
        """Open the model's files; runs once, before any request."""

    @abstractmethod
    def predict_batch(self, items: list[Tensors]) -> list[Tensors]:
        """One result per item, in order; ``concat`` and ``split`` do the batching arithmetic."""

    # -- defaults: KServe v2 tensors and TorchServe-style JSON in, the declared outputs out -------
    def preprocess(self, request: Request) -> Tensors:
        if isinstance(request, TensorRequest):
            return self.check_inputs(request.tensors)
        if isinstance(request.body, dict) and request.body:
            try:
                tensors = {name: np.asarray(value) for name, value in request.body.items()}
            except ValueError as exc:  # ragged nested lists
                raise InvalidInputError(f"the JSON body is not rectangular arrays: {exc}") from None
            return self.check_inputs(tensors)
        names = ", ".join(t.name for t in self.inputs) or "none"
        raise InvalidInputError(
            f"this model takes JSON {{input name: nested list}} (inputs: {names}); "
            f"got a {type(request.body).__name__} body"
        )

    def postprocess(self, outputs: Tensors, request: Request) -> Any:
        if isinstance(request, TensorRequest):
            return self.select(outputs, request.outputs)
        return {name: _jsonable(array) for name, array in outputs.items()}

    # -- helpers for subclasses ----------------------------------------------------------------
    def check_inputs(self, tensors: dict[str, Any]) -> Tensors:
        """``tensors`` checked against ``inputs``: names, datatypes, shapes, one row count."""
        check_names(tensors, self.inputs)
        checked: Tensors = {}
        for spec in self.inputs:
            if spec.name not in tensors:
                if spec.optional:
                    continue
                raise InvalidInputError(f"input {spec.name!r} ({describe(spec)}) is missing")
            value = tensors[spec.name]
            checked[spec.name] = (
                _bytes_tensor(spec, value) if spec.datatype == "BYTES" else check_tensor(spec, value)
            )
        if len({a.shape[0] for a in checked.values()}) > 1 and self.spec.batched:
            rows = {n: int(a.shape[0]) for n, a in checked.items()}
            raise InvalidInputError(f"inputs carry different numbers of rows {rows}; send one per input")
        return checked

    def select(self, outputs: Tensors, wanted: list[str] | None) -> Tensors:
        """The outputs a KServe v2 request asked for (all declared ones when it named none)."""
        order = [t.name for t in self.outputs if t.name in outputs] or list(outputs)
        unknown = [w for w in wanted or [] if w not in outputs]
        if unknown:
            raise InvalidInputError(f"no output {unknown[0]!r}; this model's outputs: {', '.join(order)}")
        return {name: outputs[name] for name in wanted or order}

    def concat(self, items: list[Tensors]) -> Tensors:
        """The items' tensors concatenated along the batch dimension (B = all their rows)."""
        return concat_items(items, {})

    def split(self, outputs: Tensors, items: list[Tensors]) -> list[Tensors]:
        """Batch outputs cut back into one result per item (by each item's rows)."""
        return split_rows(outputs, [self.item_rows(item) for item in items])

    def item_rows(self, item: Tensors) -> int:
        return super().item_rows(item) if self.spec.batched else 1


def _bytes_tensor(spec: TensorSpec, value: Any) -> np.ndarray:
    array = np.asarray(value, dtype=object)
    fits = array.ndim == len(spec.shape) and all(
        d in (-1, s) for d, s in zip(spec.shape, array.shape, strict=True)
    )
    if not fits or array.size == 0:
        raise InvalidInputError(
            f"input {spec.name!r} expects {describe(spec)}, got shape {list(array.shape)}"
        )
    flat = [v.encode("utf-8") if isinstance(v, str) else v for v in array.ravel()]
    if not all(isinstance(v, bytes) for v in flat):
        raise InvalidInputError(f"input {spec.name!r} expects BYTES elements (bytes or text)")
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(array.shape)


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == object:
        return np.vectorize(_text, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# -- loading user code --------------------------------------------------------------------------
def handler_path(version_dir: Path, relative: str) -> Path:
    """The handler file inside the version directory; anything pointing outside it is refused
    (model.json is data: it must not make the server import a file the operator never placed)."""
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise ModelLoadError(
            f"model.json handler.file {relative!r} must be a path inside the version directory"
        )
    path = Path(version_dir, *parts)
    if not path.is_file():
        raise ModelLoadError(f"handler file {relative} is missing from {version_dir}; re-import the model")
    return path


def module_name(spec: ModelSpec, path: Path) -> str:
    """A module name of this model version's own (two models' handler.py never share one)."""
    return "deepserve_user_" + re.sub(r"\W", "_", f"{spec.name}_v{spec.version}_{path.stem}")


@contextmanager
def user_imports(model_dir: Path) -> Iterator[None]:
    """Imports from ``model_dir`` while the block runs, as TorchServe's worker has them (the
    folder first on ``sys.path``), without one model's modules leaking into another's: every
    module imported from here is dropped from ``sys.modules`` when the block ends (the handler
    keeps its references), so the next model's ``handler.py`` or ``model.py`` is its own.

    Imports of the folder's files belong at load (module top level, ``initialize``, ``load``):
    afterwards the folder is off ``sys.path`` again.
    """
    root = os.path.abspath(model_dir)
    with _IMPORT_LOCK:
        sys.path.insert(0, root)
        importlib.invalidate_caches()
        try:
            yield
        finally:
            if root in sys.path:
                sys.path.remove(root)
            for name, module in list(sys.modules.items()):
                if _inside(getattr(module, "__file__", None), root):
                    del sys.modules[name]


def _inside(file: str | None, root: str) -> bool:
    return isinstance(file, str) and os.path.abspath(file).startswith(root + os.sep)


def import_user_file(path: Path, name: str) -> ModuleType:
    """Execute ``path`` as module ``name`` (call inside ``user_imports``); raises what the file raises."""
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ModelLoadError(f"{path.name} cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # during its execution, as a normal import has it (dataclasses look)
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def describe_user_error(exc: BaseException, root: Path, step: str) -> str:
    """One line naming the user's file and line: "handler.py:12 in load: RuntimeError: ..."."""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{_relative(exc.filename, root)}:{exc.lineno}"
        return f"{where}: SyntaxError: {exc.msg}"
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if _inside(f.filename, os.path.abspath(root))
    ]
    message = f"{type(exc).__name__}: {' '.join(str(exc).split()) or '(no message)'}"
    if not frames:
        return f"{step}: {message}"
    last = frames[-1]
    return f"{_relative(last.filename, root)}:{last.lineno} in {last.name}: {message} (during {step})"


def _relative(file: str, root: Path) -> str:
    try:
        return Path(os.path.abspath(file)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return file


def find_handler_class(module: ModuleType, class_name: str | None) -> type[CustomHandler]:
    """``class_name`` in ``module``, or the one concrete CustomHandler subclass it defines."""
    if class_name:
        found = getattr(module, class_name, None)
        if not (inspect.isclass(found) and issubclass(found, CustomHandler)):
            raise ModelLoadError(
                f"{class_name} is not a class of the handler file subclassing "
                "deepserve.handlers.custom.CustomHandler"
            )
        return found
    defined = [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, CustomHandler) and obj.__module__ == module.__name__
        and not inspect.isabstract(obj)
    ]  # fmt: skip
    if len(defined) != 1:
        names = ", ".join(c.__name__ for c in defined) or "none"
        raise ModelLoadError(
            f"the handler file must define exactly one CustomHandler subclass (found: {names}); "
            "name the class with --handler FILE:CLASS"
        )
    return defined[0]


def load_custom_handler(
    spec: ModelSpec, version_dir: Path, *, device: str = "cpu", load: bool = True
) -> Handler:
    """model.json ``handler.kind == "python"``: import the file, build the class, ``load()`` it."""
    assert spec.handler is not None
    path = handler_path(version_dir, spec.handler.file)
    step = f"import of {spec.handler.file}"
    try:
        with user_imports(version_dir):
            module = import_user_file(path, module_name(spec, path))
            cls = find_handler_class(module, spec.handler.class_name)
            step = f"{cls.__name__}()"
            handler = cls(spec, version_dir, device)
            if load:
                step = f"{cls.__name__}.load()"
                handler.load()
        sys.modules[module.__name__] = module  # its own name, kept for the life of the process
    except ModelLoadError:
        raise
    except (Exception, SystemExit) as exc:  # the user's code failed: that model fails, the others serve
        raise ModelLoadError(describe_user_error(exc, version_dir, step)) from exc
    return handler
