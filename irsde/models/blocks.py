"""Blocks both restorer families use: multi-head (cross-)attention and the padding to a multiple.

The conditional U-Net's SpatialTransformer and NAFNet's content cross-attention share
:class:`CrossAttention` (and its head width, :data:`HEAD_DIM`); both pad their input with
:func:`pad_to_multiple` and crop their output back; both can correct the whole image's tones with a
:class:`GlobalCurve` (``model.global_curve``, off in the paper's configs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HEAD_DIM", "CrossAttention", "GlobalCurve", "pad_to_multiple"]

HEAD_DIM = 32  # channels per attention head, everywhere (official `num_head_channels`)


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` on ``context`` (self-attention when ``context_dim`` is None)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        # Sequential keeps the official key `to_out.0` (its second item was a no-op Dropout(0)).
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x).reshape(b, n, self.heads, -1).transpose(1, 2)  # (B, heads, N, d)
        k = (
            self.to_k(context).reshape(b, context.shape[1], self.heads, -1).transpose(1, 2)
        )  # (B, heads, M, d)
        v = (
            self.to_v(context).reshape(b, context.shape[1], self.heads, -1).transpose(1, 2)
        )  # (B, heads, M, d)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, (B, heads, N, d)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))  # (B, N, query_dim)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad ``(B, C, H, W)`` right/bottom to multiples of ``multiple``: reflect, or replicate where the
    image is smaller than the padding (the restorers crop their output back to ``H, W``)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class GlobalCurve(nn.Module):
    """A tone curve for the whole image, ``a_c * x^p + b_c`` per channel, predicted from the image's
    statistics and the restorer's degradation conditioning vector.

    Under-exposure (``gain * x^gamma``) and haze (``J t + A (1 - t)``) are, to first order, such curves:
    on the demo's validation crops the best curve of each image raises haze by 12 dB and low light by
    10 dB, where the demo's NAFNet, trained for minutes, moves neither. A handful of numbers per image
    are learnt in a few hundred steps; the restorer adds its local correction on top
    (``curve(lq) + residual``). Measured on the demo (README, "Stage 2"): NAFNet + DA-CLIP with the curve
    gains +0.93 dB on the validation crops instead of +0.51 (haze +4.0 dB), but a curve is a strong
    correction, and where the tiny DA-CLIP misreads photos outside the demo it loses 1.1-1.2 dB on their
    degraded crops; so the demo leaves it off.

    Restored in tiles (images over ``max_pixels``), each tile estimates its own curve; the overlaps
    blend them.

    The statistics are, per channel, the mean and standard deviation of the image and the 2/25/50/75/98%
    quantiles of its 16 x 16 block means (they tell a dark scene with highlights from an under-exposed
    one, and a hazy scene from a pale one). ``a_c = exp(2.5 tanh(.))``, ``p = exp(1.5 tanh(.))`` and
    ``b_c = tanh(.)`` keep the curve monotone and bounded. The last layer starts at zero: the curve is
    the identity, exactly, until training moves it.
    """

    QUANTILES = (0.02, 0.25, 0.5, 0.75, 0.98)
    GRID = 16  # block means the quantiles are taken over (any image size gives the same number)

    def __init__(self, channels: int, cond_dim: int = 0, hidden: int = 64) -> None:
        super().__init__()
        self.channels = channels
        self.cond_dim = cond_dim
        stats = channels * (2 + len(self.QUANTILES))
        self.mlp = nn.Sequential(
            nn.Linear(stats + cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1 + 2 * channels)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        ranks = [round(q * (self.GRID**2 - 1)) for q in self.QUANTILES]
        self.register_buffer("_ranks", torch.tensor(ranks), persistent=False)

    def statistics(self, image: Tensor) -> Tensor:
        """``(B, C, H, W)`` in [0, 1] -> ``(B, C * 7)``: mean, std and the block-mean quantiles per channel."""
        x = image.float().clamp(0, 1)
        blocks = F.adaptive_avg_pool2d(x, self.GRID).flatten(2)  # (B, C, 256)
        quantiles = blocks.sort(dim=2).values[:, :, self._ranks]  # (B, C, 5), nearest rank
        flat = x.flatten(2)  # (B, C, HW)
        moments = torch.stack([flat.mean(2), flat.std(2, unbiased=False)], dim=2)  # (B, C, 2)
        return torch.cat([moments, quantiles], dim=2).flatten(1)  # (B, C * 7)

    def parameters_of(self, image: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The curve of each image: ``(a, p, b)``, shapes ``(B, C, 1, 1)``, ``(B, 1, 1, 1)``, ``(B, C, 1, 1)``."""
        features = self.statistics(image)
        if self.cond_dim:
            if cond is None:
                raise ValueError(
                    f"GlobalCurve: a conditioning vector [B, {self.cond_dim}] is required, got None"
                )
            features = torch.cat([features, cond.float()], dim=1)
        raw = self.mlp(features)  # (B, 1 + 2C)
        c = self.channels
        p = torch.exp(1.5 * torch.tanh(raw[:, :1]))[:, :, None, None]
        a = torch.exp(2.5 * torch.tanh(raw[:, 1 : 1 + c]))[:, :, None, None]
        b = torch.tanh(raw[:, 1 + c :])[:, :, None, None]
        return a, p, b

    def forward(self, x: Tensor, image: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """The corrected ``x`` (any size), with the curve estimated on ``image`` (default ``x``): ``x`` plus
        ``a x'^p + b - x'`` where ``x' = clamp(x, 1e-3, 1)``, so an identity curve returns ``x`` bit for bit."""
        a, p, b = self.parameters_of(x if image is None else image, cond)
        xc = x.float().clamp(1e-3, 1.0)
        return (x.float() + (a * xc.pow(p) + b - xc)).to(x.dtype)
