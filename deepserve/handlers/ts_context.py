"""What a TorchServe handler sees of its requests, built from TorchServe's own classes (``ts``).

TorchServe's Java frontend turns each HTTP request into a wire record (query parameters first,
then the body as parameter ``"body"`` or each multipart field under its name, the HTTP headers
as sent), and its Python worker turns a batch of records into the ``data`` list and one
``RequestProcessor`` per request (``ts.service.Service.retrieve_data_for_inference``). Here the
records are written from deepserve's decoded requests and handed to that same function, so a
handler gets what TorchServe would give it.

Two differences, on purpose: header look-ups ignore case (deepserve's transports lower-case
names; TorchServe kept the client's spelling, and HTTP says case does not matter), and the
handler's metrics (``context.metrics.add_time(...)``) are kept in memory instead of printed for
a frontend to parse.

Importing this module needs the ``ts`` package (``pip install 'deepserve[torchserve]'``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from ts.context import RequestProcessor
from ts.metrics.caching_metric import CachingMetric
from ts.metrics.metric_cache_abstract import MetricCacheAbstract
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.metrics.metric_type_enum import MetricTypes
from ts.service import Service

log = logging.getLogger(__name__)

MULTIPART, URLENCODED = "multipart/form-data", "application/x-www-form-urlencoded"


def wire_request(
    body: Any, content_type: str | None, parameters: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any]:
    """One request as TorchServe's frontend sends it to a worker (values already decoded, as the
    worker's ``_retrieve_input_data`` leaves them: JSON parsed, text as str, the rest bytes):
    query parameters first, then the body as ``body``, a multipart field as ``data``, the fields
    of a url-encoded form each under its name."""
    sent_as = headers.get("content-type", "").split(";")[0].strip().lower()
    fields = [{"name": k, "contentType": "", "value": _bytes(v)} for k, v in parameters.items()]
    if sent_as == URLENCODED and isinstance(body, bytes | str):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        fields += [{"name": k, "contentType": "", "value": v.encode()} for k, v in parse_qsl(text)]
    else:
        if sent_as == MULTIPART and isinstance(body, str):
            body = body.encode("utf-8")  # a plain form field reaches a TorchServe worker as bytes
        mime = (content_type or "").split(";")[0].strip()
        fields.append(
            {"name": "data" if sent_as == MULTIPART else "body", "contentType": mime, "value": body}
        )
    return {
        "requestId": str(uuid.uuid4()).encode(),
        "parameters": fields,
        "headers": [{"name": k.encode(), "value": v.encode()} for k, v in headers.items()],
    }


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


@dataclass
class Batch:
    """A batch in the worker's terms: the handler's ``data``, its request processors and ids."""

    data: list[dict[str, Any]]
    processors: list[RequestProcessor]
    request_ids: dict[int, str] = field(default_factory=dict)


def worker_batch(records: list[dict[str, Any]]) -> Batch:
    processors, data, ids = Service.retrieve_data_for_inference(records)
    return Batch(data, [HeaderLookup(p.get_request_properties()) for p in processors], ids)


class HeaderLookup(RequestProcessor):  # type: ignore[misc]  # ts is untyped
    """``get_request_header(idx, "X-Trace")`` finds ``x-trace`` too: header names ignore case."""

    def __init__(self, headers: dict[str, Any]) -> None:
        super().__init__(headers)
        self._lower = {k.lower(): v for k, v in headers.items() if isinstance(k, str)}

    def get_request_property(self, key: str) -> Any:
        value = super().get_request_property(key)
        if value is None and isinstance(key, str):
            return self._lower.get(key.lower())
        return value


class HandlerMetrics(MetricCacheAbstract):  # type: ignore[misc]
    """``context.metrics``: TorchServe's metrics cache API (add_time, add_counter, add_metric,
    get_metric, ...), its values kept per metric name (last, count, sum) and logged at DEBUG."""

    get_metric = MetricsCacheYamlImpl.get_metric  # a cache look-up, no YAML involved

    def __init__(self, model_name: str) -> None:
        super().__init__(config_file_path="")
        self.model_name = model_name
        self.values: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def initialize_cache(self) -> None:
        """Nothing to read: metrics are made on first use, as TorchServe makes undeclared ones."""

    def add_metric_to_cache(
        self, metric_name: str, unit: str, dimension_names: list[str] | None = None,
        metric_type: MetricTypes = MetricTypes.COUNTER,
    ) -> CachingMetric:  # fmt: skip
        metric = KeptMetric(self, metric_name, unit, list(dimension_names or []), metric_type)
        self.cache.setdefault(metric_type, {})[metric_name] = metric
        return metric

    def record(self, name: str, value: float) -> None:
        with self._lock:
            kept = self.values.setdefault(name, {"count": 0, "sum": 0.0, "last": 0.0})
            kept["count"] += 1
            kept["sum"] += float(value)
            kept["last"] = float(value)


class KeptMetric(CachingMetric):  # type: ignore[misc]
    def __init__(
        self, owner: HandlerMetrics, name: str, unit: str, dimensions: list[str], kind: MetricTypes
    ) -> None:
        super().__init__(metric_name=name, unit=unit, dimension_names=dimensions, metric_type=kind)
        self._owner = owner

    def add_or_update(
        self, value: float, dimension_values: list[str] | None = None, request_id: str = ""
    ) -> None:
        """CachingMetric's checks (same dimensions, no negative counter), without formatting a
        log line nobody reads: this runs twice per batch on the hot path."""
        values = dimension_values or []
        if len(values) != len(self.dimension_names) or (
            self.metric_type == MetricTypes.COUNTER and value < 0
        ):
            log.error("[METRICS]%s: cannot add %r with dimensions %s", self.metric_name, value, values)
            return
        self._owner.record(self.metric_name, value)
        if log.isEnabledFor(logging.DEBUG):
            dims = ",".join(f"{n}:{v}" for n, v in zip(self.dimension_names, values, strict=True))
            log.debug("[METRICS]%s.%s:%s|#%s|%s", self.metric_name, self.unit, value, dims, request_id)
