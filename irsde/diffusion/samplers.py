"""Reverse-time samplers for the IR-SDE, as diffusers-like scheduler objects.

A sampler holds no model and is not an ``nn.Module``: ``set_timesteps(n)`` chooses the descending timesteps,
``step(model_output, t, sample, mu)`` takes the network's output at ``t`` and returns the state at the next
timestep, and ``init_noise(mu)`` draws x_T. :func:`sample` runs the whole loop.

Parametrisations: ``prediction`` says what the network outputs (``noise``, ``x0`` or ``residual`` = x_0 − μ,
see :data:`irsde.diffusion.sde.PredictionType`); every sampler turns the output into x̂_0 and ε̂ with the identities
x̂_0 − μ = (y_t − σ̄_t·ε̂)/α_t, y_t = x_t − μ. With ``clamp_x0`` the x̂_0 is clamped to the data range [0, 1]
before it is used, and ε̂ is recomputed from the clamped x̂_0, so every step (posterior, Euler, solver)
sees one consistent prediction. The paper's setting (``noise``, no clamp) takes the official formulas
unchanged.

Timesteps: with ``num_steps = T`` (the default) they are T, T−1, ..., 1 and every step goes from t to t − 1,
exactly as the official ``reverse_posterior`` / ``reverse_sde`` / ``reverse_ode`` loops. With fewer steps they
are ``num_steps`` distinct integers from T down to 1, both ends included (T alone for one step), and the
last step always goes to t = 0. ``num_steps`` is the number of network evaluations (NFE). How they are
spaced is the sampler's ``grid`` (the same choice for every sampler, see :func:`make_timesteps`):
``uniform`` (the default, evenly spaced in t) or ``logsnr`` (evenly spaced in the half log-SNR of the SDE).

Random draws use ``torch.randn`` with the caller's ``generator``; without one they come from the global RNG
in the same order and shape as the official ``torch.randn_like`` calls, so a seeded official run is
reproduced draw for draw. The ``mr`` solver draws nothing after x_T: given x_T it is deterministic. The
``mr-sde`` solver draws one N(0, I) per step except the last.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast, get_args

import torch
from torch import Tensor

from irsde.diffusion.sde import IRSDE, PredictionType, Timestep

__all__ = [
    "DATA_RANGE",
    "GRIDS",
    "HIGHER_ORDER_SAMPLERS",
    "SAMPLERS",
    "EulerMaruyamaSampler",
    "GridName",
    "MRSDESolver",
    "MRSolver",
    "ODESampler",
    "PosteriorSampler",
    "Sampler",
    "SamplerName",
    "SamplerOutput",
    "SamplerSpec",
    "build_sampler",
    "check_sampler_options",
    "half_log_snr_table",
    "logsnr_timesteps",
    "make_timesteps",
    "sample",
]

SamplerName = Literal["posterior", "sde", "ode", "mr", "mr-sde"]
#: How the timesteps of a run with fewer steps than T are spaced (see :func:`make_timesteps`).
GridName = Literal["uniform", "logsnr"]
GRIDS: tuple[str, ...] = get_args(GridName)
#: The samplers that take an ``order`` (1 or 2); every other sampler is first order.
HIGHER_ORDER_SAMPLERS: tuple[str, ...] = ("mr", "mr-sde")
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


def make_timesteps(
    T: int, num_steps: int | None = None, grid: GridName = "uniform", *, sde: IRSDE | None = None
) -> Tensor:
    """Descending LongTensor of ``num_steps`` distinct timesteps in 1..T, starting at T (and ending at 1).

    ``num_steps`` None or T gives T, T−1, ..., 1 and 1 gives [T], whatever the grid. Otherwise ``grid``:

    - ``"uniform"`` (the default): evenly spaced in t, ``floor(linspace(T, 1, num_steps) + 0.5)``; since the
      spacing is at least 1 the values are distinct, and T and 1 are always included.
    - ``"logsnr"``: evenly spaced in the half log-SNR ℓ_t = log(α_t/σ̄_t) of ``sde`` (required, with
      ``sde.T == T``; see :func:`logsnr_timesteps`). ℓ_0 is infinite, so the targets run from ℓ_T to ℓ_1.
    """
    if grid not in GRIDS:
        raise ValueError(f"unknown timestep grid {grid!r}; valid choices: {', '.join(GRIDS)}")
    if num_steps is None:
        num_steps = T
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an integer in 1..{T} (T of the SDE), got {num_steps!r}")
    if grid == "logsnr":
        if sde is None or sde.T != T:
            raise ValueError(f"the logsnr grid needs the IR-SDE (with T = {T}) whose half log-SNR it spaces")
    if num_steps == T:
        return torch.arange(T, 0, -1, dtype=torch.long)
    if num_steps == 1:
        return torch.tensor([T], dtype=torch.long)
    if grid == "logsnr":
        return logsnr_timesteps(sde, num_steps)  # type: ignore[arg-type]
    points = torch.linspace(float(T), 1.0, num_steps, dtype=torch.float64)
    return torch.floor(points + 0.5).long()


def half_log_snr_table(sde: IRSDE) -> Tensor:
    """ℓ_t = log(α_t/σ̄_t) for t = 0..T in float64 (ℓ_0 = +inf), strictly decreasing in t.

    Computed from the SDE's parameters in float64, so that the grid does not depend on the dtype the SDE
    computes in: ℓ_t = −Θ_t·dt − log λ − ½·log(1 − exp(−2Θ_t·dt)).
    """
    exact = sde.to(device="cpu", dtype=torch.float64)
    exponent = exact.thetas_cumsum * exact.dt  # Θ_t·dt
    return -exponent - math.log(exact.max_sigma) - 0.5 * torch.log(-torch.expm1(-2 * exponent))


def logsnr_timesteps(sde: IRSDE, num_steps: int) -> Tensor:
    """``num_steps`` (2..T) timesteps of ``sde`` evenly spaced in the half log-SNR, T and 1 included.

    The targets are ``linspace(ℓ_T, ℓ_1, num_steps)``; each takes the timestep whose ℓ_t is nearest. Where
    ℓ changes slowly in t (near t = T for most schedules) two targets can round to the same timestep; then
    step i takes ``max(num_steps − i, min(nearest_i, t_{i−1} − 1))``: one below its predecessor at least, and
    high enough to leave a distinct timestep for every later step. The values are therefore distinct, the
    count is ``num_steps``, and the grid is as close to even in ℓ as integers allow.
    """
    T = sde.T
    if not 2 <= num_steps <= T:
        raise ValueError(f"num_steps must be an integer in 2..{T} for a logsnr grid, got {num_steps!r}")
    table = half_log_snr_table(sde)[1:]  # ℓ_1..ℓ_T
    targets = torch.linspace(float(table[-1]), float(table[0]), num_steps, dtype=torch.float64)
    nearest = ((table[None, :] - targets[:, None]).abs().argmin(dim=1) + 1).tolist()
    steps = [T]
    for i, t in enumerate(nearest[1:], start=1):
        steps.append(max(num_steps - i, min(t, steps[-1] - 1)))
    return torch.tensor(steps, dtype=torch.long)


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


def _randn_like(x: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> Tensor:
    """Standard normal noise shaped like ``x``; a sequence of generators draws each image's own noise
    (so an image's noise does not depend on its place in the batch)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]} images")
        rows = [torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=x.device) for g in generator]
        return torch.stack(rows)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


