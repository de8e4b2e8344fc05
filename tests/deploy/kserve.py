"""What KServe does with k8s/kserve, for the tests: its choice of runtime, and the predictor
container it builds from a runtime and an InferenceService (its typed models: kserve_schema.py).

The rules are KServe's own (kserve/kserve, pkg/apis/serving/v1beta1/predictor_model.go and
pkg/controller/v1beta1/inferenceservice/utils/utils.go), kept to what our manifests use.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from tests.deploy.manifests import Doc

# InferenceService model fields that are KServe's, not the container's
MODEL_ONLY = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage"}
# strategic merge keys of a core/v1 Container's lists (the rest are replaced)
MERGE_KEYS = {"ports": "containerPort", "env": "name", "volumeMounts": "mountPath"}
CONTAINER = "kserve-container"  # the runtime container KServe merges the model into
MODEL_DIR = "/mnt/models"  # where the storage initializer puts storageUri


# -- choosing a runtime ------------------------------------------------------------------------------
def model_spec(isvc: Doc) -> Doc:
    return dict(isvc["spec"]["predictor"]["model"])


def supports(runtime: Doc, model: Doc, *, named: bool) -> bool:
    """KServe's RuntimeSupportsModel + IsProtocolVersionSupported: a named runtime offers all its
    formats, an unnamed one only the auto-selected; the model's protocol is v1 unless it says."""
    fmt = model["modelFormat"]
    labels = {
        label
        for f in runtime["spec"]["supportedModelFormats"]
        if named or f.get("autoSelect") is True
        for label in (f["name"], f"{f['name']}:{f.get('version')}")
    }
    wanted = fmt["name"] if fmt.get("version") is None else f"{fmt['name']}:{fmt['version']}"
    protocols = runtime["spec"].get("protocolVersions") or []
    return wanted in labels and (not protocols or model.get("protocolVersion", "v1") in protocols)


def select_runtime(model: Doc, namespaced: list[Doc], cluster: list[Doc]) -> Doc | None:
    """The runtime KServe gives the model: the one it names (namespaced first), else the first
    auto-selected, namespaced before cluster-wide, each group by priority (highest first)."""
    if "runtime" in model:
        found = [r for r in [*namespaced, *cluster] if r["metadata"]["name"] == model["runtime"]]
        return found[0] if found and supports(found[0], model, named=True) else None

    def priority(runtime: Doc) -> int:
        formats = runtime["spec"]["supportedModelFormats"]
        return -max(f.get("priority", 0) for f in formats if f["name"] == model["modelFormat"]["name"])

    for group in (namespaced, cluster):
        candidates = sorted((r for r in group if supports(r, model, named=False)), key=priority)
        if candidates:
            return candidates[0]
    return None


# -- the predictor container -------------------------------------------------------------------------
def predictor_container(runtime: Doc, isvc: Doc) -> Doc:
    """The runtime's kserve-container with the InferenceService's model fields merged in (strategic
    merge; the model's args appended to the runtime's), then {{.Name}}-style placeholders filled."""
    base = next(c for c in runtime["spec"]["containers"] if c["name"] == CONTAINER)
    overlay = {k: v for k, v in model_spec(isvc).items() if k not in MODEL_ONLY}
    merged = _strategic_merge(base, overlay)
    merged["args"] = [*base.get("args", []), *overlay.get("args", [])]
    return _fill_placeholders(merged, isvc["metadata"])


def _strategic_merge(base: Any, overlay: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = copy.deepcopy(base)
        for k, v in overlay.items():
            merged[k] = _strategic_merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return merged
    if isinstance(base, list) and isinstance(overlay, list) and key in MERGE_KEYS:
        by_key = {item[MERGE_KEYS[key]]: item for item in base}
        for item in overlay:
            old = by_key.get(item[MERGE_KEYS[key]])
            by_key[item[MERGE_KEYS[key]]] = _strategic_merge(old, item) if old else item
        return list(by_key.values())
    return copy.deepcopy(overlay)


def _fill_placeholders(value: Any, meta: Doc) -> Any:
    """Go's text/template over the container, with the InferenceService's ObjectMeta as data."""
    if isinstance(value, dict):
        return {k: _fill_placeholders(v, meta) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_placeholders(v, meta) for v in value]
    if not isinstance(value, str):
        return value

    def field(match: re.Match[str]) -> str:
        name, key = match[1].lower(), match[2]
        return str(meta.get(name, "") if key is None else meta.get(name, {}).get(key, "<no value>"))

    return re.sub(r"\{\{\s*\.(Name|Namespace|Labels|Annotations)(?:\.([\w./-]+))?\s*\}\}", field, value)
