"""Zero-shot degradation classification: image embedding vs the embedded degradation names.

The classifier compares an L2-normalised image embedding (DA-CLIP's degradation
embedding, or plain CLIP's image embedding for the paper's baseline) with the
normalised text embeddings of the degradation names, and turns the scaled cosine
similarities into probabilities with a softmax (scale 100, as the official test).

Several degradations in one image: :func:`multilabel_predictions` reads a set of present types off
those probabilities (the rule restoring photos and the multi-label report share).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data import CLEAN

__all__ = [
    "DEFAULT_THRESHOLD",
    "encode_names",
    "multilabel_predictions",
    "ZeroShotClassifier",
    "view_probabilities",
    "clean_weight_for_rate",
]

#: CLIP's usual zero-shot temperature (the trained logit scale saturates at ln 100).
ZERO_SHOT_SCALE = 100.0

#: Probability from which a type counts as present in multi-label classification.
DEFAULT_THRESHOLD = 0.3


@torch.no_grad()
def encode_names(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    names: Sequence[str],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """L2-normalised ``(K, E)`` text embeddings of ``names`` (each name is its own prompt, as in training)."""
    tokens = tokenizer(list(names)).to(device)  # (K, context_length)
    return F.normalize(encode_text(tokens).float(), dim=-1)  # (K, E)


class ZeroShotClassifier(nn.Module):
    """K-way classifier over fixed, normalised name embeddings (a buffer, so ``.to(device)`` moves it)."""

    name_features: torch.Tensor

    def __init__(
        self,
        name_features: torch.Tensor,
        names: Sequence[str],
        scale: float = ZERO_SHOT_SCALE,
        clean_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not clean_weight > 0:
            raise ValueError(f"clean_weight must be positive, got {clean_weight}")
        #: The calibrated odds factor of the ``clean`` answer (1 = none; see :meth:`adjust`).
        self.clean_weight = float(clean_weight)
        if name_features.ndim != 2 or name_features.shape[0] != len(names):
            raise ValueError(f"expected ({len(names)}, E) name features, got {tuple(name_features.shape)}")
        self.names: tuple[str, ...] = tuple(names)
        self.scale = float(scale)
        self.register_buffer("name_features", F.normalize(name_features.detach().float(), dim=-1))

    def logits(self, image_emb: torch.Tensor) -> torch.Tensor:
        """``(B, E)`` embeddings (any norm) -> ``(B, K)`` scaled cosine similarities."""
        image_emb = F.normalize(image_emb.float(), dim=-1)  # (B, E)
        return self.scale * image_emb @ self.name_features.T  # (B, K)

    def softmax(self, image_emb: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` probabilities before the ``clean`` calibration."""
        return self.logits(image_emb).softmax(dim=-1)

    def adjust(self, probs: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` probabilities with the odds of ``clean`` multiplied by ``clean_weight`` (renormalised).

        "Nothing is wrong" is judged against every type at once, so its raw probability is calibrated:
        stage 1 picks the weight at which a set share of freshly degraded training samples is called
        clean (``data.clean_calibration``). A vocabulary without ``clean``, or weight 1, is unchanged.
        """
        if self.clean_weight == 1.0 or CLEAN not in self.names:
            return probs
        weights = torch.ones(len(self.names), dtype=probs.dtype, device=probs.device)
        weights[self.names.index(CLEAN)] = self.clean_weight
        scaled = probs * weights
        return scaled / scaled.sum(dim=-1, keepdim=True)

    def forward(self, image_emb: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` class probabilities (with the ``clean`` calibration)."""
        return self.adjust(self.softmax(image_emb))

    def predict(self, image_emb: torch.Tensor) -> torch.Tensor:
        """``(B,)`` index of the most likely degradation."""
        return self.forward(image_emb).argmax(dim=-1)

    def topk(self, image_emb: torch.Tensor, k: int = 3) -> list[list[tuple[str, float]]]:
        """The ``k`` most likely degradations of each image as ``(name, probability)``, best first."""
        probs = self.forward(image_emb)  # (B, K)
        values, indices = probs.topk(min(k, len(self.names)), dim=-1)
        return [
            [(self.names[i], float(p)) for p, i in zip(row_v.tolist(), row_i.tolist())]
            for row_v, row_i in zip(values, indices)
        ]


def view_probabilities(
    embed: Callable[[torch.Tensor], torch.Tensor], classifier: ZeroShotClassifier, images: torch.Tensor
) -> torch.Tensor:
    """``(B, K)`` class probabilities of ``(B, 3, S, S)`` images, or of ``(B, V, 3, S, S)`` views of each
    image combined by :func:`combine_views`."""
    if images.ndim == 4:
        return classifier(embed(images).float())
    batch, views = images.shape[:2]
    probs = classifier.softmax(embed(images.flatten(0, 1)).float())  # (B * V, K)
    return classifier.adjust(probs.view(batch, views, -1).mean(dim=1))


def multilabel_predictions(
    probabilities: np.ndarray | torch.Tensor,
    threshold: float = DEFAULT_THRESHOLD,
    num_true: np.ndarray | Sequence[int] | None = None,
) -> np.ndarray:
    """``(N, K)`` bool: type ``j`` is present in image ``i`` when ``probabilities[i, j] >= threshold`` or it
    is among the image's ``num_true[i]`` most probable types (the number of true types, when known;
    1 otherwise, so every image names at least its best guess)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"expected (N, K) probabilities, got shape {probs.shape}")
    counts = np.ones(len(probs), dtype=np.int64) if num_true is None else np.asarray(num_true, dtype=np.int64)
    if counts.shape != (len(probs),):
        raise ValueError(f"num_true: expected {len(probs)} counts, got shape {counts.shape}")
    present = probs >= threshold
    order = np.argsort(-probs, axis=1, kind="stable")  # best first; ties: the earlier type
    for row, (ranked, k) in enumerate(zip(order, counts)):
        present[row, ranked[:k]] = True
    return present


def clean_weight_for_rate(probs: torch.Tensor, names: Sequence[str], rate: float) -> float:
    """The ``clean_weight`` at which a share ``rate`` of degraded images is called clean.

    ``probs``: ``(N, K)`` probabilities (before any calibration) of N *degraded* images over ``names``
    (which hold ``clean``). Image ``i`` is called clean once ``w * p_i(clean)`` exceeds its best type,
    i.e. for ``w > r_i = max_type p_i / p_i(clean)``; the weight is the ``rate`` quantile of ``r``.
    """
    if CLEAN not in names:
        raise ValueError(f"no '{CLEAN}' among the names {list(names)}")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] != len(names):
        raise ValueError(f"expected (N, {len(names)}) probabilities with N > 0, got {tuple(probs.shape)}")
    clean = list(names).index(CLEAN)
    others = torch.cat([probs[:, :clean], probs[:, clean + 1 :]], dim=1).max(dim=1).values
    ratio = others.double() / probs[:, clean].double().clamp_min(1e-12)  # (N,)
    return float(torch.quantile(ratio, rate))