class Sampler(abc.ABC):
    """Common part of the samplers: the timestep grid and the initial state.

    Args:
        sde: the IR-SDE to reverse.
        prediction: what the network outputs (``noise``, ``x0`` or ``residual``).
        clamp_x0: clamp x̂_0 to :data:`DATA_RANGE` (and recompute ε̂ from it) before every step.
        grid: how fewer than T timesteps are spaced, ``uniform`` or ``logsnr`` (see :func:`make_timesteps`).

    Attributes:
        timesteps: descending LongTensor (on the CPU) of the timesteps to visit; set by :meth:`set_timesteps`.
        grid: the spacing :meth:`set_timesteps` uses.
    """

    name: SamplerName

    def __init__(
        self,
        sde: IRSDE,
        prediction: PredictionType = "noise",
        clamp_x0: bool = False,
        grid: GridName = "uniform",
    ) -> None:
        self.sde = sde
        self.prediction: PredictionType = sde.check_prediction(prediction)
        self.clamp_x0 = bool(clamp_x0)
        self.grid: GridName = grid
        self.timesteps: Tensor
        self._next: dict[int, int]
        self.set_timesteps(None)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sde={self.sde!r}, num_steps={self.num_steps}, grid={self.grid!r}, "
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

    def set_timesteps(self, num_steps: int | None = None, grid: GridName | None = None) -> None:
        """Use ``num_steps`` steps (1..T; None means T, the official schedule) spaced by ``grid``.

        ``grid`` None keeps the sampler's grid; a value replaces it (for this and later calls).
        """
        grid = self.grid if grid is None else grid
        self.timesteps = make_timesteps(self.sde.T, num_steps, grid, sde=self.sde)
        self.grid = grid
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
        grid: GridName = "uniform",
    ) -> None:
        super().__init__(sde, prediction, clamp_x0, grid)
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
        sde, prediction, clamp_x0, grid: as for every sampler.
        order: 1 or 2.
    """

    name: SamplerName = "mr"

    def __init__(
        self,
        sde: IRSDE,
        prediction: PredictionType = "noise",
        clamp_x0: bool = False,
        order: int = 2,
        grid: GridName = "uniform",
    ) -> None:
        if order not in (1, 2):
            raise ValueError(f"{type(self).__name__}: order must be 1 or 2, got {order!r}")
        self.order = order
        self._history: tuple[int, Tensor] | None = None  # (t, D_t) of the previous step
        super().__init__(sde, prediction, clamp_x0, grid)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", order={self.order})"

    def set_timesteps(self, num_steps: int | None = None, grid: GridName | None = None) -> None:
        super().set_timesteps(num_steps, grid)
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
        """One exponential-integrator step from t to the next (``generator``: the noise of ``mr-sde``)."""
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
            prev = self._update(sample, mu, data, t_int, s, h, generator)
        self._history = (t_int, x0_pred - mu)
        return SamplerOutput(prev_sample=prev.to(sample.dtype), pred_original_sample=x0_pred.to(sample.dtype))

    def _update(
        self, x: Tensor, mu: Tensor, data: Tensor, t: int, s: int, h: float, generator: torch.Generator | None
    ) -> Tensor:
        """x_s from x_t = ``x`` and the (possibly extrapolated) data prediction D over h = ℓ_s − ℓ_t."""
        sigma_ratio, alpha_s = self._coefficients(x, t, s)
        return mu + sigma_ratio * (x - mu) - alpha_s * math.expm1(-h) * data

    def _coefficients(self, x: Tensor, t: int, s: int) -> tuple[Tensor, Tensor]:
        """(σ̄_s/σ̄_t, α_s) on ``x``'s device."""
        sigma_ratio = self.sde.marginal_std(s).to(x.device) / self.sde.marginal_std(t).to(x.device)
        return sigma_ratio, self.sde.alpha(s, like=x)


