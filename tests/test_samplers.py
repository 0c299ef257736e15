"""Samplers: a contract shared by every sampler, the official one-step fixture, and closed-form checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from irsde.diffusion.samplers import (
    SAMPLERS,
    EulerMaruyamaSampler,
    ODESampler,
    PosteriorSampler,
    build_sampler,
    make_timesteps,
    sample,
)
from irsde.diffusion.sde import IRSDE

FIXTURE = Path(__file__).parent / "fixtures" / "irsde.pt"


@pytest.fixture(scope="module")
def fixture_data() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _images(seed: int, shape=(2, 3, 6, 5), dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    gt = torch.rand(shape, generator=generator, dtype=dtype)
    lq = gt + 0.3 * torch.randn(shape, generator=generator, dtype=dtype)
    return gt, lq


class CountingModel:
    """A stand-in noise network: a fixed smooth function of its inputs that records every call."""

    def __init__(self) -> None:
        self.timesteps: list[torch.Tensor] = []

    def __call__(self, xt: torch.Tensor, mu: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.timesteps.append(t.clone())
        return torch.tanh(xt - mu) * (t.view(-1, 1, 1, 1).to(xt.dtype) / 20.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_steps", [None, 7, 1])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_contract(name, num_steps, dtype):
    sde = IRSDE(T=20, schedule="cosine", dtype=torch.float32)
    _, lq = _images(0, dtype=dtype)
    expected_steps = 20 if num_steps is None else num_steps

    sampler = build_sampler(name, sde)
    assert isinstance(sampler, SAMPLERS[name])
    sampler.set_timesteps(num_steps)
    timesteps = sampler.timesteps
    assert timesteps.dtype == torch.long and len(timesteps) == expected_steps
    assert int(timesteps[0]) == 20 and int(timesteps.min()) >= 1
    assert bool((timesteps[:-1] > timesteps[1:]).all())

    model = CountingModel()
    out = sample(model, lq, sde, name, num_steps, generator=torch.Generator().manual_seed(5))
    assert out.shape == lq.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    # One model call per step, at the sampler's timesteps, as a LongTensor [B].
    assert len(model.timesteps) == expected_steps
    for t_batch, t in zip(model.timesteps, timesteps.tolist()):
        assert t_batch.dtype == torch.long and t_batch.shape == (2,) and bool((t_batch == t).all())

    # Deterministic under a seeded generator; the stochastic samplers depend on the seed.
    again = sample(CountingModel(), lq, sde, name, num_steps, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    other = sample(CountingModel(), lq, sde, name, num_steps, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(out, other)  # x_T itself is drawn from the generator

    # Drawing x_T first and passing it in, with the same generator continuing, reproduces the run exactly
    # (and the progress bar changes nothing).
    generator = torch.Generator().manual_seed(5)
    x_T = sampler.init_noise(lq, generator=generator)
    resumed = sample(CountingModel(), lq, sde, name, num_steps, generator=generator, x_T=x_T, progress=True)
    assert torch.equal(out, resumed)


def test_init_noise_is_mu_plus_max_sigma_gaussian():
    sde = IRSDE(dtype=torch.float64)
    lq = torch.full((4000, 3, 2, 2), 0.25, dtype=torch.float64)
    x_T = PosteriorSampler(sde).init_noise(lq, generator=torch.Generator().manual_seed(0))
    n = x_T.numel()
    assert abs(float(x_T.mean()) - 0.25) < 5 * sde.max_sigma / math.sqrt(n)
    assert abs(float(x_T.std()) / sde.max_sigma - 1) < 5 / math.sqrt(2 * n)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize(
    ("variant", "dtype"), [("float32_reference", torch.float32), ("float64_patched", torch.float64)]
)
def test_one_step_reproduces_the_official_fixture(fixture_data, variant, dtype, schedule):
    inputs = fixture_data[variant]["inputs"]
    ref = fixture_data[variant]["schedules"][schedule]
    mu, xt, noise = inputs["mu"], inputs["xt"], inputs["noise"]
    sde = IRSDE(schedule=schedule, dtype=dtype)
    rtol, atol = (1e-4, 1e-7) if dtype == torch.float32 else (1e-9, 1e-14)
    posterior, euler, ode = PosteriorSampler(sde), EulerMaruyamaSampler(sde), ODESampler(sde)
    for t in (1, 2, 50, 99, 100):
        r = ref["per_t"][t]
        # The official step drew torch.randn_like(xt) right after torch.manual_seed(7): the global RNG path.
        torch.manual_seed(7)
        out = posterior.step(noise, t, xt, mu)
        torch.testing.assert_close(out.prev_sample, r["reverse_posterior_step_seed7"], rtol=rtol, atol=atol)
        torch.testing.assert_close(
            out.pred_original_sample, r["get_init_state_from_noise"], rtol=rtol, atol=atol
        )
        # ...and the same draw from an explicit generator; the recorded draw confirms what was drawn.
        draw = torch.randn(xt.shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
        assert torch.equal(draw, r["reverse_posterior_step_seed7_randn"])
        with_generator = posterior.step(
            noise, torch.tensor([t, t, t]), xt, mu, generator=torch.Generator().manual_seed(7)
        )
        torch.testing.assert_close(
            with_generator.prev_sample, r["reverse_posterior_step_seed7"], rtol=rtol, atol=atol
        )

        # Euler–Maruyama: official mean minus σ_t·sqrt(dt)·z; the ODE step is the official one exactly.
        z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(t), dtype=dtype)
        expected = r["reverse_sde_step_mean"] - ref["sigmas"][t] * math.sqrt(float(ref["dt"])) * z
        stepped = euler.step(noise, t, xt, mu, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(stepped, expected, rtol=rtol, atol=atol)
        torch.testing.assert_close(
            ode.step(noise, t, xt, mu).prev_sample, r["reverse_ode_step"], rtol=rtol, atol=atol
        )


@pytest.mark.parametrize("num_steps", [100, 10, 1])
def test_posterior_sampler_with_an_oracle_recovers_x0(num_steps):
    sde = IRSDE(schedule="cosine", dtype=torch.float32)
    gt, lq = _images(1)
    assert (gt - lq).abs().max() > 0.3

    def oracle(xt, mu, t):  # the true noise for the known x0
        return sde.noise_from_x0(xt, gt, mu, t)

    restored = sample(oracle, lq, sde, "posterior", num_steps, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(restored, gt, rtol=0, atol=1e-4)


def test_posterior_last_step_noise_switch():
    sde = IRSDE(dtype=torch.float64)
    gt, lq = _images(2, dtype=torch.float64)
    xt = sde.add_noise(
        gt, lq, 1, torch.randn(gt.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    noise = sde.noise_from_x0(xt, gt, lq, 1)
    quiet = PosteriorSampler(sde, noise_on_last_step=False).step(noise, 1, xt, lq).prev_sample
    noisy = (
        PosteriorSampler(sde).step(noise, 1, xt, lq, generator=torch.Generator().manual_seed(0)).prev_sample
    )
    assert not torch.equal(quiet, noisy)  # the official behaviour adds the (clamped, tiny) noise
    torch.testing.assert_close(quiet, gt, rtol=0, atol=1e-12)
    torch.testing.assert_close(noisy, gt, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["sde", "ode"])
def test_euler_steps_scale_with_the_timestep_gap(name):
    """With a zero score both reduce to dx = θ(μ − x)dt.

    One step back over Δ timesteps then scales x − μ by 1 + θ_t·dt·Δ (plus σ_t·sqrt(dt·Δ) noise for the SDE).
    """
    sde = IRSDE(T=100, schedule="constant", dtype=torch.float64)
    gt, lq = _images(3, dtype=torch.float64)
    sampler = build_sampler(name, sde)
    sampler.set_timesteps(4)
    assert sampler.timesteps.tolist() == [100, 67, 34, 1]
    zero_noise = torch.zeros_like(gt)
    generator = torch.Generator().manual_seed(4)
    out = sampler.step(zero_noise, 100, gt, lq, generator=generator).prev_sample
    expected_mean = lq + (1 + float(sde.thetas[100]) * sde.dt * 33) * (gt - lq)
    if name == "ode":
        torch.testing.assert_close(out, expected_mean, rtol=1e-12, atol=1e-14)
    else:  # the noise then has std σ_t·sqrt(dt·Δ)
        z = torch.randn(gt.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        step_std = float(sde.sigmas[100]) * math.sqrt(sde.dt * 33)
        torch.testing.assert_close(out, expected_mean - step_std * z, rtol=1e-12, atol=1e-14)


def test_make_timesteps_spacing():
    assert make_timesteps(100).tolist() == list(range(100, 0, -1))
    assert make_timesteps(100, 1).tolist() == [100]
    assert make_timesteps(100, 2).tolist() == [100, 1]
    assert make_timesteps(10, 4).tolist() == [10, 7, 4, 1]
    for n in range(1, 101):
        steps = make_timesteps(100, n).tolist()
        assert len(set(steps)) == n and steps == sorted(steps, reverse=True)
        assert steps[0] == 100 and steps[-1] >= 1 and (n == 1 or steps[-1] == 1)


def test_bad_arguments_are_rejected():
    sde = IRSDE(T=10)
    with pytest.raises(ValueError, match="valid choices: posterior, sde, ode, mr, mr-sde"):
        build_sampler("ddim", sde)
    sampler = build_sampler("posterior", sde)
    for bad in (0, 11, 2.0):
        with pytest.raises(ValueError, match=r"num_steps must be an integer in 1\.\.10"):
            sampler.set_timesteps(bad)
    sampler.set_timesteps(3)  # [10, 6, 1]
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="not in this sampler's schedule"):
        sampler.step(x, 5, x, x)
    with pytest.raises(ValueError, match="same timestep for every sample"):
        sampler.step(x, torch.tensor([10, 6]), x, x)
