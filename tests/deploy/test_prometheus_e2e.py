"""A real Prometheus (Debian's package) scraping a live `deepserve serve`: after some requests, every
dashboard query and every rule that the served models can answer returns its series, the rules are
healthy, no alert fires for a healthy server, and the prometheus-adapter queries give the HPA a value.

What a CPU-only server cannot show here (GPU metrics, 5xx, overload) is covered against the server's
own metric declarations in test_prometheus_metrics.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy import promql, scrape_checks
from tests.deploy.prometheus_process import PrometheusProcess
from tests.deploy.tooling import require_tool

pytestmark = [pytest.mark.tools, pytest.mark.e2e, pytest.mark.slow]

# the server must record these two for every request it answers, whatever the model
ALWAYS_RECORDED = {"deepserve_requests_total", "deepserve_request_duration_seconds"}


def _pick(
    metas: dict[str, dict[str, Any]], preferred: str, *, input_name: str = "", output_name: str = ""
) -> str:
    """The preferred default-store model if served, else any served model with that input / output."""
    if preferred in metas:
        return preferred
    for name, meta in sorted(metas.items()):
        inputs = [t["name"] for t in meta["inputs"]]
        outputs = [t["name"] for t in meta["outputs"]]
        if (input_name and inputs == [input_name]) or (output_name and output_name in outputs):
            return name
    return ""


def _features(rows: int, width: int) -> dict[str, Any]:
    data = [0.5] * (rows * width)
    return {"inputs": [{"name": "features", "shape": [rows, width], "datatype": "FP32", "data": data}]}


def _traffic(client: httpx.Client, metas: dict[str, dict[str, Any]]) -> list[str]:
    """KServe v2 infers (and one bad one) on a tabular classifier, OpenAI embeddings and a completion
    where the store has such models; returns the models the requests went to."""
    tabular = _pick(metas, "tabular-mlp", input_name="features")
    assert tabular, f"the live server serves no tabular model: {sorted(metas)}"
    width = int(metas[tabular]["inputs"][0]["shape"][-1])
    for _ in range(4):
        client.post(f"/v2/models/{tabular}/infer", json=_features(2, width)).raise_for_status()
    bad = client.post(f"/v2/models/{tabular}/infer", json=_features(1, width + 1))
    assert 400 <= bad.status_code < 500, f"a wrong feature count must be a client error: {bad.text}"
    models = [tabular]
    embedder = _pick(metas, "minilm", output_name="sentence_embedding")
    if embedder:
        embed = {"model": embedder, "input": ["deepserve serves models"]}
        for _ in range(2):
            client.post("/v1/embeddings", json=embed).raise_for_status()
        models.append(embedder)
    generator = _pick(metas, "docs-gpt", input_name="text_input")
    if generator:
        complete = {"model": generator, "prompt": "The ", "max_tokens": 4}
        client.post("/v1/completions", json=complete).raise_for_status()
        models.append(generator)
    return models


def test_prometheus_scrapes_a_live_server(live_server: Any, tmp_path: Path) -> None:
    prometheus = require_tool("prometheus")
    target = live_server.http_url.removeprefix("http://").rstrip("/")
    rules = promql.write_rule_file(tmp_path / "rules.yml")
    with (
        httpx.Client(base_url=live_server.http_url, timeout=30) as client,
        PrometheusProcess(prometheus, tmp_path, [target], [rules]) as prom,
    ):
        served = [m["id"] for m in client.get("/v1/models").raise_for_status().json()["data"]]
        metas = {m: client.get(f"/v2/models/{m}").raise_for_status().json() for m in served}
        assert prom.wait_for('up{job="deepserve"} == 1'), "Prometheus never scraped the server"
        # two rounds: a series seen first with its final value has no increase, so no rate
        models = _traffic(client, metas)
        for model in models:
            assert prom.wait_for(f'deepserve_requests_total{{model="{model}"}}'), f"{model} never scraped"
        _traffic(client, metas)
        for model in models:
            assert prom.wait_for(f'deepserve:requests:rate5m{{model="{model}"}} > 0'), f"no rate for {model}"
        _check_everything(prom, models, client.get("/metrics").raise_for_status().text)


def _check_everything(prom: PrometheusProcess, models: list[str], metrics_text: str) -> None:
    families = promql.exposed(metrics_text)
    answered = scrape_checks.check_dashboard(prom, models, families)
    core = {
        e.where
        for e in promql.dashboard_exprs()
        if e.per_model and promql.metric_names(e.text) <= ALWAYS_RECORDED
    }
    assert core <= answered, f"panels without data from a live server: {core - answered}"
    # time to first token is recorded by the generation models alone
    ttft = "deepserve_time_to_first_token_seconds_count{{model=\"{}\"}}"
    generators = [m for m in models if ttft.format(m) in metrics_text]
    scrape_checks.check_recording_rules(
        prom, models, only={"deepserve:time_to_first_token_seconds:p99_rate5m": generators}
    )
    scrape_checks.check_rules_healthy(prom)
    firing = scrape_checks.firing_alert_exprs(prom)
    wrong = {alert: labels & set(models) for alert, labels in firing.items() if labels & set(models)}
    assert not wrong, f"alerts firing for a healthy server: {wrong}"
    assert "DeepserveTargetDown" not in firing
    scrape_checks.check_adapter_queries(prom, {})
