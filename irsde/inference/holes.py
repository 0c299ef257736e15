"""Fill the holes of an image DA-CLIP calls ``uncompleted``: the ``hole_fill`` step of a restorer.

A tiny restorer trained for minutes does not learn inpainting: the demo's left the white holes of its
``uncompleted`` crops almost as they came (+0.1 dB), the type with the most headroom (inputs about 11 dB
from the truth), and changed the pixels around them. The holes themselves are easy to find:
:func:`data.degradations.uncompleted` paints them one flat grey level (white), which a photo rarely has over
a region. So an image in which DA-CLIP finds ``uncompleted`` (:data:`HOLE_DEGRADATION`; its most probable
type, or one at 0.3 or more, the rule of ``restore.py``'s predictions:
:meth:`irsde.inference.pipeline.RestorationPipeline.finds_holes`) that has a region of pixels of that level
(:func:`hole_mask`, :func:`has_hole_region`) is given back as it came, with those pixels replaced by the
smoothest surface through the pixels around them (:func:`harmonic_fill`: the solution of Laplace's equation with the known pixels as
boundary), as ``--keep-clean`` gives back an image DA-CLIP calls clean. A filled hole comes within a few
grey levels of a smooth truth. Every other image is the restorer's.

Filling from the input's pixels rather than the restorer's gains more on every set measured (the demo's
NAFNet, uncompleted crops: +14.8 against +14.4 dB on the validation crops, +23.0 against +18.7 dB on the
Debian nature photos): around a hole the tiny restorers brighten the pixels, and a fill from them carries
the halo inwards.

The fill is a classical inpainting prior, not a learnt one: it knows nothing of texture, so a hole over an
edge or a pattern comes back blurred. It is off unless a restorer was validated with it
(``train.val_hole_fill``) or it is asked for (``RestorationPipeline(hole_fill=True)``, ``--hole-fill``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "HOLE_CHECK_SIDE",
    "HOLE_DEGRADATION",
    "HOLE_VALUE",
    "fill_holes",
    "harmonic_fill",
    "has_hole_region",
    "hole_mask",
]

#: The degradation whose images get their holes filled.
HOLE_DEGRADATION = "uncompleted"
#: The grey level of the holes (:func:`data.degradations.uncompleted`'s ``fill``: white).
HOLE_VALUE = 1.0
#: The shorter side a photo is also checked at for holes when larger (the demo's DA-CLIP trained on 128-px
#: samples): :meth:`irsde.inference.pipeline.RestorationPipeline.holes_to_fill`.
HOLE_CHECK_SIDE = 128
#: Jacobi relaxations at each level of the pyramid, after the coarser level's solution is upsampled.
SMOOTHING_STEPS = 16


def hole_mask(lq: Tensor, value: float = HOLE_VALUE) -> Tensor:
    """``(B, 1, H, W)`` True where every channel of ``lq`` (B, C, H, W) in [0, 1] is within half a grey level
    of ``value`` (the holes of an 8-bit image painted that level)."""
    if lq.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(lq.shape)}")
    return ((lq - value).abs() <= 0.5 / 255.0).all(dim=1, keepdim=True)


def has_hole_region(holes: Tensor) -> Tensor:
    """``(B,)`` True where the mask ``holes`` (B, 1, H, W) has a region: a 3 x 3 square of hole pixels (what
    a morphological opening keeps). Single pixels clipped at white (noise, a rain streak) are no region, so
    an image with only those is not taken for one with holes (the last, smallest shapes of the generator's
    mask can be that small too: they are filled with the rest when the image has a region)."""
    level = holes.float()
    eroded = -F.max_pool2d(-level, 3, stride=1, padding=1)  # beyond the border counts as hole
    return eroded.flatten(1).amax(dim=1) > 0.5


def _neighbour_mean(x: Tensor) -> Tensor:
    """The mean of each pixel's four neighbours (edges replicated: no flux across the border)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4


def _solve(x: Tensor, known: Tensor, smoothing: int) -> Tensor:
    """Pull-push: the known pixels averaged onto a grid half the size, solved there, brought back up as the
    start of a few Jacobi relaxations of the unknown pixels (a multigrid V-cycle's descent and ascent)."""
    height, width = x.shape[-2:]
    if bool(known.all()):
        return x
    if height <= 2 or width <= 2:
        weight = known.sum(dim=(-2, -1), keepdim=True)
        mean = (x * known).sum(dim=(-2, -1), keepdim=True) / weight.clamp_min(1e-12)
        return torch.where(known > 0, x, mean.expand_as(x))
    # Pull: a coarse pixel is known where any of its fine pixels is, with their mean.
    pad = (0, width % 2, 0, height % 2)
    xs, ks = F.pad(x * known, pad, mode="replicate"), F.pad(known, pad, mode="replicate")
    weight = F.avg_pool2d(ks, 2)
    coarse = F.avg_pool2d(xs, 2) / weight.clamp_min(1e-12)
    coarse = _solve(coarse, (weight > 0).to(x.dtype), smoothing)
    # Push: the coarse solution starts the unknown pixels, then relaxes towards Laplace's equation.
    start = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)[..., :height, :width]
    holes = known <= 0
    out = torch.where(holes, start, x)
    for _ in range(smoothing):
        out = torch.where(holes, _neighbour_mean(out), x)
    return out


def harmonic_fill(image: Tensor, holes: Tensor, smoothing: int = SMOOTHING_STEPS) -> Tensor:
    """``image`` (B, C, H, W) with the pixels where ``holes`` (B, 1, H, W) is True replaced by a smooth
    surface through the pixels around them (an approximate solution of Laplace's equation, by pull-push on
    an image pyramid and ``smoothing`` Jacobi relaxations per level). The other pixels are returned as they
    are; an image that is all hole is returned as it came."""
    if holes.shape != (image.shape[0], 1, *image.shape[2:]):
        raise ValueError(
            f"expected a hole mask of shape {(image.shape[0], 1, *image.shape[2:])}, got {tuple(holes.shape)}"
        )
    known = (~holes).to(torch.float32)
    out = _solve(image.float(), known, smoothing).to(image.dtype)
    empty = ~known.flatten(1).any(dim=1)  # nothing to fill from
    return torch.where(empty[:, None, None, None], image, out)


def fill_holes(lq: Tensor, restored: Tensor, answer_is_holes: Tensor, value: float = HOLE_VALUE) -> Tensor:
    """``restored`` (B, C, H, W), except each image whose ``answer_is_holes`` (B,) is True and that has a hole
    region (:func:`has_hole_region`): that one is ``lq`` with its holes (:func:`hole_mask`) filled from the
    pixels around them (:func:`harmonic_fill`)."""
    holes = hole_mask(lq, value)
    answer = answer_is_holes.to(torch.bool).to(lq.device) & has_hole_region(holes)  # (B,)
    holes = holes & answer.view(-1, 1, 1, 1)
    filled = holes.flatten(1).any(dim=1)  # (B,)
    if not bool(filled.any()):
        return restored
    out = harmonic_fill(lq, holes).to(device=restored.device, dtype=restored.dtype)
    return torch.where(filled.to(restored.device).view(-1, 1, 1, 1), out, restored)
