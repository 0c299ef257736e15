"""The mean-reverting IR-SDE of Luo et al. (ICML 2023), as used by DA-CLIP's universal restoration model.

Forward process (paper eq. 1), with μ the LQ image and x_0 the GT image::

    dx = θ_t (μ − x) dt + σ_t dw,        σ_t² / θ_t = 2 λ²   (λ = ``max_sigma``)

Every formula below mirrors the official ``utils/sde_utils.py`` ``IRSDE`` operation by operation, so that a
float32 instance reproduces the official float32 numbers (fixture ``tests/fixtures/irsde.pt``) and a float64
instance reproduces the same formulas in float64. Unlike the official class, this one holds no state about
the current image: ``mu`` is always an argument, and the object is safe to share between a trainer and a
sampler.

Timesteps are integers 1..T (index 0 of every schedule array is unused except as "time zero": Θ_0 = 0).
A timestep argument ``t`` may be a Python int, a 0-d integer tensor (coefficients come back as 0-d tensors),
or an integer tensor of shape [B] or [B, 1, 1, 1] (coefficients come back as [B, 1, 1, 1], broadcasting
against images [B, C, H, W]).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from daclip.engine.config import spec

__all__ = ["IRSDE", "PREDICTIONS", "PredictionType", "ScheduleName", "SDEConfig", "Timestep"]

ScheduleName = Literal["cosine", "linear", "constant"]
Timestep = int | Tensor

#: What the network outputs. ``noise``: the noise ε of the marginal (the paper, and the released weights).
#: ``x0``: the clean image x_0 itself. ``residual``: x_0 − μ, the correction to the LQ image (a network whose
#: output layer starts at zero then starts as the identity restorer).
PredictionType = Literal["noise", "x0", "residual"]
PREDICTIONS: tuple[str, ...] = get_args(PredictionType)

_SCHEDULES: tuple[str, ...] = get_args(ScheduleName)


@dataclass
class SDEConfig:
    """The arguments of :class:`IRSDE` as a config section: a training config's ``sde:`` and a model
    folder's ``config.json`` describe the SDE with it."""

    max_sigma: float = spec(50.0, minimum=0.0, exclusive_minimum=True, help="in 0..255 units")
    T: int = spec(100, minimum=1)
    schedule: ScheduleName = "cosine"
    eps: float = spec(0.005, minimum=0.0, exclusive_minimum=True, maximum=1.0)


