from __future__ import annotations

import json
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from tests.deploy.manifests import K8S, OVERLAYS, Doc, load_docs, render
from tests.deploy.tooling import REPO, require_tool


@pytest.fixture(scope="session")
def live_server(request: pytest.FixtureRequest) -> SimpleNamespace:
    """The shared live server (tests/conftest.py `server`) as `.http_url` / `.grpc_url`."""
    running = request.getfixturevalue("server")
    return SimpleNamespace(http_url=running.base_url, grpc_url=running.grpc)


@pytest.fixture(scope="session")
def rendered_text() -> dict[str, str]:
    """`kubectl kustomize k8s/overlays/<name>` for every overlay, rendered once per session."""
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def rendered(rendered_text: dict[str, str]) -> dict[str, list[Doc]]:
    return {name: load_docs(text) for name, text in rendered_text.items()}


@pytest.fixture(scope="session")
def checkov_reports(
    rendered_text: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Doc]:
    """One checkov run (it takes seconds to start) over both overlays and the Dockerfile, by framework.
    The skip list, each entry with its reason, is k8s/checkov.yaml."""
    checkov = require_tool("checkov")
    scan = tmp_path_factory.mktemp("checkov")
    for overlay, text in rendered_text.items():
        (scan / f"{overlay}.yaml").write_text(text)
    shutil.copy(REPO / "Dockerfile", scan / "Dockerfile")
    args = [checkov, "--config-file", str(K8S / "checkov.yaml"), "--framework", "kubernetes", "dockerfile"]
    proc = subprocess.run([*args, "-d", str(scan), "-o", "json"], capture_output=True, text=True, timeout=180)
    try:
        reports = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov exited {proc.returncode} without a JSON report:\n{proc.stdout}\n{proc.stderr}")
    reports = reports if isinstance(reports, list) else [reports]
    return {r["check_type"]: r for r in reports}
