"""Training losses of the IR-SDE noise network.

Both losses share one call signature, ``loss(noise_pred, xt, x0, mu, t, noise=None)``, so a trainer can
swap them through :func:`build_loss` without other changes. Both reduce like the official ``MatchingLoss``
(unweighted): the element-wise error is averaged per sample, then over the batch.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor, nn

from irsde.sde import IRSDE, Timestep

__all__ = [
    "LOSSES",
    "LossKind",
    "LossName",
    "MaximumLikelihoodLoss",
    "NoiseMatchingLoss",
    "build_loss",
]

LossKind = Literal["l1", "l2"]
LossName = Literal["ml", "noise"]

_KINDS: tuple[str, ...] = get_args(LossKind)


def _check_kind(kind: str) -> LossKind:
    if kind not in _KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; valid choices: {', '.join(_KINDS)}")
    return kind  # type: ignore[return-value]


def _per_sample_error(prediction: Tensor, target: Tensor, kind: LossKind) -> Tensor:
    """Mean absolute (l1) or squared (l2) error of each sample: [B, ...] -> [B]."""
    if kind == "l1":
        error = F.l1_loss(prediction, target, reduction="none")
    else:
        error = F.mse_loss(prediction, target, reduction="none")
    return error.flatten(1).mean(dim=1)


class MaximumLikelihoodLoss(nn.Module):
    """The IR-SDE "maximum-likelihood" objective (Luo et al. 2023, eq. 11).

    The network's noise is turned into a score, the reverse-SDE step mean x_t − drift is taken, and it is
    matched against the optimal posterior mean E[x_{t−1} | x_t, x_0] computed with the true x_0.

    Args:
        sde: the IR-SDE whose schedule defines both means.
        kind: ``"l1"`` (the released model) or ``"l2"``.
    """

    def __init__(self, sde: IRSDE, kind: LossKind = "l1") -> None:
        super().__init__()
        self.sde = sde
        self.kind = _check_kind(kind)

    def per_sample(self, noise_pred: Tensor, xt: Tensor, x0: Tensor, mu: Tensor, t: Timestep) -> Tensor:
        """The loss of each sample, shape [B]."""
        score = self.sde.noise_to_score(noise_pred, t)
        xt_prev_pred = self.sde.reverse_sde_step_mean(xt, mu, t, score)
        xt_prev_opt = self.sde.posterior_mean(xt, x0, mu, t)
        return _per_sample_error(xt_prev_pred, xt_prev_opt, self.kind)

    def forward(
        self,
        noise_pred: Tensor,
        xt: Tensor,
        x0: Tensor,
        mu: Tensor,
        t: Timestep,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss; ``noise`` (the true noise) is accepted for a common signature and not used."""
        return self.per_sample(noise_pred, xt, x0, mu, t).mean()

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class NoiseMatchingLoss(nn.Module):
    """L1/L2 between the predicted and the true noise (the simpler alternative objective).

    The true noise is ``noise`` when the caller passes it (the draw given to ``IRSDE.add_noise``);
    otherwise it is recovered from (x_t, x_0, μ, t), which needs ``sde``.

    Args:
        kind: ``"l1"`` or ``"l2"``.
        sde: needed only when the true noise is not passed in.
    """

    def __init__(self, kind: LossKind = "l1", sde: IRSDE | None = None) -> None:
        super().__init__()
        self.kind = _check_kind(kind)
        self.sde = sde

    def per_sample(
        self,
        noise_pred: Tensor,
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
        return _per_sample_error(noise_pred, noise, self.kind)

    def forward(
        self,
        noise_pred: Tensor,
        xt: Tensor | None = None,
        x0: Tensor | None = None,
        mu: Tensor | None = None,
        t: Timestep | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss."""
        return self.per_sample(noise_pred, xt, x0, mu, t, noise).mean()

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


LOSSES: dict[str, type[nn.Module]] = {"ml": MaximumLikelihoodLoss, "noise": NoiseMatchingLoss}


def build_loss(name: LossName, sde: IRSDE, kind: LossKind = "l1") -> nn.Module:
    """The loss called ``name`` (``"ml"`` or ``"noise"``) for ``sde``, with error ``kind``."""
    if name == "ml":
        return MaximumLikelihoodLoss(sde, kind)
    if name == "noise":
        return NoiseMatchingLoss(kind, sde=sde)
    raise ValueError(f"unknown loss {name!r}; valid choices: {', '.join(LOSSES)}")
