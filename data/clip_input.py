"""DA-CLIP's input transform on numpy arrays (PIL and numpy only, no PyTorch).

The official pipeline converts the RGB image in ``[0, 1]`` to uint8 by *truncation*
(``(x * 255).astype(uint8)``, not rounding), then applies open_clip's evaluation preprocessing:
bicubic resize of the shorter side to 224 (Pillow), centre crop 224, and OpenAI CLIP mean/std
normalisation. :func:`data.transforms.clip_transform` wraps this for tensors; the onnxruntime runner
(:mod:`irsde.export.runtime`) calls it directly, so both feed DA-CLIP the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "clip_input_array"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
