import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from deepserve.training.config import SCHEDULERS, TrainConfig
from deepserve.training.loop import Batch, fit


def mse(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    return F.mse_loss(model(x), y)


def linear_data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    return TensorDataset(x, x @ torch.arange(1.0, 6.0).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g))


def train_linear(batch_size: int, accum: int) -> nn.Linear:
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    data = linear_data()
    cfg = TrainConfig(
        epochs=3,
        batch_size=batch_size,
        grad_accum=accum,
        optimizer="sgd",
        momentum=0.0,
        weight_decay=0.0,
        lr=0.05,
        scheduler="none",
        grad_clip=None,
        patience=None,
    )
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    fit(model, loader, DataLoader(data, batch_size=64), mse, cfg, device=torch.device("cpu"), progress=False)
    return model


def test_grad_accumulation_equals_bigger_batch() -> None:
    big, accumulated = train_linear(32, 1), train_linear(8, 4)
    torch.testing.assert_close(accumulated.weight, big.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(accumulated.bias, big.bias, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(train_linear(8, 1).weight, big.weight)  # without accumulation it differs


def test_early_stopping_restores_best_weights() -> None:
    torch.manual_seed(0)
    data = linear_data()
    model = nn.Linear(5, 1)
    snapshots: list[dict[str, torch.Tensor]] = []

    def val_metric(m: nn.Module) -> dict[str, float]:
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {}

    # a huge lr makes the val loss blow up after the first epochs, so training stops early
    cfg = TrainConfig(
        epochs=30,
        batch_size=8,
        lr=0.9,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=0.0,
        scheduler="none",
        grad_clip=None,
        patience=2,
        min_patience_steps=0,  # the epoch rule alone
    )
    loader = DataLoader(data, batch_size=8)
    result = fit(
        model,
        loader,
        DataLoader(data, batch_size=64),
        mse,
        cfg,
        device=torch.device("cpu"),
        val_metric=val_metric,
        progress=False,
    )
    losses = [row["val_loss"] for row in result.history]
    assert result.stopped_early and len(losses) == result.best_epoch + 2
    assert result.best_val_loss == min(losses) and losses[-1] > result.best_val_loss
    torch.testing.assert_close(model.state_dict(), snapshots[result.best_epoch - 1])


def test_early_stopping_waits_enough_steps_on_tiny_data() -> None:
    """One step an epoch: `patience` epochs alone would stop after a handful of steps."""
    torch.manual_seed(0)
    data = linear_data(8)
    cfg = TrainConfig(epochs=200, batch_size=8, lr=0.0, scheduler="none", patience=2, min_patience_steps=20)
    loader = DataLoader(data, batch_size=8)  # lr 0: the val loss never improves after epoch 1
    result = fit(nn.Linear(5, 1), loader, loader, mse, cfg, device=torch.device("cpu"), progress=False)
    assert result.stopped_early and result.best_epoch == 1
    assert result.steps == 1 + 20 and len(result.history) == 21, (result.steps, len(result.history))


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_every_optimizer_and_schedule_reduces_the_loss(optimizer: str, scheduler: str) -> None:
    torch.manual_seed(0)
    data = linear_data(128)
    model = nn.Linear(5, 1)
    lr = 0.05 if optimizer == "sgd" else 0.3  # adaptive methods move each weight by about lr per step
    cfg = TrainConfig(
        epochs=6,
        batch_size=16,
        lr=lr,
        optimizer=optimizer,
        scheduler=scheduler,  # type: ignore[arg-type]
        patience=None,
    )
    loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    result = fit(
        model, loader, DataLoader(data, batch_size=128), mse, cfg, device=torch.device("cpu"), progress=False
    )
    first = F.mse_loss(nn.Linear(5, 1)(data.tensors[0]), data.tensors[1]).item()
    assert result.best_val_loss < 0.5 * first
    assert result.steps == 6 * 8


def test_warmup_cosine_rises_then_falls() -> None:
    from deepserve.training.optim import Schedule

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = Schedule(opt, TrainConfig(scheduler="warmup-cosine", warmup_frac=0.1), total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.lr)
        opt.step()
        sched.after_step()
    assert lrs[0] < lrs[9] == pytest.approx(1.0)
    assert lrs[50] < lrs[10] and lrs[99] < 0.1


def test_max_steps_stops_training() -> None:
    data = linear_data()
    cfg = TrainConfig(epochs=5, batch_size=8, max_steps=3, patience=None)
    result = fit(
        nn.Linear(5, 1),
        DataLoader(data, batch_size=8),
        DataLoader(data, batch_size=64),
        mse,
        cfg,
        device=torch.device("cpu"),
        progress=False,
    )
    assert result.steps == 3 and len(result.history) == 1


def test_bf16_autocast_on_cpu_with_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    data = linear_data(128)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.02, bf16=True, patience=None)
    result = fit(
        model,
        DataLoader(data, batch_size=16),
        DataLoader(data, batch_size=128),
        mse,
        cfg,
        device=torch.device("cpu"),
        progress=True,
    )
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    assert "epoch=4" in capsys.readouterr().err  # the per-epoch line written under the bar
