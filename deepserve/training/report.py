"""Per-run outputs next to the checkpoint: metrics.json, metrics.csv (one row per epoch), steps.csv
(gradient norms per optimizer step and layer group), curves.png."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import torch


def _plain(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, tensors become lists."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def write_metrics(
    out_dir: Path,
    summary: dict[str, Any],
    history: list[dict[str, float]],
    steps: list[dict[str, float]] | None = None,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**summary, "history": history}
    (out_dir / "metrics.json").write_text(json.dumps(_plain(payload), indent=2) + "\n", encoding="utf-8")
    if history:
        _write_csv(out_dir / "metrics.csv", history)
    if steps:
        _write_csv(out_dir / "steps.csv", steps)


def _grad_panel(ax: Any, history: list[dict[str, float]], steps: list[dict[str, float]] | None) -> None:
    """Gradient norms per step (per epoch when no step rows), total and per layer group, log scale."""
    rows, x = (steps, "step") if steps else (history, "epoch")
    names = dict.fromkeys(k for r in rows for k in r if k.startswith("grad_norm"))
    keys = [k for k in names if k != "grad_norm_max"]
    for key in keys:
        points = [(r[x], r[key]) for r in rows if key in r and r[key] > 0 and math.isfinite(r[key])]
        if points:
            total = key == "grad_norm"
            ax.plot(*zip(*points, strict=True), label="total" if total else key.removeprefix("grad_norm."),
                    linewidth=1.5 if total else 0.8, color="black" if total else None)  # fmt: skip
    ax.set_yscale("log" if ax.lines else "linear")
    ax.set_xlabel(x)


def plot_curves(
    out_dir: Path, history: list[dict[str, float]], title: str, steps: list[dict[str, float]] | None = None
) -> Path:
    """Losses, every other per-epoch metric, and the gradient norms (when recorded), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = out_dir / "curves.png"
    epochs = [row["epoch"] for row in history]
    losses = [k for k in history[0] if "loss" in k] if history else []
    skip = ("epoch", "lr", "seconds")
    others = [k for k in history[0] if k not in losses and k not in skip and not k.startswith("grad_norm")]
    grads = any(k.startswith("grad_norm") for row in history for k in row) or bool(steps)
    fig, axes = plt.subplots(1, 3 if grads else 2, figsize=(15 if grads else 10, 4))
    for key in losses:
        axes[0].plot(epochs, [row.get(key, math.nan) for row in history], marker=".", label=key)
    for key in others:
        axes[1].plot(epochs, [row.get(key, math.nan) for row in history], marker=".", label=key)
    if grads:
        _grad_panel(axes[2], history, steps)
    for ax, name in zip(axes, ("loss", "metric", "gradient norm"), strict=False):
        ax.set_xlabel(ax.get_xlabel() or "epoch")
        ax.set_ylabel(name)
        if ax.lines:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def save_image_grid(path: Path, images: torch.Tensor, nrow: int = 8) -> Path:
    """(N, C, H, W) images in [0, 1] -> one PNG grid (generated samples of the VAE / GAN)."""
    from PIL import Image

    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = torch.zeros(c, rows * (h + 1), nrow * (w + 1))
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[:, r * (h + 1) : r * (h + 1) + h, k * (w + 1) : k * (w + 1) + w] = images[i]
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).squeeze(-1).numpy()
    scale = max(1, 256 // grid.shape[-1])
    img = Image.fromarray(array)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
    return path
