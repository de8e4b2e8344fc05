"""A real Prometheus scraping the server's own `Metrics` (deepserve/service/metrics.py) filled with traffic of
every kind (errors, 429s, slow requests, generation, GPU): every dashboard query answers, every
recording rule records, and exactly the alerts that should go pending do.

The live-server version (tests/deploy/test_prometheus_e2e.py) cannot produce GPU metrics, errors or
overload on these CPU machines; this one can, with the same metric declarations the server uses.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.deploy import promql, scrape_checks
from tests.deploy.prometheus_process import PrometheusProcess
from tests.deploy.tooling import require_tool

pytestmark = [pytest.mark.tools, pytest.mark.slow]

MODELS = ["syn-classifier", "syn-gpt"]
EXPECTED_ALERTS = {
    "DeepserveHighErrorRate": {"syn-classifier"},
    "DeepserveQueueSaturated": {"syn-classifier"},
    "DeepserveHighP99Latency": {"syn-classifier"},
    "DeepserveSlowFirstToken": {"syn-gpt"},
    "DeepserveGenerationStalled": {"syn-stuck"},
    "DeepserveModelNotReady": {"syn-broken"},
    "DeepserveGPUMemoryNearFull": {"0"},
}


def _traffic(m: Any) -> None:
    """One round of traffic; called before and after the first scrape so rates are non-zero."""
    for code, n in (("200", 90), ("500", 10), ("429", 5), ("400", 3)):
        m.requests.labels("syn-classifier", "v2-http", code).inc(n)
    for _ in range(20):
        m.request_duration.labels("syn-classifier", "v2-http").observe(4.0)  # slow: p99 alert
        m.queue_duration.labels("syn-classifier").observe(0.01)
        m.compute_duration.labels("syn-classifier").observe(0.02)
        m.batch_size.labels("syn-classifier").observe(8)
        m.requests.labels("syn-gpt", "openai", "200").inc()
        m.request_duration.labels("syn-gpt", "openai").observe(0.3)
        m.queue_duration.labels("syn-gpt").observe(0.001)
        m.compute_duration.labels("syn-gpt").observe(0.2)
        m.batch_size.labels("syn-gpt").observe(4)
        m.time_to_first_token.labels("syn-gpt").observe(3.0)  # slow first token: its alert
        m.inter_token_latency.labels("syn-gpt").observe(0.01)
        m.prompt_tokens.labels("syn-gpt").inc(12)
        m.generated_tokens.labels("syn-gpt").inc(16)


def _gauges(m: Any) -> None:
    m.queue_depth.labels("syn-classifier").set(3)
    m.queue_depth.labels("syn-gpt").set(0)
    m.inflight.labels("syn-classifier").set(7)
    m.inflight.labels("syn-gpt").set(2)
    m.running_sequences.labels("syn-gpt").set(2)
    m.waiting_sequences.labels("syn-gpt").set(1)
    m.kv_cache_bytes.labels("syn-gpt").set(2**20)
    # a generation model whose decode loop hangs: sequences in flight, its token counter never moves
    m.running_sequences.labels("syn-stuck").set(3)
    m.waiting_sequences.labels("syn-stuck").set(0)
    m.generated_tokens.labels("syn-stuck")
    for model, ready in (("syn-classifier", 1), ("syn-gpt", 1), ("syn-broken", 0), ("syn-stuck", 1)):
        m.model_ready.labels(model, "1").set(ready)
        m.model_load_seconds.labels(model, "1").set(0.5)
    m.gpu_utilization.labels("0").set(0.5)
    m.gpu_memory_used.labels("0").set(99e9)
    m.gpu_memory_total.labels("0").set(100e9)


@pytest.fixture(scope="module")
def metrics_endpoint() -> Iterator[tuple[str, Any]]:
    metrics_mod = importlib.import_module("deepserve.service.metrics")

    metrics = metrics_mod.Metrics(CollectorRegistry())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # not metrics.render(): on a GPU machine NVML would overwrite the synthetic GPU gauges
            body = generate_latest(metrics.registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", metrics
    server.shutdown()
    server.server_close()


def test_every_query_against_the_servers_metrics(metrics_endpoint: tuple[str, Any], tmp_path: Path) -> None:
    target, metrics = metrics_endpoint
    _gauges(metrics)
    _traffic(metrics)
    rules = promql.write_rule_file(tmp_path / "rules.yml")
    with PrometheusProcess(require_tool("prometheus"), tmp_path, [target], [rules]) as prom:
        assert prom.wait_for('up{job="deepserve"} == 1'), "Prometheus never scraped the endpoint"
        _traffic(metrics)
        assert prom.wait_for('deepserve:requests:rate5m{model="syn-gpt"} > 0'), "no rate after 2 scrapes"
        families = promql.exposed(generate_latest(metrics.registry).decode())

        answered = scrape_checks.check_dashboard(prom, MODELS, families)
        unanswered = {e.where for e in promql.dashboard_exprs()} - answered
        assert not unanswered, f"dashboard queries with no data even with every metric filled: {unanswered}"
        scrape_checks.check_recording_rules(
            prom, MODELS, only={"deepserve:time_to_first_token_seconds:p99_rate5m": ["syn-gpt"]}
        )
        scrape_checks.check_rules_healthy(prom)
        assert scrape_checks.firing_alert_exprs(prom) == EXPECTED_ALERTS
        # the HPA's per-pod values: summed over the pod's models (7 + 2 in flight, 3 + 0 queued)
        scrape_checks.check_adapter_queries(
            prom, {"deepserve_inflight_requests": 9, "deepserve_queue_depth": 3}
        )

        # the alert rules themselves go pending (they all have `for:`), with the right labels
        assert _pending_alerts(prom) == EXPECTED_ALERTS


def _pending_alerts(prom: PrometheusProcess, deadline_s: float = 15.0) -> dict[str, set[str]]:
    """Poll ALERTS until every expected alert is pending (rules are evaluated one group at a time)."""
    deadline = time.monotonic() + deadline_s
    while True:
        got: dict[str, set[str]] = {}
        for s in prom.query('ALERTS{alertstate="pending"}'):
            labels = s["metric"]
            got.setdefault(labels["alertname"], set()).add(labels.get("model") or labels.get("gpu", ""))
        if got == EXPECTED_ALERTS or time.monotonic() > deadline:
            return got
        time.sleep(0.2)
