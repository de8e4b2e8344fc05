"""k8s/monitoring: rules and alert unit tests through promtool, dashboard PromQL and structure,
the prometheus-operator schemas, the Grafana schema, the adapter rule, and the runbook every alert
links to (docs/operations.md). KServe: test_kserve.py."""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy import promql, runbook
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
        "DeepserveSlowFirstToken",
        "DeepserveGenerationStalled",
    }
    assert required <= tested
    for a in alerts:
        assert a["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description", "runbook_url"} <= set(a["annotations"])


def test_every_alert_links_to_its_runbook_section() -> None:
    """runbook_url is the alert's own section of docs/operations.md, as GitHub anchors it, and the
    section says what the alert means, what to check first and what to do."""
    sections = runbook.sections()
    for a in (r for r in promql.rules() if "alert" in r):
        url, _, anchor = a["annotations"]["runbook_url"].partition("#")
        assert url == runbook.RUNBOOK_URL, f"{a['alert']}: runbook_url must point at {runbook.RUNBOOK_URL}"
        assert anchor == a["alert"].lower(), f"{a['alert']}: link its own section, not #{anchor}"
        assert anchor in sections, f"{a['alert']}: docs/operations.md has no heading for #{anchor}"
        body = sections[anchor].body
        for part in ("**What it means.**", "**Check first.**", "**What to do.**"):
            assert part in body, f"the runbook section of {a['alert']} lacks {part}"


def test_runbook_links_resolve() -> None:
    text = runbook.RUNBOOK.read_text()
    for file, anchor in runbook.anchor_links(text):
        target = runbook.sections((runbook.RUNBOOK.parent / file).read_text()) if file else runbook.sections()
        assert anchor in target, f"docs/operations.md links to {file}#{anchor}, which has no such heading"


def test_runbook_describes_every_dashboard_panel() -> None:
    """The runbook's Dashboard section has a table row for each panel, and the dashboard links to it."""
    rows = set(re.findall(r"^\| ([^|]+?) \|", runbook.sections()["dashboard"].body, re.MULTILINE))
    titles = {p["title"] for p in promql.panels(promql.dashboard())}
    assert titles - rows == set(), "panels missing from the Dashboard section of docs/operations.md"
    assert runbook.RUNBOOK_URL in {link["url"] for link in promql.dashboard()["links"]}


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
        "deepserve_inter_token_latency_seconds",
        "deepserve_running_sequences",
        "deepserve_waiting_sequences",
        "deepserve_kv_cache_bytes",
        "deepserve_gpu_utilization_ratio",
        "deepserve_gpu_memory_used_bytes",
        "deepserve_build_info",
    }
    assert wanted <= read, f"missing panels for {wanted - read}"
    exprs = [e.text for e in promql.dashboard_exprs()]
    for histogram in ("request_duration", "time_to_first_token", "inter_token_latency"):
        for quantile in ("0.5", "0.99"):
            assert any(
                f"histogram_quantile({quantile}" in e and f"deepserve_{histogram}_seconds_bucket" in e
                for e in exprs
            ), f"a p{quantile} query of deepserve_{histogram}_seconds"
    assert any('code=~"5.."' in e for e in exprs), "an error-rate panel"
    ids = [p["id"] for p in dash["panels"]] + [q["id"] for p in dash["panels"] for q in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_and_rules_read_only_declared_metrics() -> None:
    """No typo'd metric names: everything queried is declared by deepserve/service/metrics.py."""
    metrics_mod = importlib.import_module("deepserve.service.metrics")
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics_mod.Metrics(registry)
    suffix = {"counter": "_total", "info": "_info"}  # prometheus-client's names omit them
    declared = {m.name + suffix.get(m.type, "") for m in registry.collect()}
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