def _theta_schedule(schedule: ScheduleName, T: int, dtype: torch.dtype) -> Tensor:
    """θ_t for t = 0..T (length T+1), computed in ``dtype`` with the official operation order."""
    if schedule == "constant":
        return torch.ones(T + 1, dtype=dtype)
    if schedule == "linear":
        # Scaled so that the sum of θ is roughly independent of T (DDPM's linear betas for T = 1000).
        n = T + 1
        scale = 1000 / n
        return torch.linspace(scale * 0.0001, scale * 0.02, n, dtype=dtype)
    # cosine (Nichol & Dhariwal 2021): θ = 1 − ᾱ, one minus the *cumulative* value itself, as the official
    # code does; N = T + 2 so that dropping the first and last entries leaves T + 1 values.
    s = 0.008
    n = T + 2
    x = torch.linspace(0, n, n + 1, dtype=dtype)
    alphas_cumprod = torch.cos(((x / n) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return 1 - alphas_cumprod[1:-1]


class IRSDE:
    """Schedule and closed-form quantities of the IR-SDE; stateless with respect to the images.

    Args:
        max_sigma: stationary noise level λ in 0..255 units (the paper uses 50); stored divided by 255 in
            ``self.max_sigma`` (the original value is ``self.max_sigma_255``). The official code leaves a
            value below 1 undivided; here every value is divided, and a value below 1 draws a warning.
        T: number of timesteps.
        schedule: θ schedule, one of ``"cosine"``, ``"linear"``, ``"constant"``.
        eps: fraction of (x_0 − μ) left at time T; sets ``dt`` so that exp(−Θ_T·dt) = eps.
        dtype: floating dtype the schedule is computed and stored in (float32 matches the released model).
        device: device of the schedule tensors (they are computed on the CPU, then moved).

    Attributes:
        thetas, sigmas, thetas_cumsum, sigma_bars: tensors of shape [T+1] (θ_t, σ_t, Θ_t, σ̄_t).
        dt: the time step, −ln(eps)/Θ_T (a Python float holding the value in ``dtype``).
    """

    def __init__(
        self,
        max_sigma: float = 50.0,
        T: int = 100,
        schedule: ScheduleName = "cosine",
        eps: float = 0.005,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if schedule not in _SCHEDULES:
            raise ValueError(f"IRSDE: unknown schedule {schedule!r}; valid choices: {', '.join(_SCHEDULES)}")
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"IRSDE: T must be an integer >= 1, got {T!r}")
        if not 0.0 < float(eps) < 1.0:
            raise ValueError(f"IRSDE: eps must lie in the open interval (0, 1), got {eps!r}")
        if not float(max_sigma) > 0.0 or not math.isfinite(float(max_sigma)):
            raise ValueError(f"IRSDE: max_sigma must be a positive number in 0..255 units, got {max_sigma!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"IRSDE: dtype must be a floating-point dtype, got {dtype}")
        if float(max_sigma) < 1.0:
            warnings.warn(
                f"IRSDE: max_sigma={max_sigma} is read in 0..255 units and divided by 255 "
                "(the official code would have used it undivided)",
                stacklevel=2,
            )

        self.max_sigma_255 = float(max_sigma)
        self.max_sigma = self.max_sigma_255 / 255
        self.T = T
        self.schedule: ScheduleName = schedule
        self.eps = float(eps)
        self.dtype = dtype

        lam = self.max_sigma
        thetas = _theta_schedule(schedule, T, dtype)
        sigmas = torch.sqrt(lam**2 * 2 * thetas)  # σ_t² = 2λ²θ_t
        # Θ_t = Σ_{i≤t} θ_i − θ_0, so that Θ_0 = 0 (θ_0 itself is not 0).
        thetas_cumsum = torch.cumsum(thetas, dim=0) - thetas[0]
        dt = -1 / thetas_cumsum[-1] * math.log(eps)  # exp(−Θ_T·dt) = eps (not dt = 1/T)
        sigma_bars = torch.sqrt(lam**2 * (1 - torch.exp(-2 * thetas_cumsum * dt)))  # paper eq. 4

        self.dt = float(dt)
        # Lower clamp of the posterior variance, computed like the official `1e-20 * self.dt` tensor.
        self._min_posterior_var = float(1e-20 * dt)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.thetas = thetas.to(self.device)
        self.sigmas = sigmas.to(self.device)
        self.thetas_cumsum = thetas_cumsum.to(self.device)
        self.sigma_bars = sigma_bars.to(self.device)

    def __repr__(self) -> str:
        return (
            f"IRSDE(max_sigma={self.max_sigma_255:g}, T={self.T}, schedule={self.schedule!r}, "
            f"eps={self.eps:g}, dtype={self.dtype}, device={self.device})"
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> IRSDE:
        """A copy on ``device`` and/or in ``dtype``; a new dtype recomputes the schedule in that dtype."""
        return IRSDE(
            max_sigma=self.max_sigma_255,
            T=self.T,
            schedule=self.schedule,
            eps=self.eps,
            dtype=self.dtype if dtype is None else dtype,
            device=self.device if device is None else device,
        )

    # ------------------------------------------------------------------ coefficient gathering
    def _check_t(self, t: Timestep, low: int = 0) -> Tensor | int:
        """Validate a timestep argument; return it as an int or an integer tensor."""
        if isinstance(t, bool):
            raise TypeError("IRSDE: timestep must be an int or an integer tensor, got a bool")
        if isinstance(t, int):
            if not low <= t <= self.T:
                raise ValueError(f"IRSDE: timestep {t} outside {low}..{self.T}")
            return t
        if not isinstance(t, Tensor):
            raise TypeError(f"IRSDE: timestep must be an int or an integer tensor, got {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"IRSDE: timestep tensor must have an integer dtype, got {t.dtype}")
        if t.ndim > 1 and any(size != 1 for size in t.shape[1:]):
            raise ValueError(
                f"IRSDE: timestep tensor must have shape [B] or [B, 1, 1, 1], got {tuple(t.shape)}"
            )
        # Range check only where it costs no device synchronisation.
        if t.device.type == "cpu" and t.numel() > 0 and (int(t.min()) < low or int(t.max()) > self.T):
            raise ValueError(f"IRSDE: timesteps must lie in {low}..{self.T}, got {t.flatten().tolist()}")
        return t

    def _gather(self, values: Tensor, t: Tensor | int, like: Tensor | None = None) -> Tensor:
        """values[t] as a 0-d tensor (scalar t) or [B, 1, 1, 1] (batched t), on ``like``'s device."""
        if isinstance(t, int):
            out = values[t]
        elif t.ndim == 0:
            out = values[t.to(values.device)]
        else:
            out = values[t.reshape(-1).to(values.device)].view(-1, 1, 1, 1)
        if like is not None and out.device != like.device:
            out = out.to(like.device)
        return out

    def theta(self, t: Timestep, like: Tensor | None = None) -> Tensor:
        """θ_t."""
        return self._gather(self.thetas, self._check_t(t), like)

    def sigma(self, t: Timestep, like: Tensor | None = None) -> Tensor:
        """σ_t, the diffusion coefficient."""
        return self._gather(self.sigmas, self._check_t(t), like)

    # ------------------------------------------------------------------ forward marginals
    def marginal_mean(self, x0: Tensor, mu: Tensor, t: Timestep) -> Tensor:
        """E[x_t | x_0] = μ + (x_0 − μ)·exp(−Θ_t·dt) (paper eq. 4)."""
        cum = self._gather(self.thetas_cumsum, self._check_t(t), x0)
        return mu + (x0 - mu) * torch.exp(-cum * self.dt)

    def marginal_std(self, t: Timestep) -> Tensor:
        """σ̄_t = λ·sqrt(1 − exp(−2Θ_t·dt)), 0-d or [B, 1, 1, 1] (paper eq. 4)."""
        return self._gather(self.sigma_bars, self._check_t(t))

    def sample_timesteps(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Training timesteps, uniform on 1..T inclusive, as a LongTensor [batch_size]."""
        if device is None and generator is not None:
            device = generator.device
        return torch.randint(1, self.T + 1, (batch_size,), generator=generator, device=device)

    def add_noise(self, x0: Tensor, mu: Tensor, t: Timestep, noise: Tensor) -> Tensor:
        """Forward noising for training: x_t = noise·σ̄_t + E[x_t | x_0], with ``noise`` ~ N(0, I)."""
        t = self._check_t(t)
        return noise * self._gather(self.sigma_bars, t, noise) + self.marginal_mean(x0, mu, t)

    # ------------------------------------------------------------------ noise, score, x_0
    def noise_to_score(self, noise: Tensor, t: Timestep) -> Tensor:
        """Score ∇log p_t(x) = −ε/σ̄_t of the marginal, from the noise ε (paper eq. 5)."""
        return -noise / self._gather(self.sigma_bars, self._check_t(t, low=1), noise)

    def score_to_noise(self, score: Tensor, t: Timestep) -> Tensor:
        """Inverse of :meth:`noise_to_score`: ε = −score·σ̄_t."""
        return -score * self._gather(self.sigma_bars, self._check_t(t, low=1), score)

    def x0_from_noise(self, xt: Tensor, mu: Tensor, t: Timestep, noise: Tensor) -> Tensor:
        """x̂_0 = (x_t − μ − σ̄_t·ε)·exp(Θ_t·dt) + μ (the marginal solved for x_0)."""
        t = self._check_t(t, low=1)
        scale = torch.exp(self._gather(self.thetas_cumsum, t, xt) * self.dt)
        return (xt - mu - self._gather(self.sigma_bars, t, xt) * noise) * scale + mu

    def noise_from_x0(self, xt: Tensor, x0: Tensor, mu: Tensor, t: Timestep) -> Tensor:
        """The true noise ε = (x_t − E[x_t | x_0])/σ̄_t (the noise-matching target)."""
        t = self._check_t(t, low=1)
        return (xt - self.marginal_mean(x0, mu, t)) / self._gather(self.sigma_bars, t, xt)

    def score_from_x0(self, xt: Tensor, x0: Tensor, mu: Tensor, t: Timestep) -> Tensor:
        """The true conditional score −(x_t − E[x_t | x_0])/σ̄_t²."""
        t = self._check_t(t, low=1)
        return -(xt - self.marginal_mean(x0, mu, t)) / self._gather(self.sigma_bars, t, xt) ** 2

    # ------------------------------------------------------------------ parametrisations
    def alpha(self, t: Timestep, like: Tensor | None = None) -> Tensor:
        """α_t = exp(−Θ_t·dt), the fraction of (x_0 − μ) left in the marginal mean at t (α_T = eps)."""
        return torch.exp(-self._gather(self.thetas_cumsum, self._check_t(t), like) * self.dt)

    @staticmethod
    def check_prediction(prediction: str) -> PredictionType:
        """``prediction`` if it names a parametrisation, else a ValueError listing the valid ones."""
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid choices: {', '.join(PREDICTIONS)}")
        return prediction  # type: ignore[return-value]

    def predict_x0(
        self, model_output: Tensor, xt: Tensor, mu: Tensor, t: Timestep, prediction: PredictionType
    ) -> Tensor:
        """x̂_0 implied by a network output of the given parametrisation at (x_t, μ, t)."""
        prediction = self.check_prediction(prediction)
        if prediction == "noise":
            return self.x0_from_noise(xt, mu, t, model_output)
        return model_output if prediction == "x0" else mu + model_output

    def predict_noise(
        self, model_output: Tensor, xt: Tensor, mu: Tensor, t: Timestep, prediction: PredictionType
    ) -> Tensor:
        """ε̂ implied by a network output: ε̂ = (x_t − μ − α_t·(x̂_0 − μ))/σ̄_t for the data predictions."""
        if self.check_prediction(prediction) == "noise":
            return model_output
        return self.noise_from_x0(xt, self.predict_x0(model_output, xt, mu, t, prediction), mu, t)

    def model_target(self, x0: Tensor, mu: Tensor, noise: Tensor, prediction: PredictionType) -> Tensor:
        """What a perfect network of the given parametrisation outputs for x_t = add_noise(x0, mu, t, noise)."""
        prediction = self.check_prediction(prediction)
        if prediction == "noise":
            return noise
        return x0 if prediction == "x0" else x0 - mu

    # ------------------------------------------------------------------ reverse-time steps (t → t−1)
    def sde_drift(self, xt: Tensor, mu: Tensor, t: Timestep, score: Tensor) -> Tensor:
        """Reverse SDE drift over one step, (θ_t(μ − x) − σ_t²·score)·dt (paper eq. 6)."""
        t = self._check_t(t, low=1)
        theta = self._gather(self.thetas, t, xt)
        sigma = self._gather(self.sigmas, t, xt)
        return (theta * (mu - xt) - sigma**2 * score) * self.dt

    def ode_drift(self, xt: Tensor, mu: Tensor, t: Timestep, score: Tensor) -> Tensor:
        """Probability-flow ODE drift over one step, (θ_t(μ − x) − ½σ_t²·score)·dt."""
        t = self._check_t(t, low=1)
        theta = self._gather(self.thetas, t, xt)
        sigma = self._gather(self.sigmas, t, xt)
        return (theta * (mu - xt) - 0.5 * sigma**2 * score) * self.dt

    def reverse_sde_step_mean(self, xt: Tensor, mu: Tensor, t: Timestep, score: Tensor) -> Tensor:
        """Mean of one Euler–Maruyama step of the reverse SDE: x_t − drift."""
        return xt - self.sde_drift(xt, mu, t, score)

    def reverse_ode_step_mean(self, xt: Tensor, mu: Tensor, t: Timestep, score: Tensor) -> Tensor:
        """One Euler step of the probability-flow ODE: x_t − ODE drift."""
        return xt - self.ode_drift(xt, mu, t, score)

    # ------------------------------------------------------------------ optimal posterior q(x_s | x_t, x_0)
    def _posterior_exponents(
        self, t: Timestep, s: Timestep | None, like: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(Θ_t − Θ_s, Θ_t, Θ_s) gathered, for 0 <= s < t (s = None means t − 1)."""
        t = self._check_t(t, low=1)
        theta_t = self._gather(self.thetas, t, like)
        cum_t = self._gather(self.thetas_cumsum, t, like)
        if s is None:
            return theta_t, cum_t, self._gather(self.thetas_cumsum, t - 1, like)
        s = self._check_t(s, low=0)
        t_index, s_index = self._as_index(t, like), self._as_index(s, like)
        if t_index.device.type == "cpu" and bool((s_index >= t_index).any()):
            raise ValueError(f"IRSDE: the posterior needs s < t, got s={s} and t={t}")
        cum_s = self._gather(self.thetas_cumsum, s, like)
        # Θ_t − Θ_{t−1} equals θ_t mathematically; take θ_t there, as the official code does, so that
        # s = t − 1 reproduces its values exactly instead of through a cancelling subtraction.
        gap = torch.where(s_index == t_index - 1, theta_t, cum_t - cum_s)
        return gap, cum_t, cum_s

    def _as_index(self, t: Tensor | int, like: Tensor | None) -> Tensor:
        """t as a long tensor shaped like the gathered coefficients (0-d or [B, 1, 1, 1])."""
        device = like.device if like is not None else self.device
        index = torch.as_tensor(t, device=device)
        return index if index.ndim == 0 else index.reshape(-1, 1, 1, 1)

    def posterior_mean(
        self, xt: Tensor, x0: Tensor, mu: Tensor, t: Timestep, s: Timestep | None = None
    ) -> Tensor:
        """Mean of the exact Gaussian posterior q(x_s | x_t, x_0) of the OU process, s < t (default t−1).

        With A = exp(−(Θ_t − Θ_s)·dt), B = exp(−Θ_t·dt), C = exp(−Θ_s·dt) (so that A·C = B)::

            mean = A(1 − C²)/(1 − B²)·(x_t − μ) + C(1 − A²)/(1 − B²)·(x_0 − μ) + μ      (paper eq. 8)

        Derivation: x_s − μ | x_0 ~ N(C(x_0 − μ), λ²(1 − C²)) and x_t − μ | x_s ~ N(A(x_s − μ), λ²(1 − A²))
        (the transition of dx = θ(μ − x)dt + σdw with σ² = 2λ²θ over [s, t]); Gaussian conjugacy gives
        precision (1 − A²C²)/(λ²(1 − A²)(1 − C²)) and the mean above. For s = t − 1 this is the official
        ``reverse_optimum_step``; for s = 0 it returns x_0.
        """
        gap, cum_t, cum_s = self._posterior_exponents(t, s, xt)
        a = torch.exp(-gap * self.dt)
        b = torch.exp(-cum_t * self.dt)
        c = torch.exp(-cum_s * self.dt)
        coef_xt = a * (1 - c**2) / (1 - b**2)
        coef_x0 = c * (1 - a**2) / (1 - b**2)
        return coef_xt * (xt - mu) + coef_x0 * (x0 - mu) + mu

    def posterior_std(self, t: Timestep, s: Timestep | None = None) -> Tensor:
        """Std of q(x_s | x_t, x_0): λ·sqrt((1 − A²)(1 − C²)/(1 − B²)), see :meth:`posterior_mean`.

        As in the official code the variance is clamped below at 1e-20·dt before the square root, so the
        step to s = 0 (variance exactly 0) gets a tiny but nonzero std (about 6e-12 for the paper's setup).
        """
        gap, cum_t, cum_s = self._posterior_exponents(t, s, None)
        a2 = torch.exp(-2 * gap * self.dt)
        b2 = torch.exp(-2 * cum_t * self.dt)
        c2 = torch.exp(-2 * cum_s * self.dt)
        posterior_var = (1 - a2) * (1 - c2) / (1 - b2)
        log_var = torch.log(torch.clamp(posterior_var, min=self._min_posterior_var))
        return (0.5 * log_var).exp() * self.max_sigma
