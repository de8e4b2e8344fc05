"""The OpenAI parameters clients send, through the real engine and the HTTP routes: logprobs (equal to
the model's own log-softmax on the greedy path), penalties and logit_bias (OpenAI's formula, checked
against a plain re-implementation), echo, max_tokens past the context, and the model's chat template."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import pytest_asyncio
import torch
from prometheus_client import CollectorRegistry

from deepserve.handlers.generation import TextGenerationHandler
from deepserve.handlers.runtime import Runtime
from deepserve.handlers.torch_runtime import TorchRuntime
from deepserve.models import build_model
from deepserve.models.gpt import GPTWithCache
from deepserve.service.chat_template import load_chat_template
from deepserve.service.dataplane import DataPlane
from deepserve.service.errors import InvalidRequestError
from deepserve.service.metrics import Metrics
from deepserve.service.registry import Registry
from deepserve.service.sampling import SamplingParams, log_softmax, next_tokens
from deepserve.service.settings import Settings
from deepserve.store import ModelSpec
from tests.service.fakes import asgi_client
from tests.service.test_engine import CTX, HEAD_DIM, HEADS, LAYERS, gpt_spec

MODEL = "tiny-gpt"


class FixedRuntime(Runtime):
    """The same logits at every position, so what the penalties and the bias do is plain to see;
    ``prefills`` records each prompt the model was given."""

    def __init__(self, logits: np.ndarray) -> None:
        self.input_names = ["input_ids", "position_ids", "attention_mask", "past_key", "past_value"]
        self.output_names = ["logits", "present_key", "present_value"]
        self.logits = logits.astype(np.float32)  # (V,)
        self.prefills: list[list[int]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = feeds["input_ids"]  # (B, T)
        if ids.shape[1] > 1:
            self.prefills.append(ids[0].tolist())
        new = np.zeros((LAYERS, ids.shape[0], HEADS, ids.shape[1], HEAD_DIM), np.float32)
        return {"logits": np.broadcast_to(self.logits, (*ids.shape, len(self.logits))).copy(),
                "present_key": np.concatenate([feeds["past_key"], new], axis=3),
                "present_value": np.concatenate([feeds["past_value"], new], axis=3)}  # fmt: skip

    def describe(self) -> str:
        return "fixed logits"


def abc_logits() -> np.ndarray:
    logits = np.zeros(256, np.float32)
    logits[[ord("a"), ord("b"), ord("c")]] = [5.0, 4.5, 4.0]
    return logits


@pytest.fixture(scope="module")
def gpt() -> Iterator[Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core box
    torch.manual_seed(0)
    model: Any = build_model("gpt", vocab_size=256, context_length=CTX, n_layer=LAYERS, n_head=HEADS,
                             d_model=HEADS * HEAD_DIM)  # fmt: skip
    yield model.eval()
    torch.set_num_threads(threads)


def gpt_runtime(model: Any) -> TorchRuntime:
    return TorchRuntime(GPTWithCache(model), gpt_spec(), kind="eager", file="tiny", precision="fp32",
                        device="cpu", float_dtype=torch.float32)  # fmt: skip


async def serve(
    tmp_path: Path, runtime: Runtime, version_dir: Path | None = None, spec: ModelSpec | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(model_store=tmp_path / "store", request_timeout_s=10.0)  # type: ignore[call-arg]
    registry = Registry(settings, Metrics(CollectorRegistry()))
    await registry.add_handler(TextGenerationHandler.with_runtime(spec or gpt_spec(), runtime, version_dir))
    plane = DataPlane(settings, registry)
    async with asgi_client(plane) as (client, _):
        yield client


@pytest_asyncio.fixture(loop_scope="function")
async def fixed(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FixedRuntime]]:
    runtime = FixedRuntime(abc_logits())
    async for client in serve(tmp_path, runtime):
        yield client, runtime


def penalised_greedy(
    logits: np.ndarray, steps: int, frequency: float, presence: float
) -> tuple[str, list[float]]:
    """OpenAI's definition written out plainly: logit - count*frequency - (count > 0)*presence."""
    counts = np.zeros_like(logits, dtype=np.float64)
    text, logprobs = "", []
    for _ in range(steps):
        adjusted = logits - counts * frequency - (counts > 0) * presence
        token = int(np.argmax(adjusted))
        shifted = adjusted - adjusted.max()
        logprobs.append(float(shifted[token] - np.log(np.exp(shifted).sum())))
        counts[token] += 1
        text += chr(token)
    return text, logprobs


