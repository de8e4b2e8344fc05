"""Turn (model, protocol, format) into load targets with their request bytes encoded up front."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from deepserve.bench import codec
from deepserve.bench.inputs import ModelInfo, make_samples, prompts
from deepserve.bench.sweep import Target

N_DISTINCT = 64  # distinct request bodies cycled through: real variety without encoding in the loop


@dataclass(frozen=True)
class Shape:
    """What each request carries: rows per request, and for text models the token layout."""

    rows: int = 1
    seq_len: int | None = None  # every row exactly this many real tokens
    pad_to: int | None = None  # real sentences padded to this length (attention 0)
    max_tokens: int = 32  # generation models: tokens per completion


def split_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"http://{url}")
    return parts.hostname or "127.0.0.1", parts.port or 80


def _samples(info: ModelInfo, shape: Shape) -> list[codec.Sample]:
    return make_samples(info, N_DISTINCT, rows=shape.rows, seq_len=shape.seq_len, pad_to=shape.pad_to)


def http_target(info: ModelInfo, url: str, fmt: str, shape: Shape, *, label: str = "deepserve",
                stats: bool = True, server_pid: int | None = None) -> Target:  # fmt: skip
    host, port = split_url(url)
    reqs = [codec.infer_http_request(info.name, f"{host}:{port}", s, fmt) for s in _samples(info, shape)]
    return Target(f"{label} http/{fmt}", "http", reqs, host, port, model=info.name,
                  items_per_request=shape.rows, stats=stats, server_pid=server_pid)  # fmt: skip


def grpc_target(info: ModelInfo, url: str, grpc_url: str, shape: Shape, *, label: str = "deepserve",
                server_pid: int | None = None) -> Target:  # fmt: skip
    host, port = split_url(url)
    reqs = [codec.infer_grpc_request(info.name, s) for s in _samples(info, shape)]
    return Target(f"{label} grpc", "grpc", reqs, host, port, grpc_target=grpc_url, model=info.name,
                  items_per_request=shape.rows, server_pid=server_pid)  # fmt: skip


def fit_prompts(info: ModelInfo, max_tokens: int) -> tuple[list[str], int]:
    """Real prompts cut to fit the model's context window next to the tokens asked for."""
    ctx = int(info.generation.get("context_length") or 0)
    if not ctx:
        return prompts(N_DISTINCT), max_tokens
    max_tokens = min(max_tokens, max(1, ctx // 2))
    budget = ctx - max_tokens  # bytes tokenizer: one token per UTF-8 byte (an upper bound otherwise)
    return [p.encode()[:budget].decode("utf-8", "ignore") for p in prompts(N_DISTINCT)], max_tokens


def sse_target(info: ModelInfo, url: str, shape: Shape, *, label: str = "deepserve",
               server_pid: int | None = None) -> Target:  # fmt: skip
    host, port = split_url(url)
    texts, max_tokens = fit_prompts(info, shape.max_tokens)
    reqs = [codec.completion_request(info.name, f"{host}:{port}", p, max_tokens) for p in texts]
    return Target(f"{label} openai/sse", "sse", reqs, host, port, model=info.name, server_pid=server_pid)


def build_targets(
    info: ModelInfo,
    url: str,
    grpc_url: str | None,
    protocol: str,
    formats: list[str],
    shape: Shape,
    *,
    server_pid: int | None = None,
    label: str = "deepserve",
) -> list[Target]:
    """The targets a run asked for (generation models: OpenAI SSE streams instead of v2 infer)."""
    if info.is_generation:
        return [sse_target(info, url, shape, label=label, server_pid=server_pid)]
    targets = []
    if protocol in ("http", "both"):
        targets += [http_target(info, url, f, shape, label=label, server_pid=server_pid) for f in formats]
    if protocol in ("grpc", "both"):
        if not grpc_url:
            raise ValueError("gRPC needs --grpc-url host:port (or let the bench start the server)")
        targets.append(grpc_target(info, url, grpc_url, shape, label=label, server_pid=server_pid))
    return targets
