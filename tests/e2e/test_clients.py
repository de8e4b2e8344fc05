"""Real, unmodified clients against `python -m deepserve.service` on loopback (marked e2e)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e


def _tabular(server: Server) -> dict[str, Any]:
    for spec in server.models("classification") + server.models("regression"):
        if spec["inputs"][0]["name"] == "features":
            return spec
    pytest.skip("the store has no tabular model")


def _rows(spec: dict[str, Any], n: int) -> np.ndarray:
    width = spec["inputs"][0]["shape"][1]
    return np.random.default_rng(0).normal(size=(n, width)).astype(np.float32)


def _text_embedder(server: Server) -> str:
    for spec in server.models("embedding"):
        if spec["inputs"][0]["name"] == "input_ids":
            return str(spec["name"])
    pytest.skip("the store has no text embedding model")


# -- tritonclient ----------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_infer_metadata_config_stats(server: Server, binary: bool) -> None:
    spec = _tabular(server)
    name, x = str(spec["name"]), _rows(spec, 3)
    client = triton_http.InferenceServerClient(server.http)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["inputs"][0]["name"] == "features"
    assert int(client.get_model_config(name)["max_batch_size"]) >= 1
    inp = triton_http.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    output_name = meta["outputs"][0]["name"]
    outputs = [triton_http.InferRequestedOutput(output_name, binary_data=binary)]
    result = client.infer(name, [inp], outputs=outputs, request_id="e2e-1")
    assert result.as_numpy(output_name).shape[0] == 3
    assert result.get_response()["id"] == "e2e-1"
    stats = client.get_inference_statistics(name)["model_stats"][0]
    assert stats["inference_count"] >= 3 and stats["inference_stats"]["success"]["count"] >= 1
    with pytest.raises(triton_http.InferenceServerException, match="not served"):
        client.get_model_metadata("no-such-model")


def test_tritonclient_grpc_infer_metadata_config_stats(server: Server) -> None:
    spec = _tabular(server)
    name, x = str(spec["name"]), _rows(spec, 2)
    client = triton_grpc.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    meta = client.get_model_metadata(name, as_json=True)
    config = client.get_model_config(name, as_json=True)["config"]
    assert config["input"][0]["name"] == "features" and int(config["max_batch_size"]) >= 1
    inp = triton_grpc.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    output_name = meta["outputs"][0]["name"]
    result = client.infer(
        name, [inp], outputs=[triton_grpc.InferRequestedOutput(output_name)], request_id="g1"
    )
    grpc_out = result.as_numpy(output_name)
    http_client = triton_http.InferenceServerClient(server.http)
    http_inp = triton_http.InferInput("features", list(x.shape), "FP32")
    http_inp.set_data_from_numpy(x)
    http_out = http_client.infer(name, [http_inp]).as_numpy(output_name)
    np.testing.assert_allclose(grpc_out, http_out, rtol=1e-5)
    stats = client.get_inference_statistics(name, as_json=True)["model_stats"][0]
    assert int(stats["execution_count"]) >= 1
    index = client.get_model_repository_index(as_json=True)["models"]
    assert any(m["name"] == name and m["state"] == "READY" for m in index)
    with pytest.raises(triton_grpc.InferenceServerException, match="NOT_FOUND"):
        client.get_model_metadata("no-such-model")


# -- openai ----------------------------------------------------------------------------------
def test_openai_client_models_and_embeddings(server: Server) -> None:
    model = _text_embedder(server)
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    assert model in {m.id for m in client.models.list()}
    default = client.embeddings.create(model=model, input=["hello world", "fast model"])  # base64 on the wire
    floats = client.embeddings.create(model=model, input="hello world", encoding_format="float")
    assert len(default.data) == 2 and len(default.data[0].embedding) > 0
    np.testing.assert_allclose(default.data[0].embedding, floats.data[0].embedding, rtol=1e-6)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")


def test_openai_client_completions(server: Server) -> None:
    models = server.models("text-generation")
    if not models:
        pytest.skip("the store has no text-generation model")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    name = str(models[0]["name"])
    done = client.completions.create(model=name, prompt="The ", max_tokens=5, temperature=0)
    assert done.choices[0].finish_reason in ("stop", "length") and done.usage is not None
    stream = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "The "}], max_completion_tokens=5, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


# -- TorchServe-style curl --------------------------------------------------------------------
def test_torchserve_style_calls(server: Server) -> None:
    spec = _tabular(server)
    name, row = str(spec["name"]), _rows(spec, 1)[0].tolist()
    with httpx.Client(base_url=server.base_url) as http:
        assert http.get("/ping").json() == {"status": "Healthy"}
        as_json = http.post(f"/predictions/{name}", json=row)
        assert as_json.status_code == 200, as_json.text
        raw = http.post(
            f"/predictions/{name}/1", content=str(row).encode(), headers={"content-type": "application/json"}
        )
        multipart = http.post(
            f"/predictions/{name}", files={"data": ("row.json", str(row).encode(), "application/json")}
        )
        assert raw.json() == as_json.json() == multipart.json()
        missing = http.post("/predictions/no-such-model", content=b"1")
        assert missing.status_code == 404 and missing.json()["code"] == 404


# -- metrics ---------------------------------------------------------------------------------
def test_metrics_pass_promtool(server: Server) -> None:
    text = httpx.get(f"{server.base_url}/metrics").text
    assert "deepserve_requests_total" in text and "deepserve_model_ready" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (CI installs it)")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_tritonclient_grpc_stream_generation(server: Server) -> None:
    models = server.models("text-generation")
    if not models:
        pytest.skip("the store has no text-generation model")
    import queue

    results: queue.Queue[Any] = queue.Queue()
    client = triton_grpc.InferenceServerClient(server.grpc)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    prompt = triton_grpc.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"The "], dtype=object))
    client.async_stream_infer(str(models[0]["name"]), [prompt], request_id="s", parameters={"max_tokens": 4})
    finals = []
    while not finals or not finals[-1]:
        result, error = results.get(timeout=30)
        assert error is None, error
        finals.append(result.get_response().parameters["triton_final_response"].bool_param)
    client.stop_stream()
    assert len(finals) >= 2 and finals[-1] and not any(finals[:-1])