# -- logprobs: the model's own log-softmax ---------------------------------------------------


async def test_greedy_logprobs_equal_the_models_log_softmax(tmp_path: Path, gpt: Any) -> None:
    prompt = "the quick brown"
    async for client in serve(tmp_path, gpt_runtime(gpt)):
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 5}
        r = await client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    chosen = [int(t[len("bytes:\\x") :], 16) if t.startswith("bytes:") else ord(t) for t in lp["tokens"]]
    assert len(chosen) == 12
    with torch.no_grad():  # the plain forward (no cache) over the prompt and what was generated
        ids = torch.tensor([list(prompt.encode()) + chosen[:-1]])
        reference = torch.log_softmax(gpt(ids)[0, len(prompt) - 1 :], dim=-1).numpy()  # (12, V)
    for step, token in enumerate(chosen):
        assert abs(lp["token_logprobs"][step] - reference[step, token]) < 1e-4
        assert reference[step, token] >= reference[step].max() - 1e-4  # greedy: the model's best token
        top = sorted(lp["top_logprobs"][step].values(), reverse=True)[:5]
        np.testing.assert_allclose(top, np.sort(reference[step])[::-1][:5], atol=1e-4)
    assert lp["text_offset"] == list(range(12))  # one ASCII character per byte token, after no echo


def test_next_tokens_without_adjustments_is_plain_sampling_and_log_softmax() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50)).astype(np.float32)
    params = [SamplingParams(temperature=0, logprobs=3), SamplingParams(temperature=0.7, seed=1),
              SamplingParams(temperature=1.0, logprobs=0)]  # fmt: skip
    tokens, logprobs = next_tokens(logits, params, [{}, {}, {}], np.array([0.1, 0.5, 0.9]))
    assert tokens[0] == logits[0].argmax() and logprobs[1] is None
    first, third = logprobs[0], logprobs[2]
    assert first is not None and third is not None and third.top == ()
    expected = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert (
        abs(first.logprob - expected[0, tokens[0]]) < 1e-6
        and abs(third.logprob - expected[2, tokens[2]]) < 1e-6
    )
    assert [t for t, _ in first.top] == list(np.argsort(-expected[0])[:3])
    np.testing.assert_allclose(log_softmax(logits[1]), expected[1], atol=1e-6)


# -- penalties, logit_bias -------------------------------------------------------------------


@pytest.mark.parametrize(("frequency", "presence"), [(1.0, 0.0), (0.0, 2.0), (0.6, 0.3)])
async def test_penalties_follow_openais_formula(
    fixed: tuple[httpx.AsyncClient, FixedRuntime], frequency: float, presence: float
) -> None:
    client, _ = fixed
    body = {"model": MODEL, "prompt": "xy", "max_tokens": 10, "temperature": 0, "logprobs": 0,
            "frequency_penalty": frequency, "presence_penalty": presence}  # fmt: skip
    choice = (await client.post("/v1/completions", json=body)).json()["choices"][0]
    text, logprobs = penalised_greedy(abc_logits(), 10, frequency, presence)
    assert choice["text"] == text and text != "a" * 10
    np.testing.assert_allclose(
        choice["logprobs"]["token_logprobs"], logprobs, atol=1e-5
    )  # after the penalties


async def test_the_models_default_penalty_applies_where_a_request_sends_none(tmp_path: Path) -> None:
    """model.json ``generation.frequency_penalty`` (the store's GPT sets one so that greedy output
    does not loop on one token) stands in for an unset penalty on every route; a sent one wins."""
    base = gpt_spec()
    assert base.generation is not None
    generation = base.generation.model_copy(update={"frequency_penalty": 1.0})
    spec = base.model_copy(update={"generation": generation})
    penalised, _ = penalised_greedy(abc_logits(), 10, 1.0, 0.0)
    body = {"model": MODEL, "prompt": "xy", "max_tokens": 10, "temperature": 0}
    async for client in serve(tmp_path, FixedRuntime(abc_logits()), spec=spec):
        unset = (await client.post("/v1/completions", json=body)).json()["choices"][0]["text"]
        sent = (await client.post("/v1/completions", json={**body, "frequency_penalty": 0})).json()
        torchserve = await client.post(
            f"/predictions/{MODEL}", json={k: v for k, v in body.items() if k != "model"}
        )
    assert unset == penalised != "a" * 10
    assert sent["choices"][0]["text"] == "a" * 10  # the request's own 0 wins over the model's default
    assert torchserve.text == penalised
    handler = TextGenerationHandler.with_runtime(spec, FixedRuntime(abc_logits()))  # the v2 path
    assert (
        "".join(map(chr, handler.generate_ids([ord("x"), ord("y")], {"max_tokens": 10, "temperature": 0})))
        == penalised
    )


