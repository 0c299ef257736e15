"""Do no harm: how much a restorer changes photos that have nothing wrong with them.

A universal restorer sees many clean inputs (good shots, regions with nothing wrong). The check runs
clean images through a :class:`~irsde.inference.pipeline.RestorationPipeline` and scores the output
against its own input: PSNR(output, input) per image, its mean and minimum, how many images fall below
a bound, and, where the DA-CLIP's vocabulary has :data:`data.CLEAN`, how many it calls clean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data import CLEAN
from irsde.evaluation.metrics import psnr, quantize

__all__ = ["CleanInputScore", "score_clean_inputs", "crops_of", "format_clean_table"]

#: The bound below which a clean image counts as damaged (dB).
DAMAGE_DB = 32.0


@dataclass
class CleanInputScore:
    """PSNR(output, input) over a set of clean images, and DA-CLIP's verdicts on them."""

    psnrs: list[float]
    called_clean: int | None  # None: the restorer's DA-CLIP has no clean entry (or there is no DA-CLIP)

    @property
    def mean(self) -> float:
        return float(np.mean(self.psnrs)) if self.psnrs else math.nan

    @property
    def minimum(self) -> float:
        return float(np.min(self.psnrs)) if self.psnrs else math.nan

    def below(self, bound: float = DAMAGE_DB) -> int:
        return sum(p < bound for p in self.psnrs)


def crops_of(image: np.ndarray, size: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` random ``size`` x ``size`` crops of an ``(H, W, 3)`` image (fixed by ``seed``)."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image of {w}x{h} is smaller than the crop size {size}")
    tops, lefts = rng.integers(0, h - size + 1, count), rng.integers(0, w - size + 1, count)
    return [image[t : t + size, s : s + size] for t, s in zip(tops, lefts)]


@torch.no_grad()
def score_clean_inputs(pipeline, images: Sequence[np.ndarray], seed: int = 0) -> CleanInputScore:
    """Restore each clean ``(H, W, 3)`` image in [0, 1] and score the 8-bit output against it."""
    psnrs: list[float] = []
    called = 0
    has_clean = CLEAN in tuple(getattr(pipeline, "degradations", ()) or ())
    for index, image in enumerate(images):
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
        generator = torch.Generator(device=pipeline.device).manual_seed(seed + index)
        out = pipeline(x, generator=generator).cpu()
        psnrs.append(float(psnr(quantize(out), quantize(x)).min()))
        if has_clean:
            called += pipeline.classify(x, top_k=1)[0][0][0] == CLEAN
    return CleanInputScore(psnrs, called if has_clean else None)


def format_clean_table(scores: Mapping[str, Mapping[str, CleanInputScore]]) -> list[str]:
    """Markdown rows: one per (image set, restorer) of ``scores[set][restorer]``."""
    lines = [
        f"| clean images | restorer | PSNR(output, input): mean | min | below {DAMAGE_DB:.0f} dB | "
        "DA-CLIP says clean |",
        "|---|---|---|---|---|---|",
    ]
    for set_name, by_restorer in scores.items():
        for restorer, score in by_restorer.items():
            called = "—" if score.called_clean is None else f"{score.called_clean} of {len(score.psnrs)}"
            lines.append(
                f"| {set_name} ({len(score.psnrs)}) | {restorer} | {score.mean:.2f} | {score.minimum:.2f} | "
                f"{score.below()} | {called} |"
            )
    return lines
