"""The native gRPC front (service/native/h2_session.cc, service/grpc_native.py) under what clients
do to it: bursts, deadlines, cancellation, oversized and unknown calls, shutdown with calls in flight.

Each test also checks the front's bookkeeping: once the clients are done, no stream is left in the
C++ sessions and no task in Python, so nothing leaks per call.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2 as pb

from deepserve.service.grpc_native import NativeGrpcServer, _Inbox, native_front_available
from deepserve.service.grpc_service import create_grpc_server
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.settings import Settings
from deepserve.service.state import ServerState
from tests.service.fakes import FakeEngine, SumHandler, make_generation_handler, make_spec

pytestmark = pytest.mark.skipif(not native_front_available(), reason="native gRPC front not built")
INFER = "/inference.GRPCInferenceService/ModelInfer"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Env:
    def __init__(self, server: NativeGrpcServer, handler: SumHandler, target: str, registry: Registry):
        self.server, self.handler, self.target = server, handler, target
        self.registry = registry

    async def settled(self) -> None:
        """Wait until the front holds no call and Python no task (what every test ends with)."""
        front = self.server
        for _ in range(200):
            if front.active_calls() == 0 and not self.server._tasks and not self.server._streams:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"leaked: {front.active_calls()} calls, {len(self.server._tasks)} tasks")


@pytest_asyncio.fixture(loop_scope="function")
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = Settings(
        model_store=tmp_path, grpc_port=_free_port(), grpc_front="native", max_body_bytes=64 * 1024
    )
    registry = Registry(settings, Metrics(CollectorRegistry()))
    handler = SumHandler()
    await registry.add_handler(handler)
    await registry.add_handler(make_generation_handler(), engine=FakeEngine())
    registry.loading_done = True
    server = create_grpc_server(registry, settings, ServerState())
    await server.start()
    try:
        yield Env(server, handler, f"127.0.0.1:{settings.grpc_port}", registry)
    finally:
        handler.release.set()
        await server.stop(0)
        await registry.stop(1.0)


def _request(rows: np.ndarray, model: str = "sum") -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.astype(np.float32).tobytes())
    return request.SerializeToString()


def _stub(channel: grpc.aio.Channel, method: str = INFER) -> Any:
    return channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


async def test_a_burst_of_calls_reaches_the_batcher_together(env: Env) -> None:
    env.handler.release.clear()  # hold the model so the burst queues up behind the first batch
    client = triton_aio.InferenceServerClient(env.target)
    rows = np.arange(3, dtype=np.float32).reshape(1, 3)
    x = triton_grpc.InferInput("x", [1, 3], "FP32")
    x.set_data_from_numpy(rows)
    calls = [asyncio.ensure_future(client.infer("sum", [x], request_id=str(i))) for i in range(64)]
    await asyncio.sleep(0.3)
    env.handler.release.set()
    results = await asyncio.gather(*calls)
    await client.close()
    assert sorted(r.get_response().id for r in results) == sorted(str(i) for i in range(64))
    assert all(r.as_numpy("total")[0, 0] == 3.0 for r in results)
    assert max(env.handler.batches) == 8  # the model's max batch size: calls were batched, not serial
    await env.settled()


async def test_unknown_method_and_garbage_request(env: Env) -> None:
    async with grpc.aio.insecure_channel(env.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await _stub(channel, "/inference.GRPCInferenceService/NoSuchMethod")(b"")
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as other_service:
            await _stub(channel, "/grpc.health.v1.Health/Check")(b"")
        assert other_service.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as garbage:
            await _stub(channel)(b"\xff\xff\xff not a protobuf")
        assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ModelInferRequest" in (garbage.value.details() or "")
        assert await _stub(channel)(_request(np.ones((1, 3))))  # still serving
    await env.settled()


async def test_compressed_requests_are_decompressed_by_the_front(env: Env) -> None:
    client = triton_aio.InferenceServerClient(env.target)
    x = triton_grpc.InferInput("x", [1, 3], "FP32")
    x.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]], np.float32))
    for algorithm in (None, "gzip", "deflate"):  # tritonclient's compression_algorithm choices
        result = await client.infer("sum", [x], compression_algorithm=algorithm)
        assert result.as_numpy("total")[0, 0] == 6.0
    await client.close()
    await env.settled()


async def test_message_over_the_body_limit_is_refused_before_python(env: Env) -> None:
    big = _request(np.ones((8, 4096)))  # 128 KiB, over the 64 KiB limit
    async with grpc.aio.insecure_channel(env.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _stub(channel)(big)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await _stub(channel)(_request(np.ones((1, 3))))
    assert env.handler.batches == [1]
    await env.settled()


class RawH2:
    """An HTTP/2 client that sends exactly what a test says (h2), such as half a gRPC message."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.ended: dict[int, dict[str, str]] = {}  # stream -> its response headers and trailers

    @classmethod
    async def connect(cls, target: str) -> RawH2:
        host, port = target.rsplit(":", 1)
        client = cls(*await asyncio.open_connection(host, int(port)))
        client.h2.initiate_connection()
        await client.flush()
        await client.read_until(lambda: client.h2.outbound_flow_control_window > 65535)  # server's window
        return client

    async def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())
        await self.writer.drain()

    async def call(self, method: str = INFER) -> int:
        stream = self.h2.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "http"), (":path", method), (":authority", "localhost"),
                   ("content-type", "application/grpc"), ("te", "trailers")]  # fmt: skip
        self.h2.send_headers(stream, headers)
        await self.flush()
        return stream

    async def send(self, stream: int, data: bytes, end: bool = False, pad: int | None = None) -> None:
        size = self.h2.max_outbound_frame_size - (pad or 0) - 1
        for i in range(0, len(data), size):
            last = end and i + size >= len(data)
            await self.read_until(lambda: self.h2.local_flow_control_window(stream) >= size + (pad or 0) + 1)
            self.h2.send_data(stream, data[i : i + size], end_stream=last, pad_length=pad)
        await self.flush()

    async def read_until(self, done: Any) -> None:
        while not done():
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            assert data, "the server closed the connection"
            for event in self.h2.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                    self.ended.setdefault(event.stream_id, {}).update(headers)
                elif isinstance(event, h2.events.DataReceived):
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            await self.flush()

    async def status(self, stream: int) -> tuple[int, str]:
        await self.read_until(lambda: "grpc-status" in self.ended.get(stream, {}))
        headers = self.ended[stream]
        return int(headers["grpc-status"]), headers.get("grpc-message", "")

    async def close(self) -> None:
        self.writer.close()


