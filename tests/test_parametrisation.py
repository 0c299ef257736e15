"""Prediction parametrisations, x̂_0 clamping and the samplers, proven with oracle networks.

An oracle knows x_0 and returns what a perfect network of the given parametrisation would output. With it,
every sampler must land on x_0; the deterministic ``mr`` solver must also visit the exact marginal path
(same noise ε at every timestep) and the posterior sampler must draw every intermediate state from the
true marginal. A wrong sign, a wrong Θ index or an off-by-one in the timestep grid breaks one of these.
"""

from __future__ import annotations

import math

import pytest
import torch

from irsde.diffusion.samplers import (
    GRIDS,
    SAMPLERS,
    MRSolver,
    PosteriorSampler,
    build_sampler,
    make_timesteps,
    sample,
)
from irsde.diffusion.sde import IRSDE, PREDICTIONS
from irsde.inference.pipeline import RestorationPipeline, default_clamp_x0
from irsde.models.unet import ConditionalUNet
from irsde.training.losses import DataMatchingLoss, NoiseMatchingLoss, build_loss, default_loss

T = 20


def _pair(seed: int, shape=(2, 3, 8, 6), dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    gt = torch.rand(shape, generator=generator, dtype=dtype)
    lq = (0.6 * gt + 0.3 * torch.rand(shape, generator=generator, dtype=dtype)).clamp(0, 1)
    return gt, lq


class Oracle:
    """A perfect network of one parametrisation for a known x_0; records every call."""

    def __init__(self, sde: IRSDE, gt: torch.Tensor, prediction: str) -> None:
        self.sde, self.gt, self.prediction = sde, gt, prediction
        self.calls: list[tuple[torch.Tensor, int]] = []

    def __call__(self, xt: torch.Tensor, mu: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_int = int(t[0])
        self.calls.append((xt.clone(), t_int))
        noise = self.sde.noise_from_x0(xt, self.gt, mu, t_int)
        return self.sde.model_target(self.gt, mu, noise, self.prediction)


def test_conversions_are_mutually_inverse():
    sde = IRSDE(T=T, dtype=torch.float64)
    gt, lq = _pair(0)
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in (1, 7, T):
        xt = sde.add_noise(gt, lq, t, noise)
        for prediction in PREDICTIONS:
            target = sde.model_target(gt, lq, noise, prediction)
            torch.testing.assert_close(sde.predict_x0(target, xt, lq, t, prediction), gt)
            torch.testing.assert_close(sde.predict_noise(target, xt, lq, t, prediction), noise)
        # α_t is exp(−Θ_t·dt): the marginal mean is μ + α_t (x_0 − μ).
        torch.testing.assert_close(sde.marginal_mean(gt, lq, t), lq + sde.alpha(t) * (gt - lq))
    assert float(sde.alpha(0)) == 1.0 and abs(float(sde.alpha(T)) - sde.eps) < 1e-12
    with pytest.raises(ValueError, match="valid choices: noise, x0, residual"):
        sde.predict_x0(gt, gt, lq, 1, "v")


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("num_steps", [1, 2, 3, 7, T])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("grid", GRIDS)
def test_every_sampler_lands_on_x0_with_an_oracle(name, num_steps, prediction, clamp, grid):
    sde = IRSDE(T=T, dtype=torch.float64)
    gt, lq = _pair(2)
    oracle = Oracle(sde, gt, prediction)
    out = sample(
        oracle,
        lq,
        sde,
        name,
        num_steps,
        generator=torch.Generator().manual_seed(3),
        prediction=prediction,
        clamp_x0=clamp,
        grid=grid,
    )
    # NFE = num_steps, at the grid's timesteps.
    assert [t for _, t in oracle.calls] == make_timesteps(T, num_steps, grid, sde=sde).tolist()
    if name in ("posterior", "mr", "mr-sde"):
        # The last step returns x̂_0 (posterior: up to the clamped std λ·sqrt(1e-20·dt), ~1e-11).
        torch.testing.assert_close(out, gt, rtol=0, atol=1e-9)
    elif num_steps == T:
        # Euler steps of the SDE/ODE are first order in the step: much closer to x_0 than the LQ image is
        # at full T, not exact.
        assert (out - gt).abs().mean() < 0.25 * (lq - gt).abs().mean()


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("num_steps", [2, 5, T])
def test_mr_solver_follows_the_exact_marginal_path(prediction, num_steps, order):
    """y_s = α_s(x_0 − μ) + σ̄_s·ε with the ε of x_T at every visited timestep, for any grid."""
    sde = IRSDE(T=T, dtype=torch.float64)
    gt, lq = _pair(4)
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x_T = sde.add_noise(gt, lq, T, noise)
    oracle = Oracle(sde, gt, prediction)
    solver = MRSolver(sde, prediction=prediction, order=order)
    solver.set_timesteps(num_steps)
    sample(oracle, lq, sde, solver, x_T=x_T)
    assert [t for _, t in oracle.calls] == solver.timesteps.tolist()
    for xt, t in oracle.calls:
        torch.testing.assert_close(xt, sde.add_noise(gt, lq, t, noise), rtol=0, atol=1e-12)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("num_steps", [4, T])
def test_posterior_sampler_draws_from_the_true_marginals(prediction, num_steps):
    """With an oracle, every state the posterior sampler visits is distributed as the forward marginal."""
    sde = IRSDE(T=T, dtype=torch.float64)
    gt, lq = _pair(6, shape=(1, 3, 64, 64))
    oracle = Oracle(sde, gt, prediction)
    sample(
        oracle,
        lq,
        sde,
        "posterior",
        num_steps,
        generator=torch.Generator().manual_seed(7),
        prediction=prediction,
    )
    n = gt.numel()
    for xt, t in oracle.calls:
        z = (xt - sde.marginal_mean(gt, lq, t)) / sde.marginal_std(t)
        assert abs(float(z.mean())) < 5 / math.sqrt(n), t
        assert abs(float(z.std()) - 1) < 5 / math.sqrt(2 * n), t


def test_clamping_bounds_x0_and_keeps_a_correct_prediction():
    sde = IRSDE(T=T, dtype=torch.float64)
    gt, lq = _pair(8)
    # A network that is right except for a large overshoot on some pixels.
    overshoot = torch.zeros_like(gt)
    overshoot[..., :2, :] = 3.0

    def wild(xt, mu, t):
        return gt + overshoot

    for name in ("posterior", "mr"):
        free = sample(wild, lq, sde, name, 5, generator=torch.Generator().manual_seed(0), prediction="x0")
        clamped = sample(
            wild, lq, sde, name, 5, generator=torch.Generator().manual_seed(0), prediction="x0", clamp_x0=True
        )
        assert free.max() > 2.5  # the overshoot goes through
        assert clamped.min() >= -1e-9 and clamped.max() <= 1 + 1e-9
        torch.testing.assert_close(clamped[..., 2:, :], gt[..., 2:, :], rtol=0, atol=1e-9)
    # The clamped x̂_0 and the ε̂ handed to the step are consistent: ε̂ is recomputed from the clamp.
    solver = PosteriorSampler(sde, prediction="noise", clamp_x0=True)
    xt = sde.add_noise(
        gt, lq, 10, torch.randn(gt.shape, generator=torch.Generator().manual_seed(1), dtype=gt.dtype)
    )
    big_noise = torch.full_like(gt, -50.0)
    x0_pred, noise_pred = solver.predict(big_noise, 10, xt, lq)
    assert x0_pred.min() >= 0 and x0_pred.max() <= 1
    torch.testing.assert_close(sde.x0_from_noise(xt, lq, 10, noise_pred), x0_pred)


def test_noise_without_clamp_is_the_official_path():
    """The paper's setting steps with the network's noise itself (exact to the released weights)."""
    sde = IRSDE(T=T)
    gt, lq = _pair(9, dtype=torch.float32)
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(2))
    xt = sde.add_noise(gt, lq, 5, noise)
    x0_pred, noise_pred = PosteriorSampler(sde).predict(noise, 5, xt, lq)
    assert noise_pred is noise
    assert torch.equal(x0_pred, sde.x0_from_noise(xt, lq, 5, noise))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_data_and_noise_losses_vanish_for_a_perfect_network(prediction):
    sde = IRSDE(T=T, dtype=torch.float64)
    gt, lq = _pair(10)
    t = torch.tensor([1, 20])
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xt = sde.add_noise(gt, lq, t, noise)
    target = sde.model_target(gt, lq, noise, prediction)
    assert float(DataMatchingLoss(sde, prediction=prediction)(target, xt, gt, lq, t)) < 1e-10
    assert float(NoiseMatchingLoss(sde=sde, prediction=prediction)(target, xt, gt, lq, t, noise)) < 1e-8
    wrong = target + 0.1
    assert float(build_loss("x0", sde, prediction=prediction)(wrong, xt, gt, lq, t)) > 1e-3


def test_defaults_per_parametrisation():
    assert default_loss("noise") == "ml" and default_loss("x0") == "x0" and default_loss("residual") == "x0"
    assert not default_clamp_x0("noise") and default_clamp_x0("x0") and default_clamp_x0("residual")
    sde = IRSDE(T=T)
    sampler = build_sampler("mr", sde, prediction="residual", clamp_x0=True)
    assert sampler.prediction == "residual" and sampler.clamp_x0


def test_residual_unet_starts_as_the_identity_restorer():
    unet = ConditionalUNet(
        nf=8,
        ch_mult=(1, 2),
        context_dim=None,
        use_degra_context=False,
        use_image_context=False,
        prediction="residual",
    )
    sde = IRSDE(T=T)
    gt, lq = _pair(11, shape=(1, 3, 16, 16), dtype=torch.float32)
    pipeline = RestorationPipeline(unet, sde, sampler="posterior", num_steps=4)
    assert pipeline.prediction == "residual" and pipeline.clamp_x0
    out = pipeline(lq, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, lq, rtol=0, atol=1e-6)
    noise_unet = ConditionalUNet(
        nf=8, ch_mult=(1, 2), context_dim=None, use_degra_context=False, use_image_context=False
    )
    assert noise_unet.prediction == "noise" and noise_unet.final_conv.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="prediction must be one of"):
        ConditionalUNet(
            nf=8,
            ch_mult=(1, 2),
            context_dim=None,
            use_degra_context=False,
            use_image_context=False,
            prediction="v",
        )


