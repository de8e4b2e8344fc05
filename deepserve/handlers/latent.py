"""Latent vectors for image generators: z ~ N(0, I), from a seed or at random.

Row i of a request with seed s uses ``numpy.random.default_rng(s + i)``, so ``{"seed": 7, "n": 2}``
gives the same two images as KServe v2 ``seed`` = [7, 8].

Accepted forms: KServe v2 ``latent`` FP32 [-1, Z] or ``seed`` INT64 [-1, 1] or [-1]; a body (or parameters)
``{"n": int, "seed": int}`` or ``{"latent": [[...], ...]}``; an empty body = one random image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepserve.handlers.base import InvalidInputError, Tensors
from deepserve.handlers.codec import InputCodec, as_rows, parse_json
from deepserve.handlers.params import int_param
from deepserve.handlers.tensors import check_tensor
from deepserve.store import TensorSpec

SEED_INPUT = TensorSpec(name="seed", datatype="INT64", shape=[-1, 1], optional=True)  # as image.IMAGE_INPUT
_SEEDS = TensorSpec(name="seed", datatype="INT64", shape=[-1])  # what it is checked as, once flat


def latents(seeds: list[int], dim: int) -> np.ndarray:
    rows = [np.random.default_rng(s).standard_normal(dim).astype(np.float32) for s in seeds]
    return np.stack(rows)  # (n, Z)


class LatentCodec(InputCodec):
    def __init__(self, graph_inputs: list[TensorSpec], latent_dim: int, max_n: int) -> None:
        super().__init__(graph_inputs)
        self.latent = graph_inputs[0]
        self.dim = latent_dim
        self.max_n = max_n

    @property
    def extra_inputs(self) -> list[TensorSpec]:
        return [SEED_INPUT]

    def decode_extra(self, tensors: Tensors) -> Tensors:
        seeds = np.asarray(tensors["seed"])  # (n, 1) as served, or (n,)
        seeds = check_tensor(_SEEDS, seeds[:, 0] if seeds.ndim == 2 and seeds.shape[1] == 1 else seeds)
        if seeds.min() < 0:
            raise InvalidInputError("input 'seed' must hold non-negative integers")
        return {self.latent.name: latents([int(s) for s in seeds], self.dim)}

    def from_payload(self, body: Any, parameters: dict[str, Any]) -> Tensors:
        body = parse_json(body)
        if body in (None, b"", "", bytearray()):
            body = {}
        if not isinstance(body, dict):
            raise InvalidInputError("body must be JSON like {\"n\": 2, \"seed\": 7} or {\"latent\": [[...]]}")
        options = {**parameters, **body}
        if "latent" in options:
            return {self.latent.name: as_rows("latent", options["latent"], self.dim)}
        n = int_param(options, "n", 1, low=1, high=self.max_n)
        seed = options.get("seed")
        first = int_param(options, "seed", 0, low=0) if seed is not None else int(np.random.randint(0, 2**31))
        return {self.latent.name: latents([first + i for i in range(n)], self.dim)}
