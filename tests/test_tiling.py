"""Tests for irsde.inference.tiling: exact coverage, blending weights, equivalence with untiled inference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from irsde.inference.tiling import TiledModel, blend_window, tile_starts, tiled_apply, weight_sum


@pytest.mark.parametrize("tile, overlap", [(32, 16), (32, 0), (16, 5), (7, 6)])
def test_tile_starts_cover_every_length_exactly(tile: int, overlap: int) -> None:
    for length in range(1, 130):
        starts = tile_starts(length, tile, overlap)
        size = min(tile, length)
        covered = torch.zeros(length, dtype=torch.bool)
        for s in starts:
            assert 0 <= s and s + size <= length
            covered[s : s + size] = True
        assert covered.all()
        assert starts[0] == 0 and starts[-1] == length - size
        for a, b in zip(starts, starts[1:]):
            assert a < b and a + size - b >= overlap  # neighbours share at least `overlap` pixels


def test_blend_window_positive_and_weights_cover_every_pixel() -> None:
    window = blend_window(32, 20, 16)
    assert window.shape == (32, 20) and torch.all(window > 0) and torch.all(window <= 1)
    weights = weight_sum(70, 90, 32, 16)
    assert weights.shape == (70, 90) and torch.all(weights > 0)


def test_weights_are_a_partition_of_unity_for_even_spacing() -> None:
    # 80 = 32 + 3 * 16: tiles at 0, 16, 32, 48 and the sin^2/cos^2 ramps of each overlap sum to 1.
    weights = weight_sum(80, 80, 32, 16, dtype=torch.float64)
    interior = weights[16:64, 16:64]
    torch.testing.assert_close(interior, torch.ones_like(interior), rtol=0, atol=1e-12)


def test_tiled_apply_pointwise_equals_untiled() -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 70, 90, generator=gen)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(3 * x) + x**2

    out = tiled_apply(fn, image, tile=32, overlap=16, batch_size=3)
    torch.testing.assert_close(out, fn(image), rtol=0, atol=1e-6)


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    # Receptive-field radius 2 (two 3x3 convs), far below the 16-pixel overlap; 3 -> 5 channels.
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 5, 3, padding=1)).eval()


def test_tiled_apply_conv_net_close_to_untiled_and_blending_hides_seams() -> None:
    net = _conv_net()
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 70, 90, generator=gen)
    with torch.no_grad():
        full = net(image)
        blended = tiled_apply(net, image, tile=32, overlap=16, batch_size=4)
        hard_seams = tiled_apply(net, image, tile=32, overlap=0, batch_size=4)
    assert blended.shape == (2, 5, 70, 90)
    seam_error = (hard_seams - full).abs().max()
    blended_error = (blended - full).abs().max()
    assert seam_error > 0.05  # zero padding at tile edges really changes the output there
    # Only pixels within 2 px of an inner tile edge differ, and those carry a blend weight <= sin^2(pi/2 *
    # 1.5/16) ~ 0.022 against their neighbour's ~0.978; so the error shrinks at least ~20x.
    assert blended_error < 0.05 * seam_error


def test_tiled_apply_single_tile_calls_fn_once_on_the_whole_image() -> None:
    calls: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x * 2

    image = torch.rand(3, 3, 20, 31)
    out = tiled_apply(fn, image, tile=32, overlap=8, batch_size=1)
    assert calls == [(3, 3, 20, 31)]
    torch.testing.assert_close(out, image * 2)


def test_tiled_apply_rejects_bad_arguments_and_size_changing_fn() -> None:
    image = torch.rand(1, 3, 40, 40)
    for tile, overlap in [(0, 0), (16, 16), (16, 20), (16, -1)]:
        with pytest.raises(ValueError, match="tile|overlap"):
            tiled_apply(lambda x: x, image, tile=tile, overlap=overlap, batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        tiled_apply(lambda x: x, image, tile=16, overlap=4, batch_size=0)
    with pytest.raises(ValueError, match="spatial"):
        tiled_apply(lambda x: x[..., :-1], image, tile=16, overlap=4, batch_size=2)
    with pytest.raises(ValueError, match="overlap"):
        TiledModel(lambda x, mu, t: x, tile=8, overlap=8)


def test_tiled_model_tiles_and_repeats_per_image_conditions() -> None:
    shapes: list[tuple[int, ...]] = []
    passed_flags: list[object] = []

    def model_fn(x, mu, t, text_context=None, image_context=None, flag=None):
        # Pointwise in space, so tiled == untiled exactly if every tile gets its own image's t and context.
        shapes.append(tuple(x.shape))
        assert mu.shape == x.shape and t.shape == (x.shape[0],) and text_context.shape[0] == x.shape[0]
        passed_flags.append(flag)
        bias = (
            0.01 * t.view(-1, 1, 1, 1)
            + text_context.mean(1).view(-1, 1, 1, 1)
            - image_context.sum(1).view(-1, 1, 1, 1)
        )
        return torch.tanh(x - mu) + bias

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 70, 90, generator=gen)
    mu = torch.randn(2, 3, 70, 90, generator=gen)
    t = torch.tensor([7, 93])
    text_context = torch.randn(2, 16, generator=gen)
    image_context = torch.randn(2, 16, generator=gen)
    kwargs = dict(text_context=text_context, image_context=image_context, flag="keep")

    tiled = TiledModel(model_fn, tile=32, overlap=16, batch_size=5)
    out = tiled(x, mu, t, **kwargs)
    n_tile_calls = len(shapes)
    full = model_fn(x, mu, t, **kwargs)

    torch.testing.assert_close(out, full, rtol=0, atol=1e-6)
    n_tiles = 2 * len(tile_starts(70, 32, 16)) * len(tile_starts(90, 32, 16))  # 2 x 4 x 5 = 40
    assert n_tile_calls == -(-n_tiles // 5)  # batches of at most 5 tiles
    for n, c, h, w in shapes[:n_tile_calls]:
        assert n <= 5 and c == 3 and h <= 32 and w <= 32
    assert set(passed_flags) == {"keep"}


def test_tiled_model_small_image_calls_model_directly() -> None:
    seen: list[tuple[int, ...]] = []

    def model_fn(x, mu, t):
        seen.append(tuple(x.shape))
        return x - mu

    x, mu = torch.rand(1, 3, 24, 32), torch.rand(1, 3, 24, 32)
    out = TiledModel(model_fn, tile=32, overlap=8, batch_size=2)(x, mu, 5)
    assert seen == [(1, 3, 24, 32)]
    torch.testing.assert_close(out, x - mu)