def _framed(message: bytes) -> bytes:
    return b"\0" + len(message).to_bytes(4, "big") + message


async def test_more_than_a_connection_window_flows_padding_included(env: Env) -> None:
    """The session sends every WINDOW_UPDATE itself: any byte it failed to acknowledge (padding,
    a refused call's DATA) would shrink the 16 MB connection window until the connection stalls."""
    message = _framed(_request(np.ones((5000, 3))))  # 59 KiB: refused by the model (rows > 8), parsed whole
    client = await RawH2.connect(env.target)
    for i in range(320):  # 19 MB on one connection
        stream = await client.call()
        await client.send(stream, message, end=True, pad=255 if i % 2 else None)
        assert (await client.status(stream))[0] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    await client.close()
    await env.settled()


async def test_partly_received_messages_are_bounded_per_connection(env: Env) -> None:
    """1,024 streams each sending most of a maximal message must not hold 1,024 times the limit."""
    message = _framed(_request(np.ones((4000, 3))))  # 47 KiB of the 64 KiB limit
    client = await RawH2.connect(env.target)
    first, second = await client.call(), await client.call()
    await client.send(first, message[:40_000])
    await client.send(second, message[:40_000])  # 80,000 partly received bytes: over the limit
    code, details = await client.status(second)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "partly received" in details and "max_body_bytes" in details
    await client.send(first, message[40_000:], end=True)  # the first one completes and is served
    code, details = await client.status(first)
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "4000 rows" in details
    # the connection is still good, and holds nothing of the refused message
    third = await client.call()
    await client.send(third, _framed(_request(np.ones((1, 3)))), end=True)
    assert (await client.status(third))[0] == grpc.StatusCode.OK.value[0]
    assert all(conn.session.partial_bytes() == 0 for conn in env.server.connections)
    await client.close()
    await env.settled()


def _padded_request(size: int) -> bytes:
    request = pb.ModelInferRequest(model_name="sum", id="x" * size)  # valid, and `size` bytes long
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.ones((1, 3), np.float32).tobytes())
    return request.SerializeToString()


