"""Bad input on the wire: the v2 binary extension taken apart, and every limit, each -> a clear 4xx.

Every case names what the error must mention, so "400 with a useless body" fails too. After
all of them the server must still be ready (no crash, no stuck request).
"""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.e2e.conftest import Server
from tests.reliability.payloads import bytes_elements, v2_binary, v2_json
from tests.reliability.store import GPT, IMAGE, TABULAR, has, row_shape, spec_of

pytestmark = [pytest.mark.e2e]
HEADER = "Inference-Header-Content-Length"
BODY_LIMIT = 1024 * 1024  # the shared server's DEEPSERVE_MAX_BODY_BYTES (conftest.SERVER_ENV)


@dataclass
class Case:
    path: str
    status: int | tuple[int, ...]
    says: str  # a (case-insensitive) piece of the error message
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    needs: str = TABULAR


Tensor = tuple[str, str, list[int], bytes]


def _features(rows: int, width: int) -> bytes:
    return np.ones((rows, width), dtype="<f4").tobytes()


def _binary(
    tensors: list[Tensor], header_length: int | None = None, extra: bytes = b"", cut: int = 0, **headers: str
) -> dict[str, Any]:
    """Case fields for a binary-extension body (optionally with a wrong header length, extra or cut bytes)."""
    body, length = v2_binary(tensors)
    body = (body + extra)[: len(body) + len(extra) - cut]
    return {
        "body": body,
        "headers": {HEADER: str(length if header_length is None else header_length), **headers},
    }


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def cases(store: Path) -> dict[str, Case]:
    tab, img, gpt = (f"/v2/models/{m}/infer" for m in (TABULAR, IMAGE, GPT))
    w = row_shape(store, TABULAR)[0]
    feats: list[Tensor] = [("features", "FP32", [1, w], _features(1, w))]
    ok = _binary(feats)
    nan = np.ones((1, w), dtype="<f4")
    nan[0, 3] = np.nan
    inf = np.full((1, w), np.inf, dtype="<f4")
    ints = np.ones((1, w), "<i8").tobytes()
    json_row = [1.0] * w
    return {
        "header length not a number": Case(tab, 400, HEADER, ok["body"], {HEADER: "twelve"}),
        "header length past the body": Case(tab, 400, HEADER, **_binary(feats, len(ok["body"]) + 1)),
        "header length negative": Case(tab, 400, HEADER, **_binary(feats, -5)),
        "header length cuts the JSON": Case(tab, 400, "JSON", **_binary(feats, 10)),
        "header length zero (raw binary)": Case(tab, 400, "raw binary", **_binary(feats, 0)),
        "truncated binary data": Case(tab, 400, "binary_data_size", **_binary(feats, cut=7)),
        "extra bytes after the tensors": Case(tab, 400, "binary_data_size", **_binary(feats, extra=bytes(8))),
        "binary size does not fit the shape": Case(
            tab, 400, "bytes", **_binary([("features", "FP32", [2, w], _features(1, w))])
        ),
        # integers are cast losslessly to FP32 (deepserve/handlers/tensors.py), or refused: either is clear
        "wrong dtype (INT64 for FP32)": Case(
            tab, (200, 400), "features", **_binary([("features", "INT64", [1, w], ints)])
        ),
        "wrong dtype (BYTES for FP32)": Case(
            tab, 400, "features", **_binary([("features", "BYTES", [1], bytes_elements([b"1"]))])
        ),
        "unknown datatype": Case(tab, 400, "datatype", v2_json("features", "FP33", [1, w], json_row)),
        "BF16 datatype": Case(tab, 400, "BF16", v2_json("features", "BF16", [1, w], json_row)),
        "JSON shape does not match data": Case(
            tab, 400, "elements", v2_json("features", "FP32", [2, w], json_row)
        ),
        "shape of the wrong rank": Case(tab, 400, "features", v2_json("features", "FP32", [w], json_row)),
        "negative dimension": Case(tab, 400, "shape", v2_json("features", "FP32", [-1, w], json_row)),
        "huge dimensions": Case(
            tab, 400, "bytes", **_binary([("features", "FP32", [2**31, 2**31], _features(1, w))])
        ),
        "huge dimensions in JSON": Case(
            tab, 400, "elements", v2_json("features", "FP32", [2**40, 2**40], [1.0])
        ),
        "NaN in the features": Case(
            tab, 400, "NaN", **_binary([("features", "FP32", [1, w], nan.tobytes())])
        ),
        "Inf in the features": Case(
            tab, 400, "Inf", **_binary([("features", "FP32", [1, w], inf.tobytes())])
        ),
        "NaN in a TorchServe CSV row": Case(
            f"/predictions/{TABULAR}",
            400,
            "NaN",
            ",".join(["nan"] + ["1"] * (w - 1)).encode(),
            {"Content-Type": "text/csv"},
        ),
        "NaN literal in JSON": Case(
            tab, 400, "JSON", b'{"inputs":[{"name":"features","datatype":"FP32","shape":[1,1],"data":[NaN]}]}'
        ),
        "not JSON at all": Case(tab, 400, "JSON", b"\xff\xfe<xml/>"),
        "no inputs": Case(tab, 400, "inputs", b'{"inputs": []}'),
        "unknown input name": Case(tab, 400, "nope", v2_json("nope", "FP32", [1, w], json_row)),
        "BYTES length prefix truncated": Case(
            img, 400, "truncated", needs=IMAGE, **_binary([("image", "BYTES", [1], b"\x10\x00")])
        ),
        "BYTES element runs past the data": Case(
            img,
            400,
            "runs past",
            needs=IMAGE,
            **_binary([("image", "BYTES", [1], struct.pack("<I", 99) + b"x")]),
        ),
        "BYTES that are not an image": Case(
            img,
            400,
            "decode",
            needs=IMAGE,
            **_binary([("image", "BYTES", [1], bytes_elements([b"\xff" * 40]))]),
        ),
        "non-UTF-8 BYTES prompt": Case(
            gpt,
            400,
            "UTF-8",
            needs=GPT,
            **_binary([("text_input", "BYTES", [1, 1], bytes_elements([b"\xff\xfe\xfa"]))]),
        ),
        "bad base64 image": Case(
            f"/predictions/{IMAGE}",
            400,
            "base64",
            b'{"image": "!!not*base64!!"}',
            {"Content-Type": "application/json"},
            needs=IMAGE,
        ),
        "unknown model": Case("/v2/models/no-such-model/infer", 404, "no-such-model", **ok),
        "unknown version": Case(f"/v2/models/{TABULAR}/versions/99/infer", 404, "version", **ok),
        "non-numeric version": Case(f"/v2/models/{TABULAR}/versions/latest/infer", 404, "version", **ok),
        "compressed body": Case(tab, 400, "compressed", **_binary(feats, **{"Content-Encoding": "gzip"})),
    }


