"""A TorchServe handler run unchanged: a ``.mar``'s built-in or custom handler behind deepserve's
batching, protocols and metrics (``deepserve import model.mar``).

What runs is TorchServe's own code, from its ``ts`` package:

- the handler is resolved as ``ts.model_loader.TsModelLoader`` resolves it: a file of the archive
  (its one class with ``initialize`` / ``handle``, or ``file.py:function``), else a built-in name
  of ``ts.torch_handler`` (``image_classifier``, ``base_handler``, ...);
- its context is the ``ts.context.Context`` that ``ts.service.Service`` builds: ``manifest``,
  ``model_yaml_config`` (the archive's model-config.yaml), ``system_properties`` with
  ``model_dir`` (the version directory: the unpacked archive), ``gpu_id`` and ``batch_size``;
- ``initialize(context)`` runs once, at load; ``handle(data, context)`` once per batch, where
  ``data`` holds one row per request from several concurrent requests, each with its own
  ``RequestProcessor`` (headers, response status) as TorchServe's worker makes them
  (``handlers/ts_context.py``).

Answers are TorchServe's: a 4xx or 5xx a handler sets with ``context.set_response_status(code,
phrase, idx)`` fails that request alone; ``handle`` raising fails the batch as TorchServe fails
it (``PredictionException``: its code, else 503), after which deepserve's batcher retries each
request alone, so one poison input fails only its own caller.

Served signature (KServe v2): input ``data`` BYTES [-1], each element one request body (a
request parameter ``content_type`` says how to decode it, as TorchServe decodes a body: JSON,
text, else bytes); output ``output`` BYTES [-1], each element that request's answer (JSON, text
or the raw bytes the handler returned). TorchServe-style ``/predictions/{model}`` answers what
TorchServe answers.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from deepserve.handlers.base import (
    Handler,
    HandlerError,
    InvalidInputError,
    ModelLoadError,
    Request,
    TensorRequest,
    Tensors,
)
from deepserve.handlers.custom import describe_user_error, user_imports
from deepserve.handlers.tensors import bytes_items, check_names
from deepserve.store import ModelSpec

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'deepserve[torchserve]'"
INPUT, OUTPUT = "data", "output"


class TorchServeError(HandlerError):
    """An answer TorchServe gives with a status of its own (a handler's per-request status,
    a failed batch)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answer:
    """One request's result as the handler left it, with the status it set for it."""

    value: Any
    status: int = 200
    phrase: str = ""


