"""pyproject.toml's extras keep their promises: a serving install has no torch and one ONNX Runtime.

    serve = base + onnxruntime            (CPU serving)
    gpu   = base + onnxruntime-gpu + NVML (GPU serving, instead of `serve`)
    train / export / bench: torch==2.13.0 and their own tools; dev: the test and lint tools

tests/e2e/test_lean_serve.py installs `.[serve]` for real; this file checks the declarations.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from tests.deploy.tooling import REPO

PROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
TRAINING_STACK = {"torch", "scikit-learn", "matplotlib", "onnx", "onnxscript", "tqdm", "rich"}
ORT = {"onnxruntime", "onnxruntime-gpu"}
CI_SET = ("serve", "train", "export", "bench", "dev")


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


def closure(*extras: str) -> dict[str, str]:
    """name -> requirement of the base dependencies plus ``extras``, following `deepserve[...]`."""
    found = {_name(r): r for r in PROJECT["dependencies"]}
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in EXTRAS[extra]:
            if _name(req) == "deepserve":
                todo += re.findall(r"[\w-]+", req.split("[", 1)[1])
            else:
                found[_name(req)] = req
    return found


def test_python_311_to_313() -> None:
    assert PROJECT["requires-python"] == ">=3.11,<3.14"


@pytest.mark.parametrize("extra", ["serve", "gpu"])
def test_serving_installs_have_no_training_stack(extra: str) -> None:
    names = set(closure(extra))
    assert not names & TRAINING_STACK, f"[{extra}] pulls {names & TRAINING_STACK}"
    assert {
        "fastapi",
        "uvicorn",
        "grpcio",
        "tritonclient",
        "prometheus-client",
        "tokenizers",
        "pillow",
    } <= names
    assert {"grpcio-health-checking", "grpcio-reflection", "protobuf", "python-multipart"} <= names


def test_exactly_one_onnx_runtime_per_install() -> None:
    assert set(closure()) & ORT == set(), "the base install chooses no ONNX Runtime"
    assert set(closure("serve")) & ORT == {"onnxruntime"}
    assert set(closure("gpu")) & ORT == {"onnxruntime-gpu"}
    for extra in EXTRAS:
        if extra not in ("serve", "gpu", "cpu"):
            assert not set(closure(extra)) & ORT, f"[{extra}] must not choose an ONNX Runtime"
    assert set(closure(*CI_SET)) & ORT == {"onnxruntime"}


def test_torch_is_pinned_wherever_it_is_declared() -> None:
    for extra in ("train", "export", "bench"):
        assert closure(extra)["torch"].replace(" ", "") == "torch==2.13.0", extra


def test_grpc_addons_match_grpcio() -> None:
    deps = closure()
    floor = deps["grpcio"].split(">=", 1)[1]
    for addon in ("grpcio-health-checking", "grpcio-reflection"):
        # released in step with grpcio; capped below the first release that needs protobuf 7
        assert deps[addon].split(">=", 1)[1].split(",")[0] == floor, addon


def test_no_compiled_parts() -> None:
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]
    assert [_name(r) for r in build["requires"]] == ["setuptools"]
    assert not (REPO / "setup.py").exists() and not (REPO / "MANIFEST.in").exists()
    sources = [
        p for ext in ("c", "cc", "cpp", "cxx", "h", "hpp") for p in (REPO / "deepserve").rglob(f"*.{ext}")
    ]
    assert sources == [], f"C/C++ sources in the package: {sources}"


def test_ci_installs_the_development_set_and_the_lean_venvs() -> None:
    run = (REPO / ".ci" / "run").read_text()
    assert f"-e '.[{','.join(CI_SET)}]'" in run
    assert run.index("torch==2.13.0") < run.index("-e '.[")
    assert "tests.e2e.lean" in run and "tools.sh" in run
    for gone in ("DEEPSERVE_NATIVE", "libnghttp2", "libgrpc++", "pkg-config"):
        assert gone not in run
