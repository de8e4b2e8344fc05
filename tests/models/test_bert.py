"""The ``bert`` zoo model is Hugging Face's BertModel (weights renamed by training/encoders.py) + a head."""

from __future__ import annotations

import pytest
import torch

from deepserve.models import build_model
from deepserve.training.encoders import bert_state_dict

transformers = pytest.importorskip("transformers")

CONFIG = {"vocab_size": 50, "hidden_size": 32, "n_layer": 2, "n_head": 4, "intermediate_size": 64,
          "max_position": 32, "num_classes": 3, "dropout": 0.0}  # fmt: skip


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    hf_config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.BertModel(hf_config).eval()
    ours = build_model("bert", **CONFIG).eval()
    missing = ours.load_state_dict(bert_state_dict(hf.state_dict()), strict=False).missing_keys
    assert all(k.startswith("head.") for k in missing), missing
    return hf, ours


@torch.no_grad()
def test_token_states_equal_transformers_bert() -> None:
    hf, ours = _pair()
    ids = torch.randint(1, 50, (3, 9))
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7])
    want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    got = ours.encode(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_right_padding_does_not_change_logits() -> None:
    _, ours = _pair()
    short = torch.tensor([[4, 9, 17, 2]])
    alone = ours(short, torch.ones_like(short))
    ids = torch.tensor([[4, 9, 17, 2, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11]])
    mask = (ids > 0).long()
    torch.testing.assert_close(ours(ids, mask)[:1], alone, rtol=1e-5, atol=1e-5)