class MRSDESolver(MRSolver):
    """Exponential-integrator solver of the reverse SDE, first or second order (stochastic ``mr``).

    Same notation as :class:`MRSolver` (y = x − μ, D = x̂_0 − μ, ℓ_t = log(α_t/σ̄_t), h = ℓ_s − ℓ_t > 0 for a
    step from t to s < t). The reverse SDE's linear part and its noise integrate exactly in ℓ; with the
    data prediction held fixed over the step this is the first-order SDE-DPM-Solver++ of Lu et al. 2022
    (DPM-Solver++, arXiv 2211.01095) for this variance-preserving-like process, the SDE solver of the MR
    Sampler (Li et al. 2025, arXiv 2502.07856)::

        first order:   y_s = (σ̄_s/σ̄_t)·e^{−h}·y_t + α_s·(1 − e^{−2h})·D_t + σ̄_s·sqrt(1 − e^{−2h})·z
        second order:  the same with D_t replaced by D_t + (1/(2r))·(D_t − D_prev), r = h_prev/h

    with z ~ N(0, I) drawn from the step's ``generator`` (multistep: one network evaluation per step; the
    first step and the last one, s = 0, which returns x̂_0 and draws nothing, are first order).

    Exactness: e^{−h} = α_t·σ̄_s/(σ̄_t·α_s), so (σ̄_s/σ̄_t)·e^{−h}·α_t = α_s·e^{−2h} and
    (σ̄_s/σ̄_t)·e^{−h}·σ̄_t = σ̄_s·e^{−h}. With the true x_0 (D constant) and y_t = α_t·D + σ̄_t·ε the update
    gives mean α_s·(e^{−2h} + 1 − e^{−2h})·D = α_s·D and variance σ̄_s²·(e^{−2h} + 1 − e^{−2h}) = σ̄_s²: the
    exact marginal at s, at any step size. Moreover 1 − e^{−2h} = (1 − A²)/(1 − B²) with A = α_t/α_s and
    B = α_t, so first order is the optimal posterior q(x_s | x_t, x̂_0) of :class:`PosteriorSampler`
    written in ℓ (same mean, same std, same draws); the second order adds the multistep correction.

    Args:
        sde, prediction, clamp_x0, grid: as for every sampler.
        order: 1 or 2.
    """

    name: SamplerName = "mr-sde"

    def _update(
        self, x: Tensor, mu: Tensor, data: Tensor, t: int, s: int, h: float, generator: torch.Generator | None
    ) -> Tensor:
        sigma_ratio, alpha_s = self._coefficients(x, t, s)
        noise_std = self.sde.marginal_std(s).to(x.device) * math.sqrt(-math.expm1(-2 * h))
        return (
            mu
            + (sigma_ratio * math.exp(-h)) * (x - mu)
            - alpha_s * math.expm1(-2 * h) * data
            + noise_std * _randn_like(x, generator)
        )


