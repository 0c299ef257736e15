"""Reverse-time samplers for the IR-SDE, as diffusers-like scheduler objects.

A sampler holds no model and is not an ``nn.Module``: ``set_timesteps(n)`` chooses the descending timesteps,
``step(model_output, t, sample, mu)`` takes the network's output at ``t`` and returns the state at the next
timestep, and ``init_noise(mu)`` draws x_T. :func:`sample` runs the whole loop.

Parametrisations: ``prediction`` says what the network outputs (``noise``, ``x0`` or ``residual`` = x_0 − μ,
see :data:`irsde.sde.PredictionType`); every sampler turns the output into x̂_0 and ε̂ with the identities
x̂_0 − μ = (y_t − σ̄_t·ε̂)/α_t, y_t = x_t − μ. With ``clamp_x0`` the x̂_0 is clamped to the data range [0, 1]
before it is used, and ε̂ is recomputed from the clamped x̂_0, so every step (posterior, Euler, solver)
sees one consistent prediction. The paper's setting (``noise``, no clamp) takes the official formulas
unchanged.

Timesteps: with ``num_steps = T`` (the default) they are T, T−1, ..., 1 and every step goes from t to t − 1,
exactly as the official ``reverse_posterior`` / ``reverse_sde`` / ``reverse_ode`` loops. With fewer steps they
are ``num_steps`` evenly spaced integers from T down to 1, both ends included (T alone for one step), and the
last step always goes to t = 0. ``num_steps`` is the number of network evaluations (NFE).

Random draws use ``torch.randn`` with the caller's ``generator``; without one they come from the global RNG
in the same order and shape as the official ``torch.randn_like`` calls, so a seeded official run is
reproduced draw for draw. The ``mr`` solver draws nothing after x_T: given x_T it is deterministic.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from irsde.sde import IRSDE, PredictionType, Timestep

__all__ = [
    "DATA_RANGE",
    "SAMPLERS",
    "EulerMaruyamaSampler",
    "MRSolver",
    "ODESampler",
    "PosteriorSampler",
    "Sampler",
    "SamplerName",
    "SamplerOutput",
    "build_sampler",
    "make_timesteps",
    "sample",
]

SamplerName = Literal["posterior", "sde", "ode", "mr"]
ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]

#: The range images live in; ``clamp_x0`` clamps x̂_0 to it.
DATA_RANGE: tuple[float, float] = (0.0, 1.0)


@dataclass
class SamplerOutput:
    """Result of one sampler step.

    Attributes:
        prev_sample: the state at the next (earlier) timestep.
        pred_original_sample: x̂_0 implied by the model output at the current timestep.
    """

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


def make_timesteps(T: int, num_steps: int | None = None) -> Tensor:
    """Descending LongTensor of ``num_steps`` timesteps in 1..T: T..1 for T steps, else evenly spaced.

    Evenly spaced means ``floor(linspace(T, 1, num_steps) + 0.5)``; since the spacing is at least 1 the
    values are distinct, and T (and, for two or more steps, 1) is always included.
    """
    if num_steps is None:
        num_steps = T
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an integer in 1..{T} (T of the SDE), got {num_steps!r}")
    if num_steps == T:
        return torch.arange(T, 0, -1, dtype=torch.long)
    if num_steps == 1:
        return torch.tensor([T], dtype=torch.long)
    points = torch.linspace(float(T), 1.0, num_steps, dtype=torch.float64)
    return torch.floor(points + 0.5).long()


def _as_scalar_timestep(t: Timestep) -> int:
    """A step's timestep as an int; a batched tensor must hold one value (all samples step together)."""
    if isinstance(t, bool):
        raise TypeError("timestep must be an int or an integer tensor, got a bool")
    if isinstance(t, int):
        return t
    if not isinstance(t, Tensor) or t.dtype.is_floating_point or t.numel() == 0:
        raise TypeError(f"timestep must be an int or a non-empty integer tensor, got {t!r}")
    flat = t.reshape(-1)
    first = flat[0]
    if flat.numel() > 1 and not bool((flat == first).all()):
        raise ValueError("a sampler step needs the same timestep for every sample in the batch")
    return int(first)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


