"""The gRPC transport in-process on both fronts (native C++, grpc.aio): fake registry, tritonclient aio."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from prometheus_client import CollectorRegistry

from deepserve.service.grpc_native import native_front_available
from deepserve.service.grpc_service import create_grpc_server
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from deepserve.service.state import ServerState
from tests.service.fakes import FakeEngine, SumHandler, make_generation_handler


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def front_params() -> list[Any]:
    """Both gRPC fronts; the native one skips where it is not built (CI requires it)."""
    return [
        pytest.param("native", marks=pytest.mark.skipif(
            not native_front_available(), reason="native gRPC front not built (needs libnghttp2-dev)"
        )),
        "aio",
    ]  # fmt: skip


@pytest_asyncio.fixture(loop_scope="function", params=front_params())
async def grpc_env(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[triton_aio.InferenceServerClient, ServerState]]:
    settings = Settings(model_store=tmp_path, grpc_port=_free_port(), grpc_front=request.param)
    registry = Registry(settings, Metrics(CollectorRegistry()))
    await registry.add_handler(SumHandler())
    await registry.add_handler(make_generation_handler(), engine=FakeEngine())
    registry.loading_done = True
    state = ServerState()
    server = create_grpc_server(registry, settings, state)
    await server.start()
    client = triton_aio.InferenceServerClient(f"127.0.0.1:{settings.grpc_port}")
    try:
        yield client, state
    finally:
        await client.close()
        await server.stop(0)
        await registry.stop(1.0)


def _input(rows: np.ndarray) -> Any:
    inp = triton_grpc.InferInput("x", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    return inp


async def test_health_metadata_config_and_stats(grpc_env: Any) -> None:
    client, _ = grpc_env
    assert await client.is_server_live() and await client.is_server_ready()
    assert await client.is_model_ready("sum")
    meta = await client.get_server_metadata(as_json=True)
    assert "statistics" in meta["extensions"]
    model = await client.get_model_metadata("sum", as_json=True)
    assert model["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": ["-1", "3"]}
    config = (await client.get_model_config("sum", as_json=True))["config"]
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == ["3"]
    await client.infer("sum", [_input(np.ones((2, 3), np.float32))])
    stats = (await client.get_inference_statistics("sum", as_json=True))["model_stats"][0]
    assert stats["version"] == "1" and stats["inference_count"] == "2"
    assert (
        stats["inference_stats"]["compute_infer"]["count"]
        == stats["inference_stats"]["compute_input"]["count"]
    )


async def test_infer_answers_in_raw_output_contents(grpc_env: Any) -> None:
    client, _ = grpc_env
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = await client.infer("sum", [_input(rows)], request_id="abc")
    np.testing.assert_allclose(result.as_numpy("total"), rows.sum(axis=1, keepdims=True))
    response = result.get_response()
    assert response.id == "abc" and len(response.raw_output_contents) == 1


async def test_errors_map_to_status_codes(grpc_env: Any) -> None:
    client, state = grpc_env
    with pytest.raises(triton_grpc.InferenceServerException) as missing:
        await client.get_model_metadata("nope")
    assert missing.value.status() == "StatusCode.NOT_FOUND"
    bad = triton_grpc.InferInput("x", [1, 3], "FP32")
    bad.set_data_from_numpy(np.full((1, 3), -1, np.float32))
    with pytest.raises(triton_grpc.InferenceServerException, match="poison") as poisoned:
        await client.infer("sum", [bad])
    assert poisoned.value.status() == "StatusCode.INVALID_ARGUMENT"
    state.draining = True
    with pytest.raises(triton_grpc.InferenceServerException) as draining:
        await client.infer("sum", [_input(np.ones((1, 3), np.float32))])
    assert draining.value.status() == "StatusCode.UNAVAILABLE"
    assert not await client.is_server_ready()


async def test_stream_generation_one_response_per_chunk(grpc_env: Any) -> None:
    client, _ = grpc_env
    prompt = triton_grpc.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"abc"], dtype=object))

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "gen", "inputs": [prompt], "request_id": "s1", "parameters": {"max_tokens": 8}}
        yield {"model_name": "nope", "inputs": [prompt]}

    texts, finals, errors = [], [], []
    async for result, error in client.stream_infer(requests()):
        if error is not None:
            errors.append(str(error))
            break
        texts.append(result.as_numpy("text_output")[0].decode())
        finals.append(result.get_response().parameters["triton_final_response"].bool_param)
    assert "".join(texts) == "cba" and finals == [False, False, True]
    assert errors and "nope" in errors[0]


async def test_methods_deepserve_does_not_offer_answer_unimplemented(grpc_env: Any) -> None:
    client, _ = grpc_env
    with pytest.raises(triton_grpc.InferenceServerException) as shm:  # perf_analyzer --shared-memory
        await client.get_system_shared_memory_status()
    assert shm.value.status() == "StatusCode.UNIMPLEMENTED"
    with pytest.raises(triton_grpc.InferenceServerException) as trace:
        await client.get_trace_settings()
    assert trace.value.status() == "StatusCode.UNIMPLEMENTED"
    assert await client.is_server_live()



def test_auto_falls_back_to_grpc_aio_without_the_native_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:

    settings = Settings(model_store=tmp_path, grpc_front="auto")
    registry = Registry(settings, Metrics(CollectorRegistry()))
    monkeypatch.setattr("deepserve.service.grpc_native.native_front_available", lambda: False)
    assert create_grpc_server(registry, settings, ServerState()).front == "grpc.aio"
    assert "native gRPC front is not built" in caplog.text
    if native_front_available():
        monkeypatch.undo()
        assert create_grpc_server(registry, settings, ServerState()).front == "native"