async def _wait_for(condition: Any, what: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def _stream_and_hold(
    env_server: NativeGrpcServer, handler: SumHandler, target: str, payload: bytes, count: int, check: Any
) -> None:
    """Stream ``count`` requests at a model that is stuck on the first; ``check`` runs while it is
    stuck; then the model is freed and every request must be answered, in order."""
    handler.release.clear()
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda b: b, response_deserializer=lambda b: b,
        )()

        async def send_all() -> None:
            for _ in range(count):
                await call.write(payload)
            await call.done_writing()

        sending = asyncio.ensure_future(send_all())
        await check(channel)
        handler.release.set()
        answers = [pb.ModelStreamInferResponse.FromString(r) async for r in call]
        await sending
    assert len(answers) == count and not any(a.error_message for a in answers)


async def test_a_stream_refused_mid_call_frees_its_handler(env: Env) -> None:
    """An oversized second message ends the call in the session; the handler waiting for it must
    be told, or its task would wait until the connection closes."""
    async with grpc.aio.insecure_channel(env.target) as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda b: b, response_deserializer=lambda b: b,
        )()
        await call.write(_request(np.ones((1, 3))))
        first = pb.ModelStreamInferResponse.FromString(await call.read())
        assert not first.error_message
        await call.write(_request(np.ones((8, 4096))))  # 128 KiB: over the 64 KiB limit
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await env.settled()  # no task left waiting for a third message


async def test_a_stream_that_outruns_its_model_is_paced_alone(tmp_path: Path) -> None:
    """HTTP/2 flow control for that call only: its unread requests stop near HIGH plus one stream
    window, while another call on the same channel (connection) is answered meanwhile."""
    settings = Settings(model_store=tmp_path, grpc_port=_free_port(), grpc_front="native",
                        max_body_bytes=16 << 20)  # fmt: skip
    registry = Registry(settings, Metrics(CollectorRegistry()))
    handler = SumHandler()
    await registry.add_handler(handler)
    await registry.add_handler(SumHandler(make_spec("other")))
    registry.loading_done = True
    server: Any = create_grpc_server(registry, settings, ServerState())
    await server.start()
    size, count = 8000, 1000  # 8 MB in all: twice the 4 MB stream window

    async def check(channel: grpc.aio.Channel) -> None:
        await _wait_for(lambda: any(i.held for i in server._streams.values()), "the stream held")
        await asyncio.sleep(0.5)  # what the client could still send has arrived
        (inbox,) = server._streams.values()
        waiting = inbox._queue.qsize()
        assert _Inbox.HIGH <= waiting <= _Inbox.HIGH + (4 << 20) // size + 40, waiting
        (conn,) = server.connections
        assert not conn._reading_paused
        other = await _stub(channel)(_request(np.ones((1, 3)), model="other"), timeout=5)
        assert pb.ModelInferResponse.FromString(other).model_name == "other"

    try:
        await _stream_and_hold(server, handler, f"127.0.0.1:{settings.grpc_port}", _padded_request(size),
                               count, check)  # fmt: skip
        assert not any(i.held for i in server._streams.values())
    finally:
        handler.release.set()
        await server.stop(0)
        await registry.stop(1.0)


async def test_the_inboxes_of_a_connection_are_bounded_in_bytes(env: Env) -> None:
    """Many calls, each within its own window, still hold at most MAX_BODY_BYTES unread on one
    connection: past it the socket is not read (here one call is enough: the limit is 64 KiB)."""

    async def check(channel: grpc.aio.Channel) -> None:
        await _wait_for(lambda: any(c._reading_paused for c in env.server.connections), "reading paused")
        (conn,) = env.server.connections
        assert conn.queued <= 64 * 1024 + 256 * 1024  # the limit, plus one read's worth

    await _stream_and_hold(env.server, env.handler, env.target, _padded_request(8000), 300, check)
    (conn,) = env.server.connections or (None,)
    assert conn is None or (not conn._reading_paused and conn.queued == 0)
    await env.settled()


async def test_a_message_spanning_many_frames_and_reads_arrives_whole(env: Env) -> None:
    rows = np.ones((4000, 3), np.float32)  # 47 KiB: three 16 KiB DATA frames
    async with grpc.aio.insecure_channel(env.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _stub(channel)(_request(rows))
    # parsed whole (every row counted), then refused by the model's own limit of 8 rows a request
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4000 rows" in (refused.value.details() or "")
    await env.settled()


async def test_a_peer_that_breaks_http2_loses_only_its_connection(env: Env) -> None:
    host, port = env.target.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not the HTTP/2 preface
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) is not None  # the server closes it (EOF)
    writer.close()
    async with grpc.aio.insecure_channel(env.target) as channel:
        assert await _stub(channel)(_request(np.ones((1, 3))))  # everyone else is still served
    await env.settled()


