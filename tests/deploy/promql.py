"""The PromQL of k8s/monitoring: dashboard panels, recording and alert rules, the adapter's queries."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.manifests import MONITORING

METRIC_NAME = re.compile(r"\b(deepserve_[a-z_]+)\b")


@dataclass(frozen=True)
class Expr:
    where: str  # "panel 'Latency' A", "alert DeepserveHighErrorRate", ...
    text: str
    per_model: bool = False  # uses the dashboard's $model variable


def dashboard() -> dict[str, Any]:
    return dict(json.loads((MONITORING / "dashboard.json").read_text()))


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel, including those nested inside collapsed rows."""
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        out += p.get("panels", []) if p["type"] == "row" else [p]
    return out


def dashboard_exprs() -> list[Expr]:
    return [
        Expr(f"panel {p['title']!r} {t['refId']}", t["expr"], "$model" in t["expr"])
        for p in panels(dashboard())
        for t in p.get("targets", [])
    ]


def rule_spec() -> dict[str, Any]:
    """The PrometheusRule's .spec: exactly a Prometheus rule file (groups: ...)."""
    doc = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    return dict(doc["spec"])


def write_rule_file(path: Path) -> Path:
    path.write_text(yaml.safe_dump(rule_spec(), sort_keys=False))
    return path


def rules() -> list[dict[str, Any]]:
    return [r for g in rule_spec()["groups"] for r in g["rules"]]


def recording_exprs() -> list[Expr]:
    return [Expr(f"record {r['record']}", r["expr"]) for r in rules() if "record" in r]


def alert_exprs() -> list[Expr]:
    return [Expr(f"alert {r['alert']}", r["expr"]) for r in rules() if "alert" in r]


def substitute(expr: str, *, model: str = "x", rate_interval: str = "5m") -> str:
    """Grafana's variables replaced by what Grafana would send to Prometheus."""
    return expr.replace("$__rate_interval", rate_interval).replace("$model", model)


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load((MONITORING / "prometheus-adapter-values.yaml").read_text())
    return list(values["rules"]["custom"])


def adapter_query(rule: dict[str, Any], *, matchers: str, group_by: str) -> str:
    """The adapter's metricsQuery template filled in as prometheus-adapter does for one metric."""
    series = str(rule["seriesQuery"]).split("{", 1)[0]
    return (
        str(rule["metricsQuery"])
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", group_by)
    )


def metric_names(expr: str) -> set[str]:
    """Base metric families an expression reads (histogram suffixes stripped)."""
    names = set(METRIC_NAME.findall(expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def exposed(metrics_text: str) -> dict[str, set[str | None]]:
    """Metric family -> the `model` label values it has samples for (None: samples without one)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, set[str | None]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            # a histogram child with no observations yet (e.g. the batcher's queue histogram of a
            # generation model that only streamed) has no rate, so no quantile: not applicable
            if family.type == "histogram" and not sample.name.endswith("_count"):
                continue
            if family.type == "histogram" and sample.value == 0:
                continue
            name = re.sub(r"_(bucket|sum|count|created)$", "", sample.name)
            out.setdefault(name, set()).add(sample.labels.get("model"))
    return out


def applicable(expr: Expr, model: str, families: dict[str, set[str | None]]) -> bool:
    """True when the server exposes every metric the expression reads (for `model`, if per model):
    then Prometheus must return a series for it; otherwise (no GPU, not a generation model) it may not."""
    for name in metric_names(expr.text):
        models = families.get(name, set())
        if not models or (expr.per_model and model not in models):
            return False
    return True
