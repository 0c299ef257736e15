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

from data.clip_input import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_input_array

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "clip_transform", "clip_transform_batch"]


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