async def test_client_deadline_drops_queued_work(env: Env) -> None:
    env.handler.release.clear()  # the model is stuck on a first batch
    async with grpc.aio.insecure_channel(env.target) as channel:
        stub = _stub(channel)
        first = asyncio.ensure_future(stub(_request(np.ones((8, 3))), timeout=10))
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub(_request(np.full((1, 3), 2.0)), timeout=0.2)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        env.handler.release.set()
        assert await first
        await env.settled()
    # the expired call was never computed: only the first batch (8 rows in one item) ran
    assert env.handler.batches == [1]


async def test_cancelled_call_frees_its_task(env: Env) -> None:
    env.handler.release.clear()
    async with grpc.aio.insecure_channel(env.target) as channel:
        call = _stub(channel)(_request(np.ones((1, 3))))
        await asyncio.sleep(0.2)
        assert len(env.server._tasks) == 1
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(100):
            if not env.server._tasks:
                break
            await asyncio.sleep(0.01)
        assert not env.server._tasks
        env.handler.release.set()
        assert await _stub(channel)(_request(np.ones((1, 3))))
    await env.settled()
    # the client left: counted as 499, never as a server error that would fire the 5xx alert
    metrics = env.registry.metrics.render().decode()
    lines = [line for line in metrics.splitlines() if line.startswith("deepserve_requests_total{")]
    codes = {re.search(r'code="(\d+)"', line)[1]: line.split()[-1] for line in lines if 'model="sum"' in line}  # type: ignore[index]
    assert codes == {"200": "1.0", "499": "1.0"}, lines


async def test_authorization_metadata_reaches_the_servicer(tmp_path: Path) -> None:
    port = _free_port()
    settings = Settings(model_store=tmp_path, grpc_port=port, grpc_front="native", auth_token="s3cret")
    registry = Registry(settings, Metrics(CollectorRegistry()))
    await registry.add_handler(SumHandler())
    registry.loading_done = True
    server = create_grpc_server(registry, settings, ServerState())
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await _stub(channel)(_request(np.ones((1, 3))), metadata=(("authorization", "Bearer nope"),))
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = await _stub(channel)(
                _request(np.ones((1, 3))), metadata=(("authorization", "Bearer s3cret"), ("x-bin", b"\x00"))
            )
            assert pb.ModelInferResponse.FromString(ok).model_name == "sum"
    finally:
        await server.stop(0)
        await registry.stop(1.0)


async def test_streams_interleave_and_end_cleanly(env: Env) -> None:
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
    await env.settled()


async def test_an_empty_stream_ends_ok(env: Env) -> None:
    async with grpc.aio.insecure_channel(env.target) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda b: b, response_deserializer=lambda b: b,
        )
        call = stream()
        await call.done_writing()
        assert [r async for r in call] == []
        assert await call.code() == grpc.StatusCode.OK
    await env.settled()


async def test_stop_lets_calls_in_flight_finish_within_the_grace(env: Env) -> None:
    env.handler.release.clear()
    async with grpc.aio.insecure_channel(env.target) as channel:
        call = asyncio.ensure_future(_stub(channel)(_request(np.ones((1, 3)))))
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(env.server.stop(5.0))
        await asyncio.sleep(0.2)
        env.handler.release.set()
        answer = pb.ModelInferResponse.FromString(await call)
        assert answer.model_name == "sum"
        await stopping
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _stub(channel)(_request(np.ones((1, 3))), timeout=2)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_stop_cancels_what_outlives_the_grace(env: Env) -> None:
    env.handler.release.clear()
    async with grpc.aio.insecure_channel(env.target) as channel:
        call = asyncio.ensure_future(_stub(channel)(_request(np.ones((1, 3)))))
        await asyncio.sleep(0.2)
        await asyncio.wait_for(env.server.stop(0.2), 5)
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await call
        assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert not env.server._tasks


async def test_a_taken_port_fails_loudly(env: Env) -> None:
    host, port = env.target.rsplit(":", 1)
    second = NativeGrpcServer(env.server._routes[0].handler.__self__, host, int(port), 1 << 20)
    with pytest.raises(OSError, match="cannot bind"):
        await second.start()
