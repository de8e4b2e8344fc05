"""How the server logs: one place that configures the root logger for ``deepserve serve``.

``configure_logging`` runs first thing in the process (before sources are imported, so the
imports' lines look like the server's). One handler on the root logger, on stderr; every other
logger (uvicorn's, grpc's, the libraries') propagates to it, so all lines share one format:

- ``text`` (default): ``time LEVEL logger: message``;
- ``json`` (``DEEPSERVE_LOG_FORMAT=json``): one JSON object a line (python-json-logger) with
  ``time``, ``level``, ``logger``, ``message``, any fields the line carries (the access log's:
  ``service.access_log``), ``exc_info`` for a traceback, and while tracing the ``trace_id`` and
  ``span_id`` of the span current when the line was written, so a log search finds the trace.

The access log (``DEEPSERVE_ACCESS_LOG=true``) is written at INFO whatever the log level: asking
for it is enough.
"""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from deepserve.service import tracing
from deepserve.service.access_log import log as access_logger
from deepserve.service.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = ["levelname", "name", "message"]
JSON_NAMES = {"levelname": "level", "name": "logger"}


class _JsonLines(JsonFormatter):
    """python-json-logger's formatter, plus the current span's ids while tracing."""

    def add_fields(self, data: dict[str, Any], record: logging.LogRecord, message: dict[str, Any]) -> None:
        super().add_fields(data, record, message)
        if tracing.active and "trace_id" not in data:
            ids = _current_span_ids()
            if ids is not None:
                data["trace_id"], data["span_id"] = ids


def _current_span_ids() -> tuple[str, str] | None:
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return _JsonLines(JSON_FIELDS, rename_fields=JSON_NAMES, timestamp="time")  # ISO 8601, UTC
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(settings.log_format))
    # force: `deepserve up` may have logged (and so configured logging) already
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    access_logger.setLevel(logging.INFO if settings.access_log else logging.NOTSET)
