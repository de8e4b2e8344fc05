"""TextGenerationHandler over a real ONNX export of a tiny GPT: the cached step equals full recompute (also
for left-padded batches, which the engine relies on), the KServe v2 text path, sampling and prompt checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepserve.export.generative_plans import gpt_io, write_gpt_onnx
from deepserve.handlers.base import InvalidInputError, ModelLoadError, PayloadRequest, TensorRequest
from deepserve.handlers.generation import TextGenerationHandler, sample
from deepserve.models import build_model
from deepserve.store import GenerationDefaults, ModelSpec, TextPreprocessing, Variant

CTX, LAYERS, HEADS, HEAD_DIM = 32, 2, 2, 8


def gpt_spec(**generation: Any) -> ModelSpec:
    inputs, outputs = gpt_io(LAYERS, HEADS, HEAD_DIM, 256)  # the in-place cache contract
    geometry = {"context_length": CTX, "n_layer": LAYERS, "n_head": HEADS, "head_dim": HEAD_DIM, **generation}
    return ModelSpec(
        name="tiny-gpt", version=1, task="text-generation", architecture="gpt",
        inputs=inputs, outputs=outputs, max_batch_size=16,
        preprocessing=TextPreprocessing(tokenizer="bytes", max_length=CTX, vocab_size=256),
        generation=GenerationDefaults(**geometry),
        variants=[Variant(file="model.onnx", format="onnx", precision="fp32", usable=True)],
        created="2026-01-01T00:00:00Z", torch_version=torch.__version__,
    )  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """(eager GPT, version dir with model.onnx + model.json), exported as export/ does (dynamo, dims)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core box: more threads only spin
    torch.manual_seed(0)
    gpt: Any = build_model("gpt", vocab_size=256, context_length=CTX, n_layer=LAYERS, n_head=HEADS,
                           d_model=HEADS * HEAD_DIM).eval()  # fmt: skip
    with torch.no_grad():
        gpt.wte.weight.mul_(40)  # peaked logits: greedy choices far from ties
    version = tmp_path_factory.mktemp("store") / "tiny-gpt" / "1"
    version.mkdir(parents=True)
    write_gpt_onnx(gpt, version / "model.onnx")  # exactly as `deepserve export` writes it
    gpt_spec().write(version)
    yield gpt, version
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def handler(exported: tuple[Any, Path]) -> TextGenerationHandler:
    h = TextGenerationHandler(ModelSpec.read(exported[1]), exported[1], threads=1)
    h.load()
    return h


