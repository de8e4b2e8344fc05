"""The torch modules a Hugging Face folder is served as: one signature for the ONNX export and for
``--runtime torch`` (transformers itself), so the same handlers serve both.

    classification   SequenceLogits(input_ids, attention_mask)             -> logits (B, K)
    embedding        PooledEncoder(input_ids, attention_mask)              -> sentence_embedding (B, D)
    text-generation  CausalLMStep(input_ids, position_ids, attention_mask,
                                  past_key_0 .., past_value_0 ..)          -> logits (B, T, V),
                                                                              new_key, new_value

``CausalLMStep`` is the in-place cache contract of the generation handler (handlers/kv_contract.py),
the zoo GPT's: one (B, H, P, Dh) past per layer in, only the new columns (L, B, H, T, Dh) out, so
the server keeps the cache in its own slot buffers; inside, the pasts become transformers' cache object.
Pooling follows a sentence-transformers folder (modules.json + its Pooling config, a Normalize
module); a plain encoder folder gets masked mean pooling without normalisation.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepserve.imports.hf_folder import MAX_LENGTH_CAP, attention_window, text_config

# past every (cache column - position) a served sequence can have: padded buffers of up to the cap,
# and as many new columns again
UNCUT_WINDOW = 4 * MAX_LENGTH_CAP

POOLING_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_ST_SUPPORTED = {"Transformer", "Pooling", "Normalize"}
# transformers resolves its classes lazily, and that is not thread-safe: two models loading at once (the
# server loads its store in threads) saw "module 'transformers' has no attribute 'AutoModel...'".
_LOADING = threading.Lock()


class FolderError(ValueError):
    """The folder holds something these modules cannot serve; the message says what and what to do."""


@dataclass(frozen=True)
class Pooling:
    mode: str = "mean"  # one of POOLING_MODES' values
    normalize: bool = False  # L2-normalise the pooled vector (sentence-transformers' Normalize module)
    transformer_path: str = ""  # where the transformer's files are, relative to the folder


def read_pooling(folder: Path) -> Pooling:
    """The folder's sentence-transformers pipeline (modules.json), or mean pooling when it has none."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return Pooling()
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    kinds = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
    unsupported = sorted(set(kinds) - _ST_SUPPORTED)
    if unsupported:
        raise FolderError(
            f"modules.json has sentence-transformers module(s) {unsupported} deepserve cannot serve (it "
            "serves Transformer + Pooling + Normalize); export the model to ONNX and import the .onnx file"
        )
    mode = "mean"
    if "Pooling" in kinds:
        config = json.loads((folder / kinds["Pooling"]["path"] / "config.json").read_text(encoding="utf-8"))
        chosen = [name for key, name in POOLING_MODES.items() if config.get(key)]
        others = [
            k for k, v in config.items() if k.startswith("pooling_mode") and v and k not in POOLING_MODES
        ]
        if len(chosen) != 1 or others:
            raise FolderError(
                f"the Pooling config {sorted(k for k, v in config.items() if v is True)} is not one of "
                f"{sorted(POOLING_MODES)}; deepserve serves exactly one of those pooling modes"
            )
        mode = chosen[0]
    path = kinds["Transformer"].get("path", "") if "Transformer" in kinds else ""
    return Pooling(mode=mode, normalize="Normalize" in kinds, transformer_path=path)


class ServedModule(nn.Module):
    """What every module here carries beside its forward."""

    attention_window: int | None = None  # a sliding-window model is served up to it (``full_attention``)


class PooledEncoder(ServedModule):
    """An encoder (BertModel, ...) + attention-masked pooling (+ L2 norm): a sentence-transformers
    pipeline as one graph."""

    def __init__(self, encoder: nn.Module, pooling: Pooling) -> None:
        super().__init__()
        self.encoder, self.mode, self.normalize = encoder, pooling.mode, pooling.normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (B, T, D)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        if self.mode == "cls":
            pooled = hidden[:, 0]  # (B, D)
        elif self.mode == "max":
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values
        else:
            summed, count = (hidden * mask).sum(1), mask.sum(1).clamp(min=1e-9)  # (B, D), (B, 1)
            pooled = summed / (count.sqrt() if self.mode == "mean_sqrt_len" else count)
        return nn.functional.normalize(pooled, p=2.0, dim=1) if self.normalize else pooled


