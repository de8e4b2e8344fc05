"""How the server reports: one place that configures the log lines (and traces) of ``deepserve serve``.

``configure_logging`` runs first thing in the process (before sources are imported, so the
imports' lines look like the server's). One handler on the root logger, on stderr; every other
logger (uvicorn's, grpc's, the libraries') propagates to it, so all lines share one format:

- ``text`` (default): ``time LEVEL logger: message``;
- ``json`` (``DEEPSERVE_LOG_FORMAT=json``): one JSON object a line (python-json-logger) with
  ``time``, ``level``, ``logger``, ``message``, the fields a line carries (the access log's), the
  traceback as ``exc_info``, and while tracing the ``trace_id`` and ``span_id`` of the request
  being served, so a log search finds its trace.

A client that leaves before its answer is no server error: whoever logs one (uvicorn, a
middleware) at WARNING or above with the disconnect as its exception, the line is written at INFO
without the traceback. The access log (``DEEPSERVE_ACCESS_LOG=true``) is written at INFO whatever
the log level: asking for it is enough.

Traces start here too, when the ``OTEL_*`` variables ask for them (``service.tracing``): this is
the process's one early step, and its lines refer to them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from pythonjsonlogger.orjson import OrjsonFormatter  # orjson: twice as fast as the json module's
from starlette.requests import ClientDisconnect

from deepserve.service import access_log, tracing
from deepserve.service.errors import ClientClosedError
from deepserve.service.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = ["levelname", "name", "message"]
JSON_NAMES = {"levelname": "level", "name": "logger"}
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
log = logging.getLogger(__name__)


def configure_logging(
    settings: Settings, stream: IO[str] | None = None, environ: Mapping[str, str] | None = None
) -> None:
    """``stream``: where the lines go (stderr); ``environ``: the OTEL_* variables (the process's).
    Exits (status 2) with one line when the variables ask for traces this server cannot send."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(settings.log_format))
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    handler.addFilter(DisconnectsAtInfo(level))
    # force: `deepserve up` may have logged (and so configured logging) already
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in UVICORN_LOGGERS:  # a uvicorn.Config made earlier in the process gave them handlers
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger(access_log.LOGGER).setLevel(logging.INFO if settings.access_log else logging.NOTSET)
    try:
        tracing.configure(os.environ if environ is None else environ)
    except tracing.TracingConfigError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return _JsonLines(JSON_FIELDS, rename_fields=JSON_NAMES, timestamp="time")  # ISO 8601, UTC
    return logging.Formatter(TEXT_FORMAT)


class _JsonLines(OrjsonFormatter):
    """python-json-logger's formatter, plus the current request span's ids while tracing."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        if tracing.active and "trace_id" not in log_data:
            span = tracing.current()
            if span is not None:
                log_data["trace_id"], log_data["span_id"] = tracing.ids(span)


_DISCONNECTS = (ClientDisconnect, ClientClosedError, ConnectionResetError, BrokenPipeError)


def is_disconnect(error: BaseException | None) -> bool:
    """The client went away: the disconnect errors of Starlette, uvicorn, the socket, and ours."""
    # uvicorn's ClientDisconnected (an OSError of its own) by name: uvicorn.protocols is internal
    return isinstance(error, _DISCONNECTS) or type(error).__name__ == "ClientDisconnected"


class DisconnectsAtInfo(logging.Filter):
    """A line logged with a client disconnect as its exception is written at INFO, without the
    traceback; below ``level`` (the log level) it is not written."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO or not record.exc_info or not is_disconnect(record.exc_info[1]):
            return True
        if self.level > logging.INFO:
            return False
        error = record.exc_info[1]
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg = f"{record.getMessage().rstrip()} (client disconnected: {type(error).__name__})"
        record.args, record.exc_info, record.exc_text = (), None, None
        return True