def full_logits(gpt: Any, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return gpt(torch.tensor([ids]))[0, -1].numpy()  # (V,) no cache: the whole prefix recomputed


def test_load_picks_the_onnx_variant(handler: TextGenerationHandler) -> None:
    assert handler.runtime is not None and "onnxruntime" in handler.runtime.describe()
    assert [t.name for t in handler.inputs] == ["text_input"] and handler.inputs[0].datatype == "BYTES"
    assert [t.name for t in handler.outputs] == ["text_output"]


def test_load_handler_passes_spinning(exported: tuple[Any, Path]) -> None:
    """``load_handler(spinning=False)`` reaches the text-generation handler (co-located HTTP server)."""
    from deepserve.handlers import load_handler

    quiet = load_handler(exported[1], threads=1, spinning=False, load=False)
    assert isinstance(quiet, TextGenerationHandler) and quiet.spinning is False
    assert load_handler(exported[1], threads=1, load=False).spinning is True  # type: ignore[attr-defined]


def test_padded_batch_decode_equals_full_recompute(handler: TextGenerationHandler, exported: Any) -> None:
    gpt = exported[0]
    prompts = [handler.encode("a longer first prompt"), handler.encode("short")]
    caches, firsts = [], []
    for ids in prompts:  # prefill each prompt alone, as the engine does
        k, v = handler.empty_cache(1)
        n = len(ids)
        logits, k, v = handler.step(np.array([ids]), np.arange(n)[None], np.ones((1, n), np.int64), k, v)
        np.testing.assert_allclose(logits[0, -1], full_logits(gpt, ids), rtol=1e-4, atol=1e-3)
        caches.append((k, v))
        firsts.append(int(logits[0, -1].argmax()))
    width = len(prompts[0])
    pad = [(0, 0), (0, 0), (0, 0), (width - len(prompts[1]), 0), (0, 0)]  # left-pad the short row's cache
    key = np.concatenate([caches[0][0], np.pad(caches[1][0], pad)], axis=1)
    value = np.concatenate([caches[0][1], np.pad(caches[1][1], pad)], axis=1)
    mask = np.ones((2, width + 1), np.int64)
    mask[1, : width - len(prompts[1])] = 0
    positions = np.array([[len(p)] for p in prompts])
    logits, key, _ = handler.step(np.array([[t] for t in firsts]), positions, mask, key, value)
    assert key.shape == (LAYERS, 2, HEADS, width + 1, HEAD_DIM)
    for row, ids in enumerate(prompts):
        np.testing.assert_allclose(
            logits[row, -1], full_logits(gpt, [*ids, firsts[row]]), rtol=1e-4, atol=1e-3
        )


def test_kserve_text_path_generates_greedily(handler: TextGenerationHandler, exported: Any) -> None:
    texts = np.array([[b"hello"], ["caf\u00e9".encode()]], dtype=object)
    request = TensorRequest({"text_input": texts}, parameters={"max_tokens": 6, "temperature": 0})
    item = handler.preprocess(request)
    (out,) = handler.predict_batch([item])
    assert out["text_output"].shape == (2, 1)
    for prompt, made in zip(texts.ravel(), out["text_output"].ravel(), strict=True):
        ids = list(prompt)
        for _ in range(6):  # greedy by full recompute, no cache
            ids.append(int(full_logits(exported[0], ids).argmax()))
        assert made == handler.decode(ids[len(prompt) :]).encode()
    assert handler.postprocess(out, request)["text_output"] is out["text_output"]
    with pytest.raises(InvalidInputError, match="unknown output"):
        handler.postprocess(out, TensorRequest({"text_input": texts}, outputs=["logits"]))
    payload = PayloadRequest({"prompt": "hello"}, parameters={"max_tokens": 6, "temperature": 0})
    (one,) = handler.predict_batch([handler.preprocess(payload)])
    assert handler.postprocess(one, payload) == out["text_output"][0, 0].decode()


def test_kserve_text_path_applies_frequency_and_presence_penalties(
    handler: TextGenerationHandler, exported: Any
) -> None:
    params = {"max_tokens": 8, "temperature": 0, "frequency_penalty": 2, "presence_penalty": 0.5}
    request = TensorRequest({"text_input": np.array([[b"aaaa"]], dtype=object)}, parameters=params)
    (out,) = handler.predict_batch([handler.preprocess(request)])
    ids, seen = list(b"aaaa"), {}
    for _ in range(8):  # OpenAI's penalties over the generated tokens, by full recompute
        row = full_logits(exported[0], ids).astype(np.float32)
        for token, times in seen.items():
            row[token] -= 2 * times + 0.5
        ids.append(int(row.argmax()))
        seen[ids[-1]] = seen.get(ids[-1], 0) + 1
    assert out["text_output"][0, 0] == handler.decode(ids[4:]).encode()
    plain = handler.generate_ids(list(b"aaaa"), {"max_tokens": 8, "temperature": 0})
    assert handler.decode(plain).encode() != out["text_output"][0, 0]  # the penalty changed the text
    with pytest.raises(InvalidInputError, match="'frequency_penalty' is out of range"):
        handler.preprocess(TensorRequest({"text_input": np.array([[b"a"]], dtype=object)},
                                         parameters={"frequency_penalty": 3}))  # fmt: skip


def test_generation_stops_at_the_context_window(handler: TextGenerationHandler) -> None:
    prompt = handler.encode("x" * (CTX - 3))
    made = handler.generate_ids(prompt, {"max_tokens": 100, "temperature": 0})
    assert len(made) == 4  # the token at position CTX is produced from a full window, never fed back


def test_prompt_checks(handler: TextGenerationHandler) -> None:
    with pytest.raises(InvalidInputError, match="context window is 32"):
        handler.check_prompt(handler.encode("y" * (CTX + 1)))
    with pytest.raises(InvalidInputError, match="empty"):
        handler.check_prompt([])
    with pytest.raises(InvalidInputError, match="text_input"):
        handler.preprocess(TensorRequest({"prompt": np.array([b"x"], dtype=object)}))
    with pytest.raises(InvalidInputError, match="'temperature' must be a number"):
        handler.preprocess(PayloadRequest("hi", parameters={"temperature": "hot"}))
    with pytest.raises(InvalidInputError, match="'max_tokens' is out of range"):
        handler.preprocess(PayloadRequest("hi", parameters={"max_tokens": "0"}))
    with pytest.raises(InvalidInputError, match="UTF-8"):
        handler.predict_batch([{"text_input": np.array([b"\xff\xfe"], dtype=object)}])


def test_model_json_without_cache_geometry_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="cache geometry"):
        TextGenerationHandler(gpt_spec(n_layer=None))


def test_sampling_rules() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50)).astype(np.float32)
    best = logits.argmax(axis=1)
    u = rng.random(3)
    zeros, ones = np.zeros(3), np.ones(3)
    assert (sample(logits, zeros, zeros, ones, u) == best).all()  # temperature 0 = greedy
    assert (sample(logits, ones, ones, ones, u) == best).all()  # top_k 1 = greedy
    assert (sample(logits, ones, zeros, np.full(3, 1e-6), u) == best).all()  # tiny top_p = greedy
    top3 = np.argsort(-logits, axis=1)[:, :3]
    picks = [sample(logits, ones, np.full(3, 3), ones, rng.random(3)) for _ in range(200)]
    assert all(p[i] in top3[i] for p in picks for i in range(3))
    # one row's draw depends only on its own logits and uniform, not on its batch companions
    assert (
        sample(logits[:1], ones[:1], zeros[:1], ones[:1], u[:1])[0] == sample(logits, ones, zeros, ones, u)[0]
    )


def test_sampling_follows_the_softmax() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    draws = 4000
    u = np.random.default_rng(1).random(draws)
    picked = [int(sample(logits, np.ones(1), np.zeros(1), np.ones(1), u[i : i + 1])[0]) for i in range(draws)]
    freq = np.bincount(picked, minlength=4) / draws
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    hot = [
        int(sample(logits, np.full(1, 0.5), np.zeros(1), np.ones(1), u[i : i + 1])[0]) for i in range(draws)
    ]
    assert np.bincount(hot, minlength=4)[0] / draws > 0.6  # lower temperature sharpens
