"""The guide's evaluation metrics, computed with torch (sklearn only cross-checks them in tests).

Classification: accuracy, macro precision / recall / F1, confusion matrix, binary AUC-ROC.
Regression: MSE, MAE, RMSE, R2. Language models: loss, perplexity, bits per byte.
VAE: reconstruction (binary cross-entropy) and KL divergence to N(0, I).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F


def confusion_matrix(y_true: Tensor, y_pred: Tensor, num_classes: int) -> Tensor:
    """``cm[i, j]`` = number of samples of true class i predicted as j."""
    idx = y_true.long() * num_classes + y_pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(y_true: Tensor, y_pred: Tensor) -> float:
    return float((y_true == y_pred).float().mean())


def precision_recall_f1(y_true: Tensor, y_pred: Tensor, num_classes: int) -> tuple[float, float, float]:
    """Macro averages over the classes present in y_true or y_pred (0 where undefined, as sklearn)."""
    cm = confusion_matrix(y_true, y_pred, num_classes).double()
    tp = cm.diag()
    predicted, actual = cm.sum(0), cm.sum(1)
    present = (predicted + actual) > 0
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    return tuple(float(m[present].mean()) for m in (precision, recall, f1))  # type: ignore[return-value]


def roc_auc(y_true: Tensor, scores: Tensor) -> float:
    """Binary AUC-ROC as the Mann-Whitney U statistic (ties count one half)."""
    y = y_true.long().flatten()
    s = scores.double().flatten()
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=s.dtype)
    # average the ranks of tied scores
    uniq, inverse = torch.unique(s, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=s.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=s.dtype).index_add_(0, inverse, torch.ones_like(s))
    ranks = (sums / counts)[inverse]
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def classification_metrics(logits: Tensor, y_true: Tensor) -> dict[str, object]:
    num_classes = logits.shape[1]
    y_pred = logits.argmax(1)
    precision, recall, f1 = precision_recall_f1(y_true, y_pred, num_classes)
    out: dict[str, object] = {
        "accuracy": accuracy(y_true, y_pred),
        "precision_macro": precision,
        "recall_macro": recall,
        "f1_macro": f1,
        "confusion_matrix": confusion_matrix(y_true, y_pred, num_classes).tolist(),
    }
    if num_classes == 2:
        out["auc_roc"] = roc_auc(y_true, torch.softmax(logits.double(), 1)[:, 1])
    return out


def regression_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """MSE / MAE / RMSE over all outputs; R2 averaged uniformly over output columns (as sklearn)."""
    pred, target = pred.double().reshape(len(pred), -1), target.double().reshape(len(target), -1)
    err = pred - target
    mse = float(err.pow(2).mean())
    ss_res = err.pow(2).sum(0)
    ss_tot = (target - target.mean(0)).pow(2).sum(0)
    r2 = float((1 - ss_res / ss_tot).mean())
    return {"mse": mse, "mae": float(err.abs().mean()), "rmse": math.sqrt(mse), "r2": r2}


def language_model_metrics(loss_nats: float) -> dict[str, float]:
    """Per-token cross-entropy in nats -> perplexity and bits per token (bits per byte needs the text's
    bytes: ``bpe.bits_per_byte``)."""
    return {"loss": loss_nats, "perplexity": math.exp(loss_nats), "bits_per_token": loss_nats / math.log(2)}


def unigram_cross_entropy(train_ids: Tensor, eval_ids: Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of ``eval_ids`` under add-one-smoothed train token frequencies.

    The baseline a language model must beat: it knows how common each byte is, nothing more.
    """
    counts = torch.bincount(train_ids.long(), minlength=vocab_size).double() + 1.0
    log_p = torch.log(counts / counts.sum())
    return float(-log_p[eval_ids.long()].mean())


def vae_terms(recon: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample reconstruction (BCE summed over pixels) and KL(q(z|x) || N(0, I)), both batch means."""
    rec = F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), x, reduction="sum") / len(x)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
    return rec, kl
