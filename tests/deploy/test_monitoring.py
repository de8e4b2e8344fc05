"""k8s/monitoring: rules and alert unit tests through promtool, dashboard PromQL and structure,
the prometheus-operator schemas, the Grafana schema and the adapter rule (KServe: test_kserve.py)."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy import promql
from tests.deploy.manifests import MONITORING, Doc, load_file, one
from tests.deploy.tooling import require_node_modules, require_tool, run_tool

HERE = Path(__file__).parent


@pytest.mark.tools
def test_promtool_check_rules(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules = promql.write_rule_file(tmp_path / "rules.yml")
    out = run_tool([promtool, "check", "rules", str(rules)]).stdout
    assert f"SUCCESS: {len(promql.rules())} rules found" in out


@pytest.mark.tools
def test_promtool_alert_unit_tests(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    promql.write_rule_file(tmp_path / "rules.yml")
    shutil.copy(MONITORING / "alerts_test.yml", tmp_path / "alerts_test.yml")
    out = run_tool([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path).stdout
    assert "SUCCESS" in out


def test_every_alert_has_a_unit_test_and_runbook_text() -> None:
    tested = {
        t["alertname"]
        for case in yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
        for t in case.get("alert_rule_test", [])
        if t["exp_alerts"]
    }
    alerts = [r for r in promql.rules() if "alert" in r]
    assert {a["alert"] for a in alerts} == tested, "every alert needs a firing case in alerts_test.yml"
    required = {
        "DeepserveHighP99Latency",
        "DeepserveHighErrorRate",
        "DeepserveQueueSaturated",
        "DeepserveModelNotReady",
        "DeepserveGPUMemoryNearFull",
    }
    assert required <= tested
    for a in alerts:
        assert a["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(a["annotations"])


@pytest.mark.tools
def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, checked by promtool as a recording rule."""
    promtool = require_tool("promtool")
    exprs = promql.dashboard_exprs() + [
        promql.Expr(
            f"adapter {r['name']['as']}", promql.adapter_query(r, matchers='namespace="x"', group_by="pod")
        )
        for r in promql.adapter_rules()
    ]
    group = {
        "name": "dashboard",
        "rules": [
            {"record": f"dashboard:expr_{n}", "expr": promql.substitute(e.text)} for n, e in enumerate(exprs)
        ],
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    out = run_tool([promtool, "check", "rules", str(path)]).stdout
    assert f"SUCCESS: {len(exprs)} rules found" in out


def test_dashboard_covers_the_issue_panels() -> None:
    dash = promql.dashboard()
    rows = [p for p in dash["panels"] if p["type"] == "row"]
    model_rows = [r for r in rows if r.get("repeat") == "model"]
    assert len(model_rows) == 1, "one row per model: a row repeated over $model"
    variable = next(v for v in dash["templating"]["list"] if v["name"] == "model")
    assert variable["includeAll"] and variable["multi"]
    read = set().union(*(promql.metric_names(e.text) for e in promql.dashboard_exprs()))
    wanted = {
        "deepserve_requests_total",
        "deepserve_request_duration_seconds",
        "deepserve_queue_depth",
        "deepserve_batch_size",
        "deepserve_time_to_first_token_seconds",
        "deepserve_gpu_utilization_ratio",
        "deepserve_gpu_memory_used_bytes",
    }
    assert wanted <= read, f"missing panels for {wanted - read}"
    exprs = [e.text for e in promql.dashboard_exprs()]
    for quantile in ("0.5", "0.99"):
        assert any(f"histogram_quantile({quantile}" in e for e in exprs), f"a p{quantile} latency query"
    assert any('code=~"5.."' in e for e in exprs), "an error-rate panel"
    ids = [p["id"] for p in dash["panels"]] + [q["id"] for p in dash["panels"] for q in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_and_rules_read_only_declared_metrics() -> None:
    """No typo'd metric names: everything queried is declared by deepserve/service/metrics.py."""
    metrics_mod = importlib.import_module("deepserve.service.metrics")
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics_mod.Metrics(registry)
    declared = {m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()}
    exprs = promql.dashboard_exprs() + promql.recording_exprs() + promql.alert_exprs()
    used = set().union(*(promql.metric_names(e.text) for e in exprs))
    used |= {r["seriesQuery"].split("{")[0] for r in promql.adapter_rules()}
    assert used - declared == set()


@pytest.mark.tools
def test_grafana_schema_types_the_dashboard(tmp_path: Path) -> None:
    """@grafana/schema's Dashboard type, with literal types and excess-property checks (tsc)."""
    modules = require_node_modules("@grafana/schema", "typescript")
    (tmp_path / "node_modules").symlink_to(modules)
    text = (MONITORING / "dashboard.json").read_text()
    (tmp_path / "check.ts").write_text(
        f"import type {{ Dashboard }} from '@grafana/schema';\nexport const dashboard: Dashboard = {text};\n"
    )
    (tmp_path / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "strict": True,
                    "noEmit": True,
                    "module": "esnext",
                    "moduleResolution": "bundler",
                    "target": "es2022",
                    "skipLibCheck": True,
                },
                "files": ["check.ts"],
            }
        )
    )
    run_tool([str(modules / ".bin" / "tsc"), "-p", str(tmp_path)], timeout=120)


@pytest.mark.tools
def test_prometheus_operator_schemas(tmp_path: Path) -> None:
    modules = require_node_modules("@kubernetes-models/prometheus-operator", "js-yaml")
    (tmp_path / "node_modules").symlink_to(modules)
    script = shutil.copy(HERE / "prometheus_operator_check.mjs", tmp_path / "check.mjs")
    files = [str(MONITORING / "servicemonitor.yaml"), str(MONITORING / "prometheusrule.yaml")]
    out = run_tool([require_tool("node"), str(script), *files]).stdout
    assert out.split() == ["ok", "ServiceMonitor/deepserve", "ok", "PrometheusRule/deepserve"]


@pytest.mark.tools
def test_monitoring_kustomization_renders(tmp_path: Path) -> None:
    from tests.deploy.manifests import K8S, load_docs, render

    docs = load_docs(render(K8S / "monitoring"))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "PrometheusRule", "ServiceMonitor"]
    cm = one(docs, "ConfigMap", "deepserve-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["dashboard.json"]) == promql.dashboard()


def test_servicemonitor_scrapes_the_service(rendered: dict[str, list[Doc]]) -> None:
    sm = one(load_file(MONITORING / "servicemonitor.yaml"), "ServiceMonitor")
    svc = one(rendered["gpu"], "Service", "deepserve")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    assert all(e["port"] in port_names and e["path"] == "/metrics" for e in sm["spec"]["endpoints"])


def test_adapter_serves_the_hpa_metrics(rendered: dict[str, list[Doc]]) -> None:
    hpa = one(rendered["gpu"], "HorizontalPodAutoscaler", "deepserve")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    served = {r["name"]["as"] for r in promql.adapter_rules()}
    assert wanted <= served, f"HPA metrics {wanted - served} have no prometheus-adapter rule"
    for r in promql.adapter_rules():
        # per-pod metrics need the pod label mapped to the pod resource
        assert r["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert "<<.GroupBy>>" in r["metricsQuery"] and "<<.LabelMatchers>>" in r["metricsQuery"]
