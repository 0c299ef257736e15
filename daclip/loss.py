"""DA-CLIP's stage-1 losses, correct across data-parallel ranks.

The paper's objective is the sum of two CLIP (symmetric InfoNCE) losses with
DA-CLIP's own learnable temperature::

    L = L_clip(content_emb, caption text) + L_clip(degra_emb, degradation-name text)

``L_clip`` uses the targets ``arange(B)``. For the degradation term that is a known
flaw of the official code: a global batch of N images over K types holds ~N/K images
of each degradation with identical name texts, so pairs of the same degradation are
pushed apart as negatives and the term cannot fall below about ln(N/K) (ln(3136/10)
~ 5.7 in the paper's setting, the plateau users report). ``degradation_loss="class_aware"`` replaces
it by cross-entropy of the degradation embedding against the embedded names of the
configured degradation list (a K-way classifier), which has no such negatives.

Data parallel: every rank gathers the features of the whole global batch
(:func:`daclip.engine.distributed.all_gather_with_grad`: other ranks' shards are
constants, the local shard carries the gradient) and computes the *global-batch*
loss, identical on every rank. Each rank's backward then yields, for the controller,
the gradient that flows through its own shard, and the **sum** over ranks of these is
exactly the single-process gradient of the global loss; the logit scale enters the
global loss directly, so every rank already holds its full gradient. The training
loop therefore sums the controller's gradients over ranks and averages the logit
scale's (:func:`daclip.train.sync_gradients`); DDP's plain mean would scale the
controller's gradient by 1/world_size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from daclip.engine.distributed import all_gather_with_grad

__all__ = ["DegradationLoss", "clip_loss", "class_aware_degradation_loss", "DaCLIPLossOutput", "DaCLIPLoss"]

DegradationLoss = Literal["clip", "class_aware"]


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric CLIP loss of L2-normalised ``(N, E)`` features with targets ``arange(N)``.

    ``logit_scale`` is the temperature itself (``exp`` of the learnable log-scale).
    """
    logits_per_image = logit_scale * image_features @ text_features.T  # (N, N)
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    # CLIP (Radford et al. 2021): mean of image->text and text->image cross-entropies.
    return 0.5 * (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets))


def class_aware_degradation_loss(
    degra_features: torch.Tensor,
    name_features: torch.Tensor,
    degradation_index: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of normalised ``(N, E)`` degradation embeddings against the ``(K, E)`` name embeddings.

    Samples of the same degradation share one target, so they are never each other's negatives.
    """
    logits = logit_scale * degra_features @ name_features.T  # (N, K)
    return F.cross_entropy(logits, degradation_index)


@dataclass
class DaCLIPLossOutput:
    """The total loss and its two terms (each a scalar tensor; ``content`` None when not computed)."""

    total: torch.Tensor
    content: torch.Tensor | None
    degradation: torch.Tensor


class DaCLIPLoss(nn.Module):
    """Content/caption CLIP loss plus a degradation loss, over the global (all-rank) batch.

    Args:
        degradation_loss: ``"clip"`` (the paper's) or ``"class_aware"``.
        gather: concatenates a ``(B, ...)`` tensor over ranks with gradient through the local
            shard; the default is the identity outside ``torch.distributed``.
        content_weight: weight of the content term in the total (1 = the paper).
    """

    def __init__(
        self,
        degradation_loss: DegradationLoss = "clip",
        gather: Callable[[torch.Tensor], torch.Tensor] = all_gather_with_grad,
        content_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.content_weight = float(content_weight)
        if degradation_loss not in ("clip", "class_aware"):
            raise ValueError(f"degradation_loss must be 'clip' or 'class_aware', got {degradation_loss!r}")
        self.degradation_loss = degradation_loss
        self.gather = gather

    def _degradation(
        self, degra: torch.Tensor, names: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        if self.degradation_loss == "clip":
            # The paper: each image's own degradation-name text is its only positive.
            return clip_loss(degra, names[labels], scale)
        return class_aware_degradation_loss(degra, names, labels, scale)

    def degradation_only(
        self,
        degra_emb: torch.Tensor,
        name_features: torch.Tensor,
        degradation_index: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> DaCLIPLossOutput:
        """The loss when ``content_weight`` is 0: the degradation term alone (``content`` None, not
        computed); equal to :meth:`forward`'s total then, without running the frozen tower."""
        if self.content_weight != 0.0:
            raise ValueError(f"degradation_only needs content_weight 0, got {self.content_weight}")
        degra = self.gather(F.normalize(degra_emb, dim=-1))  # (N, E)
        labels = self.gather(degradation_index)  # (N,)
        loss = self._degradation(degra, F.normalize(name_features, dim=-1), labels, logit_scale.exp())
        return DaCLIPLossOutput(loss, None, loss)

    def forward(
        self,
        content_emb: torch.Tensor,
        degra_emb: torch.Tensor,
        caption_features: torch.Tensor,
        name_features: torch.Tensor,
        degradation_index: torch.Tensor,
        logit_scale: torch.Tensor,
    ) -> DaCLIPLossOutput:
        """Compute the loss.

        Args:
            content_emb, degra_emb: ``(B, E)`` image embeddings of this rank (unnormalised).
            caption_features: ``(B, E)`` frozen text embeddings of the clean captions.
            name_features: ``(K, E)`` frozen text embeddings of the degradation names.
            degradation_index: ``(B,)`` index of each sample's degradation in the name list.
            logit_scale: DA-CLIP's learnable **log** temperature (scalar).
        """
        content = self.gather(F.normalize(content_emb, dim=-1))  # (N, E), N = world * B
        degra = self.gather(F.normalize(degra_emb, dim=-1))  # (N, E)
        captions = self.gather(F.normalize(caption_features, dim=-1))  # (N, E)
        labels = self.gather(degradation_index)  # (N,)
        names = F.normalize(name_features, dim=-1)  # (K, E)
        scale = logit_scale.exp()

        content_loss = clip_loss(content, captions, scale)
        degradation = self._degradation(degra, names, labels, scale)
        # content_weight 1 is the paper's sum; a smaller weight leaves the shared controller to the
        # degradation term (a tiny model from random weights otherwise spends it telling photos apart).
        total = (
            content_loss + degradation
            if self.content_weight == 1.0
            else self.content_weight * content_loss + degradation
        )
        return DaCLIPLossOutput(total, content_loss, degradation)
