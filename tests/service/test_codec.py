"""The v2 tensor codec against tritonclient's own encoder/decoder."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from deepserve.service.errors import InvalidRequestError
from deepserve.service.tensors import from_json, from_raw, to_json_data, to_raw
from deepserve.service.v2_codec import InferRequest, InferResult, decode_request, encode_response


@pytest.mark.parametrize(
    "dtype", ["float32", "float16", "float64", "int8", "int32", "int64", "uint8", "bool"]
)
def test_numeric_raw_round_trip(dtype: str) -> None:
    array = (np.arange(12).reshape(3, 4) % 3).astype(dtype)
    datatype = triton_http.np_to_triton_dtype(array.dtype)
    decoded = from_raw("t", datatype, [3, 4], to_raw(array))
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_bytes_match_tritonclient_layout() -> None:
    array = np.array([b"ab", b"xyz", "h\u00e9".encode(), b""], dtype=object).reshape(2, 2)
    raw = to_raw(array)
    assert raw == serialize_byte_tensor(array).item()
    assert raw[:10] == bytes.fromhex("02000000616203000000")
    decoded = from_raw("t", "BYTES", [2, 2], raw)
    np.testing.assert_array_equal(decoded, deserialize_bytes_tensor(raw).reshape(2, 2))


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "fragment"),
    [
        ("FP32", [2], b"\x00" * 7, "needs 8 bytes"),
        ("BYTES", [1], b"\x05\x00\x00\x00ab", "runs past"),
        ("BYTES", [2], b"\x01\x00\x00\x00a", "needs 2 BYTES"),
        ("BYTES", [1], b"\x01\x00", "truncated"),
        ("BF16", [1], b"\x00\x00", "BF16 is not supported"),
        ("FP32", [10**9, 10**9], b"\x00" * 4, "needs"),
    ],
)
def test_bad_raw_tensors_say_what_is_wrong(
    datatype: str, shape: list[int], raw: bytes, fragment: str
) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        from_raw("t", datatype, shape, raw)


def test_json_data_nested_flat_and_bytes() -> None:
    np.testing.assert_array_equal(from_json("t", "INT64", [2, 2], [[1, 2], [3, 4]]), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(from_json("t", "INT64", [2, 2], [1, 2, 3, 4]), [[1, 2], [3, 4]])
    text = from_json("t", "BYTES", [2], ["a", "b"])
    assert text.tolist() == [b"a", b"b"] and to_json_data(text) == ["a", "b"]
    with pytest.raises(InvalidRequestError, match="not valid FP32"):
        from_json("t", "FP32", [1], ["x"])
    with pytest.raises(InvalidRequestError, match="binary"):
        from_json("t", "FP16", [1], [1.0])


def test_request_and_response_with_tritonclient() -> None:
    x = np.ones((2, 3), np.float32)
    words = np.array([b"hi", b"there"], dtype=object)
    a = triton_http.InferInput("x", [2, 3], "FP32")
    a.set_data_from_numpy(x, binary_data=True)
    b = triton_http.InferInput("w", [2], "BYTES")
    b.set_data_from_numpy(words, binary_data=True)
    outputs = [
        triton_http.InferRequestedOutput("y", binary_data=True),
        triton_http.InferRequestedOutput("s", binary_data=False),
    ]
    body, json_size = triton_http.InferenceServerClient.generate_request_body([a, b], outputs=outputs)
    request = decode_request(body, json_size)
    np.testing.assert_array_equal(request.tensors["x"], x)
    assert request.tensors["w"].tolist() == [b"hi", b"there"] and request.outputs == ["y", "s"]
    result = InferResult("m", "1", {"y": x * 2, "s": words}, None)
    payload, header_length = encode_response(result, request)
    parsed = triton_http.InferenceServerClient.parse_response_body(payload, header_length=header_length)
    np.testing.assert_array_equal(parsed.as_numpy("y"), x * 2)
    assert parsed.as_numpy("s").tolist() == ["hi", "there"]  # JSON BYTES arrive as strings


def test_all_json_response_has_no_binary_header() -> None:
    request = InferRequest(tensors={})
    payload, header_length = encode_response(InferResult("m", "1", {"y": np.zeros(2, np.float32)}), request)
    assert header_length is None and b'"data":[0.0,0.0]' in payload
