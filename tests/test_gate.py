"""The min_change gate (irsde.inference.gate): what a restorer barely changes is given back as it came."""

from __future__ import annotations

import numpy as np
import pytest

from irsde.inference.gate import CHANGE_WINDOW, keep_small_changes


def _reference(lq: np.ndarray, out: np.ndarray, min_change: float, window: int) -> np.ndarray:
    """The gate written the slow way: every window, its RMS change, and the pixels of the changed ones."""
    batch, _, height, width = lq.shape
    kh, kw = min(window, height), min(window, width)

    def starts(size: int, k: int) -> list[int]:
        found = list(range(0, size - k + 1, max(k // 2, 1)))
        return found if found[-1] == size - k else [*found, size - k]

    keep = np.zeros((batch, height, width), dtype=bool)
    for b in range(batch):
        for y in starts(height, kh):
            for x in starts(width, kw):
                diff = out[b, :, y : y + kh, x : x + kw].astype(np.float64) - lq[b, :, y : y + kh, x : x + kw]
                if np.sqrt((diff**2).mean()) * 255.0 >= min_change:
                    keep[b, y : y + kh, x : x + kw] = True
    return np.where(keep[:, None], out, lq)


@pytest.mark.parametrize(
    "shape, window", [((2, 3, 150, 211), CHANGE_WINDOW), ((1, 3, 40, 97), CHANGE_WINDOW), ((3, 3, 33, 33), 8)]
)
def test_the_gate_is_the_window_by_window_rule(shape, window):
    # Changes of random size in random places: the fast gate (integral image, difference array) keeps
    # exactly the pixels the window-by-window rule keeps, the last window flush with each edge included.
    rng = np.random.default_rng(0)
    lq = rng.random(shape, dtype=np.float32)
    scale = rng.uniform(0.0, 3.0, size=(shape[0], 1, shape[2] // 8 + 1, shape[3] // 8 + 1)) / 255.0
    local = np.kron(scale, np.ones((1, 1, 8, 8)))[..., : shape[2], : shape[3]]
    out = np.clip(lq + local * rng.standard_normal(shape), 0.0, 1.0).astype(np.float32)
    kept = reverted = False
    for min_change in (0.5, 1.0, 1.7):
        got = keep_small_changes(lq, out, min_change, window)
        expected = _reference(lq, out, min_change, window)
        assert got.dtype == np.float32 and np.array_equal(got, expected)
        kept |= bool(((got == out).all(axis=1) & (got != lq).any(axis=1)).any())
        reverted |= bool(((got == lq).all(axis=1) & (out != lq).any(axis=1)).any())
    assert kept and reverted  # the draw exercises both outcomes


def test_a_clean_photo_comes_back_bit_identical_and_a_local_correction_whole():
    rng = np.random.default_rng(1)
    lq = rng.random((1, 3, 256, 320), dtype=np.float32)
    floor = (0.6 / 255.0) * rng.standard_normal(lq.shape).astype(np.float32)  # a restorer's precision floor
    assert np.array_equal(keep_small_changes(lq, lq + floor, 1.0), lq)
    out = lq + floor
    out[:, :, 100:120, 150:170] += 0.2  # a real correction on a small patch of a large photo
    got = keep_small_changes(lq, out, 1.0)
    rows, cols = np.nonzero((got != lq).any(axis=1)[0])
    # The correction and the windows over it (64 px, stride 32) are kept whole; the rest is the input.
    assert np.array_equal(got[:, :, 100:120, 150:170], out[:, :, 100:120, 150:170])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (64, 159, 96, 223)
    assert np.array_equal(got[:, :, :64], lq[:, :, :64]) and np.array_equal(got[:, :, 160:], lq[:, :, 160:])
    assert np.array_equal(got[..., :96], lq[..., :96]) and np.array_equal(got[..., 224:], lq[..., 224:])


def test_min_change_zero_is_off_and_a_negative_or_nan_one_an_error():
    lq = np.zeros((1, 3, 16, 16), dtype=np.float32)
    out = lq + np.float32(1e-4)
    assert keep_small_changes(lq, out, 0.0) is out
    for bad in (-1.0, float("nan")):  # NaN would otherwise give back every window, silently
        with pytest.raises(ValueError, match="min_change must be >= 0"):
            keep_small_changes(lq, out, bad)
    with pytest.raises(ValueError, match="one shape"):
        keep_small_changes(lq, out[:, :, :8], 1.0)
