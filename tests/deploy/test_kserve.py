"""k8s/kserve: the ServingRuntimes and ClusterServingRuntimes fit KServe's typed models, run the
Deployment's image, probes and security, are the runtimes KServe picks for the formats they claim,
and their container arguments, as KServe fills them in, serve a storage initializer's layout."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.deploy.kserve import MODEL_DIR, model_spec, predictor_container, select_runtime
from tests.deploy.kserve_schema import typed_errors
from tests.deploy.manifests import K8S, Doc, container, load_docs, load_file, one, render
from tests.deploy.tooling import REPO, require_tool, run_tool
from tests.e2e.conftest import free_port

KSERVE = K8S / "kserve"
GPU = "nvidia.com/gpu"
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
TIMINGS = ("periodSeconds", "timeoutSeconds", "failureThreshold")
# settings.env keys the runtimes give as arguments instead (KServe's ports, no main store)
AS_ARGUMENTS = {"DEEPSERVE_MODEL_STORE": "--store", "DEEPSERVE_HOST": "--host",
                "DEEPSERVE_HTTP_PORT": "--http-port", "DEEPSERVE_GRPC_PORT": "--grpc-port"}  # fmt: skip
FILES = ("servingruntime.yaml", "clusterservingruntime.yaml", "inferenceservice.yaml")


@functools.cache
def _docs(name: str) -> tuple[Doc, ...]:
    return tuple(load_file(KSERVE / name))


def _runtimes(cluster: bool = False) -> list[Doc]:
    return copy.deepcopy(list(_docs("clusterservingruntime.yaml" if cluster else "servingruntime.yaml")))


def _runtime(name: str, cluster: bool = False) -> Doc:
    return one(_runtimes(cluster), "ClusterServingRuntime" if cluster else "ServingRuntime", name)


def _kserve_container(runtime: Doc) -> Doc:
    (c,) = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
    return c


def _example() -> Doc:
    return copy.deepcopy(one(list(_docs("inferenceservice.yaml")), "InferenceService"))


def _flag(args: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    values += [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    assert len(values) <= 1, f"{name} given {len(values)} times: {args}"
    return values[0] if values else None


def _entrypoint() -> list[str]:
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile has an exec-form ENTRYPOINT"
    entrypoint: list[str] = json.loads(match[1])
    return entrypoint


def _settings_env() -> dict[str, str]:
    lines = (K8S / "base" / "settings.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


# -- the manifests ------------------------------------------------------------------------------------
@pytest.mark.tools
def test_kustomization_renders_the_runtimes_and_the_example(tmp_path: Path) -> None:
    docs = load_docs(render(KSERVE))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["InferenceService", "PodDisruptionBudget", "ServingRuntime", "ServingRuntime"]
    assert {d["metadata"]["namespace"] for d in docs} == {"deepserve"}
    for doc in docs:
        del doc["metadata"]["namespace"]
    files = [*_docs("servingruntime.yaml"), *_docs("inferenceservice.yaml")]
    assert sorted(docs, key=json.dumps) == sorted(files, key=json.dumps), "kustomize changes nothing else"
    core = tmp_path / "core.yaml"  # the PodDisruptionBudget; the Kubernetes schemas have no KServe kinds
    core.write_text(json.dumps(one(docs, "PodDisruptionBudget")))
    out = run_tool([require_tool("kubernetes-validate"), "--strict", str(core)]).stdout
    assert " passed for resource " in out


def test_manifests_fit_kserve_typed_models() -> None:
    docs = [(name, doc) for name in FILES for doc in _docs(name)]
    found = typed_errors([doc for _, doc in docs])
    assert len(found) == len(docs) == 6
    for (name, doc), errors in zip(docs, found, strict=True):
        assert errors == [], f"{name}: {doc['kind']} {doc['metadata']['name']}"


def test_the_typed_check_catches_misspelt_and_mistyped_fields() -> None:
    runtime = _runtime("kserve-deepserve")
    runtime["spec"]["supportedModelFormat"] = runtime["spec"].pop("supportedModelFormats")
    c = runtime["spec"]["containers"][0]
    c["readynessProbe"] = c.pop("readinessProbe")
    runtime["spec"]["annotations"]["prometheus.kserve.io/port"] = 8080
    isvc = _example()
    isvc["spec"]["predictor"]["minReplica"] = isvc["spec"]["predictor"].pop("minReplicas")
    del isvc["spec"]["predictor"]["model"]["modelFormat"]
    isvc["spec"]["predictor"]["model"]["resources"]["limits"][GPU] = [1]
    found = " | ".join(error for errors in typed_errors([runtime, isvc]) for error in errors)
    for wrong in ("supportedModelFormat:", "readynessProbe", "prometheus.kserve.io/port", "minReplica:",
                  "model_format", f"limits.{GPU}"):  # fmt: skip
        assert wrong in found, f"{wrong!r} not reported in: {found}"


@pytest.mark.tools
@pytest.mark.parametrize("name", ["kserve-deepserve", "kserve-deepserve-triton"])
def test_runtime_runs_the_deployments_image_probes_and_security(
    name: str, rendered: dict[str, list[Doc]]
) -> None:
    runtime = _runtime(name)
    dep = one(rendered["gpu"], "Deployment", "deepserve")
    want, c = container(dep), _kserve_container(runtime)
    assert c["image"] == want["image"]
    assert c["command"] == _entrypoint() == ["deepserve", "serve"]
    assert c["args"][0] == MODEL_DIR, "the storage initializer's folder is the source"
    assert c["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}], "KServe routes one"
    assert _flag(c["args"], "--http-port") == "8080" and _flag(c["args"], "--grpc-port") == "8081"
    for probe in PROBES:
        assert c[probe]["httpGet"] == {"path": want[probe]["httpGet"]["path"], "port": 8080}, probe
        assert {k: c[probe][k] for k in TIMINGS} == {k: want[probe][k] for k in TIMINGS}, probe
    cpu_memory = {kind: {k: v for k, v in res.items() if k != GPU} for kind, res in want["resources"].items()}
    assert c["resources"] == cpu_memory, "CPU and memory as the Deployment; the GPU is the model's"
    assert c["securityContext"] == want["securityContext"]
    assert c["lifecycle"] == want["lifecycle"]
    assert c["volumeMounts"] == want["volumeMounts"]
    assert runtime["spec"]["volumes"] == dep["spec"]["template"]["spec"]["volumes"]
    assert runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"], "deepserve speaks no v1"
    annotations = runtime["spec"]["annotations"]
    assert annotations == {"prometheus.kserve.io/port": "8080", "prometheus.kserve.io/path": "/metrics"}


@pytest.mark.parametrize("name", ["kserve-deepserve", "kserve-deepserve-triton"])
def test_runtime_settings_are_the_base_settings(name: str) -> None:
    """settings.env's values, except what KServe's conventions give as arguments."""
    from deepserve.service.settings import Settings

    c = _kserve_container(_runtime(name))
    env = {e["name"]: e["value"] for e in c["env"]}
    settings = _settings_env()
    assert set(env) | set(AS_ARGUMENTS) == set(settings), "every base setting, in env or as an argument"
    assert env == {k: settings[k] for k in env}
    fields = {f"DEEPSERVE_{field.upper()}" for field in Settings.model_fields}
    assert set(env) <= fields, f"{set(env) - fields} are not server settings (silently ignored)"
    assert _flag(c["args"], "--host") == settings["DEEPSERVE_HOST"]
    store = _flag(c["args"], "--store")
    assert store not in (settings["DEEPSERVE_MODEL_STORE"], MODEL_DIR), "no store besides the model"


def test_the_triton_runtime_is_the_other_without_a_model_name() -> None:
    """A repository names its models; --name would name one model and be refused for several."""
    deepserve, triton = _runtime("kserve-deepserve"), _runtime("kserve-deepserve-triton")
    assert _flag(_kserve_container(deepserve)["args"], "--name") == "{{.Name}}"
    without_name = [a for a in _kserve_container(deepserve)["args"] if not a.startswith("--name")]
    assert _kserve_container(triton) == {**_kserve_container(deepserve), "args": without_name}
    rest = ("supportedModelFormats", "containers")
    assert {k: v for k, v in triton["spec"].items() if k not in rest} == {
        k: v for k, v in deepserve["spec"].items() if k not in rest
    }
    assert [f["name"] for f in triton["spec"]["supportedModelFormats"]] == ["triton"]
    claimed = {f["name"] for f in deepserve["spec"]["supportedModelFormats"]}
    assert claimed == {"onnx", "pytorch", "huggingface"}


def test_cluster_runtimes_are_the_namespaced_ones_never_auto_selected() -> None:
    namespaced = _runtimes()
    cluster = _runtimes(cluster=True)
    assert [r["metadata"]["name"] for r in cluster] == [r["metadata"]["name"] for r in namespaced]
    for csr, sr in zip(cluster, namespaced, strict=True):
        assert csr["kind"] == "ClusterServingRuntime" and "namespace" not in csr["metadata"]
        for fmt in sr["spec"]["supportedModelFormats"]:
            fmt.pop("priority", None)
            fmt["autoSelect"] = False
        assert csr["spec"] == sr["spec"], csr["metadata"]["name"]


def test_kserve_picks_deepserve_for_the_formats_its_image_serves() -> None:
    namespaced, cluster = _runtimes(), _runtimes(cluster=True)

    def picked(model: Doc, namespaced: list[Doc] = namespaced) -> str | None:
        runtime = select_runtime(model, namespaced, cluster)
        return None if runtime is None else f"{runtime['kind']}/{runtime['metadata']['name']}"

    assert picked(model_spec(_example())) == "ServingRuntime/kserve-deepserve"
    assert picked(model_spec(_example()), namespaced=[]) == "ClusterServingRuntime/kserve-deepserve"
    onnx = {"modelFormat": {"name": "onnx", "version": "1"}, "protocolVersion": "v2"}
    assert picked(onnx) == "ServingRuntime/kserve-deepserve"
    assert picked(onnx, namespaced=[]) is None, "cluster-wide, deepserve is never picked unasked"
    assert picked({"modelFormat": onnx["modelFormat"]}) is None, "v1, KServe's default, is not served"
    triton = {"modelFormat": {"name": "triton"}, "protocolVersion": "grpc-v2"}
    assert picked(triton) == "ServingRuntime/kserve-deepserve-triton"
    assert picked({**triton, "runtime": "kserve-deepserve"}) is None, "a repository needs the triton runtime"
    for fmt in ("pytorch", "huggingface"):  # they need torch, which the image leaves out
        model = {"modelFormat": {"name": fmt}, "protocolVersion": "v2"}
        assert picked(model) is None
        assert picked({**model, "runtime": "kserve-deepserve"}) == "ServingRuntime/kserve-deepserve"


@pytest.mark.tools
def test_inferenceservice_runs_the_same_image(rendered: dict[str, list[Doc]]) -> None:
    isvc = _example()
    name, model, pred = isvc["metadata"]["name"], model_spec(isvc), isvc["spec"]["predictor"]
    runtime = select_runtime(model, _runtimes(), [])
    assert runtime is not None and runtime["metadata"]["name"] == model["runtime"] == "kserve-deepserve"
    dep = one(rendered["gpu"], "Deployment", "deepserve")
    pod, c = dep["spec"]["template"]["spec"], predictor_container(runtime, isvc)
    assert c["image"] == container(dep)["image"]
    assert c["resources"] == container(dep)["resources"], "the Deployment's CPU, memory and GPU"
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("http1", 8080), ("grpc", 8081)]
    assert _flag(c["args"], "--name") == name, "the model is named after the InferenceService"
    uri = PurePosixPath(urlparse(model["storageUri"]).path)
    assert uri.suffix == ".onnx", "one file: the storage initializer leaves it alone in /mnt/models"
    for key in ("securityContext", "nodeSelector", "tolerations", "terminationGracePeriodSeconds"):
        assert pred[key] == pod[key], key
    assert pred["automountServiceAccountToken"] is False
    pdb = one(list(_docs("inferenceservice.yaml")), "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": name}
    assert pred["maxReplicas"] >= pred["minReplicas"] > pdb["spec"]["maxUnavailable"], "a drain keeps one"
    annotations = isvc["metadata"]["annotations"]
    # two ports on the Service, and no queue-proxy to scrape: KServe's raw mode (Standard from 0.16)
    assert annotations["serving.kserve.io/deploymentMode"] in {"RawDeployment", "Standard"}
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "false"
    assert annotations["prometheus.io/port"] == _flag(c["args"], "--http-port")
    env = {e["name"]: e["value"] for e in c["env"]}
    pre_stop = float(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pred["terminationGracePeriodSeconds"] > float(env["DEEPSERVE_DRAIN_TIMEOUT_S"]) + pre_stop


# -- the runtime's arguments, run -----------------------------------------------------------------------
def _scale_onnx(path: Path, factor: float) -> None:
    """y = factor * x, x and y FP32 [batch, 4]."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    weight = helper.make_tensor("factor", TensorProto.FLOAT, [1], [factor])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "factor"], ["y"])], "scale", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _triton_model(folder: Path, factor: float) -> None:
    _scale_onnx(folder / "1" / "model.onnx", factor)
    (folder / "config.pbtxt").write_text(
        f'name: "{folder.name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]\n'
    )