class Sampler(abc.ABC):
    """Common part of the samplers: the timestep grid and the initial state.

    Args:
        sde: the IR-SDE to reverse.
        prediction: what the network outputs (``noise``, ``x0`` or ``residual``).
        clamp_x0: clamp x̂_0 to :data:`DATA_RANGE` (and recompute ε̂ from it) before every step.

    Attributes:
        timesteps: descending LongTensor (on the CPU) of the timesteps to visit; set by :meth:`set_timesteps`.
    """

    name: SamplerName

    def __init__(self, sde: IRSDE, prediction: PredictionType = "noise", clamp_x0: bool = False) -> None:
        self.sde = sde
        self.prediction: PredictionType = sde.check_prediction(prediction)
        self.clamp_x0 = bool(clamp_x0)
        self.timesteps: Tensor
        self._next: dict[int, int]
        self.set_timesteps(None)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sde={self.sde!r}, num_steps={self.num_steps}, "
            f"prediction={self.prediction!r}, clamp_x0={self.clamp_x0})"
        )

    def predict(self, model_output: Tensor, t: int, sample: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂_0, ε̂) from the network output at ``t``, clamped if configured.

        The paper's case (noise, no clamp) is the official ``get_init_state_from_noise`` with the network's
        noise itself, so released weights step exactly as in the official code.
        """
        if self.prediction == "noise" and not self.clamp_x0:
            return self.sde.x0_from_noise(sample, mu, t, model_output), model_output
        x0_pred = self.sde.predict_x0(model_output, sample, mu, t, self.prediction)
        if self.clamp_x0:
            x0_pred = x0_pred.clamp(*DATA_RANGE)
        return x0_pred, self.sde.noise_from_x0(sample, x0_pred, mu, t)

    @property
    def num_steps(self) -> int:
        """Number of steps (model calls) of a full run."""
        return len(self.timesteps)

    def set_timesteps(self, num_steps: int | None = None) -> None:
        """Use ``num_steps`` steps (1..T; None means T, the official schedule)."""
        self.timesteps = make_timesteps(self.sde.T, num_steps)
        values = self.timesteps.tolist()
        self._next = dict(zip(values, values[1:] + [0]))

    def prev_timestep(self, t: Timestep) -> int:
        """The timestep a step from ``t`` lands on (0 after the last one)."""
        t_int = _as_scalar_timestep(t)
        if t_int not in self._next:
            raise ValueError(
                f"timestep {t_int} is not in this sampler's schedule ({self.num_steps} steps); "
                "call set_timesteps or step with one of .timesteps"
            )
        return self._next[t_int]

    def init_noise(self, mu: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """x_T = μ + λ·N(0, I), a draw from the stationary distribution around the LQ image."""
        return mu + _randn_like(mu, generator) * self.sde.max_sigma

    @abc.abstractmethod
    def step(
        self,
        model_output: Tensor,
        t: Timestep,
        sample: Tensor,
        mu: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> SamplerOutput:
        """Go from ``sample`` = x_t to the next timestep, given the network's output at ``t``."""


