"""Fakes for the service tests (MLServer SumModel style): no model store, no runtimes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
from asgi_lifespan import LifespanManager

from deepserve.handlers.base import (
    Handler,
    InvalidInputError,
    PayloadRequest,
    Request,
    TensorRequest,
    Tensors,
)
from deepserve.service.app import create_app
from deepserve.service.dataplane import DataPlane
from deepserve.store import ModelSpec, TensorSpec, Variant


def make_spec(name: str = "sum", task: str = "regression", max_batch_size: int = 8) -> ModelSpec:
    return ModelSpec(
        name=name,
        version=1,
        task=task,  # type: ignore[arg-type]
        architecture="fake",
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 3])],
        outputs=[TensorSpec(name="total", datatype="FP32", shape=[-1, 1])],
        max_batch_size=max_batch_size,
        variants=[Variant(file="none", format="onnx", precision="fp32", usable=True)],
        created="2026-01-01T00:00:00Z",
        torch_version="test",
    )


class SumHandler(Handler):
    """Sums each row of ``x``; a row containing -1 poisons the whole batch it is in."""

    def __init__(self, spec: ModelSpec | None = None, delay: float = 0.0) -> None:
        super().__init__(spec or make_spec())
        self.batches: list[int] = []
        self.delay = delay
        self.release = threading.Event()
        self.release.set()

    def load(self) -> None:
        pass

    def preprocess(self, request: Request) -> Tensors:
        if isinstance(request, TensorRequest):
            if "x" not in request.tensors:
                raise InvalidInputError("input 'x' is missing")
            return {"x": np.asarray(request.tensors["x"], dtype=np.float32)}
        body: Any = request.body
        if isinstance(body, dict):
            body = body.get("rows", body.get("data"))
        if isinstance(body, (bytes, str)):
            raise InvalidInputError("send JSON rows")
        return {"x": np.asarray(body, dtype=np.float32).reshape(-1, 3)}

    def predict_batch(self, items: list[Tensors]) -> list[Tensors]:
        self.release.wait(timeout=10)
        if self.delay:
            import time

            time.sleep(self.delay)
        self.batches.append(len(items))
        if any((item["x"] == -1).any() for item in items):
            raise InvalidInputError("row contains the poison value -1")
        return [{"total": item["x"].sum(axis=1, keepdims=True)} for item in items]

    def postprocess(self, outputs: Tensors, request: Request) -> Any:
        if isinstance(request, TensorRequest):
            return outputs
        return {"total": outputs["total"][:, 0].tolist()}


class EmbedHandler(SumHandler):
    """An 'embedding' model: text -> [len, count('a'), 1.0]."""

    def __init__(self) -> None:
        spec = make_spec("embed", task="embedding")
        super().__init__(spec)

    def preprocess(self, request: Request) -> Tensors:
        assert isinstance(request, PayloadRequest)
        texts = request.body if isinstance(request.body, list) else [request.body]
        if not all(isinstance(t, str) for t in texts):
            raise InvalidInputError("embedding inputs must be strings")
        rows = [[float(len(t)), float(t.count("a")), 1.0] for t in texts]
        return {"x": np.asarray(rows, dtype=np.float32), "attention_mask": np.ones((len(texts), 4), np.int64)}

    def predict_batch(self, items: list[Tensors]) -> list[Tensors]:
        self.batches.append(len(items))
        return [{"sentence_embedding": item["x"]} for item in items]

    def postprocess(self, outputs: Tensors, request: Request) -> Any:
        return outputs["sentence_embedding"].tolist()


class FakeEngine:
    """Stands in for service.engine.GenerationEngine: echoes the prompt reversed, one char per chunk.

    ``gate`` cleared holds every stream after its first chunk; the prompt "fail midway" fails
    (503, shutting down) after its first chunk.
    """

    def __init__(self, max_waiting: int = 4) -> None:
        self.max_waiting = max_waiting
        self.waiting = 0
        self.running = 0
        self.started = False
        self.gate = asyncio.Event()
        self.gate.set()
        self.chunks = 0  # yielded so far, all streams
        self.params: list[Any] = []  # each request's SamplingParams, as the transport built them

    async def start(self) -> None:
        self.started = True

    async def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        self.started = False

    def encode(self, prompt: str) -> list[int]:
        return list(prompt.encode())

    async def generate(self, prompt: str | list[int], params: Any) -> Any:
        from deepserve.service.engine import GenerationChunk
        from deepserve.service.errors import InvalidRequestError, QueueFullError, ShuttingDownError

        self.params.append(params)
        if not isinstance(prompt, str):
            prompt = bytes(prompt).decode()
        if prompt == "overload":
            raise QueueFullError("fake engine is full; retry", retry_after=2.0)
        if len(prompt) > 64:
            raise InvalidRequestError("prompt longer than the 64-byte context window")
        text = prompt[::-1][: params.max_tokens]
        for choice in range(params.n):
            for i, ch in enumerate(text):
                last = i == len(text) - 1
                reason = ("length" if len(prompt) >= params.max_tokens else "stop") if last else None
                yield GenerationChunk(choice, ch, [ord(ch)], reason)
                self.chunks += 1
                await self.gate.wait()
                if prompt == "fail midway":
                    raise ShuttingDownError("the fake engine is shutting down; retry elsewhere")


def make_generation_handler() -> SumHandler:
    handler = SumHandler(make_spec("gen", task="text-generation"))
    handler.decode = lambda ids: bytes(ids).decode()  # type: ignore[attr-defined]
    return handler


@contextlib.asynccontextmanager
async def asgi_client(plane: DataPlane) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The plane's HTTP app, started with its models loaded, and a client calling it in-process."""
    app = create_app(plane)
    async with plane, LifespanManager(app) as manager:
        await plane.loaded()
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app
