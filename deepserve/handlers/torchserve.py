"""TorchServe adapter: the deepserve handlers inside a TorchServe worker, from a ``.mar``.

TorchServe imports this file as the ``--handler`` of the archive and takes the ONE class defined
here (it refuses a module defining several), calls ``initialize(context)`` once per worker and
``handle(data, context)`` per batch. ``data`` is a list with one dict per request: the raw body
under ``"body"``, a multipart field under its name (``"data"`` by convention), query parameters
as extra string keys. Values are bytes, str or (for JSON content types) decoded JSON.

The model directory (``context.system_properties["model_dir"]``, the unpacked archive) holds
model.json and the graph files exactly as in a model-store version. deepserve must be
installed in TorchServe's Python (``pip install 'deepserve[serve]'``; torch is TorchServe's own).

A request whose input is invalid gets its own 400 answer (``context.set_response_status``)
without failing the rest of the batch; if the batch itself fails, items are retried one by one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deepserve.handlers import load_handler
from deepserve.handlers.base import Handler, HandlerError, InvalidInputError, PayloadRequest, Tensors

log = logging.getLogger(__name__)

_BODY_KEYS = ("data", "body")
_PNG = b"\x89PNG\r\n\x1a\n"


def payload_request(row: dict[str, Any]) -> PayloadRequest:
    """One TorchServe request dict -> a PayloadRequest (body + query parameters)."""
    key = next((k for k in _BODY_KEYS if row.get(k) is not None), None)
    body = row.get(key) if key else None
    params = {k: _text(v) for k, v in row.items() if k != key and k not in _BODY_KEYS}
    if body is None or (isinstance(body, bytes | bytearray | str) and not body):
        if params:  # TorchServe's frontend turns a form post into parameters and drops the body
            raise InvalidInputError(
                f"the body arrived as form fields {sorted(params)} (curl -d posts a form): send JSON "
                "with -H 'Content-Type: application/json', a raw body with --data-binary, or a "
                "multipart 'data' field"
            )
        raise InvalidInputError("empty request body; send the input as the body or a multipart 'data' field")
    return PayloadRequest(body=bytes(body) if isinstance(body, bytearray) else body, parameters=params)


def _text(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes | bytearray) else value


def error_body(exc: Exception) -> dict[str, Any]:
    status = exc.status if isinstance(exc, HandlerError) else 500
    return {"code": status, "type": type(exc).__name__, "message": str(exc)}


def _device(system_properties: dict[str, Any]) -> str:
    gpu_id = system_properties.get("gpu_id")
    if gpu_id is None:
        return "cpu"
    import torch

    return f"cuda:{gpu_id}" if torch.cuda.is_available() else "cpu"


def _set_status(context: Any, idx: int, body: dict[str, Any]) -> None:
    setter = getattr(context, "set_response_status", None)
    if setter is not None:
        # ASCII only: TorchServe frames the phrase by its length in characters but writes UTF-8,
        # so a non-ASCII phrase (an error echoing the client's input) corrupts the frame and kills
        # the worker. The body keeps the message as it was.
        phrase = body["message"].encode("ascii", "replace").decode("ascii")
        setter(body["code"], phrase, idx)


def _content_type(result: Any) -> str:
    if isinstance(result, bytes | bytearray):
        return "image/png" if bytes(result[:8]) == _PNG else "application/octet-stream"
    if isinstance(result, str):
        return "text/plain; charset=utf-8"
    return "application/json"  # TorchServe's worker serializes dicts and lists with json.dumps


def _set_content_type(context: Any, idx: int, result: Any) -> None:
    setter = getattr(context, "set_response_content_type", None)
    if setter is not None:
        setter(idx, _content_type(result))


class DeepserveHandler:
    """TorchServe entry point: ``initialize`` loads the handler, ``handle`` runs one batch."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        props = dict(context.system_properties)
        model_dir = Path(props["model_dir"])
        self.handler = load_handler(model_dir, device=_device(props))
        self.initialized = True
        log.info("deepserve handler for %s (%s) ready", self.handler.spec.name, self.handler.spec.task)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        if self.handler is None:
            raise RuntimeError("initialize(context) was not called")
        handler = self.handler
        results: list[Any] = [None] * len(data)
        requests: dict[int, PayloadRequest] = {}
        items: dict[int, Tensors] = {}
        for idx, row in enumerate(data):
            try:
                requests[idx] = payload_request(row)
                items[idx] = handler.preprocess(requests[idx])
            except HandlerError as exc:
                results[idx] = error_body(exc)
                _set_status(context, idx, results[idx])
        for idx, outputs in _run(handler, items).items():
            try:
                if isinstance(outputs, Exception):
                    raise outputs
                results[idx] = handler.postprocess(outputs, requests[idx])
            except HandlerError as exc:
                results[idx] = error_body(exc)
                _set_status(context, idx, results[idx])
        for idx, result in enumerate(results):
            _set_content_type(context, idx, result)
        return results


def _run(handler: Handler, items: dict[int, Tensors]) -> dict[int, Tensors | Exception]:
    """predict_batch over all items; on failure, item by item so one bad input fails only itself."""
    if not items:
        return {}
    keys = list(items)
    if len(keys) > 1:
        try:
            return dict(zip(keys, handler.predict_batch([items[k] for k in keys]), strict=True))
        except Exception:  # any failure: isolate it by retrying each item alone
            log.warning("batch of %d failed; retrying item by item", len(keys), exc_info=True)
    out: dict[int, Tensors | Exception] = {}
    for k in keys:
        try:
            out[k] = handler.predict_batch([items[k]])[0]
        except HandlerError as exc:
            out[k] = exc
    return out
