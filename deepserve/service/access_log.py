"""The access log: one line for each request to a model, at INFO on the ``deepserve.access`` logger.

On with ``DEEPSERVE_ACCESS_LOG=true`` (off by default: at thousands of requests a second the lines
cost more than the requests). A line is written when the request ends (a stream: after its last
byte), for the same requests ``deepserve_requests_total`` counts and with the same status: a
stream that failed after its 200 header says the error's status, a client that left says 499.

Text: ``POST /v2/models/sum/infer 200 0.41 ms model=sum protocol=v2-http request_id=abc``. JSON
(``DEEPSERVE_LOG_FORMAT=json``): the same message, and each part as a field of its own
(``method``, ``path``, ``status``, ``duration_ms``, ``model``, ``protocol``, ``request_id``, and
``trace_id`` while tracing) for the log collector to index.
"""

from __future__ import annotations

import logging

LOGGER = "deepserve.access"
log = logging.getLogger(LOGGER)


def write(
    method: str, path: str, protocol: str, model: str, status: int, duration_ms: float,
    request_id: str | None, trace_id: str | None,
) -> None:  # fmt: skip
    """``path``: the HTTP path, or the gRPC method's; ``request_id``: the client's or ingress's
    ``x-request-id``, else the KServe v2 request id; ``trace_id``: the request's trace, if traced."""
    fields = {"method": method, "path": path, "status": status, "duration_ms": round(duration_ms, 3),
              "model": model, "protocol": protocol, "request_id": request_id}  # fmt: skip
    if trace_id is not None:
        fields["trace_id"] = trace_id
    log.info("%s %s %d %.2f ms model=%s protocol=%s request_id=%s", method, path, status, duration_ms, model,
             protocol, request_id or "-", extra=fields)  # fmt: skip
