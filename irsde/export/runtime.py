"""Restoring with a folder's ONNX graphs: numpy, Pillow and onnxruntime only, no PyTorch.

>>> restorer = OnnxRestorer("my_restorer/")                  # written by scripts/export.py --onnx
>>> restored = restorer(lq)                                   # (B, 3, H, W) float32 in [0, 1], same shape out

A one-pass restorer (NAFNet) is one call of ``restorer.onnx``. An IR-SDE restorer runs the ``mr`` solver
here, in numpy (:func:`mr_sample`), around the exported network step: the exponential-integrator solver of
the probability-flow ODE of :class:`irsde.diffusion.samplers.MRSolver` (first or second order), from
x_T = μ + λ·N(0, I). The SDE's tables come from its four parameters (:class:`SDETables`), as in
:class:`irsde.diffusion.sde.IRSDE`, computed in float64. The DA-CLIP embeddings come from ``daclip.onnx`` on
the CLIP input of :func:`data.clip_input.clip_input_array`, the same numbers PyTorch's path computes.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from daclip.engine.errors import UserError
from daclip.engine.folder import CONFIG_NAME, read_folder_config
from data.clip_input import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_input_array, grid_views_array
from irsde.inference.gate import keep_small_changes

__all__ = ["OnnxRestorer", "SDETables", "mr_sample", "mr_timesteps"]

#: ``(x_t, mu, t) -> network output``, numpy float32 arrays and int64 timesteps ``(B,)``.
StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class SDETables:
    """α_t = exp(−Θ_t·dt) and σ̄_t = λ·sqrt(1 − α_t²) for t = 0..T, in float64 (DESIGN.md, IR-SDE).

    θ is the cosine (θ = 1 − ᾱ, N = T + 2, s = 0.008), linear (``linspace(a·1e-4, a·0.02, T+1)``,
    a = 1000/(T+1)) or constant schedule; Θ_t = cumsum(θ)_t − θ_0 and dt = −ln(eps)/Θ_T.
    """

    def __init__(self, max_sigma: float, T: int, schedule: str, eps: float) -> None:
        if schedule == "cosine":
            x = np.linspace(0, T + 2, T + 3)
            alphas_cumprod = np.cos(((x / (T + 2)) + 0.008) / 1.008 * math.pi * 0.5) ** 2
            thetas = 1 - (alphas_cumprod / alphas_cumprod[0])[1:-1]
        elif schedule == "linear":
            scale = 1000 / (T + 1)
            thetas = np.linspace(scale * 1e-4, scale * 0.02, T + 1)
        elif schedule == "constant":
            thetas = np.ones(T + 1)
        else:
            raise ValueError(f"unknown schedule {schedule!r}")
        cumsum = np.cumsum(thetas) - thetas[0]  # Θ_t, Θ_0 = 0
        dt = -math.log(eps) / cumsum[-1]
        self.T = T
        self.max_sigma = max_sigma / 255
        self.alpha = np.exp(-cumsum * dt)  # (T+1,)
        self.sigma_bar = self.max_sigma * np.sqrt(1 - self.alpha**2)  # (T+1,), σ̄_0 = 0

    def half_log_snr(self, t: int) -> float:
        """ℓ_t = log(α_t/σ̄_t), t >= 1."""
        return math.log(self.alpha[t] / self.sigma_bar[t])


def mr_timesteps(tables: SDETables, num_steps: int | None, grid: str = "uniform") -> list[int]:
    """The descending timesteps of :func:`irsde.diffusion.samplers.make_timesteps`: T..1 for T steps, [T] for
    one, else ``uniform`` (rounded ``linspace(T, 1, n)``) or ``logsnr`` (evenly spaced in ℓ, kept distinct)."""
    T = tables.T
    n = T if num_steps is None else int(num_steps)
    if not 1 <= n <= T:
        raise ValueError(f"num_steps must be in 1..{T}, got {num_steps}")
    if n == T:
        return list(range(T, 0, -1))
    if n == 1:
        return [T]
    if grid == "uniform":
        return [int(v) for v in np.floor(np.linspace(float(T), 1.0, n) + 0.5)]
    if grid != "logsnr":
        raise ValueError(f"unknown timestep grid {grid!r}")
    ell = np.array([tables.half_log_snr(t) for t in range(1, T + 1)])  # ℓ_1..ℓ_T
    targets = np.linspace(ell[-1], ell[0], n)
    nearest = (np.abs(ell[None, :] - targets[:, None]).argmin(axis=1) + 1).tolist()
    steps = [T]
    for i, t in enumerate(nearest[1:], start=1):
        steps.append(max(n - i, min(t, steps[-1] - 1)))
    return steps


def _predict_x0(
    output: np.ndarray,
    x: np.ndarray,
    mu: np.ndarray,
    t: int,
    tables: SDETables,
    prediction: str,
    clamp_x0: bool,
) -> np.ndarray:
    """x̂_0 from the network output: x̂_0 − μ = (y_t − σ̄_t·ε̂)/α_t for noise, μ + output for residual."""
    if prediction == "noise":
        x0 = (x - mu - tables.sigma_bar[t] * output) / tables.alpha[t] + mu
    else:
        x0 = output if prediction == "x0" else mu + output
    return np.clip(x0, 0.0, 1.0) if clamp_x0 else x0


def mr_sample(
    step: StepFn,
    mu: np.ndarray,
    x_T: np.ndarray,
    tables: SDETables,
    timesteps: list[int],
    prediction: str = "noise",
    clamp_x0: bool = False,
    order: int = 2,
) -> np.ndarray:
    """The ``mr`` solver from x_T (:class:`irsde.diffusion.samplers.MRSolver`, data-prediction form).

    With y = x − μ, D = x̂_0 − μ and h = ℓ_s − ℓ_t for a step from t to s < t::

        y_s = (σ̄_s/σ̄_t)·y_t − α_s·(e^{−h} − 1)·D_t                       (first order)
        D_t -> (1 + 1/(2r))·D_t − 1/(2r)·D_prev,  r = h_prev/h               (second order, multistep)

    The first step has no history and the last one (s = 0) returns x̂_0: both first order.
    """
    x = x_T.astype(np.float64)
    mu64 = mu.astype(np.float64)
    history: tuple[int, np.ndarray] | None = None
    for index, t in enumerate(timesteps):
        s = timesteps[index + 1] if index + 1 < len(timesteps) else 0
        t_batch = np.full((mu.shape[0],), t, dtype=np.int64)
        output = step(x.astype(np.float32), mu, t_batch).astype(np.float64)
        x0 = _predict_x0(output, x, mu64, t, tables, prediction, clamp_x0)
        data = x0 - mu64
        if s == 0:
            x = x0
            break
        h = tables.half_log_snr(s) - tables.half_log_snr(t)
        if order == 2 and history is not None:
            r = (tables.half_log_snr(t) - tables.half_log_snr(history[0])) / h
            data = (1 + 0.5 / r) * data - (0.5 / r) * history[1]
        history = (t, x0 - mu64)
        x = (
            mu64
            + (tables.sigma_bar[s] / tables.sigma_bar[t]) * (x - mu64)
            - tables.alpha[s] * math.expm1(-h) * data
        )
    return x.astype(np.float32)


#: The eight orientations of the self-ensemble, in the PyTorch path's order: (transposed, flipped axes).
ORIENTATIONS: tuple[tuple[bool, tuple[int, ...]], ...] = tuple(
    (transpose, axes) for transpose in (False, True) for axes in ((), (-1,), (-2,), (-2, -1))
)


def _orient(a: np.ndarray, transpose: bool, axes: tuple[int, ...]) -> np.ndarray:
    """``a`` (..., H, W) transposed (if asked), then flipped along ``axes``."""
    a = np.swapaxes(a, -2, -1) if transpose else a
    return np.ascontiguousarray(np.flip(a, axes) if axes else a)


def _unorient(a: np.ndarray, transpose: bool, axes: tuple[int, ...]) -> np.ndarray:
    """Undo :func:`_orient`."""
    a = np.flip(a, axes) if axes else a
    return np.swapaxes(a, -2, -1) if transpose else a


class OnnxRestorer:
    """A model folder's ONNX graphs in onnxruntime sessions, restoring numpy batches.

    Args:
        folder: a folder written by ``scripts/export.py --onnx``.
        providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads of each session (None: onnxruntime's default).
    """

    def __init__(
        self, folder: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None
    ) -> None:
        self.folder = Path(folder)
        config = read_folder_config(self.folder)
        graphs = config.get("onnx")
        if not isinstance(graphs, dict) or not graphs.get("restorer"):
            raise UserError(
                f"{self.folder / CONFIG_NAME}: no ONNX graphs (export with scripts/export.py --onnx)"
            )
        self.config = config
        self.one_pass = config.get("sde") is None
        self.pad_multiple = int(graphs.get("pad_multiple", 1))
        self.sampling = dict(config.get("sampling") or {})
        if self.sampling.get("hole_fill"):
            # The fill follows DA-CLIP's zero-shot answer; the graphs hold DA-CLIP's encoders, not its classifier.
            warnings.warn(
                f"{self.folder}: this restorer fills the holes of images DA-CLIP calls uncompleted "
                "(sampling.hole_fill); the ONNX runner has no classifier and does not (the PyTorch path does)",
                stacklevel=2,
            )
        self.prediction = str(config.get("model", {}).get("prediction", "noise"))
        self.tables = None if self.one_pass else SDETables(**config["sde"])
        self.restorer = self._session(graphs["restorer"], providers, threads)
        self.inputs = [i.name for i in self.restorer.get_inputs()]
        self.daclip = self._session(graphs["daclip"], providers, threads) if graphs.get("daclip") else None
        clip = config.get("daclip") or {}
        self.clip_size = int(clip.get("image_size", 224))
        self.clip_mean = tuple(clip.get("mean", OPENAI_CLIP_MEAN))
        self.clip_std = tuple(clip.get("std", OPENAI_CLIP_STD))
        #: The grid side of DA-CLIP's views when the restorer is conditioned on them (0: the resized image).
        self.clip_views = int(clip.get("views", 1)) if config.get("clip_input") == "views" else 0

    def _session(self, relative: str, providers: list[str] | None, threads: int | None) -> Any:
        import onnxruntime

        path = self.folder / relative
        if not path.is_file():
            raise UserError(f"{path}: missing (the model folder is incomplete; export it again)")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            return onnxruntime.InferenceSession(
                str(path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"{path}: not a loadable ONNX graph ({first})") from None

    def embed(self, lq: np.ndarray) -> dict[str, np.ndarray]:
        """The DA-CLIP inputs of ``restorer.onnx`` for ``lq`` (B, 3, H, W) in [0, 1] (none without DA-CLIP)."""
        if self.daclip is None:
            return {}
        size, mean, std = self.clip_size, self.clip_mean, self.clip_std
        if self.clip_views:  # the mean embedding over the grid of native crops, as the PyTorch path
            views = np.stack(
                [grid_views_array(i.transpose(1, 2, 0), size, self.clip_views, mean, std) for i in lq]
            )
            content_emb, degra_emb = self.daclip.run(
                None, {"clip_images": views.reshape(-1, *views.shape[2:])}
            )
            content_emb = content_emb.reshape(*views.shape[:2], -1).mean(1)
            degra_emb = degra_emb.reshape(*views.shape[:2], -1).mean(1)
        else:
            clip = np.stack(
                [clip_input_array(i.transpose(1, 2, 0), size, mean, std) for i in lq]
            )  # (B, 3, S, S)
            content_emb, degra_emb = self.daclip.run(None, {"clip_images": clip})
        found = {"content_emb": content_emb, "degra_emb": degra_emb}
        return {name: found[name] for name in self.inputs if name in found}

    def step(self, embeddings: dict[str, np.ndarray]) -> StepFn:
        """``(x_t, mu, t) -> network output`` of an IR-SDE restorer, with the embeddings bound."""
        return lambda x, mu, t: self.restorer.run(None, {"x_t": x, "mu": mu, "t": t, **embeddings})[0]

    def __call__(
        self,
        lq: np.ndarray,
        *,
        num_steps: int | None = None,
        order: int | None = None,
        seed: int = 0,
        x_T: np.ndarray | None = None,
        self_ensemble: bool | None = None,
        min_change: float | None = None,
    ) -> np.ndarray:
        """Restore ``lq`` (B, 3, H, W) float32 in [0, 1]; returns the restored batch clamped to [0, 1].

        An IR-SDE restorer is sampled with ``mr`` at ``num_steps`` (None: the folder's steps) of ``order``
        (None: the folder's, else 2), from ``x_T`` or μ + λ·N(0, I) drawn with ``seed``. ``self_ensemble``
        (None: the folder's) averages the restorations of the image's eight flips/transposes, each undone,
        with one DA-CLIP embedding of the image as given (and ``x_T`` flipped with it), as the PyTorch path.
        ``min_change`` (None: the folder's) gives back the input wherever a 64-px window changes by less
        (grey levels RMS; :func:`irsde.inference.gate.keep_small_changes`, as the PyTorch path).
        """
        lq = np.ascontiguousarray(lq, dtype=np.float32)
        if lq.ndim != 4 or lq.shape[1] != 3 or min(lq.shape[2:]) < self.pad_multiple:
            raise ValueError(f"expected images (B, 3, H, W) with H, W >= {self.pad_multiple}, got {lq.shape}")
        embeddings = self.embed(lq)
        if not self.one_pass and x_T is None:
            noise = np.random.default_rng(seed).standard_normal(lq.shape)
            x_T = (lq + self.tables.max_sigma * noise).astype(np.float32)
        if self_ensemble is None:
            self_ensemble = bool(self.sampling.get("self_ensemble", False))
        if min_change is None:
            min_change = float(self.sampling.get("min_change", 0.0))
        if not self_ensemble:
            restored = np.clip(self._restore(lq, x_T, embeddings, num_steps, order), 0.0, 1.0)
            return keep_small_changes(lq, restored, min_change)
        total = np.zeros_like(lq)
        for transpose, axes in ORIENTATIONS:
            start = None if x_T is None else _orient(x_T, transpose, axes)
            out = self._restore(_orient(lq, transpose, axes), start, embeddings, num_steps, order)
            total += _unorient(out, transpose, axes)
        return keep_small_changes(lq, np.clip(total / 8, 0.0, 1.0), min_change)

    def _restore(
        self,
        lq: np.ndarray,
        x_T: np.ndarray | None,
        embeddings: dict[str, np.ndarray],
        num_steps: int | None,
        order: int | None,
    ) -> np.ndarray:
        """One restoration of ``lq`` (unclamped), from ``x_T`` for an IR-SDE restorer."""
        if self.one_pass:
            return self.restorer.run(None, {"lq": lq, **embeddings})[0]
        assert x_T is not None and self.tables is not None
        steps = num_steps if num_steps is not None else self.sampling.get("num_steps")
        timesteps = mr_timesteps(self.tables, steps, self.sampling.get("grid", "uniform"))
        order = order or self.sampling.get("order") or 2
        clamp = bool(self.sampling.get("clamp_x0", False))
        return mr_sample(
            self.step(embeddings), lq, x_T, self.tables, timesteps, self.prediction, clamp, order
        )
