"""A sliding-window Hugging Face LM (Mistral; Gemma 3 with a sliding and a full layer) is served up to
its window, where it is the model; an encoder's local attention is left alone.

Before, the window reached the exported step and transformers' window mask, counting cache columns
rather than positions, hid the wrong columns of our padded cache: a Mistral with a 24-token window
left transformers' own greedy output at the second generated token, well inside the window. Gemma 3
checks that the fix keeps each layer's type, which picks that layer's RoPE base.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepserve.handlers.base import InvalidInputError
from deepserve.handlers.generation import TextGenerationHandler
from deepserve.imports import ImportOptions, import_source
from deepserve.imports.hf_folder import attention_window
from deepserve.store import ModelSpec
from tests.imports import hf_folders

WINDOW = 12  # shorter than the position table (64), so the window sets the served context
PROMPT = "hello world, the"
FAMILIES = ("mistral", "gemma3")
CASES = [(family, runtime) for family in FAMILIES for runtime in ("onnx", "torch")]


def sliding_lm(family: str, folder: Path, tokenizer_from: Path) -> Path:
    """A tiny causal LM of ``family`` with a WINDOW-token sliding window, ``tokenizer_from``'s tokenizer."""
    import transformers

    if family == "mistral":  # one window for every layer
        classes: tuple[Any, Any] = (transformers.MistralForCausalLM, transformers.MistralConfig)
        extra: dict[str, Any] = {}
    else:  # a sliding layer and a full one, each with its own RoPE base
        classes = (transformers.Gemma3ForCausalLM, transformers.Gemma3TextConfig)
        extra = {"head_dim": 8, "layer_types": ["sliding_attention", "full_attention"]}
    return hf_folders.tiny_causal_lm(folder, tokenizer_from, *classes, sliding_window=WINDOW, **extra)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-window")
    gpt2 = hf_folders.gpt2_lm(root / "gpt2")
    return {family: sliding_lm(family, root / family, gpt2) for family in FAMILIES}


@pytest.fixture(scope="module")
def versions(
    folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], Path]:
    store = tmp_path_factory.mktemp("hf-window-store")
    return {
        (family, runtime): import_source(
            folders[family], ImportOptions(store=store, name=f"{family}-{runtime}", runtime=runtime)
        )[0]
        for family, runtime in CASES
    }


def _reference(folder: Path, prompt: list[int], count: int) -> tuple[list[int], np.ndarray]:
    """transformers' own model, sliding window and all: greedy by full forwards (no cache to get
    wrong), and the prompt's logits (T, V)."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    assert lm.config.sliding_window == WINDOW
    sequence, out = list(prompt), []
    with torch.no_grad():
        logits = lm(torch.tensor([prompt])).logits[0].numpy()
        for _ in range(count):
            token = int(lm(torch.tensor([sequence])).logits[0, -1].argmax())
            out.append(token)
            sequence.append(token)
    return out, logits


def _handler(version: Path) -> TextGenerationHandler:
    handler = TextGenerationHandler(ModelSpec.read(version), version, threads=1)
    handler.load()
    return handler


@pytest.mark.parametrize(("family", "runtime"), CASES)
def test_served_context_is_the_window(
    versions: dict[tuple[str, str], Path], family: str, runtime: str
) -> None:
    spec = ModelSpec.read(versions[family, runtime])
    assert spec.generation is not None and spec.generation.context_length == WINDOW
    assert spec.preprocessing is not None and spec.preprocessing.max_length == WINDOW


@pytest.mark.parametrize(("family", "runtime"), CASES)
def test_greedy_output_is_transformers_up_to_the_window(
    versions: dict[tuple[str, str], Path], folders: dict[str, Path], family: str, runtime: str
) -> None:
    handler = _handler(versions[family, runtime])
    prompt = handler.encode(PROMPT)
    ours = handler.generate_ids(prompt, {"max_tokens": 64, "temperature": 0})
    assert len(prompt) + len(ours) == WINDOW + 1  # generation ran to the end of the window, not short of it
    tokens, logits = _reference(folders[family], prompt, len(ours))
    assert ours == tokens
    # the logits too: a changed RoPE base (Gemma 3's layers relabelled) can leave the argmax alone
    np.testing.assert_allclose(handler.prompt_logits(prompt), logits, atol=1e-4)


def test_a_prompt_past_the_window_is_refused_in_one_line(versions: dict[tuple[str, str], Path]) -> None:
    handler = _handler(versions["mistral", "onnx"])
    with pytest.raises(InvalidInputError, match=rf"context window is {WINDOW} tokens; shorten the prompt"):
        handler.check_prompt(list(range(WINDOW + 1)))


def test_the_import_says_why_the_context_is_short(
    folders: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="deepserve.imports.hf"):
        import_source(folders["mistral"], ImportOptions(store=tmp_path, name="m", runtime="torch"))
    assert f"sliding window of {WINDOW} positions: it is served up to {WINDOW} tokens" in caplog.text


def test_an_encoders_local_attention_keeps_its_length(tmp_path: Path) -> None:
    """ModernBERT's local attention is a sliding window too, but an encoder has no cache to get
    wrong: it keeps its whole context and its window."""
    from transformers import ModernBertConfig, ModernBertModel

    from deepserve.imports.hf_modules import load_module

    config = ModernBertConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                              cls_token_id=1, sep_token_id=2)  # fmt: skip
    assert attention_window(config) is not None
    ModernBertModel(config).save_pretrained(tmp_path)
    module = load_module(tmp_path, "embedding")
    assert module.attention_window is None
    assert module.encoder.config.sliding_window == config.sliding_window


def test_attention_window_reads_each_config_family() -> None:
    from transformers import GPT2Config, MistralConfig, Qwen2Config

    assert attention_window(MistralConfig(sliding_window=WINDOW)) == WINDOW
    assert attention_window(MistralConfig(sliding_window=None)) is None
    assert attention_window(GPT2Config()) is None
    assert attention_window(Qwen2Config()) is None  # use_sliding_window is off by default
    qwen = Qwen2Config(
        use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, num_hidden_layers=2
    )
    assert attention_window(qwen) == WINDOW  # its second layer slides