@pytest.mark.parametrize("order", [1, 2])
def test_mr_solver_lands_on_x0_at_every_nfe(order):
    sde = IRSDE(T=T, dtype=torch.float64)
    gt, lq = _pair(12)
    for nfe in range(1, T + 1):
        solver = MRSolver(sde, prediction="noise", order=order)
        out = sample(
            Oracle(sde, gt, "noise"), lq, sde, solver, nfe, generator=torch.Generator().manual_seed(nfe)
        )
        torch.testing.assert_close(out, gt, rtol=0, atol=1e-9, msg=f"NFE {nfe}")


class GaussianDenoiser:
    """The exact denoiser when every pixel of x_0 is N(m, s²) independently: E[x_0 | x_t] in closed form."""

    def __init__(self, sde: IRSDE, mean: torch.Tensor, std: float) -> None:
        self.sde, self.mean, self.std = sde, mean, std

    def __call__(self, xt: torch.Tensor, mu: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_int = int(t[0])
        alpha, sigma_bar = self.sde.alpha(t_int), self.sde.marginal_std(t_int)
        prior = self.mean - mu  # E[y_0]
        gain = alpha * self.std**2 / (alpha**2 * self.std**2 + sigma_bar**2)
        return mu + prior + gain * (xt - mu - alpha * prior)  # x̂_0 (prediction "x0")

    def exact_ode_solution(self, x_T: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """The probability-flow ODE keeps (y_t − α_t·E[y_0])/std(y_t) constant for Gaussian data."""
        alpha, sigma_bar = self.sde.alpha(self.sde.T), self.sde.marginal_std(self.sde.T)
        prior = self.mean - mu
        z = (x_T - mu - alpha * prior) / torch.sqrt(alpha**2 * self.std**2 + sigma_bar**2)
        return mu + prior + self.std * z


@pytest.mark.parametrize("nfe", [5, 20, 50])
def test_second_order_beats_first_order_on_a_smooth_problem(nfe):
    """Against the exact ODE solution for Gaussian data, order 2 has a smaller error than order 1.

    A wrong second-order coefficient (sign, r, or history from the wrong step) makes it worse than order 1.
    """
    sde = IRSDE(max_sigma=50, T=100, dtype=torch.float64)
    generator = torch.Generator().manual_seed(13)
    lq = torch.rand((1, 3, 32, 32), generator=generator, dtype=torch.float64)
    denoiser = GaussianDenoiser(sde, mean=torch.full_like(lq, 0.5), std=0.2)
    x_T = lq + sde.max_sigma * torch.randn(lq.shape, generator=generator, dtype=torch.float64)
    exact = denoiser.exact_ode_solution(x_T, lq)
    errors = {}
    for order in (1, 2):
        solver = MRSolver(sde, prediction="x0", order=order)
        out = sample(denoiser, lq, sde, solver, nfe, x_T=x_T)
        errors[order] = float((out - exact).abs().mean())
    assert errors[2] < 0.7 * errors[1], errors
