"""Text models see only real tokens: padding side, pad ids and batch mates do not change a row."""

from __future__ import annotations

import pytest
import torch

from deepserve.models import build_model

CONFIGS = [
    ("rnn", {"vocab_size": 32, "embed_dim": 8, "hidden": 8, "num_layers": 2, "num_classes": 3}),
    ("rnn", {"vocab_size": 32, "embed_dim": 8, "hidden": 8, "cell": "gru", "num_classes": 3}),
    ("transformer", {"vocab_size": 32, "d_model": 16, "n_head": 2, "n_layer": 2, "d_ff": 32, "num_classes": 3,
                     "max_len": 16}),
]


def padded(seq: list[int], width: int, side: str, pad_id: int) -> tuple[list[int], list[int]]:
    pad = [pad_id] * (width - len(seq))
    real = [1] * len(seq)
    if side == "left":
        return pad + seq, [0] * len(pad) + real
    return seq + pad, real + [0] * len(pad)


@pytest.mark.parametrize(("name", "config"), CONFIGS, ids=["bilstm-2layer", "bigru", "transformer"])
@torch.no_grad()
def test_padding_does_not_change_logits(name: str, config: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = build_model(name, **config).eval()
    short, long = [4, 9, 17, 2], [5, 6, 7, 8, 9, 10, 11, 12, 13]
    alone = model(torch.tensor([short]), torch.ones(1, 4, dtype=torch.long))[0]
    for side in ("left", "right"):
        for pad_id in (0, 23):
            rows = [padded(short, 9, side, pad_id), padded(long, 9, side, pad_id)]
            ids, mask = torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])
            torch.testing.assert_close(model(ids, mask)[0], alone, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_transformer_embedding_is_masked_mean_pooling() -> None:
    torch.manual_seed(0)
    model = build_model("transformer", vocab_size=32, d_model=16, n_head=2, n_layer=1, d_ff=32).eval()
    ids, mask = torch.tensor([[4, 9, 17, 0, 0]]), torch.tensor([[1, 1, 1, 0, 0]])
    emb = model.embed(ids, mask)
    assert emb.shape == (1, 16)
    torch.testing.assert_close(emb, model.encode(ids, mask)[:, :3].mean(dim=1))
    torch.testing.assert_close(emb, model.embed(ids[:, :3], mask[:, :3]), atol=1e-6, rtol=1e-5)
