"""k8s/: both overlays render, pass the Kubernetes schemas and checkov, and hold what schemas miss."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from tests.deploy.manifests import OVERLAYS, Doc, container, one, settings_configmap
from tests.deploy.tooling import require_tool, run_tool

pytestmark = pytest.mark.tools

GPU = "nvidia.com/gpu"
# the server's DEEPSERVE_DRAIN_TIMEOUT_S default (Settings.drain_timeout_s); the ConfigMap may override it
DEFAULT_DRAIN_S = 30.0


def _deployment(rendered: dict[str, list[Doc]], overlay: str) -> Doc:
    return one(rendered[overlay], "Deployment", "deepserve")


def _settings(docs: list[Doc]) -> dict[str, str]:
    return dict(settings_configmap(docs)["data"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_strict(overlay: str, rendered_text: dict[str, str], tmp_path: Path) -> None:
    validate = require_tool("kubernetes-validate")
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered_text[overlay])
    out = run_tool([validate, "--strict", str(path)]).stdout
    # it prints one line per resource; every rendered resource must have been checked, none skipped
    passed = [line for line in out.splitlines() if " passed for resource " in line]
    text = rendered_text[overlay]
    assert len(passed) == text.count("\nkind: ") + text.startswith("kind: ")
    assert "Couldn't find schema" not in out


def test_checkov(checkov_reports: dict[str, Doc]) -> None:
    report = checkov_reports["kubernetes"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert not failed, f"checkov findings (fix, or skip with a reason in k8s/checkov.yaml): {failed}"
    assert report["summary"]["passed"] > 100 and report["summary"]["resource_count"] >= 16


def test_gpu_overlay_requests_exactly_its_gpu_limit(rendered: dict[str, list[Doc]]) -> None:
    dep = _deployment(rendered, "gpu")
    res = container(dep)["resources"]
    assert int(res["limits"][GPU]) >= 1
    assert res["requests"][GPU] == res["limits"][GPU], "extended resources need request == limit"
    spec = dep["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_cpu_overlay_has_no_gpu(rendered: dict[str, list[Doc]]) -> None:
    dep = _deployment(rendered, "cpu")
    assert GPU not in json.dumps(dep)
    assert "nodeSelector" not in dep["spec"]["template"]["spec"]
    assert "tolerations" not in dep["spec"]["template"]["spec"]
    assert container(dep)["image"].endswith("-cpu"), "the cpu overlay runs the CPU image"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_and_probes(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    c = container(_deployment(rendered, overlay))
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), f"cpu and memory {kind}"
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port_names == {"http": 8000, "grpc": 8001}
    paths = {
        "startupProbe": "/v2/health/live",
        "livenessProbe": "/v2/health/live",
        "readinessProbe": "/v2/health/ready",
    }
    for probe, path in paths.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in port_names, f"{probe} port {get['port']!r} names no container port"
    # liveness must not kill a pod that is still loading models: the startup probe covers that
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    dep = _deployment(rendered, overlay)
    pod = dep["spec"]["template"]["spec"]
    sc = container(dep)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    # read-only root: /tmp is the one writable place (caches point there, see Dockerfile)
    tmp = next(m for m in container(dep)["volumeMounts"] if m["mountPath"] == "/tmp")
    vol = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in vol


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_outlasts_prestop_and_drain(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    docs = rendered[overlay]
    dep = _deployment(rendered, overlay)
    drain = float(_settings(docs).get("DEEPSERVE_DRAIN_TIMEOUT_S", DEFAULT_DRAIN_S))
    pre_stop = container(dep)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(pre_stop[1]) + drain, "the kubelet would SIGKILL a draining server"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_pdb_hpa_select_the_pods(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    docs = rendered[overlay]
    dep = _deployment(rendered, overlay)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    svc = one(docs, "Service", "deepserve")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {"http": (8000, "http"), "grpc": (8001, "grpc")}
    pdb = one(docs, "PodDisruptionBudget", "deepserve")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000" and annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_the_deployment_on_server_metrics(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    docs = rendered[overlay]
    dep = _deployment(rendered, overlay)
    hpa = one(docs, "HorizontalPodAutoscaler", "deepserve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    pdb = one(docs, "PodDisruptionBudget", "deepserve")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"], "a drain must leave a pod serving"
    pods_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert pods_metrics <= {"deepserve_queue_depth", "deepserve_inflight_requests"} and pods_metrics
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_feeds_the_container(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    docs = rendered[overlay]
    cm_name = settings_configmap(docs)["metadata"]["name"]
    refs = [
        e["configMapRef"]["name"]
        for e in container(_deployment(rendered, overlay))["envFrom"]
        if "configMapRef" in e
    ]
    assert refs == [cm_name], "the hashed ConfigMap name must reach the Deployment"
    settings = _settings(docs)
    assert settings["DEEPSERVE_HTTP_PORT"] == "8000" and settings["DEEPSERVE_GRPC_PORT"] == "8001"
    assert settings["DEEPSERVE_HOST"] == "0.0.0.0", "the pod must listen beyond loopback"


def test_settings_are_server_settings(rendered: dict[str, list[Doc]]) -> None:
    """Every DEEPSERVE_* key in the ConfigMaps is a field of the server's settings class."""
    service_settings = importlib.import_module("deepserve.service.settings")
    fields = {f"DEEPSERVE_{name.upper()}" for name in service_settings.Settings.model_fields}
    for overlay in OVERLAYS:
        unknown = set(_settings(rendered[overlay])) - fields
        assert not unknown, f"{overlay}: {unknown} are not server settings (silently ignored)"
    assert service_settings.Settings.model_fields["drain_timeout_s"].default == DEFAULT_DRAIN_S
