"""HTTP transport in-process: create_app(DataPlane(test settings, fake registry)) + ASGI transport."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.http as triton_http
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from deepserve.service import json_codec
from deepserve.service.dataplane import DataPlane
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from tests.service.fakes import EmbedHandler, FakeEngine, SumHandler, asgi_client, make_generation_handler


@dataclass
class Served:
    client: httpx.AsyncClient
    app: FastAPI
    sum: SumHandler
    plane: DataPlane


async def _serve(tmp_path: Path, **overrides: object) -> AsyncIterator[Served]:
    options: dict[str, object] = {
        "model_store": tmp_path,
        "max_body_bytes": 64 * 1024,
        "request_timeout_s": 5.0,
    }
    options.update(overrides)
    settings = Settings(**options)  # type: ignore[arg-type]
    registry = Registry(settings, Metrics(CollectorRegistry()))
    summer = SumHandler()
    await registry.add_handler(summer)
    await registry.add_handler(EmbedHandler())
    await registry.add_handler(make_generation_handler(), engine=FakeEngine())
    plane = DataPlane(settings, registry)
    async with asgi_client(plane) as (client, app):
        yield Served(client, app, summer, plane)


@pytest_asyncio.fixture(loop_scope="function")
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async for s in _serve(tmp_path):
        yield s


# -- health and metadata ---------------------------------------------------------------------
async def test_health_and_server_metadata(served: Served) -> None:
    c = served.client
    assert (await c.get("/v2/health/live")).status_code == 200
    assert (await c.get("/v2/health/ready")).status_code == 200
    assert (await c.get("/ping")).json() == {"status": "Healthy"}
    meta = (await c.get("/v2")).json()
    assert meta["name"] == "deepserve" and "binary_tensor_data" in meta["extensions"]


async def test_model_metadata_config_and_stats(served: Served) -> None:
    c = served.client
    meta = (await c.get("/v2/models/sum")).json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["versions"] == ["1"]
    assert (await c.get("/v2/models/sum/versions/1")).status_code == 200
    assert (await c.get("/v2/models/sum/ready")).status_code == 200
    config = (await c.get("/v2/models/sum/config")).json()
    assert config["max_batch_size"] == 8 and config["input"][0] == {
        "name": "x",
        "data_type": "TYPE_FP32",
        "dims": [3],
    }
    await c.post("/v2/models/sum/infer", json=_sum_request([[1, 2, 3]]))
    stats = (await c.get("/v2/models/stats")).json()["model_stats"]  # not the model "stats"
    entry = next(s for s in stats if s["name"] == "sum")
    assert entry["version"] == "1" and entry["inference_count"] == 1
    assert (
        entry["inference_stats"]["success"]["count"] == 1 and entry["inference_stats"]["queue"]["count"] == 1
    )
    one = (await c.get("/v2/models/sum/versions/1/stats")).json()["model_stats"]
    assert [s["name"] for s in one] == ["sum"]


async def test_unknown_model_and_version_are_404_with_v2_error(served: Served) -> None:
    r = await served.client.get("/v2/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = await served.client.post("/v2/models/sum/versions/7/infer", json=_sum_request([[1, 2, 3]]))
    assert r.status_code == 404 and "version" in r.json()["error"]


async def test_repository_index(served: Served) -> None:
    index = (await served.client.post("/v2/repository/index", json={})).json()
    assert {row["name"] for row in index} == {"sum", "embed", "gen"}
    assert all(row["state"] == "READY" for row in index)


async def test_management_is_off_by_default(served: Served) -> None:
    r = await served.client.post("/v2/repository/models/sum/unload")
    assert r.status_code == 403 and "DEEPSERVE_ENABLE_MANAGEMENT" in r.json()["error"]


# -- v2 infer ------------------------------------------------------------------------------
def _sum_request(rows: list[list[float]], nested: bool = True) -> dict[str, object]:
    data: object = rows if nested else [v for row in rows for v in row]
    return {"id": "r1", "inputs": [{"name": "x", "shape": [len(rows), 3], "datatype": "FP32", "data": data}]}


@pytest.mark.parametrize("nested", [True, False])
async def test_infer_json(served: Served, nested: bool) -> None:
    r = await served.client.post("/v2/models/sum/infer", json=_sum_request([[1, 2, 3], [4, 5, 6]], nested))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"] == "r1" and body["model_name"] == "sum" and body["model_version"] == "1"
    assert body["outputs"] == [{"name": "total", "datatype": "FP32", "shape": [2, 1], "data": [6.0, 15.0]}]


async def test_infer_binary_with_tritonclient_codec(served: Served) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    inp = triton_http.InferInput("x", [4, 3], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = triton_http.InferRequestedOutput("total", binary_data=True)
    body, json_size = triton_http.InferenceServerClient.generate_request_body(
        [inp], outputs=[out], request_id="b"
    )
    headers = {"Inference-Header-Content-Length": str(json_size)}
    r = await served.client.post("/v2/models/sum/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    header_length = int(r.headers["inference-header-content-length"])
    result = triton_http.InferenceServerClient.parse_response_body(r.content, header_length=header_length)
    np.testing.assert_allclose(result.as_numpy("total"), x.sum(axis=1, keepdims=True))
    assert result.get_response()["id"] == "b"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"inputs": []}', "non-empty"),
        (
            b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]}',
            "needs 3 elements",
        ),
        (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FLOAT", "data": [1, 2, 3]}]}', "datatype"),
        (b'{"inputs": [{"name": "x", "shape": [1, -3], "datatype": "FP32", "data": [1]}]}', "non-negative"),
        (b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32"}]}', "neither"),
        (b'{"inputs": [{"name": "y", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}', "'x'"),
    ],
)
async def test_infer_bad_requests_are_400_saying_why(served: Served, body: bytes, fragment: str) -> None:
    r = await served.client.post("/v2/models/sum/infer", content=body)
    assert r.status_code == 400
    assert fragment in r.json()["error"]


async def test_binary_size_mismatch_is_400(served: Served) -> None:
    header = json_codec.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}
            ]
        }
    )
    body = header + b"\x00" * 8
    r = await served.client.post(
        "/v2/models/sum/infer", content=body, headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert r.status_code == 400 and "binary" in r.json()["error"]


async def test_poison_row_is_400_and_others_succeed(served: Served) -> None:
    served.sum.release.clear()
    blocker = asyncio.create_task(served.client.post("/v2/models/sum/infer", json=_sum_request([[0, 0, 0]])))
    await asyncio.sleep(0.05)
    good = asyncio.create_task(served.client.post("/v2/models/sum/infer", json=_sum_request([[1, 1, 1]])))
    bad = asyncio.create_task(served.client.post("/v2/models/sum/infer", json=_sum_request([[-1, -1, -1]])))
    await asyncio.sleep(0.05)
    served.sum.release.set()
    assert (await good).status_code == 200 and (await blocker).status_code == 200
    r = await bad
    assert r.status_code == 400 and "poison" in r.json()["error"]


async def test_body_over_the_limit_is_413(served: Served) -> None:
    r = await served.client.post("/v2/models/sum/infer", content=b"x" * (65 * 1024))
    assert r.status_code == 413 and "limit" in r.json()["error"]


@pytest.mark.parametrize(
    ("path", "message_of"),
    [
        ("/v2/models/sum/infer", lambda body: body["error"]),
        ("/v1/embeddings", lambda body: body["error"]["message"]),
        ("/predictions/sum", lambda body: body["message"]),
    ],
)
async def test_chunked_body_over_the_limit_is_413_in_each_protocols_error_body(
    served: Served, path: str, message_of: Any
) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(65):
            yield b"x" * 1024

    r = await served.client.post(path, content=chunks())
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and "limit" in message_of(r.json())


async def test_full_queue_is_429_with_retry_after(tmp_path: Path) -> None:
    async for s in _serve(tmp_path, max_queue_size=1):
        s.sum.release.clear()
        first = asyncio.create_task(s.client.post("/v2/models/sum/infer", json=_sum_request([[1, 1, 1]])))
        await asyncio.sleep(0.05)  # computing (blocked)
        second = asyncio.create_task(s.client.post("/v2/models/sum/infer", json=_sum_request([[1, 1, 1]])))
        await asyncio.sleep(0.05)  # waiting: the queue is now full
        r = await s.client.post("/v2/models/sum/infer", json=_sum_request([[1, 1, 1]]))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "retry" in r.json()["error"]
        s.sum.release.set()
        assert (await first).status_code == 200 and (await second).status_code == 200


async def test_deadline_is_504(served: Served) -> None:
    served.sum.release.clear()
    body = _sum_request([[1, 1, 1]]) | {"parameters": {"timeout": 50_000}}  # microseconds
    r = await served.client.post("/v2/models/sum/infer", json=body)
    served.sum.release.set()
    assert r.status_code == 504 and "deadline" in r.json()["error"]


async def test_draining_server_refuses_with_503(served: Served) -> None:
    served.plane.state.draining = True
    r = await served.client.post("/v2/models/sum/infer", json=_sum_request([[1, 1, 1]]))
    assert r.status_code == 503 and "retry" in r.json()["error"] and r.headers["retry-after"] == "1"
    assert (await served.client.get("/v2/health/ready")).status_code == 503
    assert (await served.client.get("/v2/health/live")).status_code == 200
    assert (await served.client.get("/ping")).status_code == 500
    served.plane.state.draining = False


async def test_bearer_token_protects_inference_not_health(tmp_path: Path) -> None:
    async for s in _serve(tmp_path, auth_token="s3cret"):
        assert (await s.client.get("/v2/health/ready")).status_code == 200
        r = await s.client.post("/v2/models/sum/infer", json=_sum_request([[1, 1, 1]]))
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        r = await s.client.post("/v1/embeddings", json={"model": "embed", "input": "a"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        ok = await s.client.post(
            "/v2/models/sum/infer", json=_sum_request([[1, 1, 1]]), headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200


# -- TorchServe-style ------------------------------------------------------------------------
async def test_torchserve_json_raw_and_multipart(served: Served) -> None:
    c = served.client
    r = await c.post("/predictions/sum", json={"rows": [[1, 2, 3]]})
    assert r.status_code == 200 and r.json() == {"total": [6.0]}
    r = await c.post(
        "/predictions/sum/1", content=b"[[1, 1, 1], [2, 2, 2]]", headers={"content-type": "application/json"}
    )
    assert r.json() == {"total": [3.0, 6.0]}
    files = {"data": ("rows.json", b"[[0, 1, 2]]", "application/json")}
    r = await c.post("/predictions/sum", files=files)
    assert r.status_code == 200 and r.json() == {"total": [3.0]}
    # `curl .../predictions/sum -T rows.json` (TorchServe's documented call) uploads with PUT
    r = await c.put("/predictions/sum", content=b"[[2, 2, 2]]", headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json() == {"total": [6.0]}
    r = await c.post(
        "/predictions/sum", content=b"\x00\x01", headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 400 and r.json()["type"] == "InvalidRequestError" and r.json()["code"] == 400


async def test_torchserve_unknown_model_is_404_in_torchserve_shape(served: Served) -> None:
    r = await served.client.post("/predictions/nope", content=b"1")
    body = r.json()
    assert r.status_code == 404 and body["code"] == 404 and body["type"] == "ModelNotFoundError"
    assert "nope" in body["message"]


async def test_torchserve_streams_generation(served: Served) -> None:
    r = await served.client.post("/predictions/gen", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 200 and r.text == "olleh"


# -- OpenAI-style ----------------------------------------------------------------------------
async def test_openai_models(served: Served) -> None:
    listing = (await served.client.get("/v1/models")).json()
    assert listing["object"] == "list" and {m["id"] for m in listing["data"]} == {"sum", "embed", "gen"}
    assert (await served.client.get("/v1/models/embed")).json()["object"] == "model"
    r = await served.client.get("/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


async def test_openai_embeddings_float_and_base64(served: Served) -> None:
    r = await served.client.post("/v1/embeddings", json={"model": "embed", "input": ["aa", "bab"]})
    body = r.json()
    assert body["data"][1]["embedding"] == [3.0, 1.0, 1.0] and body["usage"]["prompt_tokens"] == 8
    r = await served.client.post(
        "/v1/embeddings", json={"model": "embed", "input": "aa", "encoding_format": "base64"}
    )
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == [2.0, 2.0, 1.0]


async def test_openai_errors_have_openai_shape(served: Served) -> None:
    r = await served.client.post("/v1/embeddings", json={"model": "embed"})
    assert r.status_code == 400 and "input" in r.json()["error"]["message"]
    r = await served.client.post("/v1/embeddings", json={"model": "sum", "input": "a"})
    assert r.status_code == 400 and "not an embedding model" in r.json()["error"]["message"]


async def test_openai_body_errors_say_what_to_fix(served: Served) -> None:
    post = served.client.post
    unclosed = b'{"model":"embed","input":["a"]'
    r = await post("/v1/embeddings", content=unclosed, headers={"content-type": "application/json"})
    message = r.json()["error"]["message"]
    assert r.status_code == 400 and "not valid JSON at character" in message and "delimiter" in message
    r = await post("/v1/embeddings", content=b"model=embed", headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "content-type: application/json" in r.json()["error"]["message"]
    r = await served.client.post("/v1/embeddings", json={"model": "embed", "input": 5})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("invalid request body: input")


async def test_completions_and_chat(served: Served) -> None:
    r = await served.client.post("/v1/completions", json={"model": "gen", "prompt": "abc", "max_tokens": 8})
    body = r.json()
    assert body["choices"][0]["text"] == "cba" and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    chat = {"model": "gen", "messages": [{"role": "user", "content": [{"type": "text", "text": "xy"}]}],
            "max_completion_tokens": 1}  # fmt: skip
    body = (await served.client.post("/v1/chat/completions", json=chat)).json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "y"}
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["choices"][0]["finish_reason"] == "length"


async def test_chat_stream_with_usage(served: Served) -> None:
    chat = {"model": "gen", "messages": [{"role": "user", "content": "abc"}], "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    r = await served.client.post("/v1/chat/completions", json=chat)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json_codec.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "cba" and chunks[-1]["usage"]["completion_tokens"] == 3 and chunks[-1]["choices"] == []


async def test_generation_errors_arrive_before_the_stream(served: Served) -> None:
    r = await served.client.post(
        "/v1/completions", json={"model": "gen", "prompt": "overload", "stream": True}
    )
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    r = await served.client.post("/v1/completions", json={"model": "gen", "prompt": "z" * 100})
    assert r.status_code == 400 and "context window" in r.json()["error"]["message"]


async def test_a_stream_counts_as_one_request_until_its_last_byte(served: Served) -> None:
    """The autoscaler reads the in-flight gauge, and the error alert the status codes: a stream
    is in flight while it streams, and an error in its middle counts with its own status."""
    metrics = served.plane.metrics.registry
    engine = served.plane.registry.get("gen").engine

    def sample(name: str, **labels: str) -> float | None:
        return metrics.get_sample_value(name, {"model": "gen", **labels})  # type: ignore[no-any-return]

    for path, body, protocol in (
        ("/v1/completions", {"model": "gen", "prompt": "abc", "stream": True}, "openai"),
        ("/predictions/gen", {"prompt": "abc"}, "torchserve"),
    ):
        engine.gate.clear()  # the stream holds after its first chunk
        before = engine.chunks
        streaming = asyncio.create_task(served.client.post(path, json=body))
        for _ in range(200):
            if engine.chunks > before:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the chunk is on its way to the client
        assert sample("deepserve_inflight_requests") == 1.0, f"{path}: a running stream is not in flight"
        engine.gate.set()
        assert (await streaming).status_code == 200
        assert sample("deepserve_inflight_requests") == 0.0
        assert sample("deepserve_requests_total", protocol=protocol, code="200") == 1.0

    failing = {"model": "gen", "prompt": "fail midway", "stream": True}
    r = await served.client.post("/v1/completions", json=failing)
    assert r.status_code == 200 and "shutting down" in r.text  # the header was sent before the error
    assert sample("deepserve_requests_total", protocol="openai", code="503") == 1.0
    assert sample("deepserve_inflight_requests") == 0.0


def test_a_disconnect_reported_by_the_asgi_server_is_499_not_a_server_error() -> None:
    from starlette.requests import ClientDisconnect

    from deepserve.service.errors import as_deepserve_error

    assert as_deepserve_error(ClientDisconnect()).status == 499  # ASGI spec >= 2.4 servers raise it


async def test_a_client_that_leaves_mid_stream_counts_as_499(served: Served) -> None:
    from deepserve.service.http_stream import TrackedStreamingResponse
    plane = served.plane
    started = asyncio.Event()

    async def tokens() -> AsyncIterator[bytes]:
        yield b"first"
        started.set()
        await asyncio.sleep(30)  # the client leaves before this ends
        yield b"never sent"

    async def receive() -> dict[str, Any]:
        await started.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    with plane.call("gen", None, "openai") as call:
        response = TrackedStreamingResponse(call, tokens(), media_type="text/event-stream")
    scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "POST", "path": "/v1/completions"}
    await asyncio.wait_for(response(scope, receive, send), 5)
    metrics = plane.metrics.registry
    labels = {"model": "gen", "protocol": "openai", "code": "499"}
    assert metrics.get_sample_value("deepserve_requests_total", labels) == 1.0
    assert metrics.get_sample_value("deepserve_inflight_requests", {"model": "gen"}) == 0.0


# -- metrics -------------------------------------------------------------------------------
async def test_metrics_exposition(served: Served) -> None:
    await served.client.post("/v2/models/sum/infer", json=_sum_request([[1, 2, 3]]))
    await served.client.post("/v2/models/nope/infer", json=_sum_request([[1, 2, 3]]))
    text = (await served.client.get("/metrics")).text
    assert 'deepserve_requests_total{code="200",model="sum",protocol="v2-http"} 1.0' in text
    expected = (
        "deepserve_request_duration_seconds_bucket",
        "deepserve_queue_duration_seconds_bucket",
        "deepserve_compute_duration_seconds_bucket",
        "deepserve_batch_size_bucket",
        "deepserve_queue_depth",
        'deepserve_model_ready{model="sum",version="1"} 1.0',
        'deepserve_inflight_requests{model="sum"} 0.0',
        'deepserve_requests_total{code="404",model="_unknown",protocol="v2-http"} 1.0',
    )
    for name in expected:
        assert name in text
