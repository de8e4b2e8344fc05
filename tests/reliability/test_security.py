"""Security: bearer tokens for inference (HTTP and gRPC), management off by default and on its own
token, loads only by plain store name, checkpoints never unpickled, non-root container and pods."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deepserve.service.dataplane import DataPlane
from deepserve.service.settings import Settings
from deepserve.training.checkpoint import CheckpointError, load_checkpoint
from tests.e2e.conftest import free_port
from tests.reliability.fakes import FaultyHandler, grpc_server_for, infer_body, serve_in_process
from tests.reliability.store import TABULAR

REPO = Path(__file__).resolve().parents[2]
TOKEN, ADMIN = "inference-token-7f3a", "management-token-91c2"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# names a client might try to load something other than a store model with
HOSTILE_NAMES = [
    "..",
    "../tabular-mlp",
    "..%2Ftabular-mlp",
    "a/b",
    "%2Fetc%2Fpasswd",
    "http:%2F%2Fevil.example%2Fm",
    "file:%2F%2F%2Fetc%2Fpasswd",
    ".hidden",
    "tabular-mlp%00",
    "~root",
    "C:%5Cmodels",
]


async def test_inference_needs_the_bearer_token_on_http_and_grpc(
    tmp_path: Path, report: list[dict[str, Any]]
) -> None:
    async with serve_in_process(
        tmp_path, [FaultyHandler("sum")], auth_token=TOKEN, grpc_port=free_port()
    ) as s:
        c = s.client
        no_token = await c.post("/v2/models/sum/infer", json=infer_body(1.0))
        wrong = await c.post(
            "/v2/models/sum/infer", json=infer_body(1.0), headers={"Authorization": "Bearer nope"}
        )
        basic = await c.post(
            "/v2/models/sum/infer", json=infer_body(1.0), headers={"Authorization": f"Basic {TOKEN}"}
        )
        right = await c.post("/v2/models/sum/infer", json=infer_body(1.0), headers=BEARER)
        openai = await c.post("/v1/embeddings", json={"model": "sum", "input": "x"})
        torchserve = await c.post("/predictions/sum", json=[[1, 2, 3]])
        probes = [(await c.get(p)).status_code for p in ("/v2/health/live", "/v2/health/ready", "/metrics")]
        grpc_codes = await _grpc_auth_codes(s.plane)
    for answer in (no_token, wrong, basic, openai, torchserve):
        assert answer.status_code == 401, answer.text
        assert "bearer" in answer.text.lower(), "a 401 must say what to send"
    assert right.status_code == 200, right.text
    assert probes == [200, 200, 200], "health and metrics stay open for probes and scrapes"
    assert grpc_codes == {
        "none": grpc.StatusCode.UNAUTHENTICATED,
        "wrong": grpc.StatusCode.UNAUTHENTICATED,
        "right": grpc.StatusCode.OK,
    }
    report.append(
        {"test": "security: inference token", "http_401": 5, "grpc": "UNAUTHENTICATED without token"}
    )


async def _grpc_auth_codes(plane: DataPlane) -> dict[str, grpc.StatusCode]:
    settings = plane.settings
    server = grpc_server_for(plane)
    await server.start()
    codes = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            inputs = [pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 3])]
            request = pb.ModelInferRequest(
                model_name="sum", inputs=inputs, raw_input_contents=[np.ones((1, 3), "<f4").tobytes()]
            )
            for case, metadata in (
                ("none", ()),
                ("wrong", (("authorization", "Bearer nope"),)),
                ("right", (("authorization", f"Bearer {TOKEN}"),)),
            ):
                try:
                    await stub.ModelInfer(request, metadata=metadata, timeout=10)
                    codes[case] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    codes[case] = exc.code()
    finally:
        await server.stop(0)
    return codes


async def test_management_is_off_by_default(tmp_path: Path) -> None:
    store = tmp_path / "store"
    async with serve_in_process(store, [FaultyHandler("sum")]) as s:
        load = await s.client.post(
            "/v2/repository/models/sum/load", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        unload = await s.client.post("/v2/repository/models/sum/unload")
        still = await s.client.post("/v2/models/sum/infer", json=infer_body(1.0))
    assert load.status_code == 403 and "disabled" in load.text, load.text
    assert unload.status_code == 403, unload.text
    assert still.status_code == 200, "a refused unload must not unload"
    with pytest.raises(ValidationError, match="MANAGEMENT_TOKEN"):
        Settings(enable_management=True)


async def test_management_needs_its_own_token_and_loads_only_store_names(
    rel_store: Path, tmp_path: Path, report: list[dict[str, Any]]
) -> None:
    store = tmp_path / "store"
    shutil.copytree(rel_store / TABULAR, store / TABULAR)
    (tmp_path / "outside" / "1").mkdir(parents=True)  # a model-looking folder next to, not in, the store
    shutil.copytree(rel_store / TABULAR / "1", tmp_path / "outside" / "2")
    admin = {"Authorization": f"Bearer {ADMIN}"}
    options = {"auth_token": TOKEN, "enable_management": True, "management_token": ADMIN, "threads": 1}
    async with serve_in_process(store, [FaultyHandler("sum")], **options) as s:
        c = s.client
        anonymous = await c.post(f"/v2/repository/models/{TABULAR}/load")
        with_inference_token = await c.post(f"/v2/repository/models/{TABULAR}/load", headers=BEARER)
        hostile = {
            name: await c.post(f"/v2/repository/models/{name}/load", headers=admin) for name in HOSTILE_NAMES
        }
        outside = await c.post("/v2/repository/models/outside/load", headers=admin)
        loaded = await c.post(f"/v2/repository/models/{TABULAR}/load", headers=admin)
        index = (await c.post("/v2/repository/index", headers=BEARER)).json()
        unloaded = await c.post(f"/v2/repository/models/{TABULAR}/unload", headers=admin)
        names = s.registry.names()
    assert anonymous.status_code == 401 and with_inference_token.status_code == 401, with_inference_token.text
    bad = {n: (a.status_code, a.text[:120]) for n, a in hostile.items() if not 400 <= a.status_code < 500}
    assert not bad, f"hostile names not refused with a 4xx: {bad}"
    assert outside.status_code == 404, outside.text
    assert loaded.status_code == 200, loaded.text
    assert any(r["name"] == TABULAR and r["state"] == "READY" for r in index), index
    assert unloaded.status_code == 200 and names == ["sum"], names
    report.append(
        {
            "test": "security: management",
            "hostile_names_refused": len(HOSTILE_NAMES),
            "default": "403 (off)",
            "token": "own (inference token gets 401)",
        }
    )


async def test_hostile_names_are_refused_over_grpc_too(rel_store: Path, tmp_path: Path) -> None:
    options = {"enable_management": True, "management_token": ADMIN, "grpc_port": free_port()}
    async with serve_in_process(tmp_path, [FaultyHandler("sum")], **options) as s:
        server = grpc_server_for(s.plane)
        await server.start()
        codes = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{options['grpc_port']}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                for name in ["..", "../../etc", "/etc/passwd", "http://evil.example/m", "a/b"]:
                    try:
                        await stub.RepositoryModelLoad(
                            pb.RepositoryModelLoadRequest(model_name=name),
                            metadata=(("authorization", f"Bearer {ADMIN}"),),
                            timeout=10,
                        )
                        codes[name] = grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as exc:
                        codes[name] = exc.code()
        finally:
            await server.stop(0)
    assert set(codes.values()) == {grpc.StatusCode.INVALID_ARGUMENT}, codes


# -- checkpoints are never unpickled -------------------------------------------------------------
class _Exploit:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("form", ["torch.save", "plain pickle"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch.load on a legacy pickle
def test_a_malicious_checkpoint_is_refused(tmp_path: Path, form: str) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "checkpoint.pt"
    payload = {
        "model_name": "mlp",
        "config": {},
        "state_dict": {"w": torch.zeros(1)},
        "meta": _Exploit(marker),
    }
    if form == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(path)
    assert not marker.exists(), "the checkpoint's pickle payload ran"


def test_container_and_pods_run_as_non_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"final USER is {users[-1:] or 'unset'}"
    deployment = (REPO / "k8s" / "base" / "deployment.yaml").read_text()
    assert "runAsNonRoot: true" in deployment, "the pod must set runAsNonRoot"
