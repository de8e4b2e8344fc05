"""Tabular rows -> ``features`` FP32 (n, F), in raw units (the graph normalises).

Accepted forms: KServe v2 ``features`` FP32 [-1, F]; a row as a list of F numbers or a dict of
named features (every name in model.json ``preprocessing.features`` must be present); a list of
such rows; JSON ``{"rows" | "instances" | "inputs" | "data": rows}``; CSV text, one row per line.
"""

from __future__ import annotations

from typing import Any

from deepserve.handlers.base import InvalidInputError, Tensors
from deepserve.handlers.codec import InputCodec, as_rows, parse_json
from deepserve.store import TabularPreprocessing, TensorSpec

_WRAPPERS = ("rows", "instances", "inputs", "data", "features")


class TabularCodec(InputCodec):
    def __init__(self, graph_inputs: list[TensorSpec], pre: TabularPreprocessing | None) -> None:
        super().__init__(graph_inputs)
        self.features_spec = graph_inputs[0]
        width = self.features_spec.shape[-1]
        self.names = list(pre.features) if pre else [f"x{i}" for i in range(width)]

    def from_payload(self, body: Any, parameters: dict[str, Any]) -> Tensors:
        body = parse_json(body)
        if isinstance(body, bytes | bytearray):
            body = body.decode("utf-8", errors="replace")
        if isinstance(body, str):
            body = _csv_rows(body)
        if isinstance(body, dict) and not set(body) - set(_WRAPPERS) and len(body) == 1:
            body = next(iter(body.values()))
        if isinstance(body, dict):
            body = [body]
        if isinstance(body, list) and body and all(isinstance(r, dict) for r in body):
            body = [self.named_row(r) for r in body]
        return {self.features_spec.name: as_rows(self.features_spec.name, body, len(self.names))}

    def named_row(self, row: dict[str, Any]) -> list[float]:
        missing = [n for n in self.names if n not in row]
        if missing:
            raise InvalidInputError(f"row is missing feature(s) {missing}; expected all of {self.names}")
        unknown = sorted(set(row) - set(self.names))
        if unknown:
            raise InvalidInputError(f"row has unknown feature(s) {unknown}; expected {self.names}")
        try:
            return [float(row[n]) for n in self.names]
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"feature values must be numbers: {exc}") from exc


def _csv_rows(text: str) -> list[list[float]]:
    try:
        return [[float(x) for x in line.split(",")] for line in text.strip().splitlines() if line.strip()]
    except ValueError as exc:
        raise InvalidInputError(f"body is neither JSON nor CSV rows of numbers: {exc}") from exc
