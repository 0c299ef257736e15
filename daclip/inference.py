"""A frozen DA-CLIP for inference and for stage 2 (the restorers' conditioning).

:class:`DaCLIPSection` names the weights (the ``daclip:`` config section, or the scripts' ``--daclip``,
``--clip-model``, ``--model-config``: :func:`add_daclip_arguments`) and :func:`build_embedder` loads
them; training and inference build the embedder the same way.

>>> daclip = load_frozen_daclip("daclip_ViT-B-32.pt")            # released file, or our checkpoint
>>> clip_images = daclip.preprocess(lq)                           # (B, 3, H, W) in [0, 1] -> CLIP input
>>> content_emb, degra_emb = daclip.encode_image(clip_images)     # unnormalised, (B, 512) each
>>> daclip.classifier(DEFAULT_DEGRADATIONS).topk(degra_emb, 3)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from daclip.engine.checkpoint import checkpoint_kind
from daclip.engine.config import spec
from daclip.engine.errors import UserError
from data.transforms import clip_transform_batch

if TYPE_CHECKING:  # open_clip takes seconds to import: loaded when a DA-CLIP is, not with this module
    from daclip.model import DaCLIP
    from daclip.pretrained import ClipSource, Tokenizer
    from daclip.zero_shot import ZeroShotClassifier

__all__ = ["DaCLIPSection", "FrozenDaCLIP", "add_daclip_arguments", "build_embedder", "load_frozen_daclip"]


@dataclass
class DaCLIPSection:
    """Which frozen DA-CLIP to load: our stage-1 checkpoint or the released ``daclip_ViT-B-32.pt``.

    The ``daclip:`` section of the stage-2 config; inference builds one from its command line.
    """

    checkpoint: str = spec("", must_exist=True, help="'' = no DA-CLIP (plain IR-SDE baseline)")
    clip_model: str = spec("ViT-B-32", help="open_clip architecture of a released checkpoint")
    model_config: str = spec("", must_exist=True, help="open_clip JSON for a custom architecture")
    allow_changed: bool = spec(
        False,
        help="resume although checkpoint is not the DA-CLIP the run was trained with (both are then recorded)",
    )


class FrozenDaCLIP(nn.Module):
    """DA-CLIP with every parameter frozen and in eval mode, plus its tokenizer and input transform.

    Attributes:
        model: the wrapped :class:`DaCLIP`.
        source: how its CLIP was built (name, config, pretrained source).
        image_size, mean, std: the CLIP input the model expects.
    """

    def __init__(self, model: DaCLIP, source: ClipSource, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        self.model = model
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.model.eval()
        self.source = source
        from daclip.pretrained import make_tokenizer

        self.tokenizer = tokenizer or make_tokenizer(source)
        self.image_size: int = source.image_size
        self.mean: tuple[float, ...] = tuple(source.mean)
        self.std: tuple[float, ...] = tuple(source.std)
        #: Test-time views of the classifier (1: the whole image resized; n: an n x n grid of native crops).
        self.views: int = int(getattr(source, "views", 1))
        self._classifiers: dict[tuple[str, ...], ZeroShotClassifier] = {}

    def train(self, mode: bool = True) -> FrozenDaCLIP:
        """Stays in eval mode whatever the caller asks (it is never trained)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.model.logit_scale.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """The exact DA-CLIP transform of ``(B, 3, H, W)`` RGB images in ``[0, 1]`` -> ``(B, 3, S, S)``."""
        return clip_transform_batch(images, self.image_size, mean=self.mean, std=self.std)

    def grid_views(self, images: torch.Tensor) -> torch.Tensor:
        """This DA-CLIP's grid of native crops of ``(B, 3, H, W)`` RGB images in ``[0, 1]``:
        ``(B, V, 3, S, S)`` with ``V = views²`` (see :func:`data.clip_input.grid_views_array`)."""
        from data.clip_input import grid_views_array

        pixels = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
        views = [grid_views_array(p, self.image_size, self.views, self.mean, self.std) for p in pixels]
        return torch.from_numpy(np.stack(views)).to(images.device)

    @torch.no_grad()
    def encode_image(self, clip_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(content_emb, degra_emb)``, each ``(B, E)``, unnormalised (as the U-Net expects).

        ``clip_images`` is ``(B, 3, S, S)``, or ``(B, V, 3, S, S)`` views of each image (a grid of native
        crops, :meth:`grid_views`): then each embedding is the mean over the image's views.
        """
        clip_images = clip_images.to(self.device)
        if clip_images.ndim == 5:
            batch, views = clip_images.shape[:2]
            content, degra = self.model.encode_image(clip_images.flatten(0, 1), control=True, normalize=False)
            return content.view(batch, views, -1).mean(1), degra.view(batch, views, -1).mean(1)
        return self.model.encode_image(clip_images, control=True, normalize=False)

    @torch.no_grad()
    def encode_degradation(self, clip_images: torch.Tensor) -> torch.Tensor:
        """The ``(B, E)`` degradation embedding alone (the controller; the frozen tower is not run)."""
        degra_emb, _ = self.model.controller(clip_images.to(self.device))
        return degra_emb

    @torch.no_grad()
    def encode_plain_image(self, clip_images: torch.Tensor) -> torch.Tensor:
        """Plain CLIP's ``(B, E)`` image embedding (no control), unnormalised."""
        return self.model.encode_image(clip_images.to(self.device), control=False, normalize=False)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Frozen CLIP text embeddings ``(K, E)``, unnormalised."""
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device))

    def forward(self, clip_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`encode_image` (the stage-2 ``Embedder`` protocol calls the object)."""
        return self.encode_image(clip_images)

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """The names this DA-CLIP was trained against (``clean`` last when it learned it), else the ten."""
        from data import DEFAULT_DEGRADATIONS

        return tuple(getattr(self.source, "vocabulary", ())) or tuple(DEFAULT_DEGRADATIONS)

    def classifier(self, degradations: Sequence[str]) -> ZeroShotClassifier:
        """A zero-shot classifier over ``degradations`` (use it on ``degra_emb``, or plain CLIP embeddings).

        The name embeddings are computed once per list and cached.
        """
        key = tuple(degradations)
        cached = self._classifiers.get(key)
        if cached is None or cached.name_features.device != self.device:
            from daclip.zero_shot import ZeroShotClassifier, encode_names

            features = encode_names(self.model.encode_text, self.tokenizer, key, self.device)
            weight = float(getattr(self.source, "clean_weight", 1.0))
            cached = self._classifiers[key] = ZeroShotClassifier(features, key, clean_weight=weight).to(
                self.device
            )
        return cached

    @torch.no_grad()
    def classify_images(self, images: torch.Tensor, degradations: Sequence[str]) -> torch.Tensor:
        """``(B, K)`` probabilities of ``(B, 3, H, W)`` RGB images in ``[0, 1]``, from this DA-CLIP's own test
        input: the whole image resized (the paper) or the average over its grid of native crops."""
        if self.views <= 1:
            return self.classify(self.preprocess(images), degradations)
        from daclip.zero_shot import view_probabilities

        views = self.grid_views(images).to(self.device)
        return view_probabilities(self.encode_degradation, self.classifier(degradations), views)

    @torch.no_grad()
    def classify(self, clip_images: torch.Tensor, degradations: Sequence[str]) -> torch.Tensor:
        """``(B, K)`` probabilities of each degradation from DA-CLIP's degradation embedding."""
        return self.classifier(degradations)(self.encode_degradation(clip_images))


def load_frozen_daclip(
    path: str | os.PathLike,
    clip_model: str = "ViT-B-32",
    model_config: str | os.PathLike | Mapping | None = None,
    device: str | torch.device = "cpu",
) -> FrozenDaCLIP:
    """Build a frozen DA-CLIP from our checkpoint or the released file (see :func:`load_daclip`).

    A checkpoint of another kind of this project (a restoration model) is one line saying so.
    """
    from daclip.pretrained import load_daclip

    try:
        model, source = load_daclip(path, clip_model=clip_model, model_config=model_config, device=device)
    except ValueError:
        kind = _other_checkpoint_kind(path)
        if kind is not None:
            raise UserError(f"{path} is {kind}, not a DA-CLIP checkpoint") from None
        raise
    return FrozenDaCLIP(model, source)


def add_daclip_arguments(parser: Any) -> None:
    """``--daclip``, ``--clip-model``, ``--model-config``: the DA-CLIP options of the restoring scripts."""
    parser.add_argument(
        "--daclip", default="", help="DA-CLIP weights (default: the one the checkpoint records)"
    )
    parser.add_argument(
        "--clip-model", default="ViT-B-32", help="open_clip architecture of a released DA-CLIP file"
    )
    parser.add_argument(
        "--model-config", default="", help="open_clip JSON of a custom architecture (with --clip-model)"
    )


def build_embedder(section: DaCLIPSection, device: str | torch.device = "cpu") -> FrozenDaCLIP | None:
    """The frozen DA-CLIP named by ``section``, or None when none is named (the plain baseline)."""
    if not section.checkpoint:
        return None
    return load_frozen_daclip(
        section.checkpoint,
        clip_model=section.clip_model,
        model_config=section.model_config or None,
        device=device,
    )


def _other_checkpoint_kind(path: str | os.PathLike) -> str | None:
    """What a checkpoint of this project that is not a DA-CLIP is (None: a DA-CLIP, or unknown)."""
    try:  # only on the error path; mmap keeps the second read cheap
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable: the original error says why
        return None
    kind = checkpoint_kind(obj)
    return kind if kind is not None and "DA-CLIP" not in kind else None