class PosteriorSampler(Sampler):
    """The paper's sampler: x̂_0 from the predicted noise, then a draw from q(x_s | x_t, x̂_0).

    x_s = posterior mean + posterior std · N(0, I). As in the official ``reverse_posterior``, noise is also
    drawn on the last step (to t = 0), where the std is only the clamp value λ·sqrt(1e-20·dt) (about 6e-12),
    so the output is x̂_0 up to that; ``noise_on_last_step=False`` returns the mean there (and draws nothing).
    For fewer steps than T the exact posterior over the longer gap is used (see ``IRSDE.posterior_mean``).
    """

    name: SamplerName = "posterior"

    def __init__(
        self,
        sde: IRSDE,
        prediction: PredictionType = "noise",
        clamp_x0: bool = False,
        noise_on_last_step: bool = True,
    ) -> None:
        super().__init__(sde, prediction, clamp_x0)
        self.noise_on_last_step = noise_on_last_step

    def step(
        self,
        model_output: Tensor,
        t: Timestep,
        sample: Tensor,
        mu: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> SamplerOutput:
        """x_s ~ q(x_s | x_t, x̂_0) with s the next timestep (paper eq. 8 and 13)."""
        t_int = _as_scalar_timestep(t)
        s = self.prev_timestep(t_int)
        x0_pred, _ = self.predict(model_output, t_int, sample, mu)
        # s = t − 1 takes the official formula path exactly; a wider gap uses the general posterior.
        s_arg = None if s == t_int - 1 else s
        mean = self.sde.posterior_mean(sample, x0_pred, mu, t_int, s_arg)
        if s == 0 and not self.noise_on_last_step:
            prev = mean
        else:
            std = self.sde.posterior_std(t_int, s_arg).to(sample.device)
            prev = mean + std * _randn_like(sample, generator)
        return SamplerOutput(prev_sample=prev.to(sample.dtype), pred_original_sample=x0_pred.to(sample.dtype))


class EulerMaruyamaSampler(Sampler):
    """Euler–Maruyama on the reverse SDE (official ``reverse_sde_step``).

    x_s = x_t − drift·Δ − σ_t·sqrt(dt·Δ)·N(0, I), with drift = (θ_t(μ − x) − σ_t²·score)·dt and Δ = t − s the
    gap in timesteps (Δ = 1 for T steps, reproducing the official step; for fewer steps the coefficients are
    frozen at t over the whole gap, a plain first-order step). The noise is subtracted, as officially, so
    that a seeded run matches theirs draw for draw.
    """

    name: SamplerName = "sde"

    def step(
        self,
        model_output: Tensor,
        t: Timestep,
        sample: Tensor,
        mu: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> SamplerOutput:
        """One Euler–Maruyama step of the reverse SDE (paper eq. 6)."""
        t_int = _as_scalar_timestep(t)
        gap = t_int - self.prev_timestep(t_int)
        x0_pred, noise_pred = self.predict(model_output, t_int, sample, mu)
        score = self.sde.noise_to_score(noise_pred, t_int)
        drift = self.sde.sde_drift(sample, mu, t_int, score)
        mean = sample - drift if gap == 1 else sample - drift * gap
        sigma = self.sde.sigma(t_int, like=sample)
        dispersion = sigma * (_randn_like(sample, generator) * math.sqrt(self.sde.dt * gap))
        prev = mean - dispersion
        return SamplerOutput(prev_sample=prev.to(sample.dtype), pred_original_sample=x0_pred.to(sample.dtype))


class ODESampler(Sampler):
    """Euler steps of the probability-flow ODE (official ``reverse_ode_step``); deterministic.

    x_s = x_t − (θ_t(μ − x) − ½σ_t²·score)·dt·Δ with Δ = t − s (Δ = 1 for T steps).
    """

    name: SamplerName = "ode"

    def step(
        self,
        model_output: Tensor,
        t: Timestep,
        sample: Tensor,
        mu: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> SamplerOutput:
        """One Euler step of the probability-flow ODE; ``generator`` is unused."""
        t_int = _as_scalar_timestep(t)
        gap = t_int - self.prev_timestep(t_int)
        x0_pred, noise_pred = self.predict(model_output, t_int, sample, mu)
        score = self.sde.noise_to_score(noise_pred, t_int)
        drift = self.sde.ode_drift(sample, mu, t_int, score)
        prev = sample - drift if gap == 1 else sample - drift * gap
        return SamplerOutput(prev_sample=prev.to(sample.dtype), pred_original_sample=x0_pred.to(sample.dtype))


class MRSolver(Sampler):
    """Exponential-integrator solver of the probability-flow ODE, first or second order (deterministic).

    With y = x − μ, α_t = exp(−Θ_t·dt) and σ̄_t = λ·sqrt(1 − α_t²), the probability-flow ODE of the IR-SDE is
    dy/dt = −θ_t·y + λ²θ_t·ε/σ̄_t: the form of a variance-preserving diffusion with signal α_t and noise σ̄_t,
    so its linear part integrates exactly and only the network term is approximated. In the half log-SNR
    ℓ_t = log(α_t/σ̄_t), with D = x̂_0 − μ the data prediction and h = ℓ_s − ℓ_t for a step from t to s < t
    (MR Sampler, Li et al., arXiv 2502.07856, data-prediction form; DPM-Solver++ for VP diffusions)::

        first order:   y_s = (σ̄_s/σ̄_t)·y_t − α_s·(e^{−h} − 1)·D_t          (= α_s·D_t + σ̄_s·ε̂_t)
        second order:  the same with D_t replaced by (1 + 1/(2r))·D_t − 1/(2r)·D_prev, r = h_prev/h

    where D_prev, h_prev belong to the previous step (multistep: one network evaluation per step). The first
    step has no history and the last one (s = 0, where σ̄_0 = 0 and ℓ = ∞) returns x̂_0: both are first
    order. With the true x_0, D is the same at every step, so both orders land exactly on the marginal path
    at any step size. It draws no noise: given x_T the result is deterministic.

    Args:
        sde, prediction, clamp_x0: as for every sampler.
        order: 1 or 2.
    """

    name: SamplerName = "mr"

    def __init__(
        self, sde: IRSDE, prediction: PredictionType = "noise", clamp_x0: bool = False, order: int = 2
    ) -> None:
        if order not in (1, 2):
            raise ValueError(f"MRSolver: order must be 1 or 2, got {order!r}")
        self.order = order
        self._history: tuple[int, Tensor] | None = None  # (t, D_t) of the previous step
        super().__init__(sde, prediction, clamp_x0)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", order={self.order})"

    def set_timesteps(self, num_steps: int | None = None) -> None:
        super().set_timesteps(num_steps)
        self._history = None

    def half_log_snr(self, t: int) -> float:
        """ℓ_t = log(α_t/σ̄_t) (t >= 1; σ̄_0 = 0 makes ℓ_0 infinite)."""
        return math.log(float(self.sde.alpha(t)) / float(self.sde.marginal_std(t)))

    def step(
        self,
        model_output: Tensor,
        t: Timestep,
        sample: Tensor,
        mu: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> SamplerOutput:
        """One exponential-integrator step from t to the next timestep; ``generator`` is unused."""
        t_int = _as_scalar_timestep(t)
        s = self.prev_timestep(t_int)
        if t_int == int(self.timesteps[0]):
            self._history = None  # a new trajectory
        x0_pred, _ = self.predict(model_output, t_int, sample, mu)
        data = x0_pred - mu  # D_t
        if s == 0:
            prev = x0_pred
        else:
            h = self.half_log_snr(s) - self.half_log_snr(t_int)
            if self.order == 2 and self._history is not None:
                t_prev, data_prev = self._history
                r = (self.half_log_snr(t_int) - self.half_log_snr(t_prev)) / h
                data = (1 + 0.5 / r) * data - (0.5 / r) * data_prev
            sigma_ratio = self.sde.marginal_std(s).to(sample.device) / self.sde.marginal_std(t_int).to(
                sample.device
            )
            alpha_s = self.sde.alpha(s, like=sample)
            prev = mu + sigma_ratio * (sample - mu) - alpha_s * math.expm1(-h) * data
        self._history = (t_int, x0_pred - mu)
        return SamplerOutput(prev_sample=prev.to(sample.dtype), pred_original_sample=x0_pred.to(sample.dtype))


SAMPLERS: dict[str, type[Sampler]] = {
    "posterior": PosteriorSampler,
    "sde": EulerMaruyamaSampler,
    "ode": ODESampler,
    "mr": MRSolver,
}


def build_sampler(
    name: SamplerName,
    sde: IRSDE,
    prediction: PredictionType = "noise",
    clamp_x0: bool = False,
    order: int | None = None,
) -> Sampler:
    """The sampler called ``name`` (one of :data:`SAMPLERS`) for ``sde`` and a network of ``prediction``.

    ``order`` (1 or 2) applies to the ``mr`` solver (None: 2); the other samplers are first order.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid choices: {', '.join(SAMPLERS)}")
    if name == "mr":
        return MRSolver(sde, prediction=prediction, clamp_x0=clamp_x0, order=2 if order is None else order)
    if order not in (None, 1):
        raise ValueError(f"sampler {name!r} is first order; order={order} applies to 'mr' only")
    return SAMPLERS[name](sde, prediction=prediction, clamp_x0=clamp_x0)


def sample(
    model_fn: ModelFn,
    mu: Tensor,
    sde: IRSDE,
    sampler: SamplerName | Sampler = "posterior",
    num_steps: int | None = None,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    x_T: Tensor | None = None,
    prediction: PredictionType = "noise",
    clamp_x0: bool = False,
    order: int | None = None,
) -> Tensor:
    """Restore ``mu`` (the LQ batch [B, C, H, W]) by running the reverse process from x_T down to t = 0.

    Args:
        model_fn: ``model_fn(x_t, mu, t_batch) -> network output`` (of the ``prediction`` kind), with
            ``t_batch`` a LongTensor [B]; called once per step, under ``torch.no_grad``.
        mu: the LQ images.
        sde: the IR-SDE the model was trained with.
        sampler: a name from :data:`SAMPLERS` or a ready sampler (then ``num_steps`` None keeps its schedule).
        num_steps: number of steps, 1..T (None: T for a named sampler).
        generator: source of all random draws (x_T and the per-step noise); None uses the global RNG.
        progress: show a tqdm progress bar.
        x_T: start from this state instead of drawing one.
        prediction, clamp_x0, order: the network's parametrisation, x̂_0 clamping and the solver order
            (``mr`` only), for a named sampler (a ready sampler keeps its own).

    Returns:
        The final state x_0, same shape and dtype as ``mu``.
    """
    if isinstance(sampler, str):
        scheduler = build_sampler(sampler, sde, prediction, clamp_x0, order)  # type: ignore[arg-type]
        scheduler.set_timesteps(num_steps)
    else:
        scheduler = sampler
        if num_steps is not None:
            scheduler.set_timesteps(num_steps)
    timesteps = scheduler.timesteps.tolist()
    if progress:
        from tqdm import tqdm  # lazily: the library must import without tqdm

        timesteps = tqdm(timesteps, desc=f"{type(scheduler).__name__}", leave=False)

    with torch.no_grad():
        x = scheduler.init_noise(mu, generator=generator) if x_T is None else x_T.to(mu.dtype)
        for t in timesteps:
            t_batch = torch.full((mu.shape[0],), t, dtype=torch.long, device=mu.device)
            model_output = model_fn(x, mu, t_batch)
            x = scheduler.step(model_output, t, x, mu, generator=generator).prev_sample
    return x
