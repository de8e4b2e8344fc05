"""``max_seconds``: a wall-clock budget ends every training loop, and the lr schedule ends with it."""

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from deepserve.training.budget import Budget
from deepserve.training.checkpoint import load_checkpoint
from deepserve.training.config import TrainConfig
from deepserve.training.loop import Batch, fit
from deepserve.training.optim import Schedule
from deepserve.training.recipes import run_recipe
from deepserve.training.train import main


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_fraction_and_expiry() -> None:
    clock = FakeClock()
    budget, unlimited = Budget(10.0, clock), Budget(None, clock)
    clock.now = 2.5
    assert budget.fraction() == pytest.approx(0.25) and not budget.expired()
    clock.now = 12.0
    assert budget.fraction() == 1.0 and budget.expired()
    assert unlimited.fraction() == 0.0 and not unlimited.expired()


@pytest.mark.parametrize("scheduler", ["warmup-cosine", "cosine"])
def test_schedule_follows_the_budget_when_time_runs_out_first(scheduler: str) -> None:
    clock = FakeClock()
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cfg = TrainConfig(scheduler=scheduler, warmup_frac=0.1)  # type: ignore[arg-type]
    sched = Schedule(opt, cfg, total_steps=1000, budget=Budget(10.0, clock))
    lrs = []
    for i in range(20):  # 20 of 1000 nominal steps, but each takes half a second of a 10 s budget
        clock.now = 0.5 * (i + 1)
        opt.step()
        sched.after_step()
        lrs.append(sched.lr)
    assert max(lrs) == pytest.approx(1.0, abs=0.02)  # warmed up within the first 10 % of the time
    assert lrs[-1] <= 0.05 + 1e-6  # at the floor when the budget is spent
    assert lrs[-1] < lrs[10] < lrs[3]


def test_fit_stops_when_the_budget_is_spent() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    data = TensorDataset(x, x.sum(1, keepdim=True))

    def slow_mse(model: nn.Module, batch: Batch) -> torch.Tensor:
        time.sleep(0.02)
        return F.mse_loss(model(batch[0]), batch[1])

    cfg = TrainConfig(epochs=50, batch_size=8, max_seconds=0.3, patience=None)
    start = time.perf_counter()
    result = fit(
        nn.Linear(3, 1),
        DataLoader(data, batch_size=8),
        DataLoader(data, batch_size=64),
        slow_mse,
        cfg,
        device=torch.device("cpu"),
        progress=False,
    )
    assert result.out_of_time and 0 < result.steps < 50 * 8
    assert time.perf_counter() - start < 5.0  # 400 nominal steps would take 8 s
    unlimited = fit(
        nn.Linear(3, 1),
        DataLoader(data, batch_size=8),
        DataLoader(data, batch_size=64),
        slow_mse,
        TrainConfig(epochs=1, batch_size=8, patience=None),
        device=torch.device("cpu"),
        progress=False,
    )
    assert not unlimited.out_of_time and unlimited.steps == 8


@pytest.mark.parametrize("name", ["digits-dcgan", "digits-vae"])
def test_generative_recipes_honour_the_budget(name: str, tmp_path: Path) -> None:
    run_recipe(name, tmp_path, quick=True, max_seconds=1e-6)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["out_of_time"] is True and report["steps"] == 1 and report["history"]


def test_cli_max_seconds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["tabular-mlp", "--quick", "--out", str(tmp_path), "--threads", "1", "--no-progress"]
    assert main([*argv, "--max-seconds", "0"]) == 2
    assert "--max-seconds must be positive" in capsys.readouterr().err
    assert main([*argv, "--max-seconds", "1e-6"]) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["out_of_time"] is True and report["steps"] == 1
    assert load_checkpoint(tmp_path / "checkpoint.pt").meta["train_config"]["max_seconds"] == 1e-6
