"""DA-CLIP's input transform on numpy arrays (PIL and numpy only, no PyTorch).

The official pipeline converts the RGB image in ``[0, 1]`` to uint8 by *truncation*
(``(x * 255).astype(uint8)``, not rounding), then applies open_clip's evaluation preprocessing:
bicubic resize of the shorter side to 224 (Pillow), centre crop 224, and OpenAI CLIP mean/std
normalisation. :func:`data.transforms.clip_transform` wraps this for tensors; the onnxruntime runner
(:mod:`irsde.export.runtime`) calls it directly, so both feed DA-CLIP the same numbers.

:func:`grid_views_array` is the input of a DA-CLIP trained on native-resolution crops: an evenly spread
grid of them, on JPEG's 8-px block grid, normalised after the same uint8 truncation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = [
    "CROP_ALIGN",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "clip_input_array",
    "grid_views_array",
    "normalise_array",
    "at_least",
    "resize_short_side",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Crops and views start on multiples of this (JPEG's 8 x 8 block grid starts at the image's corner,
#: so an aligned crop keeps the block phase, which an 8-px-patch ViT then sees at its patch edges).
CROP_ALIGN = 8


def clip_input_array(
    img: np.ndarray,
    size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> np.ndarray:
    """One ``(H, W, 3)`` RGB image in ``[0, 1]`` -> the ``(3, size, size)`` float32 CLIP input."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"clip_transform expects an (H, W, 3) RGB image, got shape {img.shape}")
    # Truncation, not rounding: this is what the official code does.
    pil = Image.fromarray((np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8))
    width, height = pil.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)  # torchvision's rule for Resize(int)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    if (new_w, new_h) != (width, height):
        pil = pil.resize((new_w, new_h), Image.BICUBIC)
    # torchvision CenterCrop: offsets rounded to nearest.
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    pil = pil.crop((left, top, left + size, top + size))
    out = (np.asarray(pil, dtype=np.float32) / 255.0).transpose(2, 0, 1)  # (3, size, size)
    mean_a = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((out - mean_a) / std_a)


def normalise_array(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(H, W, 3)`` in [0, 1] -> CLIP-normalised float32 ``(3, H, W)``, truncated to uint8 levels first."""
    levels = (np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8).astype(np.float32) / 255.0
    mean_a = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((levels.transpose(2, 0, 1) - mean_a) / std_a)


def resize_short_side(img: np.ndarray, short: int) -> np.ndarray:
    """``img`` with its shorter side resized (bicubic, uint8 levels) to ``short`` pixels."""
    pil = Image.fromarray((np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8))
    width, height = pil.size
    scale = short / min(width, height)
    size = (max(short, round(width * scale)), max(short, round(height * scale)))
    return np.asarray(pil.resize(size, Image.BICUBIC), dtype=np.float32) / 255.0


def at_least(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` itself when its shorter side is ``size`` or more, else upscaled to it (bicubic)."""
    return img if min(img.shape[:2]) >= size else resize_short_side(img, size)


def grid_views_array(
    img: np.ndarray,
    size: int,
    grid: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> np.ndarray:
    """``grid x grid`` native-resolution crops of ``size``, evenly spread: float32 ``(grid², 3, S, S)``.

    An image whose shorter side is below ``size`` is upscaled first (bicubic); offsets are moved down
    to the :data:`CROP_ALIGN` grid (the block phase the crops had in training).
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"grid views need an (H, W, 3) RGB image, got shape {img.shape}")
    img = at_least(img, size)
    h, w = img.shape[:2]
    tops = np.linspace(0, h - size, grid).round().astype(int) // CROP_ALIGN * CROP_ALIGN
    lefts = np.linspace(0, w - size, grid).round().astype(int) // CROP_ALIGN * CROP_ALIGN
    return np.stack(
        [normalise_array(img[t : t + size, x : x + size], mean, std) for t in tops for x in lefts]
    )
