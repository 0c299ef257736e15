"""Bounded-memory inference on large images by overlapping tiles.

A diffusion sampler calls the network T times. Running the *whole sampler* per tile would draw
independent noise per tile and let the tiles drift apart (visible seams). Instead we tile only the
*network call*: :class:`TiledModel` wraps ``model_fn(x, mu, t, **kwargs)`` so that each call splits
``x`` and ``mu`` into overlapping tiles, runs the network on batches of tiles and blends the tile
outputs into one full-size prediction. The sampler then steps the whole image at once with one global
noise draw, so the stochastic process stays consistent; only the network's receptive field is cut.

Blending uses a separable raised-cosine window that ramps over the overlap and is positive
everywhere, normalised by the summed weights: for evenly spaced tiles the two ramps of an overlap sum
to exactly 1 (sin^2 + cos^2), and every pixel has weight > 0, so any covering yields a convex
combination of tile outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["TiledModel", "blend_window", "tile_starts", "tiled_apply", "weight_sum"]


def _validate(tile: int, overlap: int, batch_size: int | None = None) -> None:
    if tile <= 0:
        raise ValueError(f"tile must be > 0, got {tile}")
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"overlap must satisfy 0 <= overlap < tile ({tile}), got {overlap}")
    if batch_size is not None and batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``min(tile, length)`` covering ``[0, length)`` exactly.

    Tiles advance by ``tile - overlap``; the last one is shifted back to end at the border (so it may
    overlap its neighbour by more than ``overlap``). A length that fits in one tile gives ``[0]``.
    """
    _validate(tile, overlap)
    if length <= 0:
        raise ValueError(f"length must be > 0, got {length}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def _ramp(size: int, overlap: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1-D window: sin^2 ramp over ``overlap`` samples at both ends, 1 in between, > 0 everywhere."""
    k = torch.arange(size, dtype=torch.float64, device=device)
    if overlap == 0:
        return torch.ones(size, dtype=dtype, device=device)
    # Half-sample offset keeps the end weights strictly positive: sin^2(pi/2 * 0.5/overlap) > 0.
    up = torch.sin(0.5 * math.pi * (k + 0.5) / overlap).pow(2)
    up = torch.where(k < overlap, up, torch.ones_like(up))
    window = torch.minimum(up, up.flip(0))  # ramps meet (min) if size < 2 * overlap
    return window.to(dtype)


def blend_window(
    height: int,
    width: int,
    overlap: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Separable raised-cosine blending window (height, width), positive everywhere."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _ramp(height, overlap, dtype, device)[:, None] * _ramp(width, overlap, dtype, device)[None, :]


def weight_sum(
    height: int,
    width: int,
    tile: int,
    overlap: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sum of the blending windows of all tiles over a (height, width) image; > 0 at every pixel."""
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    window = blend_window(th, tw, overlap, dtype=dtype, device=device)
    total = torch.zeros(height, width, dtype=dtype, device=window.device)
    for y in ys:
        for x in xs:
            total[y : y + th, x : x + tw] += window
    return total


def tiled_apply(
    fn: Callable[..., Tensor],
    image: Tensor,
    tile: int,
    overlap: int,
    batch_size: int,
    *,
    with_batch_index: bool = False,
) -> Tensor:
    """Apply an image-to-image ``fn`` on overlapping tiles and blend the results.

    Args:
        fn: maps tiles (N, C, th, tw) to (N, C_out, th, tw) (same spatial size). With
            ``with_batch_index=True`` it is called as ``fn(tiles, batch_index)``, where ``batch_index``
            (N,) long gives the image of ``image`` each tile comes from (to pick per-image conditions).
        image: (B, C, H, W).
        tile: tile side in pixels (tiles are ``min(tile, H) x min(tile, W)``; never larger than the image).
        overlap: pixels shared by neighbouring tiles, ``0 <= overlap < tile``; make it larger than the
            receptive-field radius of ``fn`` for seamless results.
        batch_size: number of tiles per call of ``fn`` (bounds memory).

    Returns:
        (B, C_out, H, W). If the image fits in one tile, ``fn`` is called once on the whole image.
    """
    _validate(tile, overlap, batch_size)
    if image.dim() != 4:
        raise ValueError(f"image must have shape (B, C, H, W), got {tuple(image.shape)}")
    batch, _, height, width = image.shape

    def call(tiles: Tensor, batch_index: Tensor) -> Tensor:
        out = fn(tiles, batch_index) if with_batch_index else fn(tiles)
        if out.dim() != 4 or out.shape[0] != tiles.shape[0] or out.shape[-2:] != tiles.shape[-2:]:
            raise ValueError(
                f"tiled fn must keep batch and spatial size: {tuple(tiles.shape)} -> {tuple(out.shape)}"
            )
        return out

    if height <= tile and width <= tile:
        return call(image, torch.arange(batch, device=image.device))

    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    # Every (image, y, x) triple is one tile; batches of tiles may mix images.
    jobs = [(b, y, x) for b in range(batch) for y in ys for x in xs]

    output: Tensor | None = None
    window: Tensor | None = None
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        tiles = torch.stack([image[b, :, y : y + th, x : x + tw] for b, y, x in chunk])  # (N, C, th, tw)
        batch_index = torch.tensor([b for b, _, _ in chunk], device=image.device)
        out = call(tiles, batch_index)  # (N, C_out, th, tw)
        if output is None:
            out_dtype = out.dtype
            # Accumulate in at least float32 so bf16/fp16 outputs (autocast) do not lose the blend.
            acc_dtype = torch.promote_types(out.dtype, torch.float32)
            output = torch.zeros(batch, out.shape[1], height, width, dtype=acc_dtype, device=out.device)
            window = blend_window(th, tw, overlap, dtype=acc_dtype, device=out.device)
        for (b, y, x), out_tile in zip(chunk, out):
            output[b, :, y : y + th, x : x + tw] += out_tile * window
    assert output is not None
    weights = weight_sum(height, width, tile, overlap, dtype=output.dtype, device=output.device)
    return (output / weights).to(out_dtype)  # (B, C_out, H, W), convex combination of tile outputs


class TiledModel:
    """Wrap ``model_fn(x, mu, t, **kwargs) -> noise_pred`` so that every call runs on overlapping tiles.

    ``x`` and ``mu`` (B, C, H, W) are cut into the same tiles; per-image arguments are repeated for
    each tile: ``t`` and every tensor keyword argument whose first dimension is B (e.g. the DA-CLIP
    ``text_context`` / ``image_context`` embeddings, which are global per image) are indexed by the
    tile's image; other arguments are passed through unchanged. Outputs are blended as in
    :func:`tiled_apply`. The sampler around it still steps the whole image with one noise draw.

    This is a plain callable, not an ``nn.Module``: it does not own ``model_fn``'s parameters.
    Pick ``tile`` as a multiple of the U-Net's downsampling factor (16 for four levels) to avoid its
    internal padding, and ``overlap`` well above the receptive field that matters (e.g. tile // 4).
    """

    def __init__(self, model_fn: Callable[..., Tensor], tile: int, overlap: int, batch_size: int = 1) -> None:
        _validate(tile, overlap, batch_size)
        self.model_fn = model_fn
        self.tile = tile
        self.overlap = overlap
        self.batch_size = batch_size

    def __call__(self, x: Tensor, mu: Tensor, t: Tensor | int | float, **kwargs: Any) -> Tensor:
        """Predict noise for the full image (B, C, H, W) by tiles."""
        if x.dim() != 4 or mu.dim() != 4 or x.shape[0] != mu.shape[0] or x.shape[-2:] != mu.shape[-2:]:
            raise ValueError(
                f"x and mu must be (B, C, H, W) of one size, got {tuple(x.shape)}, {tuple(mu.shape)}"
            )
        batch, x_channels, height, width = x.shape
        if height <= self.tile and width <= self.tile:
            return self.model_fn(x, mu, t, **kwargs)

        def per_tile(value: Any, batch_index: Tensor) -> Any:
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
                return value[batch_index.to(value.device)]
            return value

        def run(tiles: Tensor, batch_index: Tensor) -> Tensor:
            x_tiles, mu_tiles = tiles[:, :x_channels], tiles[:, x_channels:]  # (N, C, th, tw) each
            tile_kwargs = {name: per_tile(value, batch_index) for name, value in kwargs.items()}
            return self.model_fn(x_tiles, mu_tiles, per_tile(t, batch_index), **tile_kwargs)

        stacked = torch.cat([x, mu], dim=1)  # (B, C + C_mu, H, W): one tiling for both
        return tiled_apply(run, stacked, self.tile, self.overlap, self.batch_size, with_batch_index=True)
