"""Leave alone what the restorer barely changes: the ``min_change`` gate (numpy only, no PyTorch).

A tiny restorer never returns its input exactly: on a photo with nothing to correct its output still
differs by about one grey level (RMS) from the input, the floor of its precision. Where the degradation
barely shows (a slightly blurred smooth sky, a clean photo) that floor is all the restorer does, and it
costs PSNR against the truth. The gate keeps the restorer's change only where it is large enough to be a
correction: the image is covered by windows of :data:`CHANGE_WINDOW` pixels (stride half a window, the last
window of each row and column flush with the edge); a window whose RMS change (over its pixels and the
three channels, in grey levels of 255) is below ``min_change`` is given back as it came, unless another
window over the same pixels changes more. A clean photo the restorer leaves within the floor comes back
bit-identical; a local correction (a patch of snow on a large photo) is kept whole.

Used by :class:`irsde.inference.pipeline.RestorationPipeline` and the onnxruntime runner
(:class:`irsde.export.runtime.OnnxRestorer`) alike, so both give the same pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CHANGE_WINDOW", "check_min_change", "keep_small_changes"]

#: The side of the gate's windows, in pixels (images smaller than it use their own side).
CHANGE_WINDOW = 64


def check_min_change(min_change: float) -> float:
    """``min_change`` as a float, or a ``ValueError`` when it is negative or NaN (NaN would give back every
    window, silently)."""
    if not min_change >= 0:
        raise ValueError(f"min_change must be >= 0 (grey levels of 255), got {min_change!r}")
    return float(min_change)


def _window_starts(size: int, window: int) -> np.ndarray:
    """Window origins along one axis: every ``window // 2`` pixels, the last one flush with the edge."""
    stride = max(window // 2, 1)
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return np.asarray(starts)


def keep_small_changes(
    lq: np.ndarray, out: np.ndarray, min_change: float, window: int = CHANGE_WINDOW
) -> np.ndarray:
    """``out`` (B, 3, H, W) with every window it changes by less than ``min_change`` grey levels (RMS)
    put back to ``lq``'s pixels (see the module docstring); ``min_change`` 0 returns ``out`` itself."""
    if check_min_change(min_change) == 0:
        return out
    if lq.shape != out.shape or lq.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) arrays of one shape, got {lq.shape} and {out.shape}")
    batch, _, height, width = lq.shape
    kh, kw = min(window, height), min(window, width)
    energy = ((out.astype(np.float64) - lq.astype(np.float64)) ** 2).mean(axis=1)  # (B, H, W)
    integral = np.zeros((batch, height + 1, width + 1))
    integral[:, 1:, 1:] = energy.cumsum(axis=1).cumsum(axis=2)
    ys, xs = np.meshgrid(_window_starts(height, kh), _window_starts(width, kw), indexing="ij")  # (ny, nx)
    sums = (
        integral[:, ys + kh, xs + kw]
        - integral[:, ys, xs + kw]
        - integral[:, ys + kh, xs]
        + integral[:, ys, xs]
    )  # (B, ny, nx): each window's summed energy
    changed = np.sqrt(np.maximum(sums, 0.0) / (kh * kw)) * 255.0 >= min_change
    # Paint the changed windows through a 2-D difference array and its cumulative sums.
    marks = np.zeros((batch, height + 1, width + 1))
    b, iy, ix = np.nonzero(changed)
    y0, x0 = ys[iy, ix], xs[iy, ix]
    for dy, dx, sign in ((0, 0, 1.0), (kh, 0, -1.0), (0, kw, -1.0), (kh, kw, 1.0)):
        np.add.at(marks, (b, y0 + dy, x0 + dx), sign)
    keep = marks.cumsum(axis=1).cumsum(axis=2)[:, :height, :width] > 0.5  # (B, H, W)
    return np.where(keep[:, None], out, lq).astype(out.dtype, copy=False)
