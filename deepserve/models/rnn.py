"""LSTM / GRU text classifier with the guide's attention pooling head (ch. 10).

Embedding -> (bi)LSTM or (bi)GRU -> attention pooling (masked softmax over time) -> classifier.

Padding without ``pack_padded_sequence`` (which neither traces nor exports with a dynamic T):
1. each row is rolled so its real tokens come first (left padding becomes right padding);
2. the forward direction runs as is: trailing pads come after every real token, so they cannot
   reach a real position;
3. the backward direction runs on each row's real tokens reversed (pads still trailing), and its
   outputs are reversed back.
So a sequence gives the same logits whatever its padding, its pad token ids, or its batch mates.
Real tokens must be contiguous in the row (left or right padding; no holes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepserve.models import register_model

MASK_BIAS = -1.0e4  # additive score bias for padded time steps (exp underflows to exactly 0)


@dataclass
class RNNConfig:
    vocab_size: int = 256
    embed_dim: int = 64
    hidden: int = 128
    num_layers: int = 1
    cell: str = "lstm"  # "lstm" | "gru"
    bidirectional: bool = True
    num_classes: int = 2
    dropout: float = 0.1
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"RNNConfig.cell must be 'lstm' or 'gru', got {self.cell!r}")
        if self.num_layers < 1:
            raise ValueError(f"RNNConfig.num_layers must be >= 1, got {self.num_layers}")


def _gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, C), index (B, T) -> x[b, index[b, t]] of shape (B, T, C)."""
    return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[2]))


def left_align(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B, T) time index that rolls each row so its real tokens come first."""
    steps = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None, :]  # (1, T)
    leading_pads = (attention_mask.cumsum(dim=1) == 0).sum(dim=1, keepdim=True)  # (B, 1)
    # modulo a tensor, not the int T: the ONNX exporter cannot lower `tensor % SymInt`
    return torch.remainder(steps + leading_pads, steps[:, -1:] + 1)


def reverse_real(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, 1) lengths -> (B, T) index reversing the first length steps of each row (pads stay put)."""
    steps = torch.arange(T, device=lengths.device)[None, :]  # (1, T)
    return torch.where(steps < lengths, lengths - 1 - steps, steps)


class AttentionPooling(nn.Module):
    """The guide's attention head: score each step, softmax over (real) steps, weighted sum."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.attention = nn.Linear(hidden, 1)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.attention(states).squeeze(-1)  # (B, T)
        scores = scores + (1 - mask).to(scores.dtype) * MASK_BIAS
        weights = torch.softmax(scores, dim=1)  # (B, T)
        return (weights[:, :, None] * states).sum(dim=1)  # (B, H)


class RNNClassifier(nn.Module):
    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        rnn = nn.LSTM if c.cell == "lstm" else nn.GRU
        directions = 2 if c.bidirectional else 1
        out_dim = c.hidden * directions
        self.embedding = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=c.pad_id)
        # One single-direction, single-layer RNN per (layer, direction): the backward direction
        # needs per-row reversal (see the module docstring), which nn.LSTM(bidirectional) cannot do.
        self.forward_rnns = nn.ModuleList(
            rnn(c.embed_dim if i == 0 else out_dim, c.hidden, batch_first=True) for i in range(c.num_layers)
        )
        self.backward_rnns = nn.ModuleList(
            rnn(c.embed_dim if i == 0 else out_dim, c.hidden, batch_first=True)
            for i in range(c.num_layers if c.bidirectional else 0)
        )
        self.drop = nn.Dropout(c.dropout)
        self.pool = AttentionPooling(out_dim)
        self.classifier = nn.Linear(out_dim, c.num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        torch._assert(input_ids.dim() == 2, "input_ids must be (B, T)")
        torch._assert(attention_mask.dim() == 2, "attention_mask must be (B, T)")
        T = input_ids.shape[1]
        align = left_align(attention_mask)  # (B, T)
        mask = torch.gather(attention_mask, 1, align)  # (B, T) real tokens first
        x = self.drop(_gather_time(self.embedding(input_ids), align))  # (B, T, E)
        reverse = reverse_real(mask.sum(dim=1, keepdim=True), T)  # (B, T)
        for i, fwd in enumerate(self.forward_rnns):
            states = fwd(x)[0]  # (B, T, H)
            if self.config.bidirectional:
                back = self.backward_rnns[i](_gather_time(x, reverse))[0]  # (B, T, H) on reversed rows
                states = torch.cat([states, _gather_time(back, reverse)], dim=2)  # (B, T, 2H)
            x = self.drop(states) if i < len(self.forward_rnns) - 1 else states
        return self.classifier(self.drop(self.pool(x, mask)))  # (B, K)


@register_model("rnn")
def rnn(**config: object) -> RNNClassifier:
    return RNNClassifier(RNNConfig(**config))  # type: ignore[arg-type]
