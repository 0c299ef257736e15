"""Training losses of the restorers: the IR-SDE network's, and the pixel losses of one-pass restorers.

All losses share one call signature, ``loss(model_output, xt, x0, mu, t, noise=None)``, so a trainer can
swap them through :func:`build_loss` without other changes. ``model_output`` is of the network's
parametrisation (``prediction``: ``noise``, ``x0`` or ``residual``); each loss turns it into what it compares
(ε̂, the reverse-step mean, or x̂_0) with the identities of :class:`irsde.diffusion.sde.IRSDE`. All reduce like the
official ``MatchingLoss`` (unweighted): the element-wise error is averaged per sample, then over the batch.

Which to use: ``ml`` with ``noise`` is the paper's (and the released model's) objective. For the data
predictions, ``x0`` (L1 on x̂_0) weights every timestep alike; ``ml`` would weight the x̂_0 error by the
posterior coefficient of x_0, which is tiny at large t, and learn little there.

A one-pass restorer (NAFNet) compares its output with the GT directly: :class:`PixelLoss`, L1, L2 or
the PSNR loss NAFNet trains with (``10·log10`` of each image's MSE, averaged: minimising it maximises
the mean PSNR).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from irsde.diffusion.sde import IRSDE, PredictionType, Timestep

__all__ = [
    "LOSSES",
    "DataMatchingLoss",
    "LossKind",
    "LossName",
    "MaximumLikelihoodLoss",
    "NoiseMatchingLoss",
    "PixelLoss",
    "build_loss",
    "default_loss",
]

LossKind = Literal["l1", "l2"]
LossName = Literal["ml", "noise", "x0"]

_KINDS: tuple[str, ...] = get_args(LossKind)


def _check_kind(kind: str, kinds: tuple[str, ...] = _KINDS) -> LossKind:
    """``kind`` if it is one of ``kinds`` (default: the IR-SDE losses' l1 and l2), else a ValueError."""
    if kind not in kinds:
        raise ValueError(f"unknown loss kind {kind!r}; valid choices: {', '.join(kinds)}")
    return kind  # type: ignore[return-value]


#: The errors of the x0 loss and of a one-pass restorer: l1, l2 and ``psnr``, ``10·log10(MSE + ε)``.
DataKind = Literal["l1", "l2", "psnr"]

#: NAFNet's ε: the PSNR loss of the NAFNet paper, unbounded up to 80 dB.
PSNR_EPS = 1e-8


def _per_sample_error(prediction: Tensor, target: Tensor, kind: str, psnr_eps: float = PSNR_EPS) -> Tensor:
    """Mean absolute (l1) or squared (l2) error of each sample, or (psnr) ``10·log10(MSE + psnr_eps)``,
    minus the PSNR of images in [0, 1]: [B, ...] -> [B].

    The psnr gradient weighs each sample by ``1 / (MSE + ε)``: with NAFNet's ε = 1e-8 a sample that is
    nearly right (a clean identity pair) outweighs one that is 10 dB off by up to a million times; a
    larger ε caps that at ``1 / ε`` (1e-3: samples better than 30 dB weigh alike).
    """
    if kind == "l1":
        error = F.l1_loss(prediction, target, reduction="none")
    else:
        error = F.mse_loss(prediction, target, reduction="none")
    error = error.flatten(1).mean(dim=1)
    if kind == "psnr":
        return (10.0 / math.log(10.0)) * torch.log(error + psnr_eps)
    return error


class _PerSampleLoss(nn.Module):
    """Shared reduction: ``per_sample`` (one value per sample, [B]) averaged over the batch."""

    kind: LossKind
    prediction: PredictionType

    def per_sample(self, model_output: Tensor, xt: Tensor, x0: Tensor, mu: Tensor, t: Timestep) -> Tensor:
        raise NotImplementedError

    def forward(
        self,
        model_output: Tensor,
        xt: Tensor,
        x0: Tensor,
        mu: Tensor,
        t: Timestep,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss; ``noise`` is accepted for a common signature and not used."""
        return self.per_sample(model_output, xt, x0, mu, t).mean()

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, prediction={self.prediction!r}"


class MaximumLikelihoodLoss(_PerSampleLoss):
    """The IR-SDE "maximum-likelihood" objective (Luo et al. 2023, eq. 11).

    The network's noise is turned into a score, the reverse-SDE step mean x_t − drift is taken, and it is
    matched against the optimal posterior mean E[x_{t−1} | x_t, x_0] computed with the true x_0.

    Args:
        sde: the IR-SDE whose schedule defines both means.
        kind: ``"l1"`` (the released model) or ``"l2"``.
        prediction: the network's parametrisation (``noise`` for the released model).
    """

    def __init__(self, sde: IRSDE, kind: LossKind = "l1", prediction: PredictionType = "noise") -> None:
        super().__init__()
        self.sde = sde
        self.kind = _check_kind(kind)
        self.prediction = sde.check_prediction(prediction)

    def per_sample(self, model_output: Tensor, xt: Tensor, x0: Tensor, mu: Tensor, t: Timestep) -> Tensor:
        """The loss of each sample, shape [B]."""
        noise_pred = self.sde.predict_noise(model_output, xt, mu, t, self.prediction)
        score = self.sde.noise_to_score(noise_pred, t)
        xt_prev_pred = self.sde.reverse_sde_step_mean(xt, mu, t, score)
        xt_prev_opt = self.sde.posterior_mean(xt, x0, mu, t)
        return _per_sample_error(xt_prev_pred, xt_prev_opt, self.kind)


class NoiseMatchingLoss(nn.Module):
    """L1/L2 between the predicted and the true noise (the simpler alternative objective).

    The true noise is ``noise`` when the caller passes it (the draw given to ``IRSDE.add_noise``);
    otherwise it is recovered from (x_t, x_0, μ, t), which needs ``sde``.

    Args:
        kind: ``"l1"`` or ``"l2"``.
        sde: needed when the true noise is not passed in, or the network does not predict noise.
        prediction: the network's parametrisation.
    """

    def __init__(
        self, kind: LossKind = "l1", sde: IRSDE | None = None, prediction: PredictionType = "noise"
    ) -> None:
        super().__init__()
        self.kind = _check_kind(kind)
        self.sde = sde
        self.prediction = IRSDE.check_prediction(prediction)
        if prediction != "noise" and sde is None:
            raise ValueError(f"NoiseMatchingLoss: prediction {prediction!r} needs the sde")

    def per_sample(
        self,
        model_output: Tensor,
        xt: Tensor | None = None,
        x0: Tensor | None = None,
        mu: Tensor | None = None,
        t: Timestep | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """The loss of each sample, shape [B]."""
        if noise is None:
            if self.sde is None or xt is None or x0 is None or mu is None or t is None:
                raise ValueError(
                    "NoiseMatchingLoss: pass the true noise, or build the loss with an sde "
                    "and pass xt, x0, mu, t"
                )
            noise = self.sde.noise_from_x0(xt, x0, mu, t)
        noise_pred = model_output
        if self.prediction != "noise":
            if xt is None or mu is None or t is None:
                raise ValueError("NoiseMatchingLoss: a data prediction needs xt, mu and t")
            noise_pred = self.sde.predict_noise(model_output, xt, mu, t, self.prediction)  # type: ignore[union-attr]
        return _per_sample_error(noise_pred, noise, self.kind)

    def forward(
        self,
        model_output: Tensor,
        xt: Tensor | None = None,
        x0: Tensor | None = None,
        mu: Tensor | None = None,
        t: Timestep | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss."""
        return self.per_sample(model_output, xt, x0, mu, t, noise).mean()

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, prediction={self.prediction!r}"


class DataMatchingLoss(_PerSampleLoss):
    """L1/L2 (or the PSNR loss) between the predicted x̂_0 and the true x_0, every timestep weighted alike.

    For the ``x0`` and ``residual`` parametrisations this is the plain regression loss on the network
    output; for ``noise`` it compares x̂_0 recovered from ε̂ (weighting the noise error by σ̄_t/α_t).

    Args:
        sde: converts the network output to x̂_0.
        kind: ``"l1"``, ``"l2"`` or ``"psnr"`` (see :func:`_per_sample_error`).
        prediction: the network's parametrisation.
        psnr_eps: the ε of the psnr error.
    """

    def __init__(
        self,
        sde: IRSDE,
        kind: DataKind = "l1",
        prediction: PredictionType = "residual",
        psnr_eps: float = PSNR_EPS,
    ) -> None:
        super().__init__()
        self.sde = sde
        self.kind: DataKind = _check_kind(kind, get_args(DataKind))
        self.prediction = sde.check_prediction(prediction)
        self.psnr_eps = float(psnr_eps)

    def per_sample(self, model_output: Tensor, xt: Tensor, x0: Tensor, mu: Tensor, t: Timestep) -> Tensor:
        """The loss of each sample, shape [B]."""
        x0_pred = self.sde.predict_x0(model_output, xt, mu, t, self.prediction)
        return _per_sample_error(x0_pred, x0, self.kind, self.psnr_eps)


LOSSES: dict[str, type[nn.Module]] = {
    "ml": MaximumLikelihoodLoss,
    "noise": NoiseMatchingLoss,
    "x0": DataMatchingLoss,
}


def default_loss(prediction: PredictionType) -> LossName:
    """The loss that trains each parametrisation well: ``ml`` (the paper's) for noise, ``x0`` otherwise."""
    return "ml" if IRSDE.check_prediction(prediction) == "noise" else "x0"


class PixelLoss(nn.Module):
    """``loss(output, gt)`` of a one-pass restorer: ``l1``, ``l2`` or ``psnr`` (per image, batch mean).

    ``psnr``: ``10·log10(MSE_i + psnr_eps)`` averaged over the images ``i`` of the batch, i.e. minus the
    mean PSNR up to a constant (images in [0, 1]); NAFNet's loss with the default ε.
    """

    KINDS = get_args(DataKind)

    def __init__(self, kind: str = "l1", psnr_eps: float = PSNR_EPS) -> None:
        super().__init__()
        self.kind: DataKind = _check_kind(kind, self.KINDS)
        self.psnr_eps = float(psnr_eps)

    def forward(self, output: Tensor, gt: Tensor) -> Tensor:
        return _per_sample_error(output, gt, self.kind, self.psnr_eps).mean()

    def extra_repr(self) -> str:
        return f"kind={self.kind}" + (f", psnr_eps={self.psnr_eps:g}" if self.kind == "psnr" else "")


def build_loss(
    name: LossName | Literal["auto"],
    sde: IRSDE,
    kind: DataKind = "l1",
    prediction: PredictionType = "noise",
    psnr_eps: float = PSNR_EPS,
) -> nn.Module:
    """The loss called ``name`` (one of :data:`LOSSES`, or ``auto`` = :func:`default_loss` of ``prediction``)
    for ``sde``, error ``kind`` and ``prediction`` (``psnr`` only for the ``x0`` loss)."""
    if name == "auto":
        name = default_loss(prediction)
    if kind == "psnr" and name != "x0":
        raise ValueError(f"loss kind 'psnr' is for the x0 loss, not {name!r}")
    if name == "ml":
        return MaximumLikelihoodLoss(sde, kind, prediction)
    if name == "noise":
        return NoiseMatchingLoss(kind, sde=sde, prediction=prediction)
    if name == "x0":
        return DataMatchingLoss(sde, kind, prediction, psnr_eps)
    raise ValueError(f"unknown loss {name!r}; valid choices: {', '.join(LOSSES)} (or auto)")