SAMPLERS: dict[str, type[Sampler]] = {
    "posterior": PosteriorSampler,
    "sde": EulerMaruyamaSampler,
    "ode": ODESampler,
    "mr": MRSolver,
    "mr-sde": MRSDESolver,
}


def check_sampler_options(name: str, order: int | None = None, grid: str = "uniform") -> None:
    """ValueError (one line naming the valid choices) unless ``name``, ``order`` and ``grid`` fit together."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid choices: {', '.join(SAMPLERS)}")
    if grid not in GRIDS:
        raise ValueError(f"unknown timestep grid {grid!r}; valid choices: {', '.join(GRIDS)}")
    if name in HIGHER_ORDER_SAMPLERS:
        if order not in (None, 1, 2):
            raise ValueError(f"sampler {name!r}: order must be 1 or 2, got {order!r}")
    elif order not in (None, 1):
        solvers = " and ".join(HIGHER_ORDER_SAMPLERS)
        raise ValueError(f"sampler {name!r} is first order; order={order} applies to {solvers} only")


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler setting (to time or to evaluate): ``name``, NFE (None: T), order (None: the default) and
    timestep grid (None: the run's ``sampling.grid`` / ``--grids``)."""

    name: str
    nfe: int | None = None
    order: int | None = None
    grid: GridName | None = None

    @classmethod
    def parse(cls, text: str) -> SamplerSpec:
        """``NAME[:NFE[:ORDER[:GRID]]]``, e.g. ``posterior:100``, ``mr:10``, ``mr-sde:5:1``, ``mr:10:2:logsnr``;
        ValueError otherwise."""
        parts = text.strip().split(":")
        if not 1 <= len(parts) <= 4 or not parts[0]:
            raise ValueError(
                f"sampler spec {text!r}: expected NAME[:NFE[:ORDER[:GRID]]], e.g. mr:10, mr-sde:5:1 or mr:10:2:logsnr"
            )
        grid = parts.pop(3) if len(parts) == 4 else None
        try:
            numbers = [int(p) for p in parts[1:]]
        except ValueError:
            raise ValueError(f"sampler spec {text!r}: NFE and ORDER must be integers") from None
        if grid is not None and grid not in GRIDS:
            raise ValueError(
                f"sampler spec {text!r}: unknown grid {grid!r}; valid choices: {', '.join(GRIDS)}"
            )
        spec = cls(parts[0], *numbers, grid=grid)  # type: ignore[arg-type]
        check_sampler_options(spec.name, spec.order, grid or "uniform")
        if spec.nfe is not None and spec.nfe < 1:
            raise ValueError(f"sampler spec {text!r}: NFE must be at least 1")
        return spec

    @property
    def label(self) -> str:
        """The spec as written, ``NAME[:NFE[:ORDER[:GRID]]]`` (an order of None written as the default's)."""
        text = self.name + (f":{self.nfe}" if self.nfe else "")
        if self.order or self.grid:
            text += f":{self.order or self.effective_order}"
        return text + (f":{self.grid}" if self.grid else "")

    @property
    def effective_order(self) -> int:
        if self.name in HIGHER_ORDER_SAMPLERS:
            return 2 if self.order is None else self.order
        return 1


