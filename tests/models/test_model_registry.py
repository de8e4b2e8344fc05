"""Registry rules and config validation across the zoo."""

from __future__ import annotations

import pytest
import torch

from deepserve.models import build_model, list_models, register_model
from deepserve.models.autoencoder import vae_loss
from tests.models.zoo_cases import CASES, Case


def test_duplicate_registration_raises() -> None:
    list_models()  # make sure the zoo is loaded
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(lambda **_: torch.nn.Identity())


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="resnet"):
        build_model("no-such-model")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_unknown_config_key_raises(case: Case) -> None:
    with pytest.raises(TypeError):
        build_model(case.name, **case.config, no_such_option=1)


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("resnet", {"widths": (8, 16), "blocks": (1,)}),
        ("resnet", {"stem": "huge"}),
        ("rnn", {"cell": "lstmx"}),
        ("transformer", {"d_model": 10, "n_head": 4}),
        ("vit", {"image_size": 9, "patch_size": 2}),
        ("gpt", {"d_model": 10, "n_head": 4}),
        ("autoencoder", {"image_size": 10, "hidden": (4, 8)}),
        ("dcgan_generator", {"image_size": 24}),
    ],
)
def test_bad_config_values_raise(name: str, config: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        build_model(name, **config)


def test_resnet18_has_the_resnet18_shape() -> None:
    model = build_model("resnet18", num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's resnet18
    assert model.config.image_size == 224 and model.config.stem == "imagenet"


def test_config_lists_are_accepted_like_tuples() -> None:
    # a checkpoint's config may come back from JSON with lists in place of tuples
    model = build_model("mlp", in_features=4, out_features=2, hidden=[8, 8])
    assert model.config.hidden == (8, 8)


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_dcgan_image_sizes(size: int) -> None:
    gen = build_model("dcgan_generator", latent_dim=8, image_size=size, base=4).eval()
    disc = build_model("dcgan_discriminator", image_size=size, base=4).eval()
    with torch.no_grad():
        images = gen(torch.randn(2, 8))
        assert images.shape == (2, 1, size, size)
        assert images.abs().max() <= 1.0  # tanh
        assert disc(images).shape == (2, 1)


def test_vae_inference_is_deterministic_and_in_unit_range() -> None:
    torch.manual_seed(0)
    model = build_model("vae", image_size=8, latent_dim=4).eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        recon, mu, _ = model(x)
        torch.testing.assert_close(recon, model.decode(model.encode(x)[0]))  # eval: z = mu
        assert recon.min() >= 0.0 and recon.max() <= 1.0
        assert mu.shape == (3, 4)


def test_vae_loss_parts() -> None:
    x = torch.full((2, 1, 2, 2), 0.5)
    zeros = torch.zeros(2, 3)
    loss, recon_loss, kl = vae_loss(x, x, zeros, zeros, beta=2.0)
    assert kl.item() == pytest.approx(0.0)  # q(z|x) = N(0, I) = the prior
    assert recon_loss.item() == pytest.approx(4 * torch.log(torch.tensor(2.0)).item(), rel=1e-4)
    _, _, kl_shifted = vae_loss(x, x, torch.ones(2, 3), zeros, beta=2.0)
    assert kl_shifted.item() == pytest.approx(1.5)  # 0.5 * sum(mu^2) = 0.5 * 3
    assert loss.item() == pytest.approx(recon_loss.item() + 2.0 * kl.item())