def _localise(args: list[str], models: Path, http_port: int, grpc_port: int) -> list[str]:
    """The pod's arguments on this machine: the folder, loopback, free ports; nothing else changes."""
    swaps = {
        MODEL_DIR: str(models),
        "--host=0.0.0.0": "--host=127.0.0.1",
        "--http-port=8080": f"--http-port={http_port}",
        "--grpc-port=8081": f"--grpc-port={grpc_port}",
    }
    assert sorted(a for a in args if a in swaps) == sorted(swaps), f"the runtime's args changed: {args}"
    return [swaps.get(a, a) for a in args]


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"deepserve exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"deepserve not ready in 60 s:\n{log.read_text()[-3000:]}")


def _layout(case: str, models: Path) -> tuple[Doc, dict[str, float]]:
    """An InferenceService and /mnt/models as KServe's storage initializer leaves it for its storageUri;
    the model names it must serve, with their factors."""
    if case == "onnx-file":  # the example: one file, named by its storageUri
        isvc = _example()
        _scale_onnx(models / PurePosixPath(urlparse(model_spec(isvc)["storageUri"]).path).name, 2.0)
        return isvc, {isvc["metadata"]["name"]: 2.0}
    model = {"modelFormat": {"name": "triton"}, "protocolVersion": "v2", "storageUri": "s3://models/repo/"}
    isvc = {"metadata": {"name": "repository"}, "spec": {"predictor": {"model": model}}}
    served = {"double": 2.0, "triple": 3.0}  # a folder's contents, as they are
    for name, factor in served.items():
        _triton_model(models / name, factor)
    return isvc, served


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["onnx-file", "triton-repository"])
def test_the_runtime_serves_what_the_storage_initializer_lays_out(case: str, tmp_path: Path) -> None:
    models = tmp_path / "mnt" / "models"
    models.mkdir(parents=True)
    isvc, served = _layout(case, models)
    runtime = select_runtime(model_spec(isvc), _runtimes(), [])
    assert runtime is not None, f"no runtime for {model_spec(isvc)}"
    c = predictor_container(runtime, isvc)
    store = _flag(c["args"], "--store")
    assert store is not None and not Path(store).exists(), f"{store} exists here: it would be served too"
    http_port, grpc_port = free_port(), free_port()
    assert c["command"][0] == "deepserve", "`python -m deepserve.cli` is the `deepserve` script"
    args = _localise(c["args"], models, http_port, grpc_port)
    cmd = [sys.executable, "-m", "deepserve.cli", *c["command"][1:], *args]
    env = {**os.environ, **{e["name"]: e["value"] for e in c["env"]}}
    log = tmp_path / "deepserve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_ready(process, f"http://127.0.0.1:{http_port}", log)
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{http_port}")
        assert {m["name"] for m in client.get_model_repository_index()} == set(served), "only the models"
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        for name, factor in served.items():
            assert client.is_model_ready(name)
            inputs = [httpclient.InferInput("x", [2, 4], "FP32")]
            inputs[0].set_data_from_numpy(x)
            np.testing.assert_allclose(client.infer(name, inputs).as_numpy("y"), factor * x)
        client.close()
        grpc = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
        assert all(grpc.is_model_ready(name) for name in served), "the gRPC port serves them too"
        grpc.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = -9
    assert code == 0, f"SIGTERM: exit {code}\n{log.read_text()[-3000:]}"