def build_sampler(
    name: SamplerName,
    sde: IRSDE,
    prediction: PredictionType = "noise",
    clamp_x0: bool = False,
    order: int | None = None,
    grid: GridName = "uniform",
) -> Sampler:
    """The sampler called ``name`` (one of :data:`SAMPLERS`) for ``sde`` and a network of ``prediction``.

    ``order`` (1 or 2) applies to the ``mr`` and ``mr-sde`` solvers (None: 2); the other samplers are first
    order. ``grid`` spaces the timesteps (see :func:`make_timesteps`).
    """
    check_sampler_options(name, order, grid)
    if name in HIGHER_ORDER_SAMPLERS:
        solver = cast(type[MRSolver], SAMPLERS[name])
        return solver(sde, prediction, clamp_x0, order=2 if order is None else order, grid=grid)
    return SAMPLERS[name](sde, prediction=prediction, clamp_x0=clamp_x0, grid=grid)


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
    grid: GridName | None = None,
) -> Tensor:
    """Restore ``mu`` (the LQ batch [B, C, H, W]) by running the reverse process from x_T down to t = 0.

    Args:
        model_fn: ``model_fn(x_t, mu, t_batch) -> network output`` (of the ``prediction`` kind), with
            ``t_batch`` a LongTensor [B]; called once per step, under ``torch.no_grad``.
        mu: the LQ images.
        sde: the IR-SDE the model was trained with.
        sampler: a name from :data:`SAMPLERS` or a ready sampler (then ``num_steps`` None keeps its schedule).
        num_steps: number of steps, 1..T (None: T for a named sampler).
        generator: source of all random draws (x_T and the per-step noise), or a list of one per image
            of the batch; None uses the global RNG.
        progress: show a tqdm progress bar.
        x_T: start from this state instead of drawing one.
        prediction, clamp_x0, order: the network's parametrisation, x̂_0 clamping and the solver order
            (``mr`` and ``mr-sde`` only), for a named sampler (a ready sampler keeps its own).
        grid: the timestep spacing, ``uniform`` or ``logsnr`` (None: ``uniform`` for a named sampler, its own
            grid for a ready one).

    Returns:
        The final state x_0, same shape and dtype as ``mu``.
    """
    if isinstance(sampler, str):
        name = cast(SamplerName, sampler)
        scheduler = build_sampler(name, sde, prediction, clamp_x0, order, grid or "uniform")
        scheduler.set_timesteps(num_steps)
    else:
        scheduler = sampler
        if num_steps is not None or grid is not None:
            scheduler.set_timesteps(scheduler.num_steps if num_steps is None else num_steps, grid)
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
