"""The engine's per-token logprobs in OpenAI's two shapes.

Completions (``logprobs: k``)::

    {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}, ...], "text_offset": [...]}

``top_logprobs`` holds the k most likely tokens and the chosen one (so up to k + 1, as OpenAI's);
``text_offset`` is each token's character offset in the choice's text (after the prompt with ``echo``).

Chat (``logprobs: true, top_logprobs: k``)::

    {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}, ...]}]}

A token's text is its bytes in UTF-8; a token that is part of a character (the byte GPTs' bytes of
"é") is written ``bytes:\\xc3``, as OpenAI writes them, and ``bytes`` carries the exact bytes.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Any

import numpy as np

from deepserve.service.sampling import TokenLogprob, token_logprob

TokenBytes = Callable[[int], bytes]


def token_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class LogprobsWriter:
    """One choice's logprobs, chunk by chunk (offsets carry on across a stream's chunks)."""

    def __init__(self, token_bytes: TokenBytes, start_offset: int = 0) -> None:
        self._bytes = token_bytes
        self._offset = start_offset
        self._chars = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def completion(self, logprobs: list[TokenLogprob]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for lp in logprobs:
            raw = self._bytes(lp.token)
            out["tokens"].append(token_text(raw))
            out["token_logprobs"].append(lp.logprob)
            top = {token_text(self._bytes(t)): p for t, p in lp.top}
            top.setdefault(token_text(raw), lp.logprob)
            out["top_logprobs"].append(top)
            out["text_offset"].append(self._offset)
            self._offset += len(self._chars.decode(raw))
        return out

    def prompt(self, ids: list[int], scored: list[TokenLogprob]) -> dict[str, Any]:
        """The echoed prompt's entries (completions shape): its first token, which nothing predicts,
        with null logprobs, then ``scored``, the logprobs of ``ids[1:]``."""
        raw = self._bytes(ids[0])
        head = {"tokens": [token_text(raw)], "token_logprobs": [None], "top_logprobs": [None],
                "text_offset": [self._offset]}  # fmt: skip
        self._offset += len(self._chars.decode(raw))
        rest = self.completion(scored)
        return {key: head[key] + rest[key] for key in head}

    def chat(self, logprobs: list[TokenLogprob]) -> dict[str, Any]:
        content = []
        for lp in logprobs:
            entry = self._entry(lp.token, lp.logprob)
            entry["top_logprobs"] = [self._entry(t, p) for t, p in lp.top]
            content.append(entry)
        return {"content": content}

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        raw = self._bytes(token)
        return {"token": token_text(raw), "logprob": logprob, "bytes": list(raw)}


def token_bytes_of(handler: Any) -> TokenBytes:
    """The model's token -> bytes (``TextGenerationHandler.token_bytes``); its ``decode`` otherwise."""
    exact = getattr(handler, "token_bytes", None)
    if callable(exact):
        return lambda token: bytes(exact(token))
    decode = getattr(handler, "decode", None)
    if callable(decode):
        return lambda token: str(decode([token])).encode()
    return lambda token: str(token).encode()


def prompt_logprobs(logits: np.ndarray, ids: list[int], k: int) -> list[TokenLogprob]:
    """The logprob of each prompt token after the first under the logits before it (``logits``
    (T, V), row i predicting token i + 1), with the ``k`` most likely there."""
    return [token_logprob(logits[i - 1], ids[i], k) for i in range(1, len(ids))]


class ChoiceLogprobs:
    """One API call's logprobs: the OpenAI shape ("completion" | "chat" | None: not asked), the echoed
    prompt texts (one per prompt, for ``n`` choices each), the echoed prompts' own logprobs entries
    (``echo`` with ``logprobs``; formatted once per prompt) and one writer per choice."""

    def __init__(
        self,
        shape: str | None,
        token_bytes: TokenBytes,
        echoed: list[str],
        n: int,
        prompt_parts: list[dict[str, Any]] | None = None,
    ) -> None:
        self.shape, self.token_bytes, self.echoed, self.n = shape, token_bytes, echoed, n
        self.prompt_parts = prompt_parts or []
        self._writers: dict[int, LogprobsWriter] = {}

    def prompt_part(self, index: int) -> dict[str, Any] | None:
        """Choice ``index``'s echoed prompt entries (None: none asked)."""
        return self.prompt_parts[index // self.n] if self.prompt_parts else None

    def whole(self, index: int, logprobs: list[TokenLogprob]) -> dict[str, Any] | None:
        """A non-streamed choice's logprobs: its echoed prompt's entries, then its own."""
        own, prompt = self.format(index, logprobs), self.prompt_part(index)
        if own is None or prompt is None:
            return own
        return {key: prompt[key] + own[key] for key in own}

    def echo(self, index: int) -> str:
        return self.echoed[index // self.n] if self.echoed else ""

    def format(self, index: int, logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
        if self.shape is None:
            return None
        writer = self._writers.get(index)
        if writer is None:
            writer = self._writers[index] = LogprobsWriter(self.token_bytes, len(self.echo(index)))
        parts = logprobs or []
        return writer.completion(parts) if self.shape == "completion" else writer.chat(parts)
