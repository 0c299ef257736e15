"""IR-SDE maths and losses: the official fixture, closed forms and Monte-Carlo checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from irsde.diffusion.sde import IRSDE
from irsde.training.losses import LOSSES, MaximumLikelihoodLoss, NoiseMatchingLoss, build_loss

FIXTURE = Path(__file__).parent / "fixtures" / "irsde.pt"
SCHEDULES = ("cosine", "linear", "constant")
FIXTURE_TIMESTEPS = (1, 2, 50, 99, 100)

# (variant in irsde.pt, dtype we build the SDE in, rtol, atol). float64: our code follows the official
# operation order, so the float64 numbers agree to rtol 1e-9 (atol only for entries that are exactly zero).
# float32: see float32_error_factors.
VARIANTS = [
    ("float32_reference", torch.float32, 1e-4, 0.0),
    ("float64_patched", torch.float64, 1e-9, 1e-14),
]

#: float32 unit roundoff.
U32 = 2.0**-24


def float32_error_factors(schedule: str, T: int = 100, eps: float = 0.005) -> torch.Tensor:
    """K_t, t = 0..T: how many units of roundoff a float32 result at t may differ between two machines.

    The fixture's float32 numbers were computed on another machine. The same float32 operations agree
    bit for bit everywhere except the transcendental functions (exp, log, cos) and linspace, whose
    vectorised implementations differ between CPUs and builds; each is within 1 ulp of the exact
    value, so two builds differ by up to 2 ulp, a relative 4u (u = 2^-24). First-order propagation of
    that through the IR-SDE formulas, computed here from the float64 schedule:

    * cosine θ_t = 1 − ᾱ_t with ᾱ_t ≈ 1 at small t: an error in ᾱ grows by ᾱ_t/θ_t in θ_t;
    * Θ_t = Σ_{i≤t} θ_i − θ_0: the absolute errors of the θ_i and of the partial sums, over Θ_t;
    * dt = −ln(eps)/Θ_T carries the error of Θ_T;
    * every 1 − y with y = exp(−x) (σ̄_t and the posterior's 1 − A², 1 − B², 1 − C²): the rounding of y,
      doubled for y², grows by y/(1 − y) ≈ 1/x. A relative error of x itself passes unamplified
      (x·y/(1 − y) ≤ 1). This is where float32 cancels: at t = 1, 2 the posterior and the score take
      1 − exp(−x) with x ~ 1e-3 (linear, K ≈ 1300) or 1e-4 (cosine, K ≈ 12000); elsewhere K < 50;
    * 8 more for the correctly rounded operations around them.
    """
    sde = IRSDE(50, T, schedule, eps, dtype=torch.float64)  # type: ignore[arg-type]
    theta, cum, dt = sde.thetas, sde.thetas_cumsum, sde.dt
    k_theta = (1 - theta) / theta if schedule == "cosine" else torch.ones_like(theta)
    abs_err = torch.cumsum(theta * k_theta, 0) + torch.cumsum(theta, 0)
    k_cum = torch.where(cum > 0, abs_err / cum.clamp_min(1e-300), torch.zeros_like(cum))
    k_dt = 1 + k_cum[T]

    def cancel(x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(-x)
        return torch.where(x > 0, 2 * y / (1 - y).clamp_min(1e-300), torch.zeros_like(x))

    cum_prev = torch.cat([cum.new_zeros(1), cum[:-1]])
    return (
        8 + k_theta + k_cum + k_dt + cancel(2 * cum * dt) + cancel(2 * theta * dt) + cancel(2 * cum_prev * dt)
    )


@pytest.fixture(scope="module")
def fixture_data() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def close(
    actual: torch.Tensor,
    expected: torch.Tensor | float,
    rtol: float,
    atol: float,
    k: float | torch.Tensor | None = None,
) -> None:
    """``|actual − expected| ≤ rtol·|expected| + atol``, plus, for float32 (``k`` = K_t), the roundoff
    bound 4u·K_t relative to max|expected|: an entry is a sum of terms of the tensor's magnitude that
    may cancel, so its rounding error scales with that magnitude, not with the entry itself. A tensor
    ``k`` (schedules) gives each entry its own K_t, relative to that entry."""
    expected = torch.as_tensor(expected, dtype=actual.dtype).reshape(actual.shape)
    if k is not None:
        k = torch.as_tensor(k, dtype=torch.float64)
        scale = expected.abs().double() if k.ndim else expected.abs().max().double()
        atol = atol + (4 * U32 * k * scale).to(actual.dtype)
    bound = rtol * expected.abs() + atol
    error = (actual - expected).abs()
    bad = error > bound
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.numel()} entries differ by more than the bound: max |error| "
        f"{float(error.max()):.3g}, bound there {float(torch.as_tensor(bound).expand_as(error)[bad].max()):.3g}"
    )


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(("variant", "dtype", "rtol", "atol"), VARIANTS)
def test_matches_official_fixture(fixture_data, variant, dtype, rtol, atol, schedule):
    inputs = fixture_data[variant]["inputs"]
    ref = fixture_data[variant]["schedules"][schedule]
    x0, mu, xt, noise = inputs["x0"], inputs["mu"], inputs["xt"], inputs["noise"]
    sde = IRSDE(max_sigma=50, T=100, schedule=schedule, eps=0.005, dtype=dtype)
    factors = float32_error_factors(schedule) if dtype == torch.float32 else None

    def k(t) -> float | torch.Tensor | None:
        """K_t for a timestep, the largest over a batch of timesteps, or every K_t for a schedule."""
        if factors is None:
            return None
        if t is None:
            return factors
        return float(factors[torch.as_tensor(t).reshape(-1)].max())

    assert sde.max_sigma == pytest.approx(ref["max_sigma"], rel=1e-15)
    for name in ("thetas", "sigmas", "thetas_cumsum", "sigma_bars"):
        values = getattr(sde, name)
        assert values.dtype == dtype and values.shape == (101,)
        close(values, ref[name], rtol, atol, k(None))
    close(torch.tensor(sde.dt, dtype=dtype), ref["dt"], rtol, atol, k(sde.T))

    for t in FIXTURE_TIMESTEPS:
        r = ref["per_t"][t]
        kt = k(t)
        close(sde.marginal_mean(x0, mu, t), r["mu_bar"], rtol, atol, kt)
        close(sde.marginal_std(t), r["sigma_bar"], rtol, atol, kt)
        close(sde.posterior_mean(xt, x0, mu, t), r["reverse_optimum_step"], rtol, atol, kt)
        close(sde.posterior_std(t), r["reverse_optimum_std"], rtol, atol, kt)
        # The per_t entries feed the fixture's `noise` in as the network output.
        x0_pred = sde.x0_from_noise(xt, mu, t, noise)
        close(x0_pred, r["get_init_state_from_noise"], rtol, atol, kt)
        close(sde.posterior_mean(xt, x0_pred, mu, t), r["posterior_mean"], rtol, atol, kt)
        score = sde.noise_to_score(noise, t)
        close(score, r["get_score_from_noise"], rtol, atol, kt)
        close(sde.sde_drift(xt, mu, t, score), r["sde_reverse_drift"], rtol, atol, kt)
        close(sde.reverse_sde_step_mean(xt, mu, t, score), r["reverse_sde_step_mean"], rtol, atol, kt)
        close(sde.ode_drift(xt, mu, t, score), r["ode_reverse_drift"], rtol, atol, kt)
        close(sde.reverse_ode_step_mean(xt, mu, t, score), r["reverse_ode_step"], rtol, atol, kt)
        close(sde.noise_from_x0(xt, x0, mu, t), r["get_real_noise"], rtol, atol, kt)
        close(sde.score_from_x0(xt, x0, mu, t), r["get_real_score"], rtol, atol, kt)

    # Training: batched timesteps [B, 1, 1, 1] = [1, 50, 100], network output inputs[noise_pred].
    train = ref["train"]
    t_batch = train["timesteps"]
    kb = k(t_batch)
    score = sde.noise_to_score(train["noise_pred"], t_batch)
    close(score, train["score"], rtol, atol, kb)
    close(
        sde.reverse_sde_step_mean(train["state"], mu, t_batch, score),
        train["xt_1_expectation"],
        rtol,
        atol,
        kb,
    )
    close(sde.posterior_mean(train["state"], x0, mu, t_batch), train["xt_1_optimum"], rtol, atol, kb)
    loss = MaximumLikelihoodLoss(sde, "l1")
    close(
        loss.per_sample(train["noise_pred"], train["state"], x0, mu, t_batch),
        train["loss_l1_per_sample"],
        rtol,
        atol,
        kb,
    )
    close(
        loss(train["noise_pred"], train["state"], x0, mu, train["model_time_input"]),
        train["loss_l1"],
        rtol,
        atol,
        kb,
    )

    # Forward noising with the recorded draw (the reference casts its result to float32).
    forward = ref["generate_random_states"]
    t_in = forward["timesteps_in"]
    kf = k(t_in)
    close(sde.marginal_std(t_in), forward["sigma_bar"], rtol, atol, kf)
    close(sde.marginal_mean(x0, mu, t_in), forward["mu_bar"], rtol, atol, kf)
    noisy = sde.add_noise(x0, mu, t_in, forward["randn_drawn"]).float()
    if dtype == torch.float32:
        close(noisy, forward["noisy_states"], rtol, atol, kf)
    else:  # float64 rounded to float32: half an ulp of float32
        close(noisy, forward["noisy_states"], 1e-6, 1e-7)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("T", [1, 7, 100, 1000])
def test_dt_makes_the_mean_decay_to_eps(schedule, T):
    sde = IRSDE(T=T, schedule=schedule, eps=0.01, dtype=torch.float64)
    assert sde.thetas_cumsum[0] == 0
    assert math.exp(-float(sde.thetas_cumsum[T]) * sde.dt) == pytest.approx(0.01, rel=1e-12)
    # σ̄_T is then λ·sqrt(1 − eps²) and σ_t² = 2λ²θ_t.
    assert float(sde.sigma_bars[T]) == pytest.approx(sde.max_sigma * math.sqrt(1 - 0.01**2), rel=1e-12)
    torch.testing.assert_close(sde.sigmas**2, 2 * sde.max_sigma**2 * sde.thetas, rtol=1e-12, atol=0)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_marginals_compose_the_exact_one_step_transitions(schedule):
    """Chaining the exact OU transition of each step [t−1, t] gives the marginal at t (closed form)."""
    sde = IRSDE(T=30, schedule=schedule, dtype=torch.float64)
    lam, dt = sde.max_sigma, sde.dt
    x0 = torch.tensor([0.9, -0.2], dtype=torch.float64).view(2, 1, 1, 1)
    mu = torch.tensor([0.1, 0.4], dtype=torch.float64).view(2, 1, 1, 1)
    mean, var = x0.clone(), 0.0
    for t in range(1, 31):
        decay = math.exp(-float(sde.thetas[t]) * dt)
        mean = mu + decay * (mean - mu)
        var = decay**2 * var + lam**2 * (1 - decay**2)  # stationary variance λ² since σ² = 2λ²θ
        torch.testing.assert_close(sde.marginal_mean(x0, mu, t), mean, rtol=1e-12, atol=1e-14)
        assert float(sde.marginal_std(t)) == pytest.approx(math.sqrt(var), rel=1e-10)


def test_add_noise_has_the_marginal_mean_and_std_monte_carlo():
    generator = torch.Generator().manual_seed(0)
    sde = IRSDE(schedule="cosine", dtype=torch.float64)
    t, n = 30, 100_000
    x0 = torch.tensor([0.8, 0.1, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    mu = torch.tensor([0.2, 0.6, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    noise = torch.randn(n, 3, 1, 1, generator=generator, dtype=torch.float64)
    xt = sde.add_noise(x0, mu, torch.full((n,), t), noise)

    # Expected values from the DESIGN formulas, written out here rather than taken from the class.
    decay = math.exp(-float(sde.thetas.cumsum(0)[t] - sde.thetas[0]) * sde.dt)
    expected_mean = mu + (x0 - mu) * decay
    expected_std = sde.max_sigma * math.sqrt(1 - decay**2)
    assert 0.02 < expected_std < 0.2  # a noise level at which a 10% error is far outside 5 standard errors

    sample_mean = xt.mean(dim=0, keepdim=True)
    standard_error = expected_std / math.sqrt(n)
    assert (sample_mean - expected_mean).abs().max() < 5 * standard_error
    # The standard error of a Gaussian sample std is about σ/sqrt(2n) per channel.
    sample_std = xt.std(dim=0)
    assert (sample_std / expected_std - 1).abs().max() < 5 / math.sqrt(2 * n)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_posterior_chain_from_x_T_lands_on_x0(schedule):
    sde = IRSDE(schedule=schedule, dtype=torch.float32)
    generator = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, 4, 5, generator=generator)
    mu = x0 + 0.2 * torch.randn(2, 3, 4, 5, generator=generator)
    x_T = sde.add_noise(x0, mu, sde.T, torch.randn(2, 3, 4, 5, generator=generator))
    x, x_det = x_T.clone(), x_T.clone()
    for t in range(sde.T, 0, -1):
        z = torch.randn(x.shape, generator=generator)
        x = sde.posterior_mean(x, x0, mu, t) + sde.posterior_std(t) * z
        x_det = sde.posterior_mean(x_det, x0, mu, t)
    assert (x_T - x0).abs().max() > 0.3  # the start really is far from x0
    torch.testing.assert_close(x_det, x0, rtol=0, atol=2e-6)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-5)
    # The last step's variance is zero, clamped at 1e-20·dt as officially.
    assert float(sde.posterior_std(1)) == pytest.approx(sde.max_sigma * math.sqrt(1e-20 * sde.dt), rel=1e-3)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_general_posterior_preserves_the_marginals(schedule):
    """If x_t ~ q(x_t | x_0), a draw from q(x_s | x_t, x_0) has the marginal q(x_s | x_0), for any s < t."""
    sde = IRSDE(T=100, schedule=schedule, dtype=torch.float64)
    x0 = torch.tensor(0.7, dtype=torch.float64)
    mu = torch.tensor(-0.1, dtype=torch.float64)
    for t, s in [(100, 0), (100, 37), (60, 59), (60, 1), (2, 1), (9, 3)]:
        # The posterior mean is affine in x_t: coef·(x_t − μ) + rest.
        at_mu = sde.posterior_mean(mu, x0, mu, t, s)
        coef = sde.posterior_mean(mu + 1, x0, mu, t, s) - at_mu
        mean_s = coef * (sde.marginal_mean(x0, mu, t) - mu) + at_mu
        var_s = coef**2 * sde.marginal_std(t) ** 2 + sde.posterior_std(t, s) ** 2
        torch.testing.assert_close(mean_s, sde.marginal_mean(x0, mu, s), rtol=1e-9, atol=1e-12)
        if s > 0:
            torch.testing.assert_close(var_s.sqrt(), sde.marginal_std(s), rtol=1e-8, atol=1e-12)
    # s = 0 returns x0 itself; s = t − 1 given explicitly or implicitly is the official one-step formula.
    xt = torch.tensor(0.3, dtype=torch.float64)
    torch.testing.assert_close(sde.posterior_mean(xt, x0, mu, 40, 0), x0, rtol=1e-12, atol=1e-12)
    assert torch.equal(sde.posterior_mean(xt, x0, mu, 40, 39), sde.posterior_mean(xt, x0, mu, 40))


def test_timestep_forms_broadcast_the_same():
    sde = IRSDE(dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    x0, mu, xt = (torch.randn(3, 2, 4, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    ts = torch.tensor([1, 50, 100])
    batched = sde.posterior_mean(xt, x0, mu, ts)
    assert torch.equal(batched, sde.posterior_mean(xt, x0, mu, ts.view(3, 1, 1, 1)))
    assert sde.marginal_std(ts).shape == (3, 1, 1, 1)
    assert sde.marginal_std(torch.tensor(50)).shape == ()
    for i, t in enumerate(ts.tolist()):
        assert torch.equal(batched[i], sde.posterior_mean(xt[i], x0[i], mu[i], t))
        assert torch.equal(batched[i], sde.posterior_mean(xt[i], x0[i], mu[i], torch.tensor(t)))
    # Batched s for the general posterior, and score <-> noise round trip.
    general = sde.posterior_mean(xt, x0, mu, ts, torch.tensor([0, 20, 99]))
    assert torch.equal(general[2], sde.posterior_mean(xt[2], x0[2], mu[2], 100))
    torch.testing.assert_close(sde.score_to_noise(sde.noise_to_score(xt, ts), ts), xt, rtol=1e-14, atol=0)


def test_bad_timesteps_are_rejected():
    sde = IRSDE(T=10)
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="0..10"):
        sde.marginal_mean(x, x, 11)
    with pytest.raises(ValueError, match="1..10"):
        sde.posterior_mean(x, x, x, 0)
    with pytest.raises(ValueError, match="s < t"):
        sde.posterior_std(5, 5)
    with pytest.raises(ValueError, match="timesteps must lie"):
        sde.marginal_std(torch.tensor([3, -1]))
    with pytest.raises(TypeError, match="integer dtype"):
        sde.marginal_std(torch.tensor([3.0]))


def test_sample_timesteps_cover_1_to_T_uniformly():
    sde = IRSDE(T=5)
    t = sde.sample_timesteps(50_000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.shape == (50_000,)
    counts = torch.bincount(t, minlength=7)
    assert counts[0] == 0 and counts[6] == 0
    # Each of the 5 values has probability 0.2: binomial std sqrt(n·0.2·0.8) ≈ 89.
    assert (counts[1:6] - 10_000).abs().max() < 5 * 89


def test_to_recomputes_the_schedule_in_the_new_dtype():
    sde64 = IRSDE(schedule="cosine").to(dtype=torch.float64)
    direct = IRSDE(schedule="cosine", dtype=torch.float64)
    assert sde64.dtype == torch.float64
    assert torch.equal(sde64.sigma_bars, direct.sigma_bars) and sde64.dt == direct.dt


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "cosin"}, "valid choices: cosine, linear, constant"),
        ({"T": 0}, "T must be"),
        ({"T": 2.5}, "T must be"),
        ({"eps": 0.0}, "eps must"),
        ({"eps": 1.0}, "eps must"),
        ({"max_sigma": 0.0}, "max_sigma must"),
        ({"max_sigma": -5.0}, "max_sigma must"),
        ({"dtype": torch.int64}, "dtype must"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IRSDE(**kwargs)


def test_max_sigma_below_one_warns():
    with pytest.warns(UserWarning, match="divided by 255"):
        sde = IRSDE(max_sigma=0.5)
    assert sde.max_sigma == pytest.approx(0.5 / 255)


def _ml_closed_form(sde: IRSDE, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(h = θ_t·dt, e^{−Θ_t·dt}, σ̄_t, λ) per sample ([B, 1, 1, 1]), from the schedule's θ alone."""
    lam = sde.max_sigma
    h = (sde.thetas[t] * sde.dt).view(-1, 1, 1, 1)
    big_theta = torch.cumsum(sde.thetas, 0)[t] - sde.thetas[0]  # Θ_t, with Θ_0 = 0
    alpha = torch.exp(-big_theta * sde.dt).view(-1, 1, 1, 1)
    return h, alpha, lam * torch.sqrt(1 - alpha**2), lam


def test_ml_loss_matches_its_closed_form_and_lands_on_the_posterior_mean():
    """The maximum-likelihood loss written out by hand, with y = x_t − μ, h = θ_t·dt, λ = max_sigma.

    Eliminating x_0 through the marginal (y = α_t(x_0 − μ) + σ̄_t·ε) turns the optimal posterior mean
    (paper eq. 8) into μ + e^h·y − 2λ²·sinh(h)/σ̄_t·ε, and the loss's reverse step from ε̂ is the Euler step
    μ + (1 + h)·y − 2λ²h/σ̄_t·ε̂ (σ_t² = 2λ²θ_t). So the step lands exactly on the posterior mean for
    ε̂* = sinh(h)/h·ε − (e^h − 1 − h)·σ̄_t/(2λ²h)·y, where the L1 loss is 0, and ε̂* + δ costs exactly
    2λ²h/σ̄_t·mean|δ|. The true noise itself is ε̂* only up to O(h): the step from it misses the posterior
    mean by the Euler error (1 + h − e^h)·y − 2λ²(h − sinh h)/σ̄_t·ε, which the loss reports.
    """
    sde = IRSDE(dtype=torch.float64)
    generator = torch.Generator().manual_seed(5)
    x0, mu, noise = (torch.rand(4, 3, 6, 6, generator=generator, dtype=torch.float64) for _ in range(3))
    noise = 2 * noise - 1
    t = torch.tensor([1, 10, 60, 100])
    xt = sde.add_noise(x0, mu, t, noise)
    y = xt - mu
    h, alpha, sigma_bar, lam = _ml_closed_form(sde, t)
    loss = MaximumLikelihoodLoss(sde, "l1")

    # The posterior mean in closed form, and at t = 1 (Θ_0 = 0) the known optimum x_0 itself.
    posterior = mu + torch.exp(h) * y - 2 * lam**2 * torch.sinh(h) / sigma_bar * noise
    torch.testing.assert_close(sde.posterior_mean(xt, x0, mu, t), posterior, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(posterior[0], x0[0], rtol=1e-12, atol=1e-12)

    # At ε̂* the loss's reverse step is the posterior mean: loss 0 to float precision.
    best = torch.sinh(h) / h * noise - (torch.exp(h) - 1 - h) * sigma_bar / (2 * lam**2 * h) * y
    step = sde.reverse_sde_step_mean(xt, mu, t, sde.noise_to_score(best, t))
    torch.testing.assert_close(step, posterior, rtol=1e-12, atol=1e-12)
    assert loss(best, xt, x0, mu, t).item() < 1e-13

    # A perturbation δ of ε̂* costs exactly 2λ²h/σ̄_t · mean|δ| per sample (then the batch mean).
    delta = torch.randn(4, 3, 6, 6, generator=generator, dtype=torch.float64)
    slope = (2 * lam**2 * h / sigma_bar).flatten()
    expected = (slope * delta.abs().flatten(1).mean(1)).mean()
    torch.testing.assert_close(loss(best + delta, xt, x0, mu, t), expected, rtol=1e-10, atol=1e-14)

    # The true noise: the Euler error, not zero, and small against a wrong noise.
    gap = (1 + h - torch.exp(h)) * y - 2 * lam**2 * (h - torch.sinh(h)) / sigma_bar * noise
    torch.testing.assert_close(
        loss(noise, xt, x0, mu, t), gap.abs().flatten(1).mean(1).mean(), rtol=1e-10, atol=1e-14
    )
    assert 0 < loss(noise, xt, x0, mu, t) < 0.1 * loss(noise + delta, xt, x0, mu, t)


def test_losses_kinds_and_factory():
    sde = IRSDE(dtype=torch.float64)
    generator = torch.Generator().manual_seed(2)
    x0, mu, noise = (torch.randn(4, 3, 5, 5, generator=generator, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([1, 10, 60, 100])
    xt = sde.add_noise(x0, mu, t, noise)
    noise_pred = noise + 0.1 * torch.randn(4, 3, 5, 5, generator=generator, dtype=torch.float64)

    # At the true noise x_t − drift(true score) equals the posterior mean only up to the Euler discretisation,
    # so the maximum-likelihood loss is not zero there; it must still beat a wrong noise.
    ml_l1 = build_loss("ml", sde, "l1")
    assert ml_l1(noise, xt, x0, mu, t) < ml_l1(noise_pred, xt, x0, mu, t)
    ml_l2 = build_loss("ml", sde, "l2")
    pred = sde.reverse_sde_step_mean(xt, mu, t, sde.noise_to_score(noise_pred, t))
    target = sde.posterior_mean(xt, x0, mu, t)
    torch.testing.assert_close(ml_l2(noise_pred, xt, x0, mu, t), ((pred - target) ** 2).mean())

    noise_l1 = build_loss("noise", sde, "l1")
    assert isinstance(noise_l1, NoiseMatchingLoss)
    torch.testing.assert_close(noise_l1(noise_pred, xt, x0, mu, t), (noise_pred - noise).abs().mean())
    # Without the true noise it is recovered from x_t, x_0 (same value), and needs an sde for that.
    torch.testing.assert_close(
        noise_l1(noise_pred, xt, x0, mu, t, noise=noise),
        noise_l1(noise_pred, xt, x0, mu, t),
        rtol=1e-10,
        atol=1e-12,
    )
    l2 = NoiseMatchingLoss("l2")
    torch.testing.assert_close(l2(noise_pred, noise=noise), ((noise_pred - noise) ** 2).mean())
    with pytest.raises(ValueError, match="pass the true noise"):
        l2(noise_pred, xt, x0, mu, t)

    assert set(LOSSES) == {"ml", "noise", "x0"}
    with pytest.raises(ValueError, match="valid choices: ml, noise"):
        build_loss("mle", sde)
    with pytest.raises(ValueError, match="valid choices: l1, l2"):
        MaximumLikelihoodLoss(sde, "huber")
