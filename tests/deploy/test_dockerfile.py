"""The Dockerfile: parsed for what the deployment relies on, then hadolint and checkov.

Building it needs an image registry (CUDA base image) that CI cannot reach, so nothing is built;
tests/e2e/test_lean_serve.py builds the runtime venv's install (`.[serve]`) and serves from it.
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


def _args(parsed: Any) -> dict[str, str]:
    return {
        i["value"].split("=", 1)[0]: i["value"].split("=", 1)[1]
        for i in parsed.structure
        if i["instruction"] == "ARG" and "=" in i["value"]
    }


def _stage(parsed: Any, name: str) -> list[dict[str, Any]]:
    return next(s for s in _stages(parsed) if _values(s, "FROM")[0].endswith(f" AS {name}"))


def test_multi_stage_with_runtime_base_from_a_build_arg(parsed: Any) -> None:
    stages = _stages(parsed)
    assert len(stages) >= 2, "expected a multi-stage build"
    assert _values(stages[-1], "FROM") == ["${BASE_IMAGE} AS runtime"]
    args = _args(parsed)
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", args["BASE_IMAGE"])
    assert args["SERVE_EXTRA"] == "gpu", "the default image installs the `gpu` extra (onnxruntime-gpu)"


def test_runtime_venv_installs_only_the_serving_extra(parsed: Any) -> None:
    """The runtime venv gets `.[gpu]` (or `.[serve]`) and tracing: no torch, and the build checks that."""
    build = _stage(parsed, "build")
    runs = _values(build, "RUN")
    installs = [r for r in runs if "pip install" in r]
    assert installs == [next(r for r in runs if '".[${SERVE_EXTRA},tracing]"' in r)], installs
    assert "torch" not in " ".join(installs).replace("'torch'", ""), "torch installed into the runtime venv"
    assert "find_spec" in installs[0] and "'torch'" in installs[0], "the build no longer checks for torch"
    assert not any("TORCH_INDEX" in a for a in _values(build, "ARG"))


def test_store_stage_builds_with_cpu_torch_in_its_own_venv(parsed: Any) -> None:
    store = _stage(parsed, "store")
    assert _args(parsed)["TORCH_INDEX"].endswith("/cpu"), "the store trains on the build machine's CPU"
    assert "VIRTUAL_ENV=/opt/store-venv" in " ".join(_values(store, "ENV")).replace(" ", "=")
    run = " ".join(_values(store, "RUN"))
    torch_at, extras_at = (
        run.index('--index-url "${TORCH_INDEX}" torch=='),
        run.index('".[serve,train,export'),
    )
    assert torch_at < extras_at < run.index("deepserve store build"), "torch first, from its own index"
    final = _stages(parsed)[-1]
    from_store = [c for c in _values(final, "COPY") if c.startswith("--from=store")]
    assert from_store == ["--from=store /models /models"], "only the store itself leaves the store stage"


def test_nothing_native_is_built(parsed: Any) -> None:
    text = DOCKERFILE.read_text()
    for banned in (
        "g++",
        "gcc",
        "nghttp2",
        "pkg-config",
        "_native_libs",
        "DEEPSERVE_NATIVE",
        "setup.py",
        "ldd",
    ):
        assert banned not in text, f"{banned!r} in the Dockerfile: the package has no compiled parts"


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
    store_runs = " ".join(_values(_stage(parsed, "store"), "RUN"))
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
    """In WORKDIR /src, `python -c` puts the source tree first on sys.path, so an import check there
    would pass on the sources even if the install were broken. `-I` skips it."""
    build = _stage(parsed, "build")
    assert "/src" in _values(build, "WORKDIR")
    checks = [run for run in _values(build, "RUN") if "python" in run and "import" in run]
    assert any("import deepserve.service.__main__" in run for run in checks), (
        "the server's import check is gone"
    )
    for run in checks:
        assert not re.search(r"python (?!-I )-c", run), run
