"""Byte-level BPE for the guide GPT: a tokenizer trained on the training split only, its LM windows,
and bits per byte so byte and subword models compare on one scale.

The split is by position, as in ``textdata.lm_data`` (last ``val_frac`` of the bytes is validation),
and the tokenizer never sees the validation text. Id 0 is ``<|endoftext|>``: it doubles as the pad id
and is the ``eos_id`` a served model stops at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.data import TensorDataset

from deepserve.training.checkpoint import fingerprint
from deepserve.training.data import DataError, TaskData, windows

END_OF_TEXT = "<|endoftext|>"


def train_bpe(train_text: str, vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer (decodes back to the exact text) trained on ``train_text`` only."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([train_text], trainer=trainer)
    return tokenizer


def bits_per_byte(loss_nats_per_token: float, tokens: int, text_bytes: int) -> float:
    """Total validation nats over the text, in bits, divided by that text's UTF-8 bytes."""
    return loss_nats_per_token * tokens / (math.log(2) * text_bytes)


@dataclass(frozen=True)
class BpeSplit:
    tokenizer: Tokenizer
    val_tokens: int  # tokens the validation windows predict
    val_bytes: int  # bytes of the text those tokens cover


def bpe_lm_data(
    data: bytes, context: int, vocab_size: int, *, val_frac: float = 0.1, source: str = ""
) -> tuple[TaskData, BpeSplit]:
    """Next-token windows over BPE ids; train windows overlap by half a context, val ones do not."""
    cut = int(len(data) * (1 - val_frac))
    train_text = data[:cut].decode("utf-8", errors="ignore")
    val_text = data[cut:].decode("utf-8", errors="ignore")
    tokenizer = train_bpe(train_text, vocab_size)
    train_ids = torch.tensor(tokenizer.encode(train_text).ids, dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(val_text).ids, dtype=torch.long)
    train_w = windows(train_ids, context + 1, max(1, context // 2))
    val_w = windows(val_ids, context + 1, context)
    if len(train_w) < 2 or len(val_w) < 1:
        raise DataError(f"text too short for BPE windows: {len(val_ids)} val tokens, context {context}")
    # bytes covered by the predicted val tokens (targets), so bits per byte matches the loss
    targets = val_w[:, 1:]
    covered = sum(len(tokenizer.decode(row.tolist()).encode("utf-8")) for row in targets)
    empty = torch.zeros(0, context, dtype=torch.long)
    task = TaskData(
        "text-generation",
        "text",
        TensorDataset(train_w[:, :-1], train_w[:, 1:]),
        TensorDataset(val_w[:, :-1], targets),
        TensorDataset(empty, empty),
        bpe_preprocessing(tokenizer, context),
        fingerprint(data),
        [],
        source,
        assets={"tokenizer.json": tokenizer.to_str()},
    )
    return task, BpeSplit(tokenizer, targets.numel(), covered)


def bpe_preprocessing(tokenizer: Tokenizer, context: int) -> dict[str, Any]:
    eos_id = tokenizer.token_to_id(END_OF_TEXT)
    return {
        "kind": "text",
        "tokenizer": "tokenizers",
        "tokenizer_file": "tokenizer.json",
        "max_length": context,
        "pad_id": eos_id,
        "vocab_size": tokenizer.get_vocab_size(),
    }
