"""Tiny Hugging Face folders for the import tests, built offline with ``from_config`` + ``save_pretrained``.

    bert_classifier(tmp / "clf")   # BertForSequenceClassification, 3 labels, WordPiece tokenizer.json
    gpt2_lm(tmp / "gpt2")          # GPT2LMHeadModel, byte-level BPE tokenizer.json
    bert_slow_tokenizer(tmp / "s") # the classifier with only vocab.txt (no tokenizer.json)

Weights are random (fixed seed) with a wide initialisation, so logits are far apart and greedy
decoding is not decided by float noise. The tokenizers are trained here on a few sentences.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a fast model server answers every request in time",
    "batching groups requests so the processor stays busy",
    "tokenizers split text into pieces before the encoder sees it",
    "it rained all weekend so we stayed inside and played games",
    "hello world, hello server, hello tokens",
] * 4
LABELS = ["negative", "neutral", "positive"]
BOS_EOS = "<|endoftext|>"


def wordpiece(texts: list[str], vocab_size: int) -> object:
    """A BERT-style WordPiece tokenizer trained on ``texts`` ([CLS] ... [SEP], lower-cased)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


def bert_classifier(folder: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece(CORPUS, 200), unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=64,
    )  # fmt: skip
    config = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)}, pad_token_id=tok.pad_token_id,
        initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(seed)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def bert_slow_tokenizer(folder: Path) -> Path:
    """The classifier folder with its tokenizer as a slow BertTokenizer's files only (vocab.txt)."""
    from transformers import AutoTokenizer

    bert_classifier(folder)
    fast = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    vocab = sorted(fast.get_vocab().items(), key=lambda kv: kv[1])
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "BertTokenizer", "do_lower_case": true, "model_max_length": 64}',
        encoding="utf-8",
    )
    return folder


def _byte_bpe() -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=[BOS_EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def gpt2_lm(folder: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_byte_bpe(),
        bos_token=BOS_EOS,
        eos_token=BOS_EOS,
        unk_token=BOS_EOS,
        model_max_length=64,
    )
    eos = tok.convert_tokens_to_ids(BOS_EOS)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=eos,
        eos_token_id=eos, initializer_range=0.3,
    )  # fmt: skip
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_causal_lm(
    folder: Path, tokenizer_from: Path, model_class: Any, config_class: Any, **config: Any
) -> Path:
    """A tiny causal LM (2 layers, width 32, 4 query heads over 2 key/value heads, 64 positions, seed 0)
    with ``tokenizer_from``'s tokenizer; ``config`` adds or overrides config fields."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=True)
    fields = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id, initializer_range=0.3, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)  # before the model: its initial weights are the test's model
    model_class(config_class(**{**fields, **config})).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def without_tokenizer(src: Path, folder: Path) -> Path:
    """A copy of ``src`` holding only config.json and the weights."""
    folder.mkdir(parents=True)
    for path in src.iterdir():
        if path.name == "config.json" or path.suffix == ".safetensors":
            shutil.copy2(path, folder / path.name)
    return folder
