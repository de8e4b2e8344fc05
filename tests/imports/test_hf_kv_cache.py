"""Imported Hugging Face causal LMs follow the in-place KV-cache contract (the slot cache), checked
against transformers itself: GPT-2 and a grouped-query Llama, the split attention and its fallback,
and versions imported before the in-place contract (concat names) still loading and generating.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepserve.handlers.generation import TextGenerationHandler
from deepserve.handlers.kv_contract import CONCAT, IN_PLACE, past_names
from deepserve.handlers.slot_cache import SlotCache
from deepserve.imports import ImportOptions, import_source
from deepserve.store import ModelSpec, TensorSpec
from tests.imports import hf_folders

PROMPTS = ["hello world, the", "batching groups requests so the"]
NEW_TOKENS = 10


def llama_gqa(folder: Path, tokenizer_from: Path) -> Path:
    """A tiny LlamaForCausalLM, 4 query heads over 2 key/value heads, ``tokenizer_from``'s tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return hf_folders.tiny_causal_lm(folder, tokenizer_from, LlamaForCausalLM, LlamaConfig)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-kv")
    gpt2 = hf_folders.gpt2_lm(root / "gpt2")
    return {"gpt2": gpt2, "llama": llama_gqa(root / "llama", gpt2)}


@pytest.fixture(scope="module")
def store(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf-kv-store")
    for name, runtime in [("gpt2", None), ("llama", None), ("gpt2", "torch")]:
        import_source(
            folders[name], ImportOptions(store=root, name=f"{name}-{runtime or 'onnx'}", runtime=runtime)
        )
    return root


def _handler(version: Path) -> TextGenerationHandler:
    handler = TextGenerationHandler(ModelSpec.read(version), version, threads=1)
    handler.load()
    return handler


def _greedy(handler: TextGenerationHandler, prompt: str) -> list[int]:
    return handler.generate_ids(handler.encode(prompt), {"max_tokens": NEW_TOKENS, "temperature": 0})


@functools.cache
def _transformers(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return tok, AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()


def _transformers_greedy(folder: Path, prompt: str) -> list[int]:
    """transformers' own generate (greedy), up to and without the end-of-sequence token."""
    tok, lm = _transformers(folder)
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        made = lm.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0)[0, ids.shape[1] :]
    out = made.tolist()
    return out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out


# -- the versions written ----------------------------------------------------------------------
@pytest.mark.parametrize(("model", "layers", "kv_heads"), [("gpt2-onnx", 2, 2), ("llama-onnx", 2, 2)])
def test_model_json_and_graph_name_the_in_place_contract(
    store: Path, model: str, layers: int, kv_heads: int
) -> None:
    import onnx

    version = store / model / "1"
    spec = ModelSpec.read(version)
    names = ["input_ids", "position_ids", "attention_mask", *past_names(layers)]
    assert [t.name for t in spec.inputs] == names
    assert [t.name for t in spec.outputs] == ["logits", "new_key", "new_value"]
    head_dim = spec.generation.head_dim if spec.generation else 0
    assert spec.inputs[3].shape == [-1, kv_heads, -1, head_dim]  # (B, H_kv, P, Dh), fewer heads than queries
    assert spec.outputs[1].shape == [layers, -1, kv_heads, -1, head_dim]
    graph = onnx.load(version / "model.onnx").graph
    assert [i.name for i in graph.input] == names
    assert [o.name for o in graph.output] == ["logits", "new_key", "new_value"]


@pytest.mark.parametrize("model", ["gpt2-onnx", "llama-onnx"])
def test_parity_and_greedy_pass_with_the_split_attention(store: Path, model: str) -> None:
    variant = json.loads((store / model / "1" / "parity.json").read_text())["variants"][0]
    assert variant["passed"], variant["reason"]
    assert variant["greedy_generation"]["identical"]
    assert variant["attention"].startswith("split")
    assert {c["output"] for c in variant["checks"]} == {"logits", "new_key", "new_value"}


def test_split_graph_never_joins_the_cache(store: Path) -> None:
    """No Concat in the graph takes a past input: past and new columns are attended apart."""
    import onnx

    graph = onnx.load(store / "llama-onnx" / "1" / "model.onnx").graph
    pasts = {i.name for i in graph.input if i.name.startswith("past_")}
    reached, frontier = set(pasts), list(pasts)
    while frontier:  # what a past flows into through shape-only ops (a view of the cache is the cache)
        name = frontier.pop()
        for node in graph.node:
            if name in node.input and node.op_type in ("Transpose", "Reshape", "Identity", "Cast"):
                frontier += [o for o in node.output if o not in reached]
                reached.update(node.output)
    joins = [n.name for n in graph.node if n.op_type == "Concat" and reached & set(n.input)]
    assert not joins, joins


# -- served: the slot cache, greedy equal to transformers' generate ------------------------------
@pytest.mark.parametrize(
    ("model", "folder"), [("gpt2-onnx", "gpt2"), ("llama-onnx", "llama"), ("gpt2-torch", "gpt2")]
)
def test_served_with_the_slot_cache_greedy_equals_transformers(
    store: Path, folders: dict[str, Path], model: str, folder: str
) -> None:
    handler = _handler(store / model / "1")
    assert handler.contract == IN_PLACE
    assert isinstance(handler.open_cache(2), SlotCache)
    for prompt in PROMPTS:
        assert _greedy(handler, prompt) == _transformers_greedy(folders[folder], prompt), prompt


@pytest.mark.parametrize("split", [True, False])
def test_step_new_columns_equal_transformers_cache(folders: dict[str, Path], split: bool) -> None:
    """The eager step (split attention or transformers' own) against transformers' DynamicCache
    forward: the same logits, and the new columns are the tail of transformers' present cache."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from deepserve.imports.hf_modules import load_module

    step: Any = load_module(folders["llama"], "text-generation")
    assert step.use_split_attention(split) is split
    lm = AutoModelForCausalLM.from_pretrained(folders["llama"], local_files_only=True).eval()  # untouched
    torch.manual_seed(1)
    B, P, T, H, Dh, L = 2, 5, 3, 2, 8, 2
    pasts = [torch.randn(B, H, P, Dh) for _ in range(2 * L)]
    ids = torch.randint(1, 100, (B, T))
    mask = torch.ones(B, P + T, dtype=torch.int64)
    mask[1, :2] = 0  # row 1 left-padded
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, P:]
    with torch.no_grad():
        logits, new_key, new_value = step(ids, positions, mask, *pasts)
        cache = DynamicCache([(pasts[i], pasts[L + i]) for i in range(L)])
        arg = step._cache_arg  # transformers 5 calls it ``cache``, 4 ``past_key_values``
        want = lm(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True, **{arg: cache})
    torch.testing.assert_close(logits, want.logits, rtol=1e-4, atol=1e-5)
    assert new_key.shape == (L, B, H, T, Dh)
    for i, layer in enumerate(getattr(want, arg).layers):
        torch.testing.assert_close(new_key[i], layer.keys[:, :, P:], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(new_value[i], layer.values[:, :, P:], rtol=1e-4, atol=1e-5)


# -- the split attention refused: transformers' own attention, same contract ---------------------
def test_a_model_bypassing_the_split_attention_gets_transformers_attention(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attention that ignores the registered function (here: it attends to the new columns only,
    as a model with its own attention code would see the split cache) is caught, not exported."""
    from deepserve.imports import hf_attention

    split_attention = hf_attention.split_attention

    def bypass(module: Any, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any) -> Any:
        state = hf_attention._ACTIVE.get()
        hf_attention._ACTIVE.set(None)  # the model's own code: no split, no record of attending
        try:  # over what the cache's update returned (the new columns) with a mask to match
            own_mask = None if mask is None else mask[..., -key.shape[2] :]
            return split_attention(module, query, key, value, own_mask, **kwargs)
        finally:
            hf_attention._ACTIVE.set(state)

    monkeypatch.setattr(hf_attention, "split_attention", bypass)
    version = import_source(folders["gpt2"], ImportOptions(store=tmp_path, name="bypass"))[0]
    variant = json.loads((version / "parity.json").read_text())["variants"][0]
    assert variant["passed"] and variant["greedy_generation"]["identical"]
    assert variant["attention"].startswith("transformers") and "AttentionInterface" in variant["attention"]
    handler = _handler(version)
    assert handler.contract == IN_PLACE
    assert _greedy(handler, PROMPTS[0]) == _transformers_greedy(folders["gpt2"], PROMPTS[0])


# -- versions imported before the in-place contract ----------------------------------------------
def _concat_signature(spec: ModelSpec) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """model.json's inputs and outputs as imports wrote them before the in-place contract."""
    g = spec.generation
    assert g is not None
    cache = [g.n_layer, -1, g.n_head, -1, g.head_dim]  # (L, B, H, P, Dh)
    tokens = [
        TensorSpec(name=n, datatype="INT64", shape=[-1, -1])
        for n in ("input_ids", "position_ids", "attention_mask")
    ]
    past = [TensorSpec(name=n, datatype="FP32", shape=cache) for n in ("past_key", "past_value")]
    present = [TensorSpec(name=n, datatype="FP32", shape=cache) for n in ("present_key", "present_value")]
    return [*tokens, *past], [spec.outputs[0], *present]


def test_torch_version_with_concat_names_still_loads_and_generates(
    store: Path, folders: dict[str, Path], tmp_path: Path
) -> None:
    """A ``--runtime torch`` version from before: model.json names past_key/past_value, and the step
    (rebuilt from hf/ at load) is called with the stacked cache; the concat cache serves it."""
    import shutil

    version = tmp_path / "old-torch" / "1"
    shutil.copytree(store / "gpt2-torch" / "1", version)
    spec = ModelSpec.read(version)
    inputs, outputs = _concat_signature(spec)
    spec.model_copy(update={"inputs": inputs, "outputs": outputs}).write(version)
    handler = _handler(version)
    assert handler.contract == CONCAT
    for prompt in PROMPTS:
        assert _greedy(handler, prompt) == _transformers_greedy(folders["gpt2"], prompt), prompt


def test_onnx_version_with_concat_graph_still_loads_and_generates(
    store: Path, folders: dict[str, Path], tmp_path: Path
) -> None:
    """An ONNX version from before: the graph takes the stacked cache (contract_of picks concat from
    its input names). Written here as the importer wrote it, through the step's stacked-cache path."""
    import shutil

    from deepserve.export.onnx_graph import write_onnx
    from deepserve.imports.hf_modules import load_module

    version = tmp_path / "old-onnx" / "1"
    shutil.copytree(store / "gpt2-onnx" / "1", version)
    spec = ModelSpec.read(version)
    g = spec.generation
    assert g is not None
    L, H, Dh, ctx = g.n_layer, g.n_head, g.head_dim, g.context_length
    dim = torch.export.Dim
    b, t = dim("batch", max=64), dim("sequence", min=1, max=ctx)
    p, s = dim("past", min=0, max=ctx), dim("total", min=1, max=2 * ctx)
    dims = ({0: b, 1: t}, {0: b, 1: t}, {0: b, 1: s}, {1: b, 3: p}, {1: b, 3: p})
    tokens = (
        torch.randint(1, 100, (2, 3)),
        torch.arange(3).repeat(2, 1),
        torch.ones(2, 5, dtype=torch.int64),
    )
    example = (*tokens, torch.randn(L, 2, H, 2, Dh), torch.randn(L, 2, H, 2, Dh))
    inputs, outputs = _concat_signature(spec)
    write_onnx(load_module(folders["gpt2"], "text-generation"), example, version / "model.onnx",
               input_names=[i.name for i in inputs], output_names=[o.name for o in outputs],
               dynamic_shapes={"inputs": dims})  # fmt: skip
    spec.model_copy(update={"inputs": inputs, "outputs": outputs}).write(version)
    handler = _handler(version)
    assert handler.contract == CONCAT
    key, value = handler.empty_cache(1)
    ids = np.array([handler.encode(PROMPTS[0])])
    n = ids.shape[1]
    out = handler.step(ids, np.arange(n)[None], np.ones((1, n), np.int64), key, value)
    assert out.present_key.shape == (L, 1, H, n, Dh)
    for prompt in PROMPTS:
        assert _greedy(handler, prompt) == _transformers_greedy(folders["gpt2"], prompt), prompt
