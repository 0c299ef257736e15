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

__all__ = [
    "DEFAULT_THRESHOLD",
    "encode_names",
    "multilabel_predictions",
    "ZeroShotClassifier",
    "view_probabilities",
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
        self, name_features: torch.Tensor, names: Sequence[str], scale: float = ZERO_SHOT_SCALE
    ) -> None:
        super().__init__()
        if name_features.ndim != 2 or name_features.shape[0] != len(names):
            raise ValueError(f"expected ({len(names)}, E) name features, got {tuple(name_features.shape)}")
        self.names: tuple[str, ...] = tuple(names)
        self.scale = float(scale)
        self.register_buffer("name_features", F.normalize(name_features.detach().float(), dim=-1))

    def logits(self, image_emb: torch.Tensor) -> torch.Tensor:
        """``(B, E)`` embeddings (any norm) -> ``(B, K)`` scaled cosine similarities."""
        image_emb = F.normalize(image_emb.float(), dim=-1)  # (B, E)
        return self.scale * image_emb @ self.name_features.T  # (B, K)

    def forward(self, image_emb: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` class probabilities."""
        return self.logits(image_emb).softmax(dim=-1)

    def predict(self, image_emb: torch.Tensor) -> torch.Tensor:
        """``(B,)`` index of the most likely degradation."""
        return self.logits(image_emb).argmax(dim=-1)

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
    image averaged over the views (each view votes with its probabilities)."""
    if images.ndim == 4:
        return classifier(embed(images).float())
    batch, views = images.shape[:2]
    probs = classifier(embed(images.flatten(0, 1)).float())  # (B * V, K)
    return probs.view(batch, views, -1).mean(dim=1)


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
