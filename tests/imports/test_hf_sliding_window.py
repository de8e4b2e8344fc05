"""A sliding-window Hugging Face LM (Mistral) is served up to its window, where it is the model.

Before, the window reached the exported step and transformers' window mask, counting cache columns
rather than positions, hid the wrong columns of our padded cache: a Mistral with a 24-token window
left transformers' own greedy output at the second generated token, well inside the window.
"""

from __future__ import annotations

import logging
from pathlib import Path

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


def mistral(folder: Path, tokenizer_from: Path) -> Path:
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=True)
    config = MistralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, sliding_window=WINDOW,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.3,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    MistralForCausalLM(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf-window")
    return mistral(root / "mistral", hf_folders.gpt2_lm(root / "gpt2"))


@pytest.fixture(scope="module")
def versions(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    store = tmp_path_factory.mktemp("hf-window-store")
    return {
        runtime: import_source(
            folder, ImportOptions(store=store, name=f"mistral-{runtime}", runtime=runtime)
        )[0]
        for runtime in ("onnx", "torch")
    }


def _reference(folder: Path, prompt: list[int], count: int) -> list[int]:
    """transformers' Mistral, sliding window and all, greedy by full forwards (no cache to get wrong)."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    assert lm.config.sliding_window == WINDOW
    sequence, out = list(prompt), []
    with torch.no_grad():
        for _ in range(count):
            token = int(lm(torch.tensor([sequence])).logits[0, -1].argmax())
            out.append(token)
            sequence.append(token)
    return out


def _handler(version: Path) -> TextGenerationHandler:
    handler = TextGenerationHandler(ModelSpec.read(version), version, threads=1)
    handler.load()
    return handler


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_served_context_is_the_window(versions: dict[str, Path], runtime: str) -> None:
    spec = ModelSpec.read(versions[runtime])
    assert spec.generation is not None and spec.generation.context_length == WINDOW
    assert spec.preprocessing is not None and spec.preprocessing.max_length == WINDOW


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_greedy_output_is_transformers_up_to_the_window(
    versions: dict[str, Path], folder: Path, runtime: str
) -> None:
    handler = _handler(versions[runtime])
    prompt = handler.encode(PROMPT)
    ours = handler.generate_ids(prompt, {"max_tokens": 64, "temperature": 0})
    assert len(prompt) + len(ours) == WINDOW + 1  # generation ran to the end of the window, not short of it
    assert ours == _reference(folder, prompt, len(ours))


def test_a_prompt_past_the_window_is_refused_in_one_line(versions: dict[str, Path]) -> None:
    handler = _handler(versions["onnx"])
    with pytest.raises(InvalidInputError, match=rf"context window is {WINDOW} tokens; shorten the prompt"):
        handler.check_prompt(list(range(WINDOW + 1)))


def test_the_import_says_why_the_context_is_short(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="deepserve.imports.hf"):
        import_source(folder, ImportOptions(store=tmp_path, name="m", runtime="torch"))
    assert f"sliding window of {WINDOW} positions: it is served up to {WINDOW} tokens" in caplog.text


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
