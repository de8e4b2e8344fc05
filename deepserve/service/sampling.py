"""One generation step's token choice: OpenAI's logit_bias and penalties, the draw, and the logprobs.

Per sequence and step, in this order (OpenAI's definitions)::

    logits (the model's, float32)
      + logit_bias[token]
      - frequency_penalty * count[token] - presence_penalty * (count[token] > 0)
            count: how often this choice generated the token so far (the prompt does not count)
    -> logprobs: log-softmax of these adjusted logits, before temperature and top-k/top-p (with no bias
       and no penalty they are the model's own log-softmax at any temperature; OpenAI, too, reports
       them after the penalties)
    -> the draw: argmax at temperature 0, else temperature, top-k, top-p and the sequence's own
       uniform (``handlers.generation.sample``: a row never depends on its batch companions)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepserve.handlers.generation import penalise, sample
from deepserve.service.errors import InvalidRequestError
from deepserve.store import GenerationDefaults

MAX_TOP_LOGPROBS = 20  # OpenAI's chat limit (completions allow 5)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the k most likely
    refuse_past_context: bool = False  # prompt + max_tokens past the context: 400 (OpenAI), not a cut

    def check(self, vocab_size: int | None = None) -> None:
        """Raise InvalidRequestError naming the first out-of-range field."""
        bad_bias = [t for t, _ in self.logit_bias if t < 0 or (vocab_size is not None and t >= vocab_size)]
        bias_range = all(-100 <= b <= 100 for _, b in self.logit_bias)
        problems = [
            (self.max_tokens < 1, f"max_tokens must be >= 1, got {self.max_tokens}"),
            (self.temperature < 0, f"temperature must be >= 0, got {self.temperature}"),
            (self.top_k is not None and self.top_k < 1, f"top_k must be >= 1 (or unset), got {self.top_k}"),
            (not 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.n < 1, f"n must be >= 1, got {self.n}"),
            (not -2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got "
                                                    f"{self.frequency_penalty}"),
            (not -2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got "
                                                   f"{self.presence_penalty}"),
            (bool(bad_bias), f"logit_bias key {bad_bias[:1]} is not a token id of this model "
                             f"(0..{(vocab_size or 1) - 1})"),
            (not bias_range, "logit_bias values must be in [-100, 100]"),
            (self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
             f"top logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {self.logprobs}"),
        ]  # fmt: skip
        for bad, message in problems:
            if bad:
                raise InvalidRequestError(message)

    def check_context(self, prompt_tokens: int, context_length: int) -> None:
        """OpenAI's refusal of a request whose prompt and completion cannot both fit the context."""
        asked = prompt_tokens + self.max_tokens
        if self.refuse_past_context and asked > context_length:
            raise InvalidRequestError(
                f"This model's maximum context length is {context_length} tokens. However, you requested "
                f"{asked} tokens ({prompt_tokens} in the prompt, {self.max_tokens} in the completion). "
                "Please reduce the length of the prompt or the max_tokens."
            )

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.logit_bias) or self.frequency_penalty != 0 or self.presence_penalty != 0


def penalties(
    defaults: GenerationDefaults | None, frequency: float | None, presence: float | None
) -> tuple[float, float]:
    """(frequency, presence): the request's penalties, the model's own (model.json ``generation``)
    where it sent none; deepserve's (0) for a model without generation defaults."""
    return (defaults or GenerationDefaults()).penalties(frequency, presence)


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's log-probability and the ``k`` most likely tokens of that step, best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def next_tokens(
    logits: np.ndarray, params: list[SamplingParams], counts: list[dict[int, int]], uniforms: np.ndarray
) -> tuple[np.ndarray, list[TokenLogprob | None]]:
    """One token per row of ``logits`` (B, V) and, for rows that asked, its logprobs.
    ``counts[i]``: row i's generated tokens so far (token -> times), for the penalties."""
    adjusted = _adjusted(logits, params, counts)
    tokens = sample(
        adjusted,
        np.array([p.temperature for p in params]),
        np.array([p.top_k or 0 for p in params]),
        np.array([p.top_p for p in params]),
        uniforms,
    )
    logprobs = [
        None if p.logprobs is None else token_logprob(adjusted[i], int(tokens[i]), p.logprobs)
        for i, p in enumerate(params)
    ]
    return tokens, logprobs


def _adjusted(logits: np.ndarray, params: list[SamplingParams], counts: list[dict[int, int]]) -> np.ndarray:
    """``logits`` with each row's bias and penalties applied; the same array when no row has any."""
    if not any(p.adjusts_logits for p in params):
        return logits
    out = np.array(logits, dtype=np.float32)  # (B, V), a copy: the model's output stays as it was
    for row, (p, seen) in enumerate(zip(params, counts, strict=True)):
        if p.logit_bias:
            biased = np.array([t for t, _ in p.logit_bias], np.int64)
            out[row, biased] += np.array([b for _, b in p.logit_bias], np.float32)
        penalise(out[row], seen, p.frequency_penalty, p.presence_penalty)
    return out


def log_softmax(row: np.ndarray) -> np.ndarray:
    """(V,) logits -> (V,) log-probabilities, in float64 (the model's float32 logits lose nothing)."""
    z = row.astype(np.float64)
    z = z - z.max()
    out: np.ndarray = z - np.log(np.exp(z).sum())
    return out


def token_logprob(row: np.ndarray, token: int, k: int) -> TokenLogprob:
    """``token``'s log-probability under the logits ``row`` (V,) and the ``k`` most likely tokens."""
    logp = log_softmax(row)
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        best = np.argpartition(-logp, min(k, len(logp)) - 1)[:k]
        best = best[np.argsort(-logp[best], kind="stable")]
        top = tuple((int(t), float(logp[t])) for t in best)
    return TokenLogprob(token, float(logp[token]), top)