async def test_logit_bias_moves_the_choice(fixed: tuple[httpx.AsyncClient, FixedRuntime]) -> None:
    client, _ = fixed
    body: dict[str, Any] = {"model": MODEL, "prompt": "xy", "max_tokens": 4, "temperature": 0}
    favoured = (
        await client.post("/v1/completions", json={**body, "logit_bias": {str(ord("z")): 100}})
    ).json()
    banned = (await client.post("/v1/completions", json={**body, "logit_bias": {str(ord("a")): -100}})).json()
    assert favoured["choices"][0]["text"] == "zzzz" and banned["choices"][0]["text"] == "bbbb"
    for bad, fragment in (({"x": 1}, "not a token id"), ({"300": 1}, "0..255"), ({"97": 101}, "[-100, 100]")):
        r = await client.post("/v1/completions", json={**body, "logit_bias": bad})
        assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text


# -- echo, max_tokens past the context, chat logprobs ------------------------------------------


async def test_echo_prepends_the_prompt(fixed: tuple[httpx.AsyncClient, FixedRuntime]) -> None:
    client, _ = fixed
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 3, "temperature": 0, "echo": True}
    assert (await client.post("/v1/completions", json=body)).json()["choices"][0]["text"] == "helloaaa"
    r = await client.post("/v1/completions", json={**body, "stream": True})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert (
        events[0]["choices"][0]["text"] == "hello"
        and "".join(e["choices"][0]["text"] for e in events) == "helloaaa"
    )


async def test_echo_with_logprobs_scores_the_prompt_with_the_models_log_softmax(
    tmp_path: Path, gpt: Any
) -> None:
    prompt = "the quick"
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 2, "echo": True}
    async for client in serve(tmp_path, gpt_runtime(gpt)):
        r = await client.post("/v1/completions", json=body)
        streamed = await client.post("/v1/completions", json={**body, "stream": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp, ids = choice["logprobs"], list(prompt.encode())
    assert lp["tokens"][: len(ids)] == list(prompt) and len(lp["tokens"]) == len(ids) + 4
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # nothing predicts token 0
    assert lp["text_offset"] == list(range(len(ids) + 4))  # the prompt from 0, then what was generated
    with torch.no_grad():
        reference = torch.log_softmax(gpt(torch.tensor([ids]))[0], dim=-1).numpy()  # (T, V)
    for i in range(1, len(ids)):
        assert abs(lp["token_logprobs"][i] - reference[i - 1, ids[i]]) < 1e-4
        top = sorted(lp["top_logprobs"][i].values(), reverse=True)[:2]
        np.testing.assert_allclose(top, np.sort(reference[i - 1])[::-1][:2], atol=1e-4)
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    first = events[0]["choices"][0]
    assert first["text"] == prompt and first["logprobs"]["token_logprobs"] == lp["token_logprobs"][: len(ids)]
    generated = [t for e in events[1:] for t in (e["choices"][0]["logprobs"] or {}).get("tokens", [])]
    assert [*first["logprobs"]["tokens"], *generated] == lp["tokens"]
    scored = await _score_only(tmp_path, gpt, {**body, "max_tokens": 0})
    assert scored["text"] == prompt and scored["finish_reason"] == "length"
    assert scored["logprobs"]["token_logprobs"] == lp["token_logprobs"][: len(ids)]  # the prompt alone


async def _score_only(tmp_path: Path, gpt: Any, body: dict[str, Any]) -> dict[str, Any]:
    """``max_tokens: 0`` (lm-eval-harness's loglikelihood request): the prompt's choice, streamed or
    not, and a chat request's 0 refused."""
    async for client in serve(tmp_path, gpt_runtime(gpt)):
        r = await client.post("/v1/completions", json=body)
        streamed = await client.post("/v1/completions", json={**body, "stream": True})
        plain = await client.post("/v1/completions", json={**body, "echo": False, "logprobs": None})
        chat = await client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 0
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert [e["choices"][0]["finish_reason"] for e in events] == ["length"]
    assert events[0]["choices"][0]["logprobs"] == r.json()["choices"][0]["logprobs"]
    assert plain.json()["choices"][0] | {"index": 0} == {"text": "", "index": 0, "logprobs": None,
                                                         "finish_reason": "length"}  # fmt: skip
    assert chat.status_code == 400
    return dict(r.json()["choices"][0])


async def test_max_tokens_past_the_context_is_refused_as_openai_does(
    fixed: tuple[httpx.AsyncClient, FixedRuntime],
) -> None:
    client, _ = fixed
    prompt = "x" * 60
    r = await client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 10})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith(
        "This model's maximum context length is 64 tokens. However, you requested 70 tokens "
        "(60 in the prompt, 10 in the completion)."
    )
    fits = await client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 4})
    unset = await client.post("/v1/completions", json={"model": MODEL, "prompt": prompt})  # cut, not refused
    assert fits.status_code == 200 and unset.json()["choices"][0]["finish_reason"] == "length"


