"""The gRPC server (grpc.aio) under what clients do to it: bursts on one channel, deadlines,
cancellation, compressed, oversized, garbled and unknown calls, broken peers, shutdown with calls
in flight. Each test ends by showing the server still answers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from deepserve.service.grpc_server import create_grpc_server, server_options
from deepserve.service.settings import Settings
from tests.service.grpc_env import STREAM, GrpcEnv, infer_request, raw_stub, serving

ONE_ROW = np.ones((1, 3))


@pytest_asyncio.fixture(loop_scope="function")
async def env(tmp_path: Path) -> AsyncIterator[GrpcEnv]:
    async with serving(tmp_path, max_body_bytes=64 * 1024) as running:
        yield running


async def _still_serving(env: GrpcEnv) -> None:
    async with grpc.aio.insecure_channel(env.target) as channel:
        answer = pb.ModelInferResponse.FromString(await raw_stub(channel)(infer_request(ONE_ROW), timeout=5))
        assert answer.model_name == "sum"


def _x(rows: np.ndarray) -> triton_grpc.InferInput:
    x = triton_grpc.InferInput("x", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows.astype(np.float32))
    return x


async def test_a_burst_on_one_channel_is_batched(env: GrpcEnv) -> None:
    env.handler.release.clear()  # hold the model so the burst queues up behind the first batch
    client = triton_aio.InferenceServerClient(env.target)  # one channel: one HTTP/2 connection
    x = _x(np.arange(3).reshape(1, 3))
    calls = [asyncio.ensure_future(client.infer("sum", [x], request_id=str(i))) for i in range(64)]
    await asyncio.sleep(0.3)
    env.handler.release.set()
    results = await asyncio.gather(*calls)
    await client.close()
    assert sorted(r.get_response().id for r in results) == sorted(str(i) for i in range(64))
    assert all(r.as_numpy("total")[0, 0] == 3.0 for r in results)
    assert max(env.handler.batches) == 8  # the model's max batch size: calls were batched, not serial


async def test_unknown_method_and_garbage_request(env: GrpcEnv) -> None:
    async with grpc.aio.insecure_channel(env.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await raw_stub(channel, "/inference.GRPCInferenceService/NoSuchMethod")(b"")
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as other_service:
            await raw_stub(channel, "/no.such.Service/Call")(b"")
        assert other_service.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as garbage:
            await raw_stub(channel)(b"\xff\xff\xff not a protobuf")
        # grpcio answers an undecodable request UNKNOWN (its deserializer raised), naming the message
        assert garbage.value.code() in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INVALID_ARGUMENT)
        assert "ModelInferRequest" in (garbage.value.details() or "")
        assert await raw_stub(channel)(infer_request(ONE_ROW))  # same channel, still serving


@pytest.mark.parametrize("algorithm", [None, "gzip", "deflate"])  # tritonclient's choices
async def test_compressed_requests(env: GrpcEnv, algorithm: str | None) -> None:
    client = triton_aio.InferenceServerClient(env.target)
    result = await client.infer("sum", [_x(np.array([[1.0, 2.0, 3.0]]))], compression_algorithm=algorithm)
    assert result.as_numpy("total")[0, 0] == 6.0
    await client.close()


async def test_message_over_the_body_limit_is_refused_before_the_model(env: GrpcEnv) -> None:
    big = infer_request(np.ones((8, 4096)))  # 128 KiB, over the 64 KiB max_body_bytes
    async with grpc.aio.insecure_channel(env.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw_stub(channel)(big)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = refused.value.details() or ""
        assert "larger than max" in details and str(64 * 1024) in details, details
        assert await raw_stub(channel)(infer_request(ONE_ROW))  # the channel still works
    assert env.handler.batches == [1]  # only the small one reached the model


async def test_a_message_spanning_many_frames_arrives_whole(env: GrpcEnv) -> None:
    async with grpc.aio.insecure_channel(env.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw_stub(channel)(infer_request(np.ones((4000, 3))))  # 47 KiB: several DATA frames
    # parsed whole (every row counted), then refused by the model's own limit of 8 rows a request
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4000 rows" in (refused.value.details() or "")


async def test_client_deadline_drops_queued_work(env: GrpcEnv) -> None:
    env.handler.release.clear()  # the model is stuck on a first batch
    async with grpc.aio.insecure_channel(env.target) as channel:
        stub = raw_stub(channel)
        first = asyncio.ensure_future(stub(infer_request(np.ones((8, 3))), timeout=10))
        assert await asyncio.to_thread(env.handler.entered.wait, 5)  # running: what comes next queues
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub(infer_request(np.full((1, 3), 2.0)), timeout=0.2)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        env.handler.release.set()
        assert await first
    # the expired call was never computed: only the first batch (8 rows in one item) ran
    assert env.handler.batches == [1]


async def test_a_cancelled_call_counts_as_client_closed(env: GrpcEnv) -> None:
    env.handler.release.clear()
    async with grpc.aio.insecure_channel(env.target) as channel:
        call = raw_stub(channel)(infer_request(ONE_ROW))
        assert await asyncio.to_thread(env.handler.entered.wait, 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.sleep(0.2)
        env.handler.release.set()
        assert await raw_stub(channel)(infer_request(ONE_ROW))
    # the client left: 499, never a server error that would fire the 5xx alert
    metrics = env.registry.metrics.render().decode()
    lines = [line for line in metrics.splitlines() if line.startswith("deepserve_requests_total{")]
    codes = {re.search(r'code="(\d+)"', line)[1]: line.split()[-1] for line in lines if 'model="sum"' in line}  # type: ignore[index]
    assert codes == {"200": "1.0", "499": "1.0"}, lines


async def test_authorization_metadata_reaches_the_servicer(tmp_path: Path) -> None:
    async with (
        serving(tmp_path, auth_token="s3cret") as env,
        grpc.aio.insecure_channel(env.target) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await raw_stub(channel)(infer_request(ONE_ROW), metadata=(("authorization", "Bearer nope"),))
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = await raw_stub(channel)(
            infer_request(ONE_ROW), metadata=(("authorization", "Bearer s3cret"), ("x-bin", b"\x00"))
        )
        assert pb.ModelInferResponse.FromString(ok).model_name == "sum"


async def test_streams_interleave_on_one_channel(env: GrpcEnv) -> None:
    client = triton_aio.InferenceServerClient(env.target)

    async def one_stream(prompt: bytes) -> str:
        text = triton_grpc.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([prompt], dtype=object))

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": "gen", "inputs": [text], "parameters": {"max_tokens": 32}}

        out = []
        async for result, error in client.stream_infer(requests()):
            assert error is None
            out.append(result.as_numpy("text_output")[0].decode())
        return "".join(out)

    prompts = [f"prompt-{i}".encode() for i in range(12)]
    texts = await asyncio.gather(*(one_stream(p) for p in prompts))
    assert texts == [p.decode()[::-1] for p in prompts]
    await client.close()


def _stream(channel: grpc.aio.Channel) -> Any:
    method = channel.stream_stream(STREAM, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return method()


async def test_an_empty_stream_ends_ok(env: GrpcEnv) -> None:
    async with grpc.aio.insecure_channel(env.target) as channel:
        call = _stream(channel)
        await call.done_writing()
        assert [r async for r in call] == []
        assert await call.code() == grpc.StatusCode.OK


async def test_an_oversized_message_mid_stream_ends_that_stream_only(env: GrpcEnv) -> None:
    async with grpc.aio.insecure_channel(env.target) as channel:
        call = _stream(channel)
        await call.write(infer_request(ONE_ROW))
        assert not pb.ModelStreamInferResponse.FromString(await call.read()).error_message
        await call.write(infer_request(np.ones((8, 4096))))  # 128 KiB: over the 64 KiB limit
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await raw_stub(channel)(infer_request(ONE_ROW))


async def _closed_by_server(target: str, sent: bytes) -> None:
    """Connect, send ``sent``, and wait for the server to close the connection."""
    host, port = target.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(sent)
        await writer.drain()
        while await asyncio.wait_for(reader.read(65536), 5):
            pass
    finally:
        writer.close()


def _h2_preface() -> bytes:
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    peer.initiate_connection()
    return peer.data_to_send()


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="not-http2"),
        # a frame header announcing 16 MiB, over the 16 KiB SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR
        pytest.param(_h2_preface() + b"\xff" * 64, id="oversized-frame"),
        # CONTINUATION on stream 0 with no HEADERS before it: PROTOCOL_ERROR (RFC 9113 6.10)
        pytest.param(_h2_preface() + b"\x00\x00\x04\x09\x00\x00\x00\x00\x00abcd", id="stray-continuation"),
    ],
)
async def test_a_peer_that_breaks_http2_loses_only_its_own_connection(env: GrpcEnv, sent: bytes) -> None:
    async with grpc.aio.insecure_channel(env.target) as channel:
        assert await raw_stub(channel)(infer_request(ONE_ROW))  # a well-behaved client, connected
        await _closed_by_server(env.target, sent)
        assert await raw_stub(channel)(infer_request(ONE_ROW), timeout=5)  # its connection lives on


async def test_stop_lets_calls_in_flight_finish_within_the_grace(env: GrpcEnv) -> None:
    env.handler.release.clear()
    async with grpc.aio.insecure_channel(env.target) as channel:
        call = asyncio.ensure_future(raw_stub(channel)(infer_request(ONE_ROW)))
        assert await asyncio.to_thread(env.handler.entered.wait, 5)
        stopping = asyncio.ensure_future(env.server.stop(5.0))
        await asyncio.sleep(0.2)
        env.handler.release.set()
        assert pb.ModelInferResponse.FromString(await call).model_name == "sum"
        await stopping
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw_stub(channel)(infer_request(ONE_ROW), timeout=2)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_stop_cancels_what_outlives_the_grace(env: GrpcEnv) -> None:
    env.handler.release.clear()
    async with grpc.aio.insecure_channel(env.target) as channel:
        call = asyncio.ensure_future(raw_stub(channel)(infer_request(ONE_ROW)))
        assert await asyncio.to_thread(env.handler.entered.wait, 5)
        await asyncio.wait_for(env.server.stop(0.2), 5)
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await call
        assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


async def test_a_taken_port_fails_loudly(env: GrpcEnv) -> None:
    second = create_grpc_server(pb_grpc.GRPCInferenceServiceServicer(), env.settings, ready=lambda: True)
    with pytest.raises(OSError, match="cannot bind gRPC"):
        await second.start()


def test_settings_become_grpc_channel_arguments(tmp_path: Path) -> None:
    options = dict(server_options(Settings(model_store=tmp_path, max_body_bytes=1 << 20)))
    assert options["grpc.max_receive_message_length"] == 1 << 20  # the HTTP body limit, here too
    assert options["grpc.so_reuseport"] == 0
    assert options["grpc.keepalive_time_ms"] == 60_000 and options["grpc.keepalive_timeout_ms"] == 20_000
    # clients' own keepalive pings on idle connections are accepted, not answered with GOAWAY
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert "grpc.max_connection_age_ms" not in options  # off unless asked for
    aged = dict(server_options(Settings(grpc_max_connection_age_s=300, grpc_max_connection_age_grace_s=5)))
    assert aged["grpc.max_connection_age_ms"] == 300_000 and aged["grpc.max_connection_age_grace_ms"] == 5_000
