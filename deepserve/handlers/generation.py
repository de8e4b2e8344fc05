"""Text generation over an explicit-KV-cache step graph: tokenizer, one cached step, sampling.

The tokenizer is the zoo GPTs' UTF-8 bytes or a tokenizers-library tokenizer.json (an imported
Hugging Face causal LM: GPT-2's byte-level BPE, ...); the model's end-of-text id and context window
come from model.json ``generation``.

The graph (model_store/README.md, graph conventions) is one call for prefill and decode, with the
KV cache passed in and out under one of two contracts (``kv_contract.py``): in-place (the zoo GPT
and imported Hugging Face LMs: per-layer pasts in, new columns out, the cache kept in
``slot_cache.SlotCache`` and never copied)
or concat (versions exported before it: ``present`` = past + new, ``concat_cache.BatchCache``).
``open_cache`` gives the cache that fits the loaded graph; both have one interface.

``service/engine.py`` runs the continuous-batching scheduler on top of that cache; this module keeps
what belongs to the model: the tokenizer, the context window, the cache geometry, sampling, and a
plain per-request loop (``generate_ids``) that serves KServe v2 ``text_input -> text_output`` so
tritonclient works on GPT models too, and that the benchmark uses as the one-at-a-time baseline.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from deepserve.handlers.base import (
    Handler,
    InvalidInputError,
    ModelLoadError,
    PayloadRequest,
    Request,
    TensorRequest,
    Tensors,
)
from deepserve.handlers.concat_cache import BatchCache
from deepserve.handlers.kv_contract import IN_PLACE, KVCache, contract_of, host_step
from deepserve.handlers.runtime import Runtime, open_eager, open_runtime, select_variant
from deepserve.handlers.slot_cache import SlotCache
from deepserve.handlers.tokenizer import BytesTokenizer, TextStream, TokenizersTokenizer, tokenizer_path
from deepserve.store import GenerationDefaults, ModelSpec, TensorSpec, TextPreprocessing

# Per-request parameters a KServe v2 / TorchServe client may pass (request "parameters").
_PARAMS = ("max_tokens", "temperature", "top_k", "top_p", "seed", "frequency_penalty", "presence_penalty")


class StepOutput(NamedTuple):
    """The concat contract's step (``TextGenerationHandler.step``)."""

    logits: np.ndarray  # (B, T, V) float32
    present_key: np.ndarray  # (L, B, H, P+T, Dh)
    present_value: np.ndarray


def penalise(row: np.ndarray, seen: dict[int, int], frequency: float, presence: float) -> None:
    """OpenAI's frequency and presence penalties, in place on one row of logits (V,): each token
    this choice generated ``seen[token]`` times so far loses ``frequency * times + presence``."""
    if seen and (frequency or presence):
        ids = np.fromiter(seen.keys(), np.int64, len(seen))
        times = np.fromiter(seen.values(), np.float32, len(seen))
        row[ids] -= times * frequency + presence


def sample(
    logits: np.ndarray, temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray, uniforms: np.ndarray
) -> np.ndarray:
    """One token per row of ``logits`` (B, V) by inverse-CDF sampling with that row's ``uniforms`` value.

    temperature 0 = argmax; top_k 0 = off. Each row depends only on its own logits and uniform, so a
    sequence's draw does not change with its batch companions (the engine's reproducibility rests on it).
    """
    out: np.ndarray = logits.argmax(axis=1).astype(np.int64)  # (B,)
    hot = temperature > 0
    if not hot.any():
        return out
    z: np.ndarray = logits[hot].astype(np.float64) / temperature[hot, None]  # (b, V)
    vocab = z.shape[1]
    kk = top_k[hot].astype(np.int64)
    k = np.where((kk > 0) & (kk < vocab), kk, vocab)
    if (k < vocab).any():
        kth = -np.sort(-z, axis=1)[np.arange(len(k)), k - 1]  # the k-th largest logit per row
        z = np.where(z >= kth[:, None], z, -np.inf)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    nucleus = top_p[hot]
    if (nucleus < 1.0).any():
        order = np.argsort(-p, axis=1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=1)
        drop_sorted = (np.cumsum(sorted_p, axis=1) - sorted_p) >= nucleus[:, None]  # mass before >= top_p
        drop = np.empty_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=1)
        p = np.where(drop, 0.0, p)
    cdf = np.cumsum(p, axis=1)  # (b, V)
    picked = (cdf < uniforms[hot, None] * cdf[:, -1:]).sum(axis=1)
    out[hot] = np.minimum(picked, vocab - 1)
    return out