def _check(answer: httpx.Response, status: int | tuple[int, ...], says: str) -> None:
    allowed = status if isinstance(status, tuple) else (status,)
    assert answer.status_code in allowed, f"{answer.status_code}: {answer.text[:300]}"
    if answer.status_code >= 400:
        assert says.lower() in answer.text.lower(), f"no mention of {says!r}: {answer.text[:300]}"


def test_malformed_requests_get_a_clear_4xx(
    server: Server, rel_store: Path, report: list[dict[str, Any]]
) -> None:
    tried, failures = 0, []
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for name, case in cases(rel_store).items():
            if not has(rel_store, case.needs):
                continue
            tried += 1
            try:
                _check(
                    client.post(case.path, content=case.body, headers=case.headers), case.status, case.says
                )
            except (AssertionError, httpx.TransportError) as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
        assert client.get("/v2/health/ready").status_code == 200, (
            "the server is not ready after the bad inputs"
        )
    report.append({"test": "bad input: v2 binary extension + JSON", "cases": tried, "failed": len(failures)})
    assert not failures, "\n".join(failures)


# -- limits -------------------------------------------------------------------------------------
def _png_header(width: int, height: int) -> bytes:
    """A PNG that only declares its size (a decompression bomb's first bytes): IHDR, empty IDAT, IEND."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def _chunks(data: bytes, size: int = 65536) -> Any:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_limits_are_enforced_with_a_clear_error(
    server: Server, rel_store: Path, report: list[dict[str, Any]]
) -> None:
    width = row_shape(rel_store, TABULAR)[0]
    rows_limit = int(httpx.get(f"{server.base_url}/v2/models/{TABULAR}/config").json()["max_batch_size"])
    too_many = rows_limit + 1
    big = v2_json("features", "FP32", [1, width], [0.5] * (BODY_LIMIT // 3))  # > 1 MiB of JSON
    checks: list[tuple[str, Callable[[httpx.Client], httpx.Response], int | tuple[int, ...], str]] = [
        (
            "body over the limit (Content-Length)",
            lambda c: c.post(f"/v2/models/{TABULAR}/infer", content=big),
            413,
            "limit",
        ),
        (
            "body over the limit (chunked)",
            lambda c: c.post(f"/v2/models/{TABULAR}/infer", content=_chunks(big)),
            413,
            "limit",
        ),
        (
            "batch over max_batch_size",
            lambda c: c.post(
                f"/v2/models/{TABULAR}/infer",
                content=v2_json("features", "FP32", [too_many, width], [0.5] * (too_many * width)),
            ),
            400,
            f"at most {rows_limit}",
        ),
    ]
    if has(rel_store, IMAGE):
        checks += [
            (
                "image over the pixel limit",
                lambda c: c.post(
                    f"/predictions/{IMAGE}", content=_png(5000, 5000), headers={"Content-Type": "image/png"}
                ),
                (400, 413),
                "pixel",
            ),
            (
                "decompression bomb PNG",
                lambda c: c.post(
                    f"/predictions/{IMAGE}",
                    content=_png_header(30000, 30000),
                    headers={"Content-Type": "image/png"},
                ),
                (400, 413),
                "pixel",
            ),
        ]
    if has(rel_store, GPT):
        long_prompt = "x" * (_context(rel_store) + 1)
        checks += [
            (
                "prompt over the context window",
                lambda c: c.post(
                    "/v1/completions", json={"model": GPT, "prompt": long_prompt, "max_tokens": 4}
                ),
                400,
                "context",
            ),
            (
                "max_tokens of -1",  # 0 is OpenAI's "score the prompt only" (test_openai_params.py)
                lambda c: c.post("/v1/completions", json={"model": GPT, "prompt": "hi", "max_tokens": -1}),
                400,
                "max_tokens",
            ),
        ]
    failures = []
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        for name, call, status, says in checks:
            try:
                _check(call(client), status, says)
            except (AssertionError, httpx.TransportError) as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
        if has(rel_store, GPT):
            failures += _max_tokens_is_bounded(client, _context(rel_store))
        assert client.get("/v2/health/ready").status_code == 200
    report.append(
        {
            "test": "limits (body, batch, pixels, prompt, max_tokens)",
            "cases": len(checks) + has(rel_store, GPT),
            "failed": len(failures),
        }
    )
    assert not failures, "\n".join(failures)


def _context(store: Path) -> int:
    return int(spec_of(store, GPT)["generation"]["context_length"])


def _max_tokens_is_bounded(client: httpx.Client, context: int) -> list[str]:
    """max_tokens past the context window: refused (400 naming it), or generation stops at the
    window with finish_reason "length" (the engine's documented choice); never unbounded work."""
    body = {"model": GPT, "prompt": "hi", "max_tokens": 10**9, "temperature": 0}
    answer = client.post("/v1/completions", json=body)
    if answer.status_code != 200:
        try:
            _check(answer, 400, "max_tokens")
        except AssertionError as exc:
            return [f"max_tokens over the window: {exc}"]
        return []
    result = answer.json()
    ok = result["choices"][0]["finish_reason"] == "length" and result["usage"]["completion_tokens"] <= context
    return [] if ok else [f"max_tokens over the window was not bounded: {result['usage']}"]


def test_a_client_that_hangs_up_mid_body_leaves_nothing_stuck(server: Server, rel_store: Path) -> None:
    host, port = server.http.split(":")
    for _ in range(5):
        with socket.create_connection((host, int(port))) as sock:
            head = f"POST /v2/models/{TABULAR}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
            sock.sendall(head.encode() + b'{"inputs": [')
            sock.shutdown(socket.SHUT_WR)
    answer = httpx.get(f"{server.base_url}/metrics", timeout=10)
    inflight = [line for line in answer.text.splitlines() if line.startswith("deepserve_inflight_requests")]
    assert all(line.endswith(" 0.0") for line in inflight), inflight
    assert httpx.get(f"{server.base_url}/v2/health/ready", timeout=10).status_code == 200


async def test_malformed_grpc_requests_get_a_clear_status(server: Server, rel_store: Path) -> None:
    """The same decoders behind gRPC: INVALID_ARGUMENT / NOT_FOUND with a message, never INTERNAL."""
    w = row_shape(rel_store, TABULAR)[0]

    def request(model: str, datatype: str, shape: list[int], raw: list[bytes]) -> Any:
        tensor = pb.ModelInferRequest.InferInputTensor(name="features", datatype=datatype, shape=shape)
        return pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=raw)

    nan = np.full((1, w), np.nan, dtype="<f4").tobytes()
    cases = {
        "raw size does not fit the shape": (request(TABULAR, "FP32", [2, w], [_features(1, w)]), "bytes"),
        "unknown datatype": (request(TABULAR, "FP33", [1, w], [_features(1, w)]), "datatype"),
        "huge dimensions": (request(TABULAR, "FP32", [2**40, 2**40], [_features(1, w)]), "bytes"),
        "more raw contents than inputs": (request(TABULAR, "FP32", [1, w], [_features(1, w)] * 2), "raw"),
        "NaN": (request(TABULAR, "FP32", [1, w], [nan]), "NaN"),
        "unknown model": (request("no-such-model", "FP32", [1, w], [_features(1, w)]), "no-such-model"),
    }
    failures = []
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name, (message, says) in cases.items():
            try:
                await stub.ModelInfer(message, timeout=30)
                failures.append(f"{name}: accepted")
            except grpc.aio.AioRpcError as exc:
                good = exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
                if not good or says.lower() not in (exc.details() or "").lower():
                    failures.append(f"{name}: {exc.code()} {exc.details()!r}")
    assert not failures, "\n".join(failures)


async def test_grpc_messages_over_the_body_limit_are_refused(server: Server, rel_store: Path) -> None:
    """gRPC honours the same size limit as HTTP (max_body_bytes), or a client could send gigabytes."""
    w = row_shape(rel_store, TABULAR)[0]
    rows = BODY_LIMIT // (4 * w) + 16  # just over the limit
    tensor = pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[rows, w])
    message = pb.ModelInferRequest(
        model_name=TABULAR, inputs=[tensor], raw_input_contents=[_features(rows, w)]
    )
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (
        refused.value.code(),
        refused.value.details(),
    )
