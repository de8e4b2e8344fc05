"""TLS from settings, on gRPC and HTTP both, against a self-signed certificate each test makes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import gevent.ssl
import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb

from deepserve.service.settings import Settings
from tests.service.grpc_env import infer_request, raw_stub, serving
from tests.service.serve_process import FEATURES, MODEL, self_signed, start, tiny_store

ROW = np.full((1, FEATURES), 0.5, np.float32)


def test_tls_needs_both_files_and_they_must_exist(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    assert Settings(tls_certfile=cert, tls_keyfile=key).tls
    assert not Settings().tls
    with pytest.raises(ValidationError, match="both DEEPSERVE_TLS_CERTFILE and DEEPSERVE_TLS_KEYFILE"):
        Settings(tls_certfile=cert)
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(tls_certfile=cert, tls_keyfile=tmp_path / "missing.pem")
    with pytest.raises(ValidationError, match="needs the cert and key"):
        Settings(tls_ca_certfile=cert)


async def test_grpc_over_tls_in_process(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    async with serving(tmp_path, tls_certfile=cert, tls_keyfile=key) as env:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(env.target, credentials) as channel:
            answer = await raw_stub(channel)(infer_request(np.ones((1, 3))), timeout=5)
            assert pb.ModelInferResponse.FromString(answer).model_name == "sum"
        async with grpc.aio.insecure_channel(env.target) as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await raw_stub(plaintext)(infer_request(np.ones((1, 3))), timeout=2)
            assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_client_certificates_when_a_ca_is_set(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)  # the server's certificate is the CA of the client's, here
    async with serving(tmp_path, tls_certfile=cert, tls_keyfile=key, tls_ca_certfile=cert) as env:
        anonymous = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(env.target, anonymous) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await raw_stub(channel)(infer_request(np.ones((1, 3))), timeout=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        signed = grpc.ssl_channel_credentials(cert.read_bytes(), key.read_bytes(), cert.read_bytes())
        async with grpc.aio.secure_channel(env.target, signed) as channel:
            assert await raw_stub(channel)(infer_request(np.ones((1, 3))), timeout=5)


@pytest.mark.e2e
def test_tritonclient_and_curl_get_answers_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    served = start(tiny_store(tmp_path / "store"), tmp_path / "server.log", cert, key)
    try:
        grpc_client = triton_grpc.InferenceServerClient(served.grpc, ssl=True, root_certificates=str(cert))
        x = triton_grpc.InferInput("features", [1, FEATURES], "FP32")
        x.set_data_from_numpy(ROW)
        assert grpc_client.infer(MODEL, [x]).as_numpy("logits").shape == (1, 2)
        grpc_client.close()

        http_client = triton_http.InferenceServerClient(
            served.http.removeprefix("https://"), ssl=True, ssl_options={"ca_certs": str(cert)},
            ssl_context_factory=gevent.ssl.create_default_context,
        )  # fmt: skip
        y = triton_http.InferInput("features", [1, FEATURES], "FP32")
        y.set_data_from_numpy(ROW)
        assert http_client.infer(MODEL, [y]).as_numpy("logits").shape == (1, 2)
        http_client.close()

        body = {"inputs": [{"name": "features", "shape": [1, FEATURES], "datatype": "FP32",
                            "data": ROW.ravel().tolist()}]}  # fmt: skip
        curl = subprocess.run(
            ["curl", "-sS", "--fail", "--cacert", str(cert), "-H", "content-type: application/json",
             "-d", json.dumps(body), f"{served.http}/v2/models/{MODEL}/infer"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        assert curl.returncode == 0, curl.stderr
        assert json.loads(curl.stdout)["outputs"][0]["shape"] == [1, 2]
        plaintext = subprocess.run(
            ["curl", "-sS", served.http.replace("https://", "http://") + "/v2/health/ready"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        assert plaintext.returncode != 0, plaintext.stdout  # no plaintext HTTP beside TLS
    finally:
        code = served.stop()
    assert code == 0, served.log.read_text()[-3000:]
    assert "(TLS)" in served.log.read_text()
