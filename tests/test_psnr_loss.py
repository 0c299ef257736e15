"""The PSNR loss (``train.loss_kind: psnr``) with its ε (``train.psnr_eps``): NAFNet's loss, and the
IR-SDE's x0 loss. The ε bounds how much a nearly exact sample (a clean identity pair) weighs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from daclip.engine.config import ConfigError, load_config
from irsde.diffusion.sde import IRSDE
from irsde.training.losses import DataMatchingLoss, PixelLoss, build_loss
from irsde.training.stage import IRTrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _constant_error(b: int, error: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    gt = torch.rand(b, 3, 8, 8) * 0.5
    return gt + torch.tensor(error)[:, None, None, None], gt


@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_the_psnr_loss_is_minus_the_psnr_of_each_sample_with_its_epsilon(eps: float) -> None:
    """For a constant error e the per-sample value is 10 log10(e² + ε): both losses, batch-averaged."""
    out, gt = _constant_error(2, [0.1, 0.01])
    expected = sum(10 * math.log10(e * e + eps) for e in (0.1, 0.01)) / 2
    assert PixelLoss("psnr", eps)(out, gt).item() == pytest.approx(expected, abs=1e-4)
    sde = IRSDE(max_sigma=5, T=20)
    mu = torch.rand_like(gt)
    residual = out - mu  # the residual parametrisation: x̂0 = μ + output
    loss = DataMatchingLoss(sde, "psnr", "residual", psnr_eps=eps)
    assert loss(residual, torch.zeros_like(gt), gt, mu, 20).item() == pytest.approx(expected, abs=1e-4)


def test_epsilon_caps_the_weight_of_a_nearly_exact_sample() -> None:
    """The push (per-pixel gradient, ∝ e / (e² + ε)) on a sample 60 dB right against one 20 dB right:
    about 100x larger with NAFNet's ε = 1e-8, so nearly exact samples (clean identity pairs) dominate;
    about 10x smaller with ε = 1e-3, the order L2 gives them."""
    ratios = {}
    for eps in (1e-8, 1e-3):
        out, gt = _constant_error(2, [1e-3, 0.1])
        out.requires_grad_(True)
        PixelLoss("psnr", eps)(out, gt).backward()
        per_pixel = out.grad.abs().flatten(1).mean(1)  # ∝ e / (e² + ε)
        ratios[eps] = float(per_pixel[0] / per_pixel[1])
    assert ratios[1e-8] > 50, ratios
    assert ratios[1e-3] < 0.2, ratios


def _tiny_config(*overrides: str) -> IRTrainConfig:
    return load_config(
        IRTrainConfig,
        ROOT / "configs/universal_ir_tiny.yml",
        ["data.train_root=", "data.val_root=", *overrides],
    )


def test_psnr_is_only_for_the_x0_loss() -> None:
    sde = IRSDE(max_sigma=5, T=20)
    with pytest.raises(ValueError, match="loss kind 'psnr' is for the x0 loss, not 'ml'"):
        build_loss("auto", sde, "psnr", "noise")
    assert isinstance(build_loss("auto", sde, "psnr", "residual", 1e-3), DataMatchingLoss)
    # The IR-SDE loss named outright, or resolved from the parametrisation (auto): both one-line errors.
    for overrides in (["train.loss=ml"], ["model.prediction=noise"]):
        with pytest.raises(ConfigError, match=r"train.loss_kind: psnr takes the x0 loss .* not 'ml'"):
            _tiny_config(*overrides, "train.loss_kind=psnr")
    with pytest.raises(ConfigError, match=r"train.psnr_eps"):
        _tiny_config("train.psnr_eps=0")
