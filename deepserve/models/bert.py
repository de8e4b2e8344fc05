"""BERT-style encoder with a classification head (guide ch. 21, transfer learning).

The layout is BERT's (Devlin et al.) as all-MiniLM-L6-v2 uses it: word + learned absolute
position + token-type embeddings, LayerNorm, then post-norm blocks (self-attention -> add & norm
-> GELU feed-forward -> add & norm). Sentences are pooled by the masked mean of the token states,
as sentence-transformers pools MiniLM, and a small head turns that into logits. Pretrained weights
are loaded by the trainer (``training/encoders.py`` maps a Hugging Face ``BertModel`` state dict
onto these names); the model itself never reads files.

Unlike ``transformer.py`` positions count from the first slot (BERT's convention): rows must be
right-padded, which is what the tokenizer and the batcher do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from deepserve.models import register_model
from deepserve.models.transformer import masked_mean, padding_bias


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    n_layer: int = 6
    n_head: int = 12
    intermediate_size: int = 1536
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    num_classes: int = 2
    head_hidden: int = 0  # 0: one Linear on the pooled state; > 0: Linear -> GELU -> Linear
    pad_id: int = 0
    grad_checkpoint: bool = False  # recompute each block in backward (training only)

    def __post_init__(self) -> None:
        if self.hidden_size % self.n_head:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by n_head ({self.n_head})")


class BertEmbeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_id)
        self.position = nn.Embedding(c.max_position, c.hidden_size)
        self.token_type = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        # one segment: every token has type 0
        x = self.word(input_ids) + self.position(pos) + self.token_type.weight[0]  # (B, T, C)
        return self.drop(self.norm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.n_head = c.n_head
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        self.dropout = c.dropout

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        heads = (B, T, self.n_head, C // self.n_head)
        q, k, v = (lin(x).view(heads).transpose(1, 2) for lin in (self.query, self.key, self.value))
        # q, k, v: (B, H, T, Dh)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B, H, T, Dh)
        return y.transpose(1, 2).reshape(B, T, C)


class BertLayer(nn.Module):
    """x = LN(x + W_O MHA(x)); x = LN(x + W_2 GELU(W_1 x))."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = BertSelfAttention(c)
        self.attn_out = nn.Linear(c.hidden_size, c.hidden_size)
        self.attn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.ffn_in = nn.Linear(c.hidden_size, c.intermediate_size)
        self.ffn_out = nn.Linear(c.intermediate_size, c.hidden_size)
        self.ffn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.drop(self.attn_out(self.attention(x, bias))))
        return self.ffn_norm(x + self.drop(self.ffn_out(F.gelu(self.ffn_in(x)))))  # (B, T, C)


class ClassifierHead(nn.Module):
    """Pooled sentence state (B, C) -> logits (B, K)."""

    def __init__(self, hidden: int, num_classes: int, head_hidden: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if head_hidden:
            layers += [nn.Linear(hidden, head_hidden), nn.GELU(), nn.Dropout(dropout)]
            hidden = head_hidden
        layers.append(nn.Linear(hidden, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.layers(pooled)


class BertClassifier(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embeddings = BertEmbeddings(c)
        self.layers = nn.ModuleList(BertLayer(c) for _ in range(c.n_layer))
        self.head = ClassifierHead(c.hidden_size, c.num_classes, c.head_hidden, c.dropout)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states (B, T, C)."""
        torch._assert(input_ids.dim() == 2, "input_ids must be (B, T)")
        torch._assert(attention_mask.dim() == 2, "attention_mask must be (B, T)")
        torch._assert(input_ids.shape[1] <= self.config.max_position, "sequence longer than max_position")
        x = self.embeddings(input_ids)  # (B, T, C)
        bias = padding_bias(attention_mask, x.dtype)  # (B, 1, 1, T)
        recompute = self.config.grad_checkpoint and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            x = checkpoint(layer, x, bias, use_reentrant=False) if recompute else layer(x, bias)
        return x

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embedding: masked mean of the token states -> (B, C)."""
        return masked_mean(self.encode(input_ids, attention_mask), attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))  # (B, K)


@register_model("bert")
def bert(**config: object) -> BertClassifier:
    return BertClassifier(BertConfig(**config))  # type: ignore[arg-type]
