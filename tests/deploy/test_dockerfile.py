"""The Dockerfile: parsed for what the deployment relies on, then hadolint and checkov.

Building it needs an image registry (CUDA base image) that CI cannot reach, so nothing is built.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.deploy.tooling import REPO, require_tool, run_tool

pytestmark = pytest.mark.tools

DOCKERFILE = REPO / "Dockerfile"


@pytest.fixture(scope="module")
def parsed() -> Any:
    dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse: run .ci/tools.sh")
    return dockerfile_parse.DockerfileParser(path=str(DOCKERFILE))


def _stages(parsed: Any) -> list[list[dict[str, Any]]]:
    """Instructions grouped by stage (each FROM starts one); instructions before the first FROM dropped."""
    stages: list[list[dict[str, Any]]] = []
    for ins in parsed.structure:
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def test_multi_stage_with_runtime_base_from_a_build_arg(parsed: Any) -> None:
    stages = _stages(parsed)
    assert len(stages) >= 2, "expected a multi-stage build"
    assert _values(stages[-1], "FROM") == ["${BASE_IMAGE} AS runtime"]
    args = {
        i["value"].split("=", 1)[0]: i["value"].split("=", 1)[1]
        for i in parsed.structure
        if i["instruction"] == "ARG" and "=" in i["value"]
    }
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", args["BASE_IMAGE"])
    assert args["ORT_EXTRA"] == "gpu", "the default image installs the `gpu` extra (onnxruntime-gpu)"
    assert "cu12" in args["TORCH_INDEX"], "torch must come from the CUDA index by default"


def test_gpu_extra_installed_after_cuda_torch(parsed: Any) -> None:
    runs = [i["value"] for i in parsed.structure if i["instruction"] == "RUN"]
    torch_at = next(n for n, r in enumerate(runs) if "torch==" in r and "TORCH_INDEX" in r)
    extra_at = next(n for n, r in enumerate(runs) if '".[${ORT_EXTRA}]"' in r)
    assert torch_at < extra_at


def test_final_stage_is_small_and_non_root(parsed: Any) -> None:
    final = _stages(parsed)[-1]
    copies = _values(final, "COPY")
    assert copies, "the runtime stage copies its files from the build stages"
    assert all(c.startswith("--from=") for c in copies), f"runtime stage copies build context: {copies}"
    runs = " ".join(_values(final, "RUN"))
    for banned in ("pip", "uv ", "apt-get", "gcc", "build-essential", "pytest"):
        assert banned not in runs, f"{banned!r} in the runtime stage"
    copied = " ".join(copies)
    assert "tests" not in copied and "/src" not in copied
    user = _values(final, "USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric non-root USER, so runAsNonRoot can verify it"


def test_entrypoint_ports_healthcheck(parsed: Any) -> None:
    final = _stages(parsed)[-1]
    entry = _values(final, "ENTRYPOINT")[-1]
    assert json.loads(entry) == ["deepserve", "serve"], "exec-form ENTRYPOINT running `deepserve serve`"
    ports = " ".join(_values(final, "EXPOSE")).split()
    assert {"8000", "8001"} <= set(ports)
    health = _values(final, "HEALTHCHECK")[-1]
    assert "CMD" in health and "/v2/health/ready" in health
    assert json.loads(health.split("CMD", 1)[1])[0] == "python", "exec-form check; no curl in the image"


def test_model_store_baked_or_mounted(parsed: Any) -> None:
    final = _stages(parsed)[-1]
    assert any(c.split()[-1] == "/models" for c in _values(final, "COPY"))
    assert parsed.envs["DEEPSERVE_MODEL_STORE"] == "/models"
    store = next(s for s in _stages(parsed) if _values(s, "FROM")[0].endswith(" AS store"))
    store_runs = " ".join(_values(store, "RUN"))
    assert "deepserve store build" in store_runs and "BAKE_STORE" in store_runs


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "model_store"} <= ignored


def test_hadolint_clean() -> None:
    hadolint = require_tool("hadolint")
    out = run_tool([hadolint, "-f", "json", str(DOCKERFILE)]).stdout
    assert json.loads(out) == []


def test_checkov_dockerfile(checkov_reports: dict[str, Any]) -> None:
    report = checkov_reports["dockerfile"]
    failed = [c["check_id"] for c in report["results"]["failed_checks"]]
    assert not failed, f"checkov findings (fix, or skip with a reason in k8s/checkov.yaml): {failed}"
    assert report["summary"]["passed"] > 50


def test_build_checks_import_the_installed_package_not_the_source_tree(parsed: Any) -> None:
    """In WORKDIR /src, `python -c` puts the source tree first on sys.path: it has no compiled
    module (.dockerignore drops *.so), so an import check there fails the build. `-I` skips it."""
    build = _stages(parsed)[0]
    assert "/src" in _values(build, "WORKDIR")
    checks = [run for run in _values(build, "RUN") if "import service" in run]
    assert checks, "the build no longer checks that the native gRPC front imports"
    for run in checks:
        assert not re.search(r"python (?!-I )-c", run), run
