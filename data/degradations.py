"""Synthetic degradations: one function per DA-CLIP degradation type, plus a "wild" chain.

Every generator has the signature ``fn(img, rng, **params) -> img``:

* ``img``: ``(H, W, 3)`` float32 RGB in ``[0, 1]``; the result has the same
  shape, dtype and range;
* ``rng``: a :class:`numpy.random.Generator`; the output is a deterministic
  function of the image, the generator state and the parameters;
* ``params``: keyword-only. A numeric parameter is either a fixed value or a
  ``(low, high)`` range from which a value is drawn uniformly per call (integer
  parameters draw integers, both ends included). Defaults are ranges taken
  from, or in the spirit of, the datasets and papers named in each docstring.
  Sizes of scene elements (drops, flakes, shadows, masks, streaks) are given as
  fractions of the image's shorter side so one setting works at any resolution;
  blur kernels are in pixels, as in the literature.

Call a generator through :func:`degrade` (by name, with a seed) or directly.
Several types at once (a rainy, hazy night): :func:`degrade_chain` applies them in the
physical order :data:`CHAIN_ORDER`; :data:`CDD11_COMBINATIONS` lists the eleven sets of CDD-11.

Adding a degradation type: write ``my_type(img, rng, *, strength=(0.1, 0.5))``
following the contract above and add it to :data:`DEGRADATIONS` (or pass a
mapping with it to :func:`data.paired.make_paired_dataset`); then list its name
in the config's degradation list.

Only NumPy, Pillow and torch are used (no SciPy/OpenCV). Convolutions run as FFTs
so large kernels on large photos stay fast.
"""

from __future__ import annotations

import inspect
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

__all__ = [
    "Range",
    "DegradationFn",
    "noisy",
    "jpeg_compressed",
    "motion_blurry",
    "low_light",
    "hazy",
    "rainy",
    "raindrop",
    "snowy",
    "shadowed",
    "uncompleted",
    "motion_kernel",
    "inpainting_mask",
    "WildConfig",
    "wild_degradation",
    "DEGRADATIONS",
    "degrade",
    "parameter_names",
    "CHAIN_ORDER",
    "CDD11_COMBINATIONS",
    "COMBINATION_SEPARATOR",
    "canonical_order",
    "combination_name",
    "parse_combination",
    "degrade_chain",
]

#: A fixed value or a ``(low, high)`` range drawn uniformly per call.
Range = float | tuple[float, float]
IntRange = int | tuple[int, int]
DegradationFn = Callable[..., np.ndarray]

# Rec. 601 luma weights, used for "luminance" throughout.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ----------------------------------------------------------------------------- helpers


def _draw(rng: np.random.Generator, value: Range, name: str) -> float:
    """A fixed value, or one drawn uniformly from ``(low, high)``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] > value[1]:
            raise ValueError(f"parameter {name!r}: expected a number or a (low, high) range, got {value!r}")
        return float(rng.uniform(value[0], value[1]))
    return float(value)


def _draw_int(rng: np.random.Generator, value: IntRange, name: str) -> int:
    """A fixed integer, or one drawn uniformly from ``(low, high)``, both ends included."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] > value[1]:
            raise ValueError(f"parameter {name!r}: expected an integer or a (low, high) range, got {value!r}")
        return int(rng.integers(int(value[0]), int(value[1]) + 1))
    return int(value)


def _odd(n: int) -> int:
    return n if n % 2 == 1 else n + 1


