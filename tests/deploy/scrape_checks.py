"""Checks shared by the two real-Prometheus tests: every dashboard and rule expression evaluated."""

from __future__ import annotations

import math

from tests.deploy import promql
from tests.deploy.prometheus_process import PrometheusProcess


def finite_values(result: list[dict[str, object]]) -> list[float]:
    values = [float(s["value"][1]) for s in result]  # type: ignore[index]
    return [v for v in values if math.isfinite(v)]


def check_dashboard(
    prom: PrometheusProcess, models: list[str], families: dict[str, set[str | None]]
) -> set[str]:
    """Every applicable panel query returns a finite series; returns the panel queries that did."""
    answered: set[str] = set()
    for expr in promql.dashboard_exprs():
        for model in models if expr.per_model else [models[0]]:
            if not promql.applicable(expr, model, families):
                continue
            query = promql.substitute(expr.text, model=model, rate_interval="1m")
            result = prom.query(query)
            assert finite_values(result), f"{expr.where} for {model}: {query} -> {result}"
            answered.add(expr.where)
    return answered


def check_recording_rules(
    prom: PrometheusProcess, models: list[str], only: dict[str, list[str]] | None = None
) -> None:
    """Every recording rule has a finite value for every model (``only``: rule -> the models
    it is about, e.g. time to first token exists for generation models alone)."""
    for expr in promql.recording_exprs():
        name = expr.where.split()[-1]
        for model in (only or {}).get(name, models):
            result = prom.wait_for(f'{name}{{model="{model}"}}', deadline_s=15)
            assert finite_values(result), f"{name} for {model}: {result}"


def check_rules_healthy(prom: PrometheusProcess) -> None:
    groups = prom.api("rules")["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    assert len(loaded) == len(promql.rules())
    bad = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not bad, f"rules failing in Prometheus: {bad}"


def firing_alert_exprs(prom: PrometheusProcess) -> dict[str, set[str]]:
    """Alert name -> the `model` (or `gpu`) labels its expression currently returns."""
    out: dict[str, set[str]] = {}
    for expr in promql.alert_exprs():
        result = prom.query(expr.text)
        labels = {s["metric"].get("model") or s["metric"].get("gpu") or "" for s in result}
        if labels:
            out[expr.where.split()[-1]] = labels
    return out


def check_adapter_queries(prom: PrometheusProcess, expected: dict[str, float]) -> None:
    """The prometheus-adapter queries, with our job in place of the pod matchers, give one value each."""
    for rule in promql.adapter_rules():
        query = promql.adapter_query(rule, matchers='job="deepserve"', group_by="instance")
        result = prom.query(query)
        assert len(result) == 1, (
            f"{query} -> {result}: the HPA scales on {rule['name']['as']}, so the server must set it "
            "(deepserve/service/metrics.py gauge, per model) once models are loaded"
        )
        name = rule["name"]["as"]
        if name in expected:
            assert finite_values(result) == [expected[name]], f"{query} -> {result}"
