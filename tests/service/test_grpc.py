"""The gRPC transport in-process (grpc.aio): fake registry, tritonclient aio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio

from deepserve.service.state import ServerState
from tests.service.grpc_env import serving


@pytest_asyncio.fixture(loop_scope="function")
async def grpc_env(tmp_path: Path) -> AsyncIterator[tuple[triton_aio.InferenceServerClient, ServerState]]:
    async with serving(tmp_path) as env:
        client = triton_aio.InferenceServerClient(env.target)
        try:
            yield client, env.plane.state
        finally:
            await client.close()


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


async def test_stream_generation_takes_the_penalties_it_is_sent(tmp_path: Path) -> None:
    """Sampling parameters ride in the request's parameters; the penalties were once dropped here."""
    prompt = triton_grpc.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"abc"], dtype=object))
    sent = {"max_tokens": 8, "temperature": 0.0, "frequency_penalty": 0.5, "presence_penalty": 0.25}

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "gen", "inputs": [prompt], "parameters": sent}
        yield {"model_name": "gen", "inputs": [prompt], "parameters": {"max_tokens": 8}}

    async with serving(tmp_path) as env:
        client = triton_aio.InferenceServerClient(env.target)
        try:
            finals = 0
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                finals += result.get_response().parameters["triton_final_response"].bool_param
                if finals == 2:
                    break
        finally:
            await client.close()
        taken, unset = env.registry.get("gen").engine.params
    assert (taken.frequency_penalty, taken.presence_penalty, taken.temperature) == (0.5, 0.25, 0.0)
    assert (unset.frequency_penalty, unset.presence_penalty) == (0.0, 0.0)  # the model's defaults


async def test_methods_deepserve_does_not_offer_answer_unimplemented(grpc_env: Any) -> None:
    client, _ = grpc_env
    with pytest.raises(triton_grpc.InferenceServerException) as shm:  # perf_analyzer --shared-memory
        await client.get_system_shared_memory_status()
    assert shm.value.status() == "StatusCode.UNIMPLEMENTED"
    with pytest.raises(triton_grpc.InferenceServerException) as trace:
        await client.get_trace_settings()
    assert trace.value.status() == "StatusCode.UNIMPLEMENTED"
    assert await client.is_server_live()


async def test_a_stream_the_client_cancels_counts_as_499(tmp_path: Path) -> None:
    """A client that cancels its stream mid-generation left; it is not a server error (no 500 page)."""
    import asyncio

    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    async with serving(tmp_path) as env:
        request = pb.ModelInferRequest(model_name="gen")
        request.parameters["max_tokens"].int64_param = 60
        text = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
        text.contents.bytes_contents.append(b"x" * 60)
        async with grpc.aio.insecure_channel(env.target) as channel:
            for _ in range(5):  # cancelled while the server waits on the model or on its own write
                call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([request]))
                first = await call.read()
                assert first.infer_response.model_name == "gen"
                call.cancel()
        await asyncio.sleep(0.5)
        sample = env.plane.metrics.registry.get_sample_value
        labels = {"model": "gen", "protocol": "v2-grpc"}
        assert sample("deepserve_requests_total", {**labels, "code": "499"}) == 5.0
        assert sample("deepserve_requests_total", {**labels, "code": "500"}) is None
        assert sample("deepserve_inflight_requests", {"model": "gen"}) == 0.0