class SequenceLogits(ServedModule):
    """A ForSequenceClassification model with the classifier's logits as its only output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, K)
        return logits


class CausalLMStep(ServedModule):
    """One cached forward of a causal LM over the in-place cache contract (handlers/kv_contract.py).

    ``forward(input_ids, position_ids, attention_mask, past_key_0 .. past_key_{L-1}, past_value_0 ..)``
    (one ``*inputs``, as the zoo GPT's step: the number of cache inputs depends on the depth), each
    past (B, H, P, Dh), returns ``logits`` (B, T, V) and ``new_key``, ``new_value`` (L, B, H, T, Dh):
    the new columns only, which the server writes into its own cache buffers.

    Versions imported with ``--runtime torch`` before the in-place contract name the concat inputs in
    their model.json and call it with the stacked cache ``past_key, past_value`` (L, B, H, P, Dh); a
    5-D past says so, and the step then returns the whole ``present_key, present_value`` as they expect.
    """

    def __init__(self, lm: nn.Module) -> None:
        from transformers import DynamicCache  # resolved once, here: see _LOADING

        super().__init__()
        self.lm: Any = lm
        self._cache_type = DynamicCache
        # transformers 5.x names the cache argument ``cache`` (``past_key_values`` is deprecated)
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        )
        self.split_attention = False  # transformers' own attention until use_split_attention()

    def use_split_attention(self, on: bool = True) -> bool:
        """Attend to the past and the new columns apart (hf_attention), so that the exported graph never
        copies the cache; whether it is on (False: the model's attention does not allow it)."""
        from deepserve.imports import hf_attention

        self.split_attention = on and hf_attention.enable(self.lm)
        return self.split_attention

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        input_ids, position_ids, attention_mask, *past = inputs  # (B, T), (B, T), (B, P+T), pasts
        tokens = (input_ids, position_ids, attention_mask)
        if len(past) == 2 and past[0].dim() == 5:  # the concat contract: (L, B, H, P, Dh) x 2
            logits, keys, values = self._joined(*tokens, list(zip(past[0], past[1], strict=True)))
            return logits, torch.stack(keys), torch.stack(values)  # (L, B, H, P+T, Dh)
        layers = len(past) // 2
        if layers == 0 or len(past) != 2 * layers:  # the number of inputs: fixed when traced
            raise ValueError(f"the step takes n_layer past keys, then n_layer values; got {len(past)}")
        pasts = list(zip(past[:layers], past[layers:], strict=True))
        if self.split_attention:
            logits, keys, values = self._split(*tokens, pasts)
            return logits, torch.stack(keys), torch.stack(values)  # (L, B, H, T, Dh)
        P = past[0].shape[2]
        logits, keys, values = self._joined(*tokens, pasts)  # past and new joined: keep the new columns
        return logits, torch.stack([k[:, :, P:] for k in keys]), torch.stack([v[:, :, P:] for v in values])

    def _split(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
        layers: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
        """Logits and every layer's new keys and values (B, H, T, Dh), the pasts only read."""
        from deepserve.imports.hf_attention import SplitCache

        state = SplitCache(layers)
        with state.active() as cache:
            logits = self._forward(input_ids, position_ids, attention_mask, cache).logits
        return logits, *state.new_columns()

    def _joined(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
        layers: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
        """transformers' own cache: logits and every layer's keys and values (B, H, P+T, Dh)."""
        # no config: every layer a full DynamicLayer (a sliding-window layer would drop old columns
        # from what it returns; the window is the attention mask's business)
        cache = self._cache_type(layers)
        out = self._forward(input_ids, position_ids, attention_mask, cache)
        present = out.cache if self._cache_arg == "cache" else out.past_key_values
        keys, values = [layer.keys for layer in present.layers], [layer.values for layer in present.layers]
        return out.logits, keys, values

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                 cache: Any) -> Any:  # fmt: skip
        return self.lm(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                       use_cache=True, **{self._cache_arg: cache})  # fmt: skip


def cache_geometry(config: Any) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a causal LM's KV cache."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return int(config.num_hidden_layers), kv_heads, head_dim


@contextlib.contextmanager
def quiet_transformers() -> Iterator[Any]:
    """Offline (never a download), one load at a time, without the weight-loading progress bar and load
    report (missing weights are checked by ``load_module``); yields ``transformers``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with _LOADING:
        import transformers
        from transformers.utils import logging as hf_logging

        bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        try:
            yield transformers
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def load_module(folder: Path, task: str) -> ServedModule:
    """The folder's model with transformers (local files only, fp32, eval) wrapped for ``task``.

    Raises FolderError when the weights do not cover the model (transformers would silently start
    the missing layers, e.g. a classifier head, from random values).
    """
    pooling = read_pooling(folder) if task == "embedding" else Pooling()
    with quiet_transformers() as transformers:
        auto = {
            "classification": transformers.AutoModelForSequenceClassification,
            "text-generation": transformers.AutoModelForCausalLM,
        }.get(task, transformers.AutoModel)
        path = folder / pooling.transformer_path
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        window = full_attention(config) if task == "text-generation" else None  # encoders have no cache
        model, info = auto.from_pretrained(
            path, config=config, local_files_only=True, dtype=torch.float32,
            output_loading_info=True,
        )  # fmt: skip
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise FolderError(
            f"the weights in {folder} lack {len(missing)} tensor(s) the {task} model needs ({shown}); save "
            "the trained model with save_pretrained, or pick the --task its weights were trained for"
        )
    model = model.eval()
    wrapped: ServedModule
    if task == "classification":
        wrapped = SequenceLogits(model)
    elif task == "text-generation":
        with _LOADING:
            wrapped = CausalLMStep(model)
    else:
        wrapped = PooledEncoder(model, pooling)
    wrapped.attention_window = window
    return wrapped.eval()


def full_attention(config: Any) -> int | None:
    """Widen a causal LM's sliding window past every cache column it can be served with; its window,
    or None when it has none.

    Sequences are then served up to the window (``hf_folder.max_length``), where the two attend to
    the same positions. Kept as it was, transformers' window mask counts cache columns, not positions,
    so over our padded cache buffers it masked the wrong columns (a Mistral went its own way from
    the second generated token). The layer types stay: Gemma 3 picks its RoPE base by layer type.
    """
    window = attention_window(config)
    if window is None:
        return None
    text_config(config).sliding_window = UNCUT_WINDOW
    return window