class TextGenerationHandler(Handler):
    """task "text-generation": a causal LM exported with the explicit KV cache (a zoo GPT, byte tokenizer;
    an imported Hugging Face causal LM, its tokenizer.json)."""

    def __init__(
        self,
        spec: ModelSpec,
        version_dir: Path | None = None,
        *,
        device: str = "cpu",
        precision: str | None = None,
        runtime: str | None = None,
        threads: int | None = None,
        spinning: bool = True,
        trt_cache_dir: Path | None = None,
    ) -> None:
        super().__init__(spec)
        self.trt_cache_dir = trt_cache_dir  # TensorRT's engine cache (GPUs only)
        self.version_dir, self.device, self.precision = version_dir, device, precision
        self.runtime_name, self.threads, self.spinning = runtime, threads, spinning
        self.runtime: Runtime | None = None
        gen, pre = spec.generation, spec.preprocessing
        if gen is None or None in (gen.n_layer, gen.n_head, gen.head_dim):
            raise ModelLoadError(f"{spec.name}: model.json lacks generation cache geometry; re-export")
        if not isinstance(pre, TextPreprocessing):
            raise ModelLoadError(f"{spec.name}: text generation needs text preprocessing (a tokenizer) in "
                                 "model.json; re-export")  # fmt: skip
        self.tokenizer = _generation_tokenizer(spec, pre, version_dir)
        self.defaults: GenerationDefaults = gen
        self.context_length = gen.context_length or pre.max_length
        self.vocab_size = pre.vocab_size
        self.eos_id = gen.eos_id
        self._geometry = (int(gen.n_layer or 0), int(gen.n_head or 0), int(gen.head_dim or 0))

    @classmethod
    def with_runtime(
        cls, spec: ModelSpec, runtime: Runtime, version_dir: Path | None = None
    ) -> TextGenerationHandler:
        """A handler over an already opened runtime (tests, benchmarks); ``load`` is then a no-op.
        ``version_dir``: where its tokenizer.json is (not needed for the bytes tokenizer)."""
        handler = cls(spec, version_dir)
        handler.runtime = runtime
        return handler

    # -- KServe v2 signature: strings in, strings out (the cache graph stays internal) -----------
    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(name="text_input", datatype="BYTES", shape=[-1, 1])]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(name="text_output", datatype="BYTES", shape=[-1, 1])]

    def load(self) -> None:
        if self.runtime is not None:
            return
        if self.runtime_name == "eager" or self.version_dir is None:
            self.runtime = open_eager(self._dir(), device=self.device, precision=self.precision,
                                      threads=self.threads)  # fmt: skip
            return
        try:
            variant = select_variant(
                self.spec, device=self.device, precision=self.precision, runtime=self.runtime_name,
                version_dir=self.version_dir,
            )  # fmt: skip
        except ModelLoadError as exc:  # no usable exported file: rebuild from the checkpoint if there is one
            if not self.spec.rebuildable:
                raise
            try:
                self.runtime = open_eager(self.version_dir, device=self.device, threads=self.threads)
            except ModelLoadError:
                raise exc from None
            return
        self.runtime = open_runtime(
            self.version_dir, variant, device=self.device, threads=self.threads, spinning=self.spinning,
            trt_cache_root=self.trt_cache_dir,
        )  # fmt: skip

    def _dir(self) -> Path:
        if self.version_dir is None:
            raise ModelLoadError(f"{self.spec.name}: no version directory to load from")
        return self.version_dir

    # -- tokenizer -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token stands for (OpenAI logprobs' ``bytes``): the byte tokenizer's byte; else the
        token decoded alone (a byte-level BPE piece of a longer character comes out as U+FFFD)."""
        if isinstance(self.tokenizer, BytesTokenizer):
            return bytes([token])
        return self.tokenizer.decode([token]).encode()

    def text_stream(self) -> TextStream:
        """A fresh token -> text decoder for one generated sequence (never emits half a character)."""
        return self.tokenizer.text_stream()

    def check_prompt(self, ids: list[int]) -> None:
        """Raise InvalidInputError for an empty prompt or one longer than the context window."""
        if not ids:
            raise InvalidInputError("the prompt is empty; send at least one character")
        if len(ids) > self.context_length:
            unit = "tokens (UTF-8 bytes)" if isinstance(self.tokenizer, BytesTokenizer) else "tokens"
            raise InvalidInputError(
                f"the prompt is {len(ids)} {unit} but {self.spec.name}'s context window is "
                f"{self.context_length} tokens; shorten the prompt"
            )

    # -- the model -------------------------------------------------------------------------------
    @functools.cached_property
    def contract(self) -> str:
        """The loaded graph's cache contract (``kv_contract.IN_PLACE`` or ``CONCAT``), read once:
        the concat cache's every step asks for it."""
        return contract_of(self._loaded().input_names, self.spec.name)

    def open_cache(self, capacity: int) -> KVCache:
        """A KV cache for at most ``capacity`` running sequences over the loaded graph."""
        runtime = self._loaded()
        if self.contract == IN_PLACE:
            return SlotCache(runtime, self._geometry, capacity=capacity, context_length=self.context_length,
                             vocab_size=self.vocab_size, device=self.device)  # fmt: skip
        return BatchCache(self.step, self._geometry)

    def empty_cache(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """A zero-length host cache (L, B, H, 0, Dh) for ``step``."""
        layers, heads, head_dim = self._geometry
        shape = (layers, batch, heads, 0, head_dim)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def prompt_logits(self, ids: list[int]) -> np.ndarray:
        """(T, V) logits over the prompt ``ids``, row i predicting token i + 1: one forward from an
        empty cache (OpenAI's ``echo`` with ``logprobs`` scores the prompt with these)."""
        self.check_prompt(ids)
        key, value = self.empty_cache(1)
        length = len(ids)
        out = self.step(np.array([ids], np.int64), np.arange(length, dtype=np.int64)[None],
                        np.ones((1, length), np.int64), key, value)  # fmt: skip
        logits: np.ndarray = out.logits[0]
        return logits

    def step(
        self,
        input_ids: np.ndarray,
        position_ids: np.ndarray,
        attention_mask: np.ndarray,
        past_key: np.ndarray,
        past_value: np.ndarray,
    ) -> StepOutput:
        """One forward over a batch with the whole cache (L, B, H, P, Dh) on the host, for either
        contract (the engine uses ``open_cache``; this is the reference and the concat cache's step)."""
        runtime = self._loaded()
        return StepOutput(*host_step(runtime.run, self.contract, input_ids, position_ids, attention_mask,
                                     past_key, past_value))  # fmt: skip

    def _loaded(self) -> Runtime:
        if self.runtime is None:
            raise ModelLoadError(f"{self.spec.name} is not loaded; call load() first")
        return self.runtime

    def generate_ids(self, prompt: list[int], params: dict[str, Any]) -> list[int]:
        """The simple per-request loop: prefill, then one cached decode per token (batch of one)."""
        self.check_prompt(prompt)
        d = self.defaults
        max_tokens = int(params.get("max_tokens", d.max_tokens))
        temperature = np.array([float(params.get("temperature", d.temperature))])
        top_k = np.array([int(params.get("top_k") or d.top_k or 0)])
        top_p = np.array([float(params.get("top_p", d.top_p))])
        frequency, presence = d.penalties(params.get("frequency_penalty"), params.get("presence_penalty"))
        seed = params.get("seed")
        rng = np.random.default_rng(None if seed is None else [int(seed), 0])  # as the engine's choice 0
        cache = self.open_cache(1)
        pre = cache.begin(len(prompt))
        logits = cache.prefill(pre, prompt)[None]  # (1, V)
        cache.join(pre, 1)
        out: list[int] = []
        seen: dict[int, int] = {}
        while True:
            if seen and (frequency or presence):
                logits = np.array(logits, np.float32)  # the cache's output stays as it was
                penalise(logits[0], seen, frequency, presence)
            token = int(sample(logits, temperature, top_k, top_p, np.array([rng.random()]))[0])
            if token == self.eos_id:
                return out
            out.append(token)
            seen[token] = seen.get(token, 0) + 1
            if len(out) >= max_tokens or len(prompt) + len(out) > self.context_length:  # no next position
                return out
            logits = cache.decode(np.array([token], np.int64))

    # -- the four verbs: KServe v2 / TorchServe whole-generation path ---------------------------
    def preprocess(self, request: Request) -> Tensors:
        if isinstance(request, TensorRequest):
            if "text_input" not in request.tensors:
                raise InvalidInputError("input 'text_input' (BYTES) is missing; send the prompt(s) there")
            texts = np.asarray(request.tensors["text_input"], dtype=object)
        else:
            texts = np.array([[_payload_text(request)]], dtype=object)
        return {"text_input": texts, **_sampling_params(request.parameters)}

    def item_cost(self, item: Tensors) -> int:
        return sum(len(_text(t)) for t in item["text_input"].ravel()) + self.item_rows(item)

    def predict_batch(self, items: list[Tensors]) -> list[Tensors]:
        results: list[Tensors] = []
        for item in items:
            params = {k: item[k].item() for k in _PARAMS if k in item}
            texts = item["text_input"]
            made = [self.decode(self.generate_ids(self.encode(_text(t)), params)).encode()
                    for t in texts.ravel()]  # fmt: skip
            results.append({"text_output": np.array(made, dtype=object).reshape(texts.shape)})
        return results

    def postprocess(self, outputs: Tensors, request: Request) -> Any:
        """KServe v2: the ``text_output`` tensor; TorchServe: the generated text (a list for several)."""
        if isinstance(request, TensorRequest):
            unknown = [n for n in request.outputs or [] if n != "text_output"]
            if unknown:
                raise InvalidInputError(f"unknown output(s) {unknown}; this model serves ['text_output']")
            return {"text_output": outputs["text_output"]}
        texts = [_text(t) for t in outputs["text_output"].ravel()]
        return texts[0] if len(texts) == 1 else texts


def _generation_tokenizer(
    spec: ModelSpec, pre: TextPreprocessing, version_dir: Path | None
) -> BytesTokenizer | TokenizersTokenizer:
    """No truncation: a prompt longer than the context window is refused (check_prompt), not cut."""
    if pre.tokenizer == "bytes":
        return BytesTokenizer(None)
    if version_dir is None:
        raise ModelLoadError(f"{spec.name}: its {pre.tokenizer} tokenizer is a file; pass the version dir")
    return TokenizersTokenizer(tokenizer_path(version_dir, pre), None)


def _sampling_params(parameters: dict[str, Any]) -> Tensors:
    """Request parameters (numbers, or text from TorchServe query strings) as 0-d arrays, range-checked."""
    ranges = {"max_tokens": (1, None), "top_k": (1, None), "seed": (0, None), "temperature": (0, None),
              "top_p": (1e-9, 1), "frequency_penalty": (-2, 2), "presence_penalty": (-2, 2)}  # fmt: skip
    out: Tensors = {}
    for name, (low, high) in ranges.items():
        raw = parameters.get(name)
        if raw is None:
            continue
        kind = int if name in ("max_tokens", "top_k", "seed") else float
        try:
            value = kind(raw.decode() if isinstance(raw, bytes | bytearray) else raw)
        except (TypeError, ValueError):
            raise InvalidInputError(f"parameter {name!r} must be a number, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            raise InvalidInputError(f"parameter {name!r} is out of range ({low}..{high or 'inf'}): {value}")
        out[name] = np.asarray(value)
    return out


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"text_input is not valid UTF-8: {exc}") from exc
    return str(value)


def _payload_text(request: PayloadRequest) -> str:
    """TorchServe bodies: raw text, or JSON {"prompt"|"text"|"data"|"inputs": "..."}."""
    body = request.body
    if isinstance(body, dict):
        body = next((body[k] for k in ("prompt", "text", "data", "inputs") if k in body), None)
    if isinstance(body, bytes | bytearray | str):
        return _text(body)
    raise InvalidInputError('send the prompt as the raw body or JSON {"prompt": "..."}')
