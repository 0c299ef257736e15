"""The exact CLIP input transform DA-CLIP applies to low-quality images, for tensors.

The transform itself (uint8 truncation, Pillow bicubic resize of the short side, centre crop,
mean/std normalisation) is :func:`data.clip_input.clip_input_array`, on numpy arrays; these wrappers
take and return tensors. Reproducing each step matters: the released DA-CLIP embeddings, and so the
released U-Net, were computed on exactly these inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from data.clip_input import (
    CROP_ALIGN,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    at_least,
    clip_input_array,
    grid_views_array,
    normalise_array,
)

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "clip_transform",
    "clip_transform_batch",
    "native_crop",
    "native_crops",
    "grid_views",
    "PHOTO_AUGMENTATIONS",
    "augment_photo",
    "check_photo_augmentations",
]

#: What :func:`augment_photo` can do to a clean photo before it is degraded.
PHOTO_AUGMENTATIONS = ("rotate", "channels", "saturation")

#: The range of :func:`augment_photo`'s ``saturation`` factor.
SATURATION_RANGE = (0.5, 1.5)


def clip_transform(
    img: np.ndarray | torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """Prepare one RGB image for CLIP exactly as DA-CLIP does.

    Args:
        img: ``(H, W, 3)`` array or ``(3, H, W)`` tensor, RGB in ``[0, 1]``.
        size: CLIP input resolution (224 for ViT-B-32 and ViT-L-14).
        mean, std: normalisation constants of the CLIP model (OpenAI's by default).

    Returns:
        ``(3, size, size)`` float32 tensor.
    """
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().permute(1, 2, 0).numpy()
    return torch.from_numpy(clip_input_array(img, size, mean, std))


def clip_transform_batch(images: torch.Tensor, size: int = 224, **kwargs) -> torch.Tensor:
    """:func:`clip_transform` over a ``(B, 3, H, W)`` batch; returns ``(B, 3, size, size)`` on its device."""
    out = torch.stack([clip_transform(image, size, **kwargs) for image in images])
    return out.to(images.device)


def normalise_crop(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(H, W, 3)`` in [0, 1] -> CLIP-normalised ``(3, H, W)``, truncated to uint8 levels first (as above)."""
    return torch.from_numpy(normalise_array(img, mean, std))


def check_photo_augmentations(kinds: Sequence[str], key: str = "photo_augment") -> None:
    """Raise a one-line ``ValueError`` naming ``key`` when ``kinds`` has a name not in
    :data:`PHOTO_AUGMENTATIONS`."""
    unknown = [k for k in kinds if k not in PHOTO_AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"{key}: unknown photo augmentations {unknown}; choose from {list(PHOTO_AUGMENTATIONS)}"
        )


def augment_photo(img: np.ndarray, kinds: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """A new photo from a clean ``(H, W, 3)`` one in [0, 1], before a degradation is drawn on it: ``rotate``
    turns it by a random multiple of 90 degrees, ``channels`` permutes its colour channels at random (a
    red cup becomes a blue or a green one), ``saturation`` scales each pixel's distance from its grey
    (the channels' mean) by a random factor in :data:`SATURATION_RANGE`, clipped to [0, 1]. They are
    applied (and drawn from ``rng``) in that order. The degradation is drawn afterwards, so it keeps
    its own geometry and colour (rain falls down, shadows stay bluish, low light stays dark), while the
    photos' contents take many orientations and colourings: a small photo set then teaches the
    degradations, not which of its few scenes carry them. Returns a C-contiguous array (``img`` itself
    when nothing changed it: a turn by 0 degrees and no other kind)."""
    check_photo_augmentations(kinds)
    if "rotate" in kinds:
        img = np.rot90(img, int(rng.integers(4)))
    if "channels" in kinds:
        img = img[..., rng.permutation(3)]
    if "saturation" in kinds:
        grey = img.mean(axis=2, keepdims=True)
        factor = rng.uniform(*SATURATION_RANGE)
        img = np.clip(grey + (img - grey) * factor, 0.0, 1.0).astype(img.dtype, copy=False)
    return np.ascontiguousarray(img)


def _aligned_offsets(rng: np.random.Generator, h: int, w: int, size: int, count: int) -> np.ndarray:
    """``(count, 2)`` random (top, left) offsets on the :data:`CROP_ALIGN` grid (any offset when the
    image leaves no aligned room)."""
    tops = np.arange(0, h - size + 1, CROP_ALIGN) if h - size >= CROP_ALIGN else np.arange(h - size + 1)
    lefts = np.arange(0, w - size + 1, CROP_ALIGN) if w - size >= CROP_ALIGN else np.arange(w - size + 1)
    return np.stack([rng.choice(tops, count), rng.choice(lefts, count)], axis=1)


def native_crop(
    img: np.ndarray,
    size: int,
    rng: np.random.Generator,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    reference: np.ndarray | None = None,
    tries: int = 4,
) -> torch.Tensor:
    """A random ``size`` crop at the image's own resolution, randomly flipped: ``(3, size, size)``.

    Unlike :func:`clip_transform` nothing is resized (an image smaller than ``size`` excepted), so
    pixel-level degradations (noise, JPEG blocks, rain streaks) reach CLIP as they are; flips keep them.
    Offsets lie on the 8-px grid (:data:`CROP_ALIGN`).

    ``reference``: the clean image ``img`` was degraded from (same shape). Of ``tries`` random offsets
    the crop where most pixels differ from it is taken, so a local degradation (a few raindrops, a
    shadow, a hole) is in view: a crop that misses it would teach that a clean-looking crop is
    "raindrop". A global degradation differs everywhere, so any offset is as good.
    """
    return native_crops(img, size, rng, 1, mean, std, reference, tries)[0]


def native_crops(
    img: np.ndarray,
    size: int,
    rng: np.random.Generator,
    count: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    reference: np.ndarray | None = None,
    tries: int = 4,
) -> torch.Tensor:
    """``count`` crops as :func:`native_crop` from one image: ``(count, 3, size, size)``; with a
    ``reference``, the ``count`` of ``max(tries, 2 * count)`` offsets where most pixels changed."""
    views = crop_views(img, size, rng, count, reference, tries)
    resized = at_least(img, size)
    return torch.stack([normalise_crop(cut_view(resized, size, view), mean, std) for view in views])


#: A crop of :func:`crop_views`: ``(top, left, flip left-right, flip up-down)``.
View = tuple[int, int, bool, bool]


def crop_views(
    img: np.ndarray,
    size: int,
    rng: np.random.Generator,
    count: int,
    reference: np.ndarray | None = None,
    tries: int = 4,
) -> list[View]:
    """Where :func:`native_crops` cuts its ``count`` crops of ``img`` (after :func:`at_least`): random
    offsets on the 8-px grid and random flips; with a ``reference``, the ``count`` of
    ``max(tries, 2 * count)`` offsets where most pixels changed. Cut them with :func:`cut_view`."""
    resized = at_least(img, size)
    h, w = resized.shape[:2]
    draws = max(tries, 2 * count) if reference is not None else count
    offsets = _aligned_offsets(rng, h, w, size, draws)
    if reference is not None and draws > count and resized is img:
        diff = np.abs(img - reference)  # (H, W, 3)
        # The channels' maximum as two elementwise maxima: numpy's reduce over a length-3 last axis
        # is ~15x slower, and this runs for every training sample.
        changed = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2]) > 1.5 / 255.0
        table = np.pad(changed.cumsum(0, dtype=np.int32).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
        t, x = offsets[:, 0], offsets[:, 1]
        counts = table[t + size, x + size] - table[t, x + size] - table[t + size, x] + table[t, x]
        offsets = offsets[np.argsort(-counts, kind="stable")]
    # The flips are drawn crop by crop, left-right before up-down.
    return [(int(top), int(left), rng.random() < 0.5, rng.random() < 0.5) for top, left in offsets[:count]]


def cut_view(img: np.ndarray, size: int, view: View) -> np.ndarray:
    """The ``size`` crop of ``img`` that ``view`` names, flipped as it says: ``(size, size, 3)``."""
    top, left, flip_lr, flip_ud = view
    crop = img[top : top + size, left : left + size]
    if flip_lr:
        crop = crop[:, ::-1]
    return crop[::-1] if flip_ud else crop


def grid_views(
    img: np.ndarray,
    size: int,
    grid: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """``grid x grid`` crops of ``size`` at native resolution, evenly spread over the image: ``(grid², 3, S, S)``.

    The test-time counterpart of :func:`native_crop`: a classifier averages its predictions over them.
    """
    return torch.from_numpy(grid_views_array(img, size, grid, mean, std))
