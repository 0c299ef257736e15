"""Blocks both restorer families use: multi-head (cross-)attention and the padding to a multiple.

The conditional U-Net's SpatialTransformer and NAFNet's content cross-attention share
:class:`CrossAttention` (and its head width, :data:`HEAD_DIM`); both pad their input with
:func:`pad_to_multiple` and crop their output back.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HEAD_DIM", "CrossAttention", "pad_to_multiple"]

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
