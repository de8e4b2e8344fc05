"""Generative jobs: the VAE (embedding + image generation) and the DCGAN (image generation).

The VAE's loss (reconstruction BCE + beta * KL) plugs into ``loop.fit``, so it gets early
stopping and the lr schedule for free. The GAN alternates discriminator and generator steps
(the guide's chapter 20 loop) and keeps only the generator in the checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from deepserve.models import build_model
from deepserve.models.autoencoder import vae_loss
from deepserve.training import distributed as ddp
from deepserve.training.budget import Budget
from deepserve.training.config import seed_everything
from deepserve.training.job import Job, finish
from deepserve.training.loop import Batch, LossFn, fit, show_progress
from deepserve.training.metrics import vae_terms
from deepserve.training.report import save_image_grid


def vae_objective(beta: float) -> LossFn:
    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        x = batch[0]  # (B, C, H, W) in [0, 1]
        recon, mu, logvar = model(x)
        return vae_loss(recon, x, mu, logvar, beta)[0]

    return loss_fn


@torch.no_grad()
def vae_metrics(model: nn.Module, job: Job) -> dict[str, float]:
    """Test reconstruction / KL per image, and 1-nearest-neighbour accuracy of the latent means."""
    model.eval()
    x_tr, y_tr = job.data.train.tensors
    x_te, y_te = job.data.test.tensors
    recon, mu, logvar = model(x_te)
    rec, kl = vae_terms(recon, x_te, mu, logvar)
    mu_tr = model(x_tr)[1]
    nearest = torch.cdist(mu, mu_tr).argmin(1)
    return {
        "reconstruction_bce": float(rec),
        "kl": float(kl),
        "elbo_loss": float(rec + kl),
        "latent_knn_accuracy": float((y_tr[nearest] == y_te).float().mean()),
    }


def image_generation_meta(prep: dict[str, Any], latent_dim: int) -> dict[str, Any]:
    return {"image_channels": prep["channels"], "image_height": prep["height"], "image_width": prep["width"]}


def train_vae(job: Job, ctx: ddp.DistContext | None = None) -> Path:
    ctx = ctx or ddp.DistContext()
    generator = seed_everything(job.cfg.seed)
    device = ddp.pick_device(ctx)
    model = build_model(job.model_name, **job.model_config).to(device)
    train = ddp.train_loader(job.data.train, job.cfg.batch_size, ctx, generator)
    val = DataLoader(job.data.val, batch_size=256)
    beta = float(job.model_config.get("beta", 1.0))
    result = fit(
        ddp.wrap(model, ctx, device),
        train,
        val,
        vae_objective(beta),
        job.cfg,
        device=device,
        ctx=ctx,
        progress=job.progress,
        trace_path=job.trace_path,
    )
    if ctx.is_main:
        model.cpu()
        metrics = vae_metrics(model, job)
        latent_dim = int(job.model_config["latent_dim"])
        job.meta |= {
            "latent_dim": latent_dim,
            "generation": image_generation_meta(job.data.preprocessing, latent_dim),
            "decoder_preprocessing": {"kind": "latent", "latent_dim": latent_dim},
            "decoder_output_range": [0.0, 1.0],
        }
        finish(job, model, metrics, result, task="embedding")
        with torch.no_grad():
            z = torch.randn(64, latent_dim, generator=torch.Generator().manual_seed(job.cfg.seed))
            save_image_grid(job.out_dir / "samples.png", model.decode(z))
    return job.checkpoint_path


def _gan_step(
    g: nn.Module,
    d: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: Tensor,
    latent_dim: int,
) -> dict[str, float]:
    b = len(real)
    z = torch.randn(b, latent_dim, device=real.device)
    fake = g(z)
    # discriminator: real -> 0.9 (one-sided label smoothing), fake -> 0
    d_real, d_fake = d(real).reshape(b), d(fake.detach()).reshape(b)
    d_loss = F.binary_cross_entropy_with_logits(
        d_real, torch.full_like(d_real, 0.9)
    ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    # generator: make the discriminator call the fakes real (non-saturating loss)
    g_out = d(fake).reshape(b)
    g_loss = F.binary_cross_entropy_with_logits(g_out, torch.ones_like(g_out))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    return {
        "d_loss": d_loss.item(),
        "g_loss": g_loss.item(),
        "d_real": torch.sigmoid(d_real.detach()).mean().item(),
        "d_fake": torch.sigmoid(d_fake.detach()).mean().item(),
    }


@torch.no_grad()
def gan_metrics(g: nn.Module, job: Job, latent_dim: int, seed: int) -> dict[str, float]:
    """Cheap fidelity checks: generated vs real test images, mean image and pixel spread, in [0, 1]."""
    g.eval()
    real = (job.data.test.tensors[0] + 1) / 2
    z = torch.randn(len(real), latent_dim, generator=torch.Generator().manual_seed(seed))
    fake = (g(z) + 1) / 2
    return {
        "mean_image_mse": float((fake.mean(0) - real.mean(0)).pow(2).mean()),
        "pixel_std_generated": float(fake.std()),
        "pixel_std_real": float(real.std()),
        "nearest_real_mse": float(
            torch.cdist(fake.flatten(1), real.flatten(1)).min(1).values.pow(2).mean() / real[0].numel()
        ),
    }


def train_gan(job: Job, ctx: ddp.DistContext | None = None) -> Path:
    """DCGAN on images scaled to [-1, 1] (tanh output); single process."""
    generator = seed_everything(job.cfg.seed)
    cfg, latent_dim = job.cfg, int(job.model_config["latent_dim"])
    g = build_model(job.model_name, **job.model_config)
    d = build_model(str(cfg.extra["discriminator"]), **cfg.extra["discriminator_config"])
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    loader = DataLoader(
        job.data.train, batch_size=cfg.batch_size, shuffle=True, generator=generator, drop_last=True
    )
    history: list[dict[str, float]] = []
    show, steps, budget = show_progress(ddp.DistContext(), job.progress), 0, Budget(cfg.max_seconds)

    def done() -> bool:
        return (cfg.max_steps is not None and steps >= cfg.max_steps) or budget.expired()

    for epoch in range(1, cfg.epochs + 1):
        g.train()
        d.train()
        stats = []
        for real, _ in loader:
            stats.append(_gan_step(g, d, opt_g, opt_d, real, latent_dim))
            steps += 1
            if done():
                break
        row = {"epoch": epoch, **{k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}}
        history.append(row)
        if show:
            print(" ".join(f"{k}={v:.4g}" for k, v in row.items()), file=sys.stderr)
        if done():
            break
    metrics = gan_metrics(g, job, latent_dim, cfg.seed)
    job.meta |= {
        "latent_dim": latent_dim,
        "generation": image_generation_meta(job.data.preprocessing, latent_dim),
        "generator_output_range": [-1.0, 1.0],
    }
    prep_image = job.data.preprocessing
    job.data.preprocessing = {"kind": "latent", "latent_dim": latent_dim}
    summary = {"image": prep_image, "steps": steps, "out_of_time": budget.expired()}
    finish(job, g, metrics, None, history, task="image-generation", extra_summary=summary)
    z = torch.randn(64, latent_dim, generator=torch.Generator().manual_seed(cfg.seed))
    with torch.no_grad():
        save_image_grid(job.out_dir / "samples.png", (g.eval()(z) + 1) / 2)
    return job.checkpoint_path