class HostedTorchServeHandler(Handler):
    def __init__(self, spec: ModelSpec, model_dir: Path, device: str = "cpu") -> None:
        super().__init__(spec)
        self.model_dir = Path(model_dir)
        self.device = device
        self.context: Any = None  # ts.context.Context, once loaded
        self._entry_point: Any = None

    # -- load: TorchServe's worker start ---------------------------------------------------------
    def load(self) -> None:
        assert self.spec.handler is not None
        handler = self.spec.handler.file
        service_cls, metrics_cls = _torchserve()
        manifest = read_manifest(self.model_dir)
        step = f"import of handler {handler}"
        try:
            with user_imports(self.model_dir):
                entry_point, initialize = resolve_entry_point(handler, self.model_dir)
                service = service_cls(
                    self.spec.name, str(self.model_dir), manifest, entry_point, gpu_id(self.device),
                    self.spec.max_batch_size or 1, True, metrics_cls(self.spec.name),
                )  # fmt: skip
                step = f"{handler} initialize(context)"
                initialize(service.context)
        except ModelLoadError:
            raise
        except (Exception, SystemExit) as exc:  # the archive's code failed: this model fails, others serve
            raise ModelLoadError(describe_user_error(exc, self.model_dir, step)) from exc
        self.context, self._entry_point = service.context, entry_point
        log.info("TorchServe handler %s of %s ready", handler, self.spec.name)

    # -- one request -> its TorchServe wire record(s) -------------------------------------------
    def preprocess(self, request: Request) -> Tensors:
        from deepserve.handlers.ts_context import wire_request

        if isinstance(request, TensorRequest):
            check_names(request.tensors, self.inputs)
            if INPUT not in request.tensors:
                raise InvalidInputError(f"input {INPUT!r} is missing: send one request body per element")
            content_type = str(request.parameters.get("content_type", "application/octet-stream"))
            bodies = [worker_decoded(b, content_type) for b in bytes_items(INPUT, request.tensors[INPUT])]
            records = [wire_request(body, content_type, {}, {}) for body in bodies]
        else:
            records = [wire_request(request.body, request.content_type, request.parameters, request.headers)]
        return {"records": _objects(records)}

    def item_rows(self, item: Tensors) -> int:
        return len(item["records"])

    # -- one batch: handle(data, context) ------------------------------------------------------
    def predict_batch(self, items: list[Tensors]) -> list[Tensors]:
        from deepserve.handlers.ts_context import worker_batch

        if self.context is None:
            raise ModelLoadError("the TorchServe handler is not loaded; call load() first")
        answers = self._handle(worker_batch([r for item in items for r in item["records"]]))
        results, start = [], 0
        for item in items:
            rows = self.item_rows(item)
            results.append({"answers": _objects(answers[start : start + rows])})
            start += rows
        return results

    def _handle(self, batch: Any) -> list[Answer]:
        """``Service.predict`` without the wire encoding: same context set-up, same failures."""
        context = self.context
        context.request_ids, context.request_processor = batch.request_ids, batch.processors
        context.metrics.request_ids = batch.request_ids
        context.cl_socket = None  # no frontend socket: streamed intermediate answers are not supported
        started = time.perf_counter()
        results = self._call(batch.data)
        if not isinstance(results, list):
            raise TorchServeError(
                503, f"Invalid model predict output: handle returned {type(results).__name__}"
            )
        if len(results) != len(batch.data):
            raise TorchServeError(
                503,
                f"number of batch response mismatched: {len(batch.data)} requests, {len(results)} answers",
            )
        context.metrics.add_time("PredictionTime", round((time.perf_counter() - started) * 1000, 2))
        return [Answer(value, *_status(context, idx)) for idx, value in enumerate(results)]

    def _call(self, data: list[dict[str, Any]]) -> Any:
        from ts.utils.util import PredictionException

        try:
            return self._entry_point(data, self.context)
        except MemoryError:
            raise TorchServeError(507, "Out of resources") from None
        except PredictionException as exc:
            raise TorchServeError(int(exc.error_code), str(exc.message)) from exc
        except Exception as exc:  # as TorchServe: the batch fails with 503, the log has the traceback
            log.warning("%s: invoking the TorchServe handler failed", self.spec.name, exc_info=True)
            status = 507 if "CUDA" in str(exc) else 503
            raise TorchServeError(
                status, f"Prediction failed ({type(exc).__name__}; see the server log)"
            ) from exc

    # -- one request's answer ------------------------------------------------------------------
    def postprocess(self, outputs: Tensors, request: Request) -> Any:
        answers: list[Answer] = list(outputs["answers"])
        failed = next((a for a in answers if a.status >= 400), None)
        if failed is not None:
            raise TorchServeError(failed.status, failed.phrase or _as_text(failed.value))
        if isinstance(request, TensorRequest):
            unknown = [name for name in request.outputs or [] if name != OUTPUT]
            if unknown:
                raise InvalidInputError(f"no output {unknown[0]!r}; this model's output is {OUTPUT!r}")
            return {OUTPUT: _objects([encoded(a.value) for a in answers])}
        value = answers[0].value
        return encoded(value) if _is_tensor(value) or isinstance(value, bytearray) else value