async def test_chat_logprobs_carry_the_bytes_of_partial_characters(tmp_path: Path) -> None:
    logits = np.zeros(256, np.float32)
    logits[0xC3] = 3.0  # the first byte of "é": no character on its own
    async for client in serve(tmp_path, FixedRuntime(logits)):
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                "temperature": 0, "logprobs": True, "top_logprobs": 2}  # fmt: skip
        content = (await client.post("/v1/chat/completions", json=chat)).json()["choices"][0]["logprobs"][
            "content"
        ]
        r = await client.post("/v1/chat/completions", json={**chat, "logprobs": False})
    assert len(content) == 2 and content[0]["token"] == "bytes:\\xc3" and content[0]["bytes"] == [0xC3]
    assert (
        abs(content[0]["logprob"] - log_softmax(logits)[0xC3]) < 1e-6 and len(content[0]["top_logprobs"]) == 2
    )
    assert r.status_code == 400 and "'top_logprobs' needs 'logprobs': true" in r.text


# -- the chat template -----------------------------------------------------------------------

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_template(folder: Path, template: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"chat_template": template, "bos_token": {"content": "<s>"}, "eos_token": "</s>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


async def test_chat_uses_the_models_template_else_the_plain_one(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    chat = {"model": MODEL, "messages": messages, "max_tokens": 1}
    for folder, expected in ((write_template(tmp_path / "v1" / "hf", TEMPLATE),
                              "<s><|system|>be brief\n<|user|>hi\n<|assistant|>"),
                             (tmp_path / "plain", "be brief\nhi")):  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        runtime = FixedRuntime(abc_logits())
        async for client in serve(tmp_path, runtime, folder.parent if folder.name == "hf" else folder):
            assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200
        assert bytes(runtime.prefills[0]).decode() == expected


async def test_chat_templates_run_sandboxed_and_their_refusals_are_400(tmp_path: Path) -> None:
    escape = write_template(tmp_path / "escape", "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    template = load_chat_template(escape)
    assert template is not None
    with pytest.raises(InvalidRequestError, match=r"refused these messages: .*unsafe"):
        template.render([{"role": "user", "content": "hi"}])
    strict = write_template(tmp_path / "strict", "{{ raise_exception('roles must alternate') }}")
    async for client in serve(tmp_path, FixedRuntime(abc_logits()), strict):
        r = await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        )
    assert r.status_code == 400 and "roles must alternate" in r.json()["error"]["message"]


# -- the openai SDK --------------------------------------------------------------------------


async def test_openai_sdk_sends_and_reads_the_parameters(
    fixed: tuple[httpx.AsyncClient, FixedRuntime],
) -> None:
    client, _ = fixed
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="none", http_client=client)
    done = await sdk.completions.create(
        model=MODEL, prompt="xy", max_tokens=6, temperature=0, logprobs=2, frequency_penalty=1.0, seed=3,
        user="someone", stop=["zz", "q"],
    )  # fmt: skip
    text, logprobs = penalised_greedy(abc_logits(), 6, 1.0, 0.0)
    assert done.choices[0].text == text and done.choices[0].logprobs is not None
    np.testing.assert_allclose(done.choices[0].logprobs.token_logprobs or [], logprobs, atol=1e-5)
    stream = await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=3, temperature=0, logprobs=True, top_logprobs=2,
                                               presence_penalty=2.0, stream=True)  # fmt: skip
    tokens = [lp for chunk in [c async for c in stream] if chunk.choices and chunk.choices[0].logprobs
              for lp in chunk.choices[0].logprobs.content or []]  # fmt: skip
    assert [t.token for t in tokens] == ["a", "b", "c"] and all(len(t.top_logprobs) == 2 for t in tokens)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 64"):
        await sdk.completions.create(model=MODEL, prompt="x" * 60, max_tokens=20)
