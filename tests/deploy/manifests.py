"""Rendered Kubernetes manifests: `kubectl kustomize` of an overlay, parsed into documents."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tooling import REPO, require_tool, run_tool

K8S = REPO / "k8s"
MONITORING = K8S / "monitoring"
OVERLAYS = ("gpu", "cpu")

Doc = dict[str, Any]


@functools.cache
def _empty_kubeconfig() -> str:
    fd, path = tempfile.mkstemp(prefix="deepserve-kubeconfig-")
    os.close(fd)
    return path


def kubectl_env() -> dict[str, str]:
    """An empty kubeconfig: with none, kubectl talks to localhost:8080, maybe one of our test servers."""
    return {**os.environ, "KUBECONFIG": _empty_kubeconfig()}


def render(target: Path) -> str:
    kubectl = require_tool("kubectl")
    return run_tool([kubectl, "kustomize", str(target)], env=kubectl_env(), timeout=60).stdout


def load_docs(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


def load_file(path: Path) -> list[Doc]:
    return load_docs(path.read_text())


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(deployment: Doc, name: str = "deepserve") -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def settings_configmap(docs: list[Doc]) -> Doc:
    """The generated settings ConfigMap (its name carries a content hash)."""
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    return one([d for d in maps if d["metadata"]["name"].startswith("deepserve-settings-")], "ConfigMap")