# -- TorchServe's pieces ---------------------------------------------------------------------------
def _torchserve() -> tuple[Any, Any]:
    """``ts.service.Service`` and our metrics cache; a missing TorchServe / torch is this model's
    load failure, with the install line."""
    try:
        import torch  # noqa: F401  # TorchServe's handlers are torch code
        from ts.service import Service

        from deepserve.handlers.ts_context import HandlerMetrics
    except ImportError as exc:
        raise ModelLoadError(
            f"serving a TorchServe archive needs TorchServe's Python package and torch ({exc}); "
            + INSTALL_HINT
        ) from exc
    return Service, HandlerMetrics


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "MAR-INF" / "MANIFEST.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is missing or unreadable ({exc}); import the .mar again") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
        raise ModelLoadError(f"{path} has no 'model' section; import the .mar again")
    return manifest


def resolve_entry_point(handler: str, model_dir: Path) -> tuple[Any, Any]:
    """``(handle, initialize)`` of ``handler``, as ``TsModelLoader.load`` finds them (call inside
    ``user_imports(model_dir)``). One difference: a handler file of the archive that fails to
    import reports its own error instead of falling back to a built-in of the same name."""
    from ts.model_loader import TsModelLoader

    loader = TsModelLoader()
    module_part = handler.split(":", 1)[0]
    stem = module_part.split("/")[-1].removesuffix(".py")
    if (model_dir / f"{stem}.py").is_file():
        module, function = loader._load_handler_file(handler)
    elif not handler.isidentifier():  # a built-in is a plain module name of ts.torch_handler, no path
        raise ModelLoadError(f"handler {handler!r} names no file of the archive ({stem}.py); import it again")
    else:
        try:
            module, function = loader._load_default_handler(handler), None
        except ModuleNotFoundError as exc:
            if exc.name != f"ts.torch_handler.{handler}":
                raise  # the built-in exists but needs a package that is missing (torchvision, captum)
            raise ModelLoadError(
                f"handler {handler!r} is neither a file of the archive nor a TorchServe built-in "
                "(image_classifier, text_classifier, object_detector, image_segmenter, base_handler)"
            ) from exc
    function = function or "handle"
    if hasattr(module, function):
        return loader._get_function_entry_point(module, function)  # type: ignore[no-any-return]
    return loader._get_class_entry_point(module)  # type: ignore[no-any-return]


def gpu_id(device: str) -> int | None:
    """TorchServe's ``gpu_id`` for deepserve's device: None on the CPU (the handler stays there)."""
    if not device.startswith("cuda"):
        return None
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


def _status(context: Any, idx: int) -> tuple[int, str]:
    code, phrase = context.get_response_status(idx)
    return int(code) if code is not None else 200, str(phrase or "")


# -- values ------------------------------------------------------------------------------------------
def worker_decoded(raw: bytes, content_type: str) -> Any:
    """A body as TorchServe's worker decodes it (``otf_message_handler._retrieve_input_data``)."""
    mime = content_type.split(";")[0].strip()
    try:
        if mime == "application/json":
            return json.loads(raw.decode("utf-8"))
        if mime.startswith("text"):
            return raw.decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        pass  # TorchServe forwards what it cannot decode as bytes
    return raw


def encoded(value: Any) -> bytes:
    """An answer as bytes, as TorchServe's worker writes it: bytes as they are, text in UTF-8,
    a tensor through ``torch.save``, anything else as JSON."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if _is_tensor(value):
        import io

        import torch

        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue()
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise TorchServeError(503, f"Unsupported model output data type: {exc}") from exc


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and type(value).__name__ == "Tensor"


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:
        return repr(value)


def _objects(values: list[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def load_torchserve_handler(
    spec: ModelSpec, version_dir: Path, *, device: str = "cpu", load: bool = True
) -> Handler:
    """model.json ``handler.kind == "torchserve"``: the archive's handler, initialized unless
    ``load=False``."""
    handler = HostedTorchServeHandler(spec, version_dir, device)
    if load:
        handler.load()
    return handler