def _as_image(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    return np.ascontiguousarray(img, dtype=np.float32)


def _finish(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)


def _filter2d(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve every channel of ``(H, W[, C])`` with an odd-sized 2-D kernel, reflect borders (FFT)."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    squeeze = img.ndim == 2
    x = img[:, :, None] if squeeze else img
    h, w = x.shape[:2]
    padded = np.pad(x, ((ph, ph), (pw, pw), (0, 0)), mode="reflect")
    shape = padded.shape[:2]
    spectrum = np.fft.rfft2(padded, s=shape, axes=(0, 1)) * np.fft.rfft2(kernel, s=shape)[:, :, None]
    # Circular convolution of the padded image; the window below never wraps.
    out = np.fft.irfft2(spectrum, s=shape, axes=(0, 1))[2 * ph : 2 * ph + h, 2 * pw : 2 * pw + w]
    out = out.astype(np.float32)
    return out[:, :, 0] if squeeze else out


def _gaussian_kernel(sigma: float, radius: int | None = None) -> np.ndarray:
    """Normalised isotropic 2-D Gaussian, radius 3 sigma by default."""
    radius = max(1, int(math.ceil(3 * sigma))) if radius is None else radius
    axis = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (axis / max(sigma, 1e-6)) ** 2)
    kernel = np.outer(g, g)
    return kernel / kernel.sum()


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img.astype(np.float32, copy=True)
    return _filter2d(img, _gaussian_kernel(sigma))


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """A smooth random field in ``[0, 1]``: ``cells`` random values along the short side, upsampled bicubically."""
    scale = cells / min(h, w)
    gh, gw = max(2, round(h * scale)), max(2, round(w * scale))
    coarse = rng.random((gh, gw)).astype(np.float32)
    field = np.array(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def _splat(points: np.ndarray, size: int) -> np.ndarray:
    """Rasterise sub-pixel ``(N, 2)`` (x, y) points into a ``size`` x ``size`` grid, bilinear weights."""
    grid = np.zeros((size, size), dtype=np.float64)
    x0, y0 = np.floor(points[:, 0]).astype(int), np.floor(points[:, 1]).astype(int)
    fx, fy = points[:, 0] - x0, points[:, 1] - y0
    for dx, dy, weight in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xs, ys = x0 + dx, y0 + dy
        keep = (xs >= 0) & (xs < size) & (ys >= 0) & (ys < size)
        np.add.at(grid, (ys[keep], xs[keep]), weight[keep])
    return grid


def _densify(path: np.ndarray, step: float = 0.25) -> np.ndarray:
    """Points every ``step`` pixels along a polyline ``(N, 2)`` (so rasterised lines have no gaps)."""
    out = [path[:1]]
    for a, b in zip(path[:-1], path[1:]):
        n = max(1, int(math.ceil(np.linalg.norm(b - a) / step)))
        t = np.arange(1, n + 1)[:, None] / n
        out.append(a + (b - a) * t)
    return np.concatenate(out)


def _line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A one-pixel anti-aliased line of the given length and angle (0 = vertical), peak 1."""
    size = _odd(int(math.ceil(length)) + 2)
    c = (size - 1) / 2
    theta = math.radians(angle_deg)
    direction = np.array([math.sin(theta), math.cos(theta)])
    ends = np.stack(
        [np.array([c, c]) - direction * (length - 1) / 2, np.array([c, c]) + direction * (length - 1) / 2]
    )
    kernel = _splat(_densify(ends), size)
    return kernel / kernel.max()


def _luminance(img: np.ndarray) -> np.ndarray:
    return img @ _LUMA


# ----------------------------------------------------------------------------- the ten types


def noisy(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    sigma: Range = (15.0, 50.0),
    poisson: Range | None = None,
    gray: bool = False,
) -> np.ndarray:
    """Additive white Gaussian noise, optionally plus Poisson (shot) noise.

    Args:
        sigma: Gaussian standard deviation in 0-255 units. Default ``(15, 50)``,
            the span of the sigma = 15/25/50 levels of the denoising benchmarks
            (DnCNN, Restormer).
        poisson: scale of Poisson noise at 8-bit photon counts, as in Real-ESRGAN
            (its range is 0.05-3); ``None`` (default) disables it.
        gray: the same noise on the three channels (luminance noise).
    """
    img = _as_image(img)
    channels = 1 if gray else 3
    std = _draw(rng, sigma, "sigma") / 255.0
    noise = rng.standard_normal((*img.shape[:2], channels)).astype(np.float32) * std
    out = img + noise
    if poisson is not None:
        scale = _draw(rng, poisson, "poisson")
        signal = _luminance(img)[:, :, None] if gray else img
        counts = np.round(signal * 255.0)
        shot = (rng.poisson(counts) - counts).astype(np.float32) / 255.0  # zero-mean shot noise
        out = out + scale * shot
    return _finish(out)


def jpeg_compressed(img: np.ndarray, rng: np.random.Generator, *, quality: IntRange = (10, 40)) -> np.ndarray:
    """JPEG compression with Pillow (4:2:0 chroma subsampling, libjpeg's standard tables).

    Args:
        quality: JPEG quality 1-95. Default ``(10, 40)``, the q = 10/20/30/40
            range of the JPEG artefact-removal benchmarks (ARCNN, FBCNN).
    """
    img = _as_image(img)
    q = _draw_int(rng, quality, "quality")
    if not 1 <= q <= 100:
        raise ValueError(f"parameter 'quality' must be in 1..100, got {q}")
    buffer = io.BytesIO()
    Image.fromarray((img * 255.0).round().astype(np.uint8)).save(buffer, format="JPEG", quality=q)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255.0


def motion_kernel(
    rng: np.random.Generator,
    size: int,
    *,
    length: float = 1.0,
    curvature: float = 0.15,
    shake_prob: float = 0.1,
) -> np.ndarray:
    """A random camera-shake kernel: a smooth random trajectory rasterised into ``size`` x ``size``.

    The trajectory is a walk of 64 steps with inertia whose heading drifts by
    Gaussian angle changes (std ``curvature`` rad/step) with occasional abrupt
    turns (probability ``shake_prob`` per step), after Boracchi & Foi (2012), the
    model behind DeblurGAN's synthetic blur. ``length`` is the path length as a
    fraction of ``size - 1``; the path is shrunk to fit if needed. Returns a
    non-negative kernel summing to 1.
    """
    steps = 64
    heading = rng.uniform(0, 2 * math.pi)
    turns = rng.normal(0.0, curvature, steps - 1)
    shakes = rng.random(steps - 1) < shake_prob
    turns[shakes] += rng.uniform(-math.pi / 2, math.pi / 2, int(shakes.sum()))
    headings = heading + np.concatenate([[0.0], np.cumsum(turns)])
    step = max(length, 1e-3) * (size - 1) / (steps - 1)
    moves = np.stack([np.cos(headings), np.sin(headings)], axis=1) * step
    path = np.concatenate([[[0.0, 0.0]], np.cumsum(moves, axis=0)])
    lo, hi = path.min(axis=0), path.max(axis=0)
    extent = float((hi - lo).max())
    if extent > size - 1:
        path = path * (size - 1) / extent
        lo, hi = path.min(axis=0), path.max(axis=0)
    path = path - (lo + hi) / 2 + (size - 1) / 2  # centre the bounding box
    kernel = _splat(_densify(path), size)
    return kernel / kernel.sum()


def motion_blurry(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    kernel_size: IntRange = (9, 25),
    length: Range = (0.5, 1.0),
    curvature: Range = (0.0, 0.3),
) -> np.ndarray:
    """Blur by a random camera-shake trajectory (see :func:`motion_kernel`).

    Args:
        kernel_size: kernel side in pixels (made odd). Default ``(9, 25)``:
            mild to strong shake at the 256-720 px resolutions of GoPro-style
            deblurring data.
        length: trajectory length as a fraction of the kernel size.
        curvature: heading change per step in radians (0 = a straight line).
    """
    img = _as_image(img)
    size = _odd(max(3, _draw_int(rng, kernel_size, "kernel_size")))
    kernel = motion_kernel(
        rng, size, length=_draw(rng, length, "length"), curvature=_draw(rng, curvature, "curvature")
    )
    return _finish(_filter2d(img, kernel))


def low_light(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    gamma: Range = (2.0, 3.5),
    gain: Range = (0.5, 0.9),
    noise_sigma: Range = (2.0, 10.0),
) -> np.ndarray:
    """Under-exposure: ``gain * img ** gamma`` plus sensor read noise.

    Args:
        gamma: power applied to the intensities; default ``(2, 3.5)``, within
            the gamma-darkening range of synthetic low-light data such as LLNet's
            (Lore et al. 2017).
        gain: global exposure factor, default ``(0.5, 0.9)``.
        noise_sigma: Gaussian read noise in 0-255 units added after darkening
            (dark images are noisy); default ``(2, 10)``.
    """
    img = _as_image(img)
    dark = _draw(rng, gain, "gain") * np.power(img, _draw(rng, gamma, "gamma"))
    std = _draw(rng, noise_sigma, "noise_sigma") / 255.0
    return _finish(dark + rng.standard_normal(img.shape).astype(np.float32) * std)


def dark_exposure(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    gamma: Range = (1.5, 3.0),
    gain: Range = (0.3, 0.9),
) -> np.ndarray:
    """A dark but *clean* picture of the scene: ``gain * img ** gamma`` without noise.

    Not a degradation: night scenes and dark rooms are correctly exposed photos too. Shown to a
    restorer as an identity pair (input = target), it teaches that darkness alone is not
    :func:`low_light` (which also has the read noise of an under-exposed sensor).
    """
    img = _as_image(img)
    return _finish(_draw(rng, gain, "gain") * np.power(img, _draw(rng, gamma, "gamma")))


def hazy(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    beta: Range = (0.6, 1.8),
    airlight: Range = (0.7, 1.0),
    depth: np.ndarray | None = None,
) -> np.ndarray:
    """Atmospheric scattering: ``I = J t + A (1 - t)`` with ``t = exp(-beta d)`` (Koschmieder's model).

    Args:
        beta: scattering coefficient; default ``(0.6, 1.8)`` as in RESIDE.
        airlight: global atmospheric light ``A`` (grey); default ``(0.7, 1.0)`` as in RESIDE.
        depth: ``(H, W)`` relative depth in ``[0, 1]``. Without one, a proxy is
            used: the top of the picture is far (a vertical ramp, as in most
            outdoor photos) mixed with a smooth random field, mapped to ``[0.2, 1]``.
    """
    img = _as_image(img)
    h, w = img.shape[:2]
    if depth is None:
        ramp = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None] * np.ones((1, w), dtype=np.float32)
        proxy = 0.65 * ramp + 0.35 * _smooth_field(rng, h, w, cells=4)
        depth = 0.2 + 0.8 * proxy
    else:
        depth = np.asarray(depth, dtype=np.float32)
        if depth.shape != (h, w):
            raise ValueError(f"parameter 'depth': expected shape {(h, w)}, got {depth.shape}")
    transmission = np.exp(-_draw(rng, beta, "beta") * depth)[:, :, None]  # t = e^{-beta d}
    atmosphere = _draw(rng, airlight, "airlight")
    return _finish(img * transmission + atmosphere * (1.0 - transmission))  # I = J t + A (1 - t)


def rainy(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    density: Range = (0.002, 0.01),
    length: Range = (0.05, 0.15),
    angle: Range = (-20.0, 20.0),
    intensity: Range = (0.5, 0.9),
) -> np.ndarray:
    """Rain streaks: sparse random seeds smeared by a line kernel, screen-blended onto the image.

    In the spirit of the rendered-streak datasets (Rain100L/H): one streak layer
    with a common direction, added in a screen blend so streaks only brighten.

    Args:
        density: fraction of pixels that seed a streak; default ``(0.002, 0.01)``
            (light to heavy rain).
        length: streak length as a fraction of the shorter side (at least 3 px).
        angle: streak angle in degrees from vertical.
        intensity: streak opacity.
    """
    img = _as_image(img)
    h, w = img.shape[:2]
    seeds = (rng.random((h, w)) < _draw(rng, density, "density")) * rng.uniform(0.6, 1.0, (h, w))
    streak_len = max(3.0, _draw(rng, length, "length") * min(h, w))
    streaks = _filter2d(seeds.astype(np.float32), _line_kernel(streak_len, _draw(rng, angle, "angle")))
    streaks = _gaussian_blur(np.clip(streaks, 0.0, 1.0), 0.5)  # soften the 1-px lines
    alpha = (np.clip(streaks, 0.0, 1.0) * _draw(rng, intensity, "intensity"))[:, :, None]
    return _finish(1.0 - (1.0 - img) * (1.0 - alpha))  # screen blend with white


def raindrop(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    count: IntRange = (8, 30),
    radius: Range = (0.02, 0.07),
    magnification: Range = (1.2, 2.5),
    blur: Range = (0.1, 0.25),
    edge: float = 0.2,
) -> np.ndarray:
    """Raindrops on a lens or window: round soft-edged drops showing a blurred, inverted view.

    A drop acts as a small fish-eye lens out of focus (Qian et al. 2018, the
    Raindrop dataset): inside it the scene appears point-mirrored around the drop
    centre, seen over a wider field and blurred. Pixels outside all drops are
    left unchanged.

    Args:
        count: number of drops.
        radius: drop radius as a fraction of the shorter side (at least 2 px).
        magnification: ratio of the scene area seen through a drop to its own size.
        blur: Gaussian blur of the refracted view, sigma as a fraction of the mean radius.
        edge: width of the soft drop boundary as a fraction of its radius.
    """
    img = _as_image(img)
    h, w = img.shape[:2]
    short = min(h, w)
    n = _draw_int(rng, count, "count")
    radii = [max(2.0, _draw(rng, radius, "radius") * short) for _ in range(n)]
    sigma = _draw(rng, blur, "blur") * (float(np.mean(radii)) if radii else 2.0)
    blurred = _gaussian_blur(img, sigma)
    out = img.copy()
    for r in radii:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = r * rng.uniform(1.0, 1.3), r  # drops sag slightly downwards
        m = _draw(rng, magnification, "magnification")
        y0, y1 = max(0, int(cy - ry)), min(h, int(math.ceil(cy + ry)) + 1)
        x0, x1 = max(0, int(cx - rx)), min(w, int(math.ceil(cx + rx)) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dist = np.sqrt(((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2)
        alpha = np.clip((1.0 - dist) / edge, 0.0, 1.0)[:, :, None]
        # Point mirror through the centre, magnified: the lens inverts the scene.
        sy = np.clip(np.round(cy - (ys - cy) * m), 0, h - 1).astype(int)
        sx = np.clip(np.round(cx - (xs - cx) * m), 0, w - 1).astype(int)
        view = 0.92 * blurred[sy, sx] + 0.08  # water scatters a little light
        out[y0:y1, x0:x1] = out[y0:y1, x0:x1] * (1 - alpha) + view * alpha
    return _finish(out)


def snowy(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    amount: Range = (0.02, 0.08),
    scales: tuple[float, ...] = (0.003, 0.008, 0.02),
    veil: Range = (0.0, 0.1),
    brightness: Range = (0.9, 1.0),
) -> np.ndarray:
    """Falling snow: layers of flakes at several scales over a faint bright veil (as in Snow100K).

    Each layer places Gaussian flakes of one size; larger (closer) flakes are
    fewer and softer. The image only gets brighter.

    Args:
        amount: total flake coverage (fraction of the image), split over the layers.
        scales: flake radii of the layers as fractions of the shorter side
            (at least 0.6 px).
        veil: strength of the uniform bright veil (snowfall lowers contrast).
        brightness: flake colour (grey level).
    """
    img = _as_image(img)
    h, w = img.shape[:2]
    short = min(h, w)
    coverage = _draw(rng, amount, "amount") / max(1, len(scales))
    clear = np.ones((h, w), dtype=np.float32)  # product of (1 - alpha) over layers
    for level, scale in enumerate(scales):
        r = max(0.6, scale * short)
        n = int(rng.poisson(coverage * h * w / (math.pi * r * r)))
        impulses = np.zeros((h, w), dtype=np.float32)
        np.add.at(
            impulses,
            (rng.integers(0, h, n), rng.integers(0, w, n)),
            rng.uniform(0.6, 1.0, n).astype(np.float32),
        )
        kernel = _gaussian_kernel(r / 1.5)
        kernel /= kernel.max()  # each flake peaks at its own opacity
        layer = np.clip(_filter2d(impulses, kernel), 0.0, 1.0)
        if level == len(scales) - 1 and len(scales) > 1:
            layer *= 0.8  # the nearest flakes are out of focus and slightly transparent
        clear *= 1.0 - layer
    alpha = (1.0 - clear)[:, :, None]
    v = _draw(rng, veil, "veil")
    base = img * (1 - v) + v
    return _finish(base * (1 - alpha) + _draw(rng, brightness, "brightness") * alpha)


def shadowed(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    count: IntRange = (1, 2),
    size: Range = (0.25, 0.5),
    attenuation: Range = (0.3, 0.6),
    softness: Range = (0.01, 0.04),
) -> np.ndarray:
    """Cast shadows: random polygons that darken the image, with soft (penumbra) edges.

    Outdoor shadows block direct sunlight but keep the blue skylight, so they are
    bluish: the red channel is attenuated most (factors ``k``, ``1.05 k``,
    ``1.15 k``, at most 1). Outside the blurred polygons the image is unchanged.

    Args:
        count: number of shadow polygons.
        size: polygon radius as a fraction of the shorter side.
        attenuation: remaining light ``k`` in the umbra.
        softness: penumbra width (Gaussian sigma) as a fraction of the shorter side.
    """
    img = _as_image(img)
    h, w = img.shape[:2]
    short = min(h, w)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(_draw_int(rng, count, "count")):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        radius = _draw(rng, size, "size") * short
        vertices = int(rng.integers(4, 9))
        # Evenly spread, jittered angles: a star-shaped polygon, never a sliver.
        angles = rng.uniform(0, 2 * math.pi) + (np.arange(vertices) + rng.uniform(-0.3, 0.3, vertices)) * (
            2 * math.pi / vertices
        )
        radii = radius * rng.uniform(0.6, 1.0, vertices)
        draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)], fill=255)
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    sigma = _draw(rng, softness, "softness") * short
    mask = np.clip(_gaussian_blur(mask, sigma), 0.0, 1.0)
    mask[mask < 1e-4] = 0.0  # FFT round-off: keep untouched pixels exactly untouched
    k = _draw(rng, attenuation, "attenuation")
    factors = np.minimum(1.0, k * np.array([1.0, 1.05, 1.15], dtype=np.float32))
    return _finish(img * (1.0 - mask[:, :, None] * (1.0 - factors)))


MaskType = Literal["free-form", "box", "mixed"]


def _box(x0: float, y0: float, width: float, height: float) -> list[float]:
    """PIL's inclusive rectangle of a ``width x height`` box at ``(x0, y0)``; a 1-pixel side stays valid
    under rounding (``x0 + 1 - 1`` can fall below ``x0`` in floating point, which PIL rejects)."""
    return [x0, y0, max(x0, x0 + width - 1), max(y0, y0 + height - 1)]


def inpainting_mask(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    coverage: float,
    mask_type: MaskType = "mixed",
    stroke_width: Range = (0.03, 0.08),
) -> np.ndarray:
    """A boolean ``(H, W)`` hole mask covering ``coverage`` of the image (to about +2%).

    Free-form masks are thick random polylines with round joints in the style of
    DeepFill v2 (Yu et al. 2019); box masks are axis-aligned rectangles. Shapes are
    added until at least ``coverage`` is masked, each sized to what is still
    missing, so the final fraction overshoots the target by at most a small amount.
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"parameter 'coverage' must be in (0, 1), got {coverage}")
    if mask_type not in ("free-form", "box", "mixed"):
        raise ValueError(f"parameter 'mask_type' must be 'free-form', 'box' or 'mixed', got {mask_type!r}")
    short = min(height, width)
    total = height * width
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    masked = 0.0
    for _ in range(1000):  # a safety bound; each shape covers a share of what is missing
        if masked >= coverage:
            break
        remaining = max(coverage - masked, 0.5 / total)
        kind = mask_type if mask_type != "mixed" else ("free-form" if rng.random() < 0.5 else "box")
        if kind == "box":
            area = rng.uniform(0.5, 1.0) * remaining * total
            aspect = rng.uniform(0.5, 2.0)
            bw = max(1.0, min(width, math.sqrt(area * aspect)))
            bh = max(1.0, min(height, area / bw))
            x0, y0 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
            draw.rectangle(_box(x0, y0, bw, bh), fill=255)
        else:
            stroke = max(1, int(round(_draw(rng, stroke_width, "stroke_width") * short)))
            length = min(rng.uniform(0.5, 1.0) * remaining * total / stroke, 4.0 * short)
            segment = max(2.0, 0.12 * short)
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            heading = rng.uniform(0, 2 * math.pi)
            points = [(x, y)]
            travelled = 0.0
            while travelled < length:
                heading += rng.normal(0.0, 0.8)
                step = min(segment, length - travelled)
                x = float(np.clip(x + step * math.cos(heading), 0, width - 1))
                y = float(np.clip(y + step * math.sin(heading), 0, height - 1))
                points.append((x, y))
                travelled += max(step, 1.0)
            draw.line(points, fill=255, width=stroke)
            half = stroke / 2
            for px, py in points:  # round joints and caps
                draw.ellipse([px - half, py - half, px + half, py + half], fill=255)
        masked = float((np.asarray(canvas) > 0).mean())
    return np.asarray(canvas) > 0


def uncompleted(
    img: np.ndarray,
    rng: np.random.Generator,
    *,
    coverage: Range = (0.1, 0.3),
    mask_type: MaskType = "mixed",
    fill: float = 1.0,
) -> np.ndarray:
    """Missing regions (inpainting): pixels under a free-form or box mask replaced by ``fill``.

    Args:
        coverage: masked fraction of the image, reached to within about 2%
            (see :func:`inpainting_mask`); default ``(0.1, 0.3)``, the lower-to-
            middle bands of the irregular-mask benchmark of Liu et al. (2018).
        mask_type: ``"free-form"``, ``"box"`` or ``"mixed"`` (each shape picks one).
        fill: grey level of the holes; default white.
    """
    img = _as_image(img)
    mask = inpainting_mask(
        rng, *img.shape[:2], coverage=_draw(rng, coverage, "coverage"), mask_type=mask_type
    )
    out = img.copy()
    out[mask] = fill
    return _finish(out)


# ----------------------------------------------------------------------------- the "wild" chain


@dataclass
class WildConfig:
    """Settings of the Real-ESRGAN-style chain; defaults are Real-ESRGAN's (Wang et al. 2021).

    Probabilities of the blur-kernel families are, in order: isotropic and
    anisotropic Gaussian, generalised Gaussian (iso, aniso), plateau (iso, aniso).
    """

    kernel_range: tuple[int, int] = (7, 21)
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1
    sinc_prob2: float = 0.1
    second_blur_prob: float = 0.8
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_probs2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob: float = 0.5
    gaussian_noise_prob2: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob: float = 0.4
    gray_noise_prob2: float = 0.4
    jpeg_range: tuple[int, int] = (30, 95)
    jpeg_range2: tuple[int, int] = (30, 95)
    final_sinc_prob: float = 0.8
    #: The chain ends at ``1 / scale`` of the input size (Real-ESRGAN: 4) before the
    #: resize back; 2 keeps a moderate loss of resolution.
    scale: float = 2.0


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """``x^T Sigma^-1 x`` on a ``size`` x ``size`` grid for a rotated covariance."""
    c = (size - 1) / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) - c
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cov = rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T
    inv = np.linalg.inv(cov)
    return inv[0, 0] * xs * xs + 2 * inv[0, 1] * xs * ys + inv[1, 1] * ys * ys


def _sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """An ideal circular low-pass (2-D sinc / jinc) with ``cutoff`` in radians per pixel, ``size`` x ``size``."""
    grid = 4 * size  # sample the frequency disk finely, then keep the centre in space
    freqs = np.fft.fftfreq(grid) * 2 * math.pi
    fy, fx = np.meshgrid(freqs, freqs, indexing="ij")
    spectrum = (np.sqrt(fx**2 + fy**2) <= cutoff).astype(np.float64)
    spatial = np.fft.fftshift(np.real(np.fft.ifft2(spectrum)))
    c = grid // 2
    kernel = spatial[c - size // 2 : c + size // 2 + 1, c - size // 2 : c + size // 2 + 1]
    return kernel / kernel.sum()


def _random_blur_kernel(
    rng: np.random.Generator, cfg: WildConfig, sigma_range: tuple[float, float], sinc_prob: float
):
    size = _odd(int(rng.integers(cfg.kernel_range[0] // 2, cfg.kernel_range[1] // 2 + 1)) * 2 + 1)
    if rng.random() < sinc_prob:
        # Ringing/overshoot artefacts; smaller kernels get a wider cutoff range.
        cutoff = rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi)
        return _sinc_kernel(size, cutoff)
    family = int(rng.choice(6, p=np.asarray(cfg.kernel_probs) / np.sum(cfg.kernel_probs)))
    isotropic = family % 2 == 0
    sx = rng.uniform(*sigma_range)
    sy = sx if isotropic else rng.uniform(*sigma_range)
    theta = 0.0 if isotropic else rng.uniform(-math.pi, math.pi)
    q = _quadratic_form(size, sx, sy, theta)
    if family < 2:
        kernel = np.exp(-0.5 * q)
    elif family < 4:  # generalised Gaussian: heavier or lighter tails than a Gaussian
        beta = rng.uniform(*cfg.betag_range)
        kernel = np.exp(-0.5 * np.power(q, beta))
    else:  # plateau: flat top, power-law tails
        beta = rng.uniform(*cfg.betap_range)
        kernel = 1.0 / (np.power(q, beta) + 1.0)
    return kernel / kernel.sum()


def _resize(img: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]  # (1, 3, H, W)
    kwargs = {} if mode == "area" else {"align_corners": False}
    out = F.interpolate(tensor, size=(height, width), mode=mode, **kwargs)
    return out[0].permute(1, 2, 0).numpy()


class _WildRound(NamedTuple):
    """The settings of one (blur -> resize -> noise) round of :func:`wild_degradation`."""

    blur_sigma: tuple[float, float]
    sinc_prob: float
    resize_probs: tuple[float, float, float]
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_range: tuple[float, float]
    poisson_scale_range: tuple[float, float]
    gray_noise_prob: float

    @classmethod
    def of(cls, cfg: WildConfig, second: bool) -> _WildRound:
        """The first round's settings of ``cfg``, or (``second``) the ``*2`` ones of the second round."""
        suffix = "2" if second else ""
        return cls(*(getattr(cfg, name + suffix) for name in cls._fields))


_RESIZE_MODES = ("area", "bilinear", "bicubic")


def wild_degradation(
    img: np.ndarray, rng: np.random.Generator, config: WildConfig | None = None
) -> np.ndarray:
    """A random second-order chain of blur, resize, noise and JPEG, after Real-ESRGAN (Wang et al. 2021).

    Two rounds of (blur -> random resize -> Gaussian or Poisson noise -> JPEG),
    the second blur applied with probability ``second_blur_prob``, then a resize
    to ``1 / scale`` of the input with an optional sinc filter and a last JPEG in
    random order, as in Real-ESRGAN. Real-ESRGAN stops there (a 4x smaller image,
    for super-resolution); restoration pairs need equal sizes, so the result is
    finally resized back to the input size (bicubic), which adds the blur of a
    low-resolution capture. Real photographs combine several of these effects,
    which the single-type generators never show; training on them helps on
    real-world inputs.
    """
    cfg = config or WildConfig()
    if cfg.scale < 1:
        raise ValueError(f"WildConfig.scale must be >= 1, got {cfg.scale}")
    img = _as_image(img)
    h, w = img.shape[:2]
    target = (max(4, round(h / cfg.scale)), max(4, round(w / cfg.scale)))
    out = _wild_round(img, rng, cfg, _WildRound.of(cfg, second=False), base=None)
    out = jpeg_compressed(out, rng, quality=tuple(cfg.jpeg_range))
    out = _wild_round(out, rng, cfg, _WildRound.of(cfg, second=True), base=target)
    out = _wild_final(out, rng, cfg, target)
    if out.shape[:2] != (h, w):
        out = _resize(out, h, w, "bicubic")
    return _finish(out)


def _wild_round(
    img: np.ndarray,
    rng: np.random.Generator,
    cfg: WildConfig,
    settings: _WildRound,
    base: tuple[int, int] | None,
) -> np.ndarray:
    """One round: blur (always in the first round, ``base`` None; with ``second_blur_prob`` in the second),
    a random resize of the current size (first round) or of ``base`` (the final target size), then
    Gaussian or Poisson noise, colour or gray."""
    out = img
    if base is None or rng.random() < cfg.second_blur_prob:
        kernel = _random_blur_kernel(rng, cfg, settings.blur_sigma, settings.sinc_prob)
        out = np.clip(_filter2d(out, kernel), 0, 1)
    probs = np.asarray(settings.resize_probs) / np.sum(settings.resize_probs)
    direction = int(rng.choice(3, p=probs))  # up, down, keep
    low, high = settings.resize_range
    factor = (rng.uniform(1.0, high), rng.uniform(low, 1.0), 1.0)[direction]
    base = out.shape[:2] if base is None else base
    size = (max(4, int(base[0] * factor)), max(4, int(base[1] * factor)))
    out = np.clip(_resize(out, *size, _RESIZE_MODES[int(rng.integers(3))]), 0, 1)
    gray = bool(rng.random() < settings.gray_noise_prob)
    if rng.random() < settings.gaussian_noise_prob:
        return noisy(out, rng, sigma=tuple(settings.noise_range), gray=gray)
    return noisy(out, rng, sigma=0.0, poisson=tuple(settings.poisson_scale_range), gray=gray)


def _wild_final(
    img: np.ndarray, rng: np.random.Generator, cfg: WildConfig, target: tuple[int, int]
) -> np.ndarray:
    """Real-ESRGAN's last step: a resize to ``target`` with an optional sinc filter, and a JPEG, in random
    order."""

    def resize_and_sinc(x: np.ndarray) -> np.ndarray:
        x = np.clip(_resize(x, *target, _RESIZE_MODES[int(rng.integers(3))]), 0, 1)
        if rng.random() < cfg.final_sinc_prob:
            size = _odd(int(rng.integers(cfg.kernel_range[0], cfg.kernel_range[1] + 1)))
            x = np.clip(_filter2d(x, _sinc_kernel(size, rng.uniform(math.pi / 3, math.pi))), 0, 1)
        return x

    if rng.random() < 0.5:
        return jpeg_compressed(resize_and_sinc(img), rng, quality=tuple(cfg.jpeg_range2))
    return resize_and_sinc(jpeg_compressed(img, rng, quality=tuple(cfg.jpeg_range2)))


def _wild(img: np.ndarray, rng: np.random.Generator, **overrides) -> np.ndarray:
    """:func:`wild_degradation` with :class:`WildConfig` fields as keyword parameters."""
    return wild_degradation(img, rng, WildConfig(**overrides))


# ----------------------------------------------------------------------------- registry and entry point

#: Generator of each degradation name. The ten DA-CLIP types, plus ``"wild"``
#: (not a DA-CLIP class: a Real-ESRGAN-style mixture for real-world training).
DEGRADATIONS: dict[str, DegradationFn] = {
    "motion-blurry": motion_blurry,
    "hazy": hazy,
    "jpeg-compressed": jpeg_compressed,
    "low-light": low_light,
    "noisy": noisy,
    "raindrop": raindrop,
    "rainy": rainy,
    "shadowed": shadowed,
    "snowy": snowy,
    "uncompleted": uncompleted,
    "wild": _wild,
}


def parameter_names(fn: DegradationFn) -> list[str] | None:
    """The keyword parameters a generator accepts, or ``None`` if it takes ``**kwargs`` (anything)."""
    if fn is _wild:
        return list(WildConfig.__dataclass_fields__)
    params = list(inspect.signature(fn).parameters.values())[2:]  # after (img, rng)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def degrade(img: np.ndarray, degradation: str, seed: int | np.random.Generator, **params) -> np.ndarray:
    """Apply the named degradation; the same image, seed and parameters give the same output.

    Args:
        img: ``(H, W, 3)`` RGB in ``[0, 1]``.
        degradation: a key of :data:`DEGRADATIONS`.
        seed: an integer seed or a generator (which is advanced).
        **params: the generator's keyword parameters (see its docstring).

    Returns:
        ``(H, W, 3)`` float32 in ``[0, 1]``.
    """
    if degradation not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {degradation!r}; known: {sorted(DEGRADATIONS)}")
    fn = DEGRADATIONS[degradation]
    valid = parameter_names(fn)
    unknown = [] if valid is None else sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {degradation!r}; valid: {valid}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    img = _as_image(img)
    out = fn(img, rng, **params)
    if out.shape != img.shape:  # a user-added generator must keep the size
        raise ValueError(f"degradation {degradation!r} changed the image shape {img.shape} -> {out.shape}")
    return _finish(out)


# ----------------------------------------------------------------------------- chains of several types

#: The order in which a chain applies its degradations, following the light from the scene to the
#: stored file:
#:
#: 1. ``shadowed``: the scene's own illumination (a shadow falls on surfaces);
#: 2. ``hazy``: scattering along the path from the scene to the camera;
#: 3. ``rainy``, ``snowy``: precipitation between the haze and the camera (near, so unhazed);
#: 4. ``motion-blurry``: camera shake during the exposure blurs everything in front of the lens,
#:    falling rain and snow included;
#: 5. ``raindrop``: drops on the lens move with the camera, so they are not shaken;
#: 6. ``low-light``: under-exposure dims all the light that reached the sensor (haze, streaks and
#:    flakes too: a bright fog or white flakes over a dark picture would be unphysical) and adds
#:    read noise;
#: 7. ``noisy``: further sensor noise on the recorded signal;
#: 8. ``jpeg-compressed``: encoding of the noisy image;
#: 9. ``uncompleted``: regions lost from the stored image (inpainting holes stay clean holes).
#:
#: ``wild`` is itself a chain and does not take part.
CHAIN_ORDER: tuple[str, ...] = (
    "shadowed",
    "hazy",
    "rainy",
    "snowy",
    "motion-blurry",
    "raindrop",
    "low-light",
    "noisy",
    "jpeg-compressed",
    "uncompleted",
)

#: Joins the names of a combination (``"hazy+rainy"``); also the folder name of a mixed set.
COMBINATION_SEPARATOR = "+"


def canonical_order(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` sorted into :data:`CHAIN_ORDER`; an unknown or repeated name is a ``ValueError``."""
    rank = {name: i for i, name in enumerate(CHAIN_ORDER)}
    names = tuple(names)
    for name in names:
        if name not in rank:
            raise ValueError(f"unknown degradation {name!r} in a chain; valid: {', '.join(CHAIN_ORDER)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"degradation(s) {repeated} listed twice in a chain")
    if not names:
        raise ValueError("empty degradation chain")
    return tuple(sorted(names, key=rank.__getitem__))


def combination_name(names: Sequence[str]) -> str:
    """The canonical name of a combination: ``("rainy", "hazy")`` -> ``"hazy+rainy"``."""
    return COMBINATION_SEPARATOR.join(canonical_order(names))


def parse_combination(text: str) -> tuple[str, ...]:
    """``"low-light+hazy"`` -> ``("hazy", "low-light")`` (canonical order; names are checked)."""
    return canonical_order([part.strip() for part in text.split(COMBINATION_SEPARATOR)])


#: The eleven degradation sets of CDD-11 (Guo et al., OneRestore, ECCV 2024), in its order: low
#: light, haze, rain, snow, low+haze, low+rain, low+snow, haze+rain, haze+snow, low+haze+rain and
#: low+haze+snow; each set in :data:`CHAIN_ORDER`.
CDD11_COMBINATIONS: tuple[tuple[str, ...], ...] = tuple(
    canonical_order(c)
    for c in (
        ("low-light",),
        ("hazy",),
        ("rainy",),
        ("snowy",),
        ("low-light", "hazy"),
        ("low-light", "rainy"),
        ("low-light", "snowy"),
        ("hazy", "rainy"),
        ("hazy", "snowy"),
        ("low-light", "hazy", "rainy"),
        ("low-light", "hazy", "snowy"),
    )
)


def degrade_chain(
    img: np.ndarray,
    names: Sequence[str],
    rng_or_seed: int | Sequence[int] | np.random.SeedSequence | np.random.Generator,
    params: Mapping[str, Mapping[str, object]] | None = None,
) -> np.ndarray:
    """Apply several degradations in :data:`CHAIN_ORDER`, whatever order ``names`` come in.

    Args:
        img: ``(H, W, 3)`` RGB in ``[0, 1]``.
        names: degradation types, each at most once (see :data:`CHAIN_ORDER`).
        rng_or_seed: a generator (advanced; the steps draw from it one after the other, in chain
            order) or a seed for a new one. A one-type chain equals :func:`degrade` with the same seed.
        params: keyword parameters per type name, passed to its generator; entries for types not in
            this chain are checked but unused, so one table can serve every chain.

    Returns:
        ``(H, W, 3)`` float32 in ``[0, 1]``.

    Raises:
        ValueError: an unknown or repeated type (naming it and listing the valid ones), or an
            unknown parameter.
    """
    order = canonical_order(names)
    params = dict(params or {})
    for name, settings in params.items():
        if name not in CHAIN_ORDER:
            raise ValueError(f"parameters for unknown degradation {name!r}; valid: {', '.join(CHAIN_ORDER)}")
        valid = parameter_names(DEGRADATIONS[name])
        unknown = [] if valid is None else sorted(set(settings) - set(valid))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for {name!r}; valid: {valid}")
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    out = _as_image(img)
    for name in order:
        out = degrade(out, name, rng, **params.get(name, {}))
    return out
