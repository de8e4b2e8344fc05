import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from deepserve.training import metrics


@pytest.fixture
def labels() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 4, (200,), generator=g)
    noise = torch.randint(0, 4, (200,), generator=g)
    y_pred = torch.where(torch.rand(200, generator=g) < 0.6, y_true, noise)
    return y_true, y_pred


def test_classification_metrics_match_sklearn(labels: tuple[torch.Tensor, torch.Tensor]) -> None:
    y_true, y_pred = labels
    p, r, f1, _ = skm.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    ours = metrics.precision_recall_f1(y_true, y_pred, 4)
    assert ours == pytest.approx((p, r, f1), abs=1e-9)
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    cm = metrics.confusion_matrix(y_true, y_pred, 4)
    np.testing.assert_array_equal(cm.numpy(), skm.confusion_matrix(y_true, y_pred, labels=range(4)))


def test_macro_f1_ignores_absent_classes_like_sklearn() -> None:
    y_true, y_pred = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    ours = metrics.precision_recall_f1(y_true, y_pred, 5)  # classes 2..4 never occur
    p, r, f1, _ = skm.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert ours == pytest.approx((p, r, f1))


def test_auc_matches_sklearn_with_ties() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (300,), generator=g)
    scores = (y.float() + torch.randn(300, generator=g)).round(decimals=1)  # many ties
    assert metrics.roc_auc(y, scores) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)
    assert math.isnan(metrics.roc_auc(torch.ones(5), torch.rand(5)))


def test_classification_report_has_auc_only_for_binary() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5], [0.2, 0.1]])
    out = metrics.classification_metrics(logits, torch.tensor([0, 1, 1, 0]))
    assert out["accuracy"] == 0.75
    assert out["auc_roc"] == pytest.approx(skm.roc_auc_score([0, 1, 1, 0], torch.softmax(logits, 1)[:, 1]))
    assert "auc_roc" not in metrics.classification_metrics(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))


@pytest.mark.parametrize("outputs", [1, 3])
def test_regression_metrics_match_sklearn(outputs: int) -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.randn(100, outputs, generator=g) * 5 + 3
    pred = target + torch.randn(100, outputs, generator=g)
    ours = metrics.regression_metrics(pred, target)
    assert ours["mse"] == pytest.approx(skm.mean_squared_error(target, pred))
    assert ours["mae"] == pytest.approx(skm.mean_absolute_error(target, pred))
    assert ours["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(target, pred)))
    assert ours["r2"] == pytest.approx(skm.r2_score(target, pred))


def test_language_model_metrics_and_unigram_baseline() -> None:
    m = metrics.language_model_metrics(math.log(4))
    assert m["perplexity"] == pytest.approx(4.0)
    assert m["bits_per_token"] == pytest.approx(2.0)
    # two bytes equally often, add-one smoothing over 256 ids: p = 5001 / (10000 + 256)
    train, val = torch.tensor([97, 98] * 5000), torch.tensor([97, 98, 98, 97])
    assert metrics.unigram_cross_entropy(train, val, 256) == pytest.approx(-math.log(5001 / 10256))


def test_vae_terms_match_closed_form() -> None:
    x = torch.rand(4, 1, 2, 2).round()
    recon = torch.full_like(x, 0.5)
    mu, logvar = torch.zeros(4, 3), torch.zeros(4, 3)
    rec, kl = metrics.vae_terms(recon, x, mu, logvar)
    assert float(rec) == pytest.approx(4 * math.log(2), rel=1e-5)  # 4 pixels, each costs log 2
    assert float(kl) == pytest.approx(0.0)
    _, kl = metrics.vae_terms(recon, x, torch.ones(4, 3), logvar)
    assert float(kl) == pytest.approx(1.5)  # 0.5 * sum(mu^2) over 3 dims
