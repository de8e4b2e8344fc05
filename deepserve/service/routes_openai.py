"""OpenAI-style API: ``/v1/models``, ``/v1/embeddings``, ``/v1/completions``, ``/v1/chat/completions``.

Streaming answers are server-sent events ending in ``data: [DONE]``; with
``stream_options.include_usage`` one extra chunk with ``"choices": []`` carries the usage.
Chat prompts: the model's own chat template when its tokenizer has one, else the messages' texts
joined by newlines (``service.chat_template``). Sampling follows OpenAI's parameters, penalties and
``logit_bias`` included (``service.sampling``, which says how logprobs are computed); ``logprobs``
come in OpenAI's completion and chat shapes (``service.openai_logprobs``).

Extension of ``/v1/embeddings``: ``"cluster": true`` adds ``"cluster": {"id": 3, "distance": 0.21}``
to each ``data`` item, the nearest k-means centroid of a model with clusters (``deepserve cluster``)
and the distance to it in the model's metric (model.json ``clusters.metric``). OpenAI's SDKs send
it with ``extra_body={"cluster": True}`` and keep the extra field on each item (``item.cluster``).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from deepserve.handlers.embedding import EmbeddingHandler
from deepserve.service import json_codec
from deepserve.service.call import Call
from deepserve.service.chat_template import format_chat
from deepserve.service.errors import InvalidRequestError
from deepserve.service.http_deps import plane_of
from deepserve.service.http_errors import error_body
from deepserve.service.http_stream import TrackedStreamingResponse, record_stream_error
from deepserve.service.openai_logprobs import ChoiceLogprobs, LogprobsWriter, prompt_logprobs, token_bytes_of
from deepserve.service.openai_schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from deepserve.service.sampling import TokenLogprob
from deepserve.service.streaming import merge, prime

router = APIRouter()
_CREATED = int(time.time())


def _json(content: Any) -> Response:
    return Response(json_codec.dumps(content), media_type="application/json")


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": "deepserve"}


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    names = plane_of(request).model_names()
    return _json({"object": "list", "data": [_model_card(n) for n in names]})


@router.get("/v1/models/{model:path}")
async def get_model(request: Request, model: str) -> Response:
    plane_of(request).require_model(model)
    return _json(_model_card(model))


@router.post("/v1/embeddings")
async def embeddings(request: Request, body: EmbeddingRequest) -> Response:
    with plane_of(request).call(body.model, None, "openai") as call:
        inputs = (
            [body.input] if isinstance(body.input, str) or _is_token_list(body.input) else list(body.input)
        )
        if not inputs:
            raise InvalidRequestError("'input' is empty; send a string or a list of strings")
        clustered = _clustered(call) if body.cluster else None  # refused before any compute
        vectors, tokens = await call.embed(inputs)
        # on the model's own vectors, before ``dimensions`` cuts them for the answer
        clusters = _clusters(clustered, vectors) if clustered is not None else None
        vectors = _resize(vectors, body.dimensions)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        for item, cluster in zip(data, clusters or [], strict=False):
            item["cluster"] = cluster
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json({"object": "list", "data": data, "model": body.model, "usage": usage})


def _clustered(call: Call) -> EmbeddingHandler:
    """The model's handler when it serves k-means clusters (``deepserve cluster``); else a 400."""
    handler = call.handler
    if isinstance(handler, EmbeddingHandler) and handler.centroids is not None:
        return handler
    if isinstance(handler, EmbeddingHandler):
        raise InvalidRequestError(handler.no_clusters())
    raise InvalidRequestError(f"model {call.model!r} has no clusters ('cluster' needs an embedding model "
                              "with clusters fitted by `deepserve cluster`)")  # fmt: skip


def _clusters(handler: EmbeddingHandler, vectors: np.ndarray) -> list[dict[str, Any]]:
    ids, distances = handler.assign_clusters(vectors)
    return [{"id": int(i), "distance": float(d)} for i, d in zip(ids, distances, strict=True)]


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) for v in value)


