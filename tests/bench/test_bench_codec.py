"""Request bytes: v2 JSON and binary bodies decode back to the same tensors; gRPC raw contents."""

from __future__ import annotations

import json

import numpy as np

from deepserve.bench import codec
from deepserve.bench.naive_server import decode_inputs


def _sample() -> dict[str, np.ndarray]:
    ids = np.array([[5, 6, 7], [8, 0, 0]], np.int64)
    return {"input_ids": ids, "pixels": np.ones((2, 1, 2, 2), np.float32) / 3}


def test_binary_body_round_trips_and_declares_its_header_length() -> None:
    body, header_len = codec.infer_binary(_sample())
    header = json.loads(body[:header_len])
    assert header["parameters"] == {"binary_data_output": True}
    assert [t["parameters"]["binary_data_size"] for t in header["inputs"]] == [48, 32]
    assert len(body) == header_len + 48 + 32
    feeds, _ = decode_inputs(body, header_len)
    for name, arr in _sample().items():
        np.testing.assert_array_equal(feeds[name], arr)


def test_json_body_round_trips() -> None:
    feeds, _ = decode_inputs(codec.infer_json(_sample()), None)
    for name, arr in _sample().items():
        np.testing.assert_allclose(feeds[name], arr)
        assert feeds[name].dtype == arr.dtype


def test_bytes_tensor_encoding_matches_the_extension() -> None:
    encoded = codec.tensor_bytes(np.array([b"ab", b"xyz"], dtype=object))
    assert encoded == bytes.fromhex("0200000061620300000078797a")  # the extension's own example


def test_http_request_carries_the_binary_header() -> None:
    raw = codec.infer_http_request("m", "127.0.0.1:1", _sample(), "binary")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v2/models/m/infer HTTP/1.1")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Inference-Header-Content-Length: " in head


def test_grpc_request_uses_raw_input_contents() -> None:
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest.FromString(codec.infer_grpc_request("m", _sample()))
    assert req.model_name == "m"
    assert [t.name for t in req.inputs] == ["input_ids", "pixels"]
    assert list(req.inputs[1].shape) == [2, 1, 2, 2]
    assert not req.inputs[0].HasField("contents")
    np.testing.assert_array_equal(
        np.frombuffer(req.raw_input_contents[0], np.int64).reshape(2, 3), _sample()["input_ids"]
    )
