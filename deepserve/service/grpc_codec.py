"""KServe v2 protobuf messages (tritonclient 2.73's stubs) <-> the data plane's values.

Outputs always go in ``raw_output_contents`` (tritonclient's ``as_numpy`` reads
only raw contents). Inputs may be raw (what tritonclient and perf_analyzer send) or typed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from deepserve.service.errors import InvalidRequestError
from deepserve.service.tensors import check_shape, datatype_of, dtype_for, from_raw, to_raw
from deepserve.service.v2_codec import InferRequest, InferResult

_TYPED_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


def parameter_value(param: pb.InferParameter) -> Any:
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def decode_request(request: pb.ModelInferRequest) -> InferRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents")
    tensors: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        shape = check_shape(tensor.name, list(tensor.shape))
        if raw:
            tensors[tensor.name] = from_raw(tensor.name, tensor.datatype, shape, raw[i])
        else:
            tensors[tensor.name] = _from_typed(tensor, shape)
    parameters = {k: parameter_value(v) for k, v in request.parameters.items()}
    outputs = [o.name for o in request.outputs] or None
    return InferRequest(tensors=tensors, id=request.id or None, parameters=parameters, outputs=outputs)


def _from_typed(tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int]) -> np.ndarray:
    dtype = dtype_for(tensor.name, tensor.datatype)
    field = _TYPED_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidRequestError(
            f"input {tensor.name!r}: {tensor.datatype} must be sent in raw_input_contents"
        )
    values = list(getattr(tensor.contents, field))
    if len(values) != math.prod(shape):
        raise InvalidRequestError(
            f"input {tensor.name!r}: shape {shape} needs {math.prod(shape)} values, got {len(values)}"
        )
    if tensor.datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def encode_response(result: InferResult, parameters: dict[str, Any] | None = None) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version)
    if result.id:
        response.id = result.id
    for name, array in result.outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        response.raw_output_contents.append(to_raw(array))
    for key, value in (parameters or {}).items():
        _set_parameter(response.parameters[key], value)
    return response


def _set_parameter(param: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


def model_config(config: dict[str, Any]) -> mc.ModelConfig:
    """The same dict the HTTP config route serves, as the ModelConfig proto."""
    return json_format.ParseDict(config, mc.ModelConfig(), ignore_unknown_fields=True)


def statistics(stats: dict[str, Any]) -> pb.ModelStatisticsResponse:
    response = pb.ModelStatisticsResponse()
    for entry in stats["model_stats"]:
        message = response.model_stats.add(
            name=entry["name"], version=entry["version"], last_inference=entry["last_inference"],
            inference_count=entry["inference_count"], execution_count=entry["execution_count"],
        )  # fmt: skip
        for key, pair in entry["inference_stats"].items():
            getattr(message.inference_stats, key).CopyFrom(pb.StatisticDuration(**pair))
        for batch in entry["batch_stats"]:
            message.batch_stats.add(
                batch_size=batch["batch_size"],
                compute_input=pb.StatisticDuration(**batch["compute_input"]),
                compute_infer=pb.StatisticDuration(**batch["compute_infer"]),
                compute_output=pb.StatisticDuration(**batch["compute_output"]),
            )
    return response


def metadata(meta: dict[str, Any]) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=meta["name"], versions=meta["versions"], platform=meta["platform"],
        inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
    )  # fmt: skip