def _resize(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    if dimensions > vectors.shape[1]:
        raise InvalidRequestError(f"dimensions={dimensions} exceeds the model's {vectors.shape[1]}")
    cut = vectors[:, :dimensions]
    norms = np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
    return np.asarray(cut / norms, dtype=np.float32)


def _encode_vector(vector: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


# -- text generation -------------------------------------------------------------------------
def _sampling(call: Call, body: Any, max_tokens: int | None, logprobs: int | None) -> Any:
    from deepserve.service.sampling import SamplingParams, penalties

    frequency, presence = penalties(call.generation_defaults, body.frequency_penalty, body.presence_penalty)
    return SamplingParams(
        max_tokens=16 if max_tokens is None else max_tokens, temperature=body.temperature, top_k=body.top_k,
        top_p=body.top_p,
        stop=body.stop_strings(), seed=body.seed, n=body.n,
        frequency_penalty=frequency, presence_penalty=presence,
        logit_bias=_logit_bias(body.logit_bias), logprobs=logprobs,
        refuse_past_context=max_tokens is not None,  # an unset max_tokens is cut at the context, not refused
    )  # fmt: skip


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``{"token id": bias}`` (JSON object keys are strings) as (id, bias) pairs."""
    pairs = []
    for key, value in (bias or {}).items():
        try:
            pairs.append((int(key), float(value)))
        except ValueError:
            raise InvalidRequestError(f"logit_bias key {key!r} is not a token id; key it by the model's "
                                      "token ids") from None  # fmt: skip
    return tuple(pairs)


def _prompts(call: Call, body: CompletionRequest) -> list[str]:
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    items: list[Any] = [prompt] if _is_token_list(prompt) else list(prompt)
    out = []
    for p in items:
        if isinstance(p, str):
            out.append(p)
        else:  # token ids: decoded with the model's own tokenizer
            out.append(call.decode_tokens(list(p)))
    if not out:
        raise InvalidRequestError("'prompt' is empty")
    return out


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest) -> Response:
    if (body.best_of or 1) > 1:
        raise InvalidRequestError("'best_of' > 1 is not supported; leave it unset (n gives several choices)")
    with plane_of(request).call(body.model, None, "openai") as call:
        prompts = _prompts(call, body)
        params = _sampling(call, body, body.max_tokens, body.logprobs)
        shape = None if body.logprobs is None else "completion"
        run = await _start(call, prompts, params, "cmpl", shape, echo=body.echo)
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(call, _completion_events(body.model, run, include, call))
        choices, usage = await _collect(run)
    return _json({
        "id": run.id, "object": "text_completion", "created": run.created, "model": body.model,
        "choices": [{"text": c["text"], "index": i, "logprobs": c["logprobs"],
                     "finish_reason": c["finish_reason"]} for i, c in enumerate(choices)],
        "usage": usage,
    })  # fmt: skip


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    if body.tools:
        raise InvalidRequestError("tools / function calling are not supported by these models")
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequestError("'top_logprobs' needs 'logprobs': true")
    with plane_of(request).call(body.model, None, "openai") as call:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        version_dir = getattr(call.handler, "version_dir", None)
        prompt = format_chat(messages, version_dir if isinstance(version_dir, Path) else None)
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = _sampling(call, body, body.max_completion_tokens or body.max_tokens, top)
        run = await _start(call, [prompt], params, "chatcmpl", None if top is None else "chat")
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(call, _chat_events(body.model, run, include, call))
        choices, usage = await _collect(run)
    return _json({
        "id": run.id, "object": "chat.completion", "created": run.created, "model": body.model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"]},
                     "logprobs": c["logprobs"], "finish_reason": c["finish_reason"]}
                    for i, c in enumerate(choices)],
        "usage": usage,
    })  # fmt: skip


class _Run:
    """One API call: its prompts' merged chunk streams, what the usage block needs, the echoed prompts
    and the logprobs writers (one per choice: a stream's text offsets carry on from chunk to chunk)."""

    def __init__(self, stream: AsyncIterator[tuple[int, Any]], params: Any, prompt_tokens: int,
                 prefix: str, logprobs: ChoiceLogprobs, choices: int) -> None:  # fmt: skip
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"  # OpenAI's: cmpl-… completions, chatcmpl-… chat
        self.created = int(time.time())
        self.stream, self.n, self.prompt_tokens = stream, params.n, prompt_tokens
        self.completion_tokens = 0
        self.logprobs = logprobs
        self.choices = choices
        self.generates = params.max_tokens > 0  # max_tokens 0: every choice is its echo, finished

    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": total,
        }


async def _start(
    call: Call, prompts: list[str], params: Any, prefix: str, shape: str | None, *, echo: bool = False
) -> _Run:
    prompt_ids = [await call.tokenize(p) for p in prompts]  # once: for the engine and the usage
    tokens = sum(len(ids) for ids in prompt_ids)
    token_bytes = token_bytes_of(call.handler)
    parts = []
    if echo and shape == "completion":  # the prompt's own logprobs: one cache-free forward each
        parts = [await asyncio.to_thread(_prompt_part, call.handler, ids, params.logprobs, token_bytes)
                 for ids in prompt_ids]  # fmt: skip
    if params.max_tokens == 0:  # nothing to generate (scoring a prompt): the other fields still checked
        replace(params, max_tokens=1).check(getattr(call.handler, "vocab_size", None))
        sources = []
    else:
        sources = [await prime(call.generate(ids, params)) for ids in prompt_ids]
    logprobs = ChoiceLogprobs(shape, token_bytes, prompts if echo else [], params.n, parts)
    return _Run(merge(sources), params, tokens, prefix, logprobs, choices=len(prompts) * params.n)


def _prompt_part(handler: Any, ids: list[int], k: int, token_bytes: Any) -> dict[str, Any]:
    prompt_logits = getattr(handler, "prompt_logits", None)
    if not callable(prompt_logits):
        raise InvalidRequestError("this model cannot score its prompt: drop 'logprobs' or 'echo'")
    return LogprobsWriter(token_bytes).prompt(ids, prompt_logprobs(prompt_logits(ids), ids, k))


async def _collect(run: _Run) -> tuple[list[dict[str, Any]], dict[str, int]]:
    texts = {index: [run.logprobs.echo(index)] for index in range(run.choices)}
    reasons: dict[int, str | None] = {} if run.generates else dict.fromkeys(texts, "length")
    logprobs: dict[int, list[TokenLogprob]] = {index: [] for index in texts}
    async for source, chunk in run.stream:
        index = source * run.n + chunk.choice
        texts[index].append(chunk.text)
        logprobs.setdefault(index, []).extend(chunk.logprobs or [])
        run.completion_tokens += len(chunk.token_ids)
        if chunk.finish_reason:
            reasons[index] = chunk.finish_reason
    choices = [{"text": "".join(texts[i]), "finish_reason": reasons.get(i, "stop"),
                "logprobs": run.logprobs.whole(i, logprobs[i])} for i in sorted(texts)]  # fmt: skip
    return choices, run.usage()


def _event(payload: Any) -> bytes:
    return b"data: " + json_codec.dumps(payload) + b"\n\n"


def _sse(call: Call, events: AsyncIterator[bytes]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache"}
    return TrackedStreamingResponse(call, events, media_type="text/event-stream", headers=headers)


async def _guarded(run: _Run, make: Any, call: Call) -> AsyncIterator[bytes]:
    """Yield events; a mid-stream error becomes an ``error`` event (the client raises APIError),
    and the request is counted with that error's status, not the 200 its header said."""
    try:
        async for source, chunk in run.stream:
            run.completion_tokens += len(chunk.token_ids)
            yield _event(make(source * run.n + chunk.choice, chunk))
    except Exception as exc:
        yield _event(error_body(record_stream_error(call, exc), "openai"))


async def _completion_events(
    model: str, run: _Run, include_usage: bool, call: Call
) -> AsyncIterator[bytes]:
    base = {"id": run.id, "object": "text_completion", "created": run.created, "model": model}
    extra = {"usage": None} if include_usage else {}
    # echo: each choice's text starts with its prompt; max_tokens 0: that is all of it
    for index in range(run.choices if run.logprobs.echoed or not run.generates else 0):
        choice = {"text": run.logprobs.echo(index), "index": index,
                  "logprobs": run.logprobs.prompt_part(index),
                  "finish_reason": None if run.generates else "length"}  # fmt: skip
        yield _event({**base, "choices": [choice], **extra})

    def make(index: int, chunk: Any) -> dict[str, Any]:
        choice = {"text": chunk.text, "index": index, "logprobs": run.logprobs.format(index, chunk.logprobs),
                  "finish_reason": chunk.finish_reason}  # fmt: skip
        return {**base, "choices": [choice], **extra}

    async for event in _guarded(run, make, call):
        yield event
    if include_usage:
        yield _event({**base, "choices": [], "usage": run.usage()})
    yield b"data: [DONE]\n\n"


async def _chat_events(
    model: str, run: _Run, include_usage: bool, call: Call
) -> AsyncIterator[bytes]:
    base = {"id": run.id, "object": "chat.completion.chunk", "created": run.created, "model": model}
    extra = {"usage": None} if include_usage else {}
    for index in range(run.n):
        choice = {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        yield _event({**base, "choices": [choice], **extra})

    def make(index: int, chunk: Any) -> dict[str, Any]:
        delta = {"content": chunk.text} if chunk.text else {}
        choice = {"index": index, "delta": delta, "logprobs": run.logprobs.format(index, chunk.logprobs),
                  "finish_reason": chunk.finish_reason}  # fmt: skip
        return {**base, "choices": [choice], **extra}

    async for event in _guarded(run, make, call):
        yield event
    if include_usage:
        yield _event({**base, "choices": [], "usage": run.usage()})
    yield b"data: [DONE]\n\n"
