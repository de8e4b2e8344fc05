"""KServe's typed models (the kserve SDK) as a schema for k8s/kserve, checked in a child interpreter.

kserve's package registers the KServe v2 gRPC messages under the protobuf names tritonclient's
stubs use (``inference.ServerLiveRequest``, ...), so the two cannot live in one process, and the
test session imports tritonclient. Below the SDK's classes come the Kubernetes client's (pydantic,
unknown fields forbidden), so a misspelt field anywhere in a container is found too.

    python -m tests.deploy.kserve_schema < docs.json    # a JSON list of documents -> a list of errors each

The child runs in the KServe SDK's own venv (``.ci/tools.sh`` puts it in
``$DEEPSERVE_TOOLS_DIR/kserve-venv``: the SDK pins packages the project's venv must not get), or
in this interpreter where the SDK is installed here; it needs nothing but the SDK and the stdlib.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

# kind -> (apiVersion, the class of the kserve SDK or the Kubernetes client)
TYPED = {
    "ServingRuntime": ("serving.kserve.io/v1alpha1", "V1alpha1ServingRuntime"),
    "ClusterServingRuntime": ("serving.kserve.io/v1alpha1", "V1alpha1ClusterServingRuntime"),
    "InferenceService": ("serving.kserve.io/v1beta1", "V1beta1InferenceService"),
    "PodDisruptionBudget": ("policy/v1", "V1PodDisruptionBudget"),
}
PRIMITIVES: dict[str, type] = {"str": str, "int": int, "bool": bool, "object": object}


def typed_errors(docs: list[dict[str, Any]]) -> list[list[str]]:
    """For each document, where it departs from the typed models: unknown or mistyped fields,
    missing required ones. Resource quantities may be YAML numbers, as the API server takes them."""
    from tests.deploy.tooling import REPO

    python = _sdk_python()
    proc = subprocess.run(
        [python, "-m", "tests.deploy.kserve_schema"],
        input=json.dumps(docs), capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"the typed check failed:\n{proc.stderr[-3000:]}"
    errors: list[list[str]] = json.loads(proc.stdout)
    return errors


def _sdk_python() -> str:
    import importlib.util

    import pytest

    from tests.deploy.tooling import TOOLS_DIR

    venv = TOOLS_DIR / "kserve-venv" / "bin" / "python"
    if venv.is_file():
        return str(venv)
    if importlib.util.find_spec("kserve") is not None:
        return sys.executable
    pytest.skip(f"the KServe SDK is not installed (.ci/tools.sh puts it in {venv.parent.parent})")


# -- in the child interpreter --------------------------------------------------------------------------
def _errors(doc: dict[str, Any]) -> list[str]:
    api_version, class_name = TYPED[doc["kind"]]
    errors = [] if doc["apiVersion"] == api_version else [f"apiVersion {doc['apiVersion']}: {api_version}"]
    _check(_quantities_as_strings(doc), class_name, doc["kind"], errors)
    return errors


def _model_class(name: str) -> Any:
    import kserve.models
    import kubernetes.client.models

    return getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name)


def _check(value: Any, type_name: str, path: str, errors: list[str]) -> None:
    if match := re.fullmatch(r"(?:list|List)\[(.+)\]", type_name):
        if not isinstance(value, list):
            errors.append(f"{path}: a list expected, not {value!r}")
            return
        for i, item in enumerate(value):
            _check(item, match[1], f"{path}[{i}]", errors)
    elif match := re.fullmatch(r"(?:dict\(str, |Dict\[str, )(.+)[)\]]", type_name):
        if not isinstance(value, dict):
            errors.append(f"{path}: a mapping expected, not {value!r}")
            return
        for key, item in value.items():
            _check(item, match[1], f"{path}.{key}", errors)
    elif type_name in PRIMITIVES:
        wanted = PRIMITIVES[type_name]
        if not isinstance(value, wanted) or (type_name == "int" and isinstance(value, bool)):
            errors.append(f"{path}: {type_name} expected, not {value!r}")
    else:
        _check_model(value, _model_class(type_name), path, errors)


def _check_model(value: Any, klass: Any, path: str, errors: list[str]) -> None:
    if hasattr(klass, "model_validate"):  # the Kubernetes client's pydantic models check themselves
        from pydantic import ValidationError

        try:
            klass.model_validate(value)
        except ValidationError as exc:
            errors += [f"{path}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: a {klass.__name__} mapping expected, not {value!r}")
        return
    fields = {key: attr for attr, key in klass.attribute_map.items()}
    for key, item in value.items():
        if key not in fields:
            errors.append(f"{path}.{key}: not a field of {klass.__name__}")
        else:
            _check(item, klass.openapi_types[fields[key]], f"{path}.{key}", errors)
    try:  # the SDK's constructor refuses a missing required field
        klass(**{fields[k]: v for k, v in value.items() if k in fields})
    except ValueError as exc:
        errors.append(f"{path}: {exc}")


def _quantities_as_strings(doc: Any) -> Any:
    if isinstance(doc, list):
        return [_quantities_as_strings(d) for d in doc]
    if not isinstance(doc, dict):
        return doc
    out = {k: _quantities_as_strings(v) for k, v in doc.items()}
    if isinstance(out.get("resources"), dict):
        out["resources"] = {
            k: {q: _number_as_string(n) for q, n in v.items()} if k in ("requests", "limits") else v
            for k, v in out["resources"].items()
        }
    return out


def _number_as_string(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


if __name__ == "__main__":
    print(json.dumps([_errors(doc) for doc in json.load(sys.stdin)]))
