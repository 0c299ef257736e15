"""Synthetic degradations: each one moves the image the expected, measured way."""

from __future__ import annotations

import numpy as np
import pytest

from data import DEFAULT_DEGRADATIONS
from data.degradations import (
    DEGRADATIONS,
    WildConfig,
    degrade,
    hazy,
    inpainting_mask,
    low_light,
    motion_kernel,
    wild_degradation,
)

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def smooth_image(h: int = 96, w: int = 128) -> np.ndarray:
    """A natural-ish test image: smooth colour gradients and a few soft shapes, values in [0.1, 0.9]."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 0.5 + 0.3 * np.sin(xs / 17.0) * np.cos(ys / 23.0)
    g = 0.2 + 0.6 * xs / w
    b = 0.2 + 0.6 * ys / h
    blob = np.exp(-(((xs - w * 0.6) / 15) ** 2 + ((ys - h * 0.4) / 12) ** 2))
    img = (
        np.stack([r, g, b + 0.0 * blob], axis=2) * (1 - 0.3 * blob[:, :, None]) + 0.3 * blob[:, :, None] * 0.8
    )
    return np.clip(img, 0.1, 0.9).astype(np.float32)


def textured_image(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """Fine texture: lots of gradient energy."""
    rng = np.random.default_rng(seed)
    return (0.2 + 0.6 * rng.random((h, w, 3))).astype(np.float32)


def luminance(img: np.ndarray) -> np.ndarray:
    return img @ LUMA


def gradient_energy(img: np.ndarray, axis: int | None = None) -> float:
    """Mean squared finite difference (along one axis, or both)."""
    gray = luminance(img)
    dx = np.diff(gray, axis=1) ** 2
    dy = np.diff(gray, axis=0) ** 2
    if axis == 1:
        return float(dx.mean())
    if axis == 0:
        return float(dy.mean())
    return float(dx.mean() + dy.mean())


def high_frequency_energy(img: np.ndarray) -> float:
    """Energy of the discrete Laplacian of the luminance."""
    gray = luminance(img)
    lap = 4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    return float((lap**2).mean())


def dark_channel(img: np.ndarray, patch: int = 7) -> float:
    """Mean of the dark channel (He et al. 2009): min over channels, then over a patch."""
    darkest = img.min(axis=2)
    r = patch // 2
    padded = np.pad(darkest, r, mode="edge")
    h, w = darkest.shape
    windows = np.stack([padded[dy : dy + h, dx : dx + w] for dy in range(patch) for dx in range(patch)])
    return float(windows.min(axis=0).mean())


# ----------------------------------------------------------------------------- the contract


def test_registry_holds_the_ten_types_and_wild():
    assert set(DEFAULT_DEGRADATIONS) <= set(DEGRADATIONS)
    assert set(DEGRADATIONS) - set(DEFAULT_DEGRADATIONS) == {"wild"}


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_contract_shape_dtype_range_determinism(name):
    img = smooth_image(64, 80)
    out = degrade(img, name, seed=3)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.array_equal(out, degrade(img, name, seed=3)), "same seed must give the same output"
    assert not np.array_equal(out, degrade(img, name, seed=4)), "another seed must give another output"
    assert np.abs(out - img).mean() > 1e-3, "the image must change"
    # A generator given by the caller is advanced and gives the same result as the equivalent seed.
    assert np.array_equal(out, degrade(img, name, seed=np.random.default_rng(3)))


def test_degrade_rejects_unknown_names_and_parameters():
    img = smooth_image(16, 16)
    with pytest.raises(ValueError, match="unknown degradation 'foggy'"):
        degrade(img, "foggy", 0)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['sigmaa'\].*'sigma'"):
        degrade(img, "noisy", 0, sigmaa=5)
    with pytest.raises(ValueError, match="range"):
        degrade(img, "noisy", 0, sigma=(50, 10))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        degrade(img[:, :, 0], "noisy", 0)


# ----------------------------------------------------------------------------- measured effects


def test_noise_has_the_requested_std_and_raises_high_frequency_energy():
    img = np.full((128, 128, 3), 0.5, dtype=np.float32)
    out = degrade(img, "noisy", 0, sigma=20.0)
    assert abs((out - img).std() - 20.0 / 255.0) < 0.05 * 20.0 / 255.0
    smooth = smooth_image()
    assert high_frequency_energy(degrade(smooth, "noisy", 0)) > 20 * high_frequency_energy(smooth)
    # Gray noise is identical across channels; Poisson noise grows with the signal.
    gray = degrade(img, "noisy", 0, sigma=10.0, gray=True)
    assert np.allclose(gray[:, :, 0], gray[:, :, 1]) and np.allclose(gray[:, :, 1], gray[:, :, 2])
    ramp = np.repeat(np.linspace(0.05, 0.95, 128, dtype=np.float32)[None, :, None], 128, axis=0).repeat(3, 2)
    shot = degrade(ramp, "noisy", 0, sigma=0.0, poisson=1.0) - ramp
    assert shot[:, 96:].std() > 1.5 * shot[:, :32].std()


def test_jpeg_creates_block_boundary_discontinuities():
    img = smooth_image(128, 128)

    def boundary_ratio(x: np.ndarray) -> float:
        jumps = np.abs(np.diff(luminance(x), axis=1))  # jumps[:, j] is between columns j and j+1
        at_boundary = jumps[:, 7::8].mean()
        inside = np.delete(jumps, np.s_[7::8], axis=1).mean()
        return float(at_boundary / inside)

    assert boundary_ratio(img) < 1.2
    assert boundary_ratio(degrade(img, "jpeg-compressed", 0, quality=10)) > 1.5
    # Higher quality is closer to the original.
    err = [np.abs(degrade(img, "jpeg-compressed", 0, quality=q) - img).mean() for q in (10, 40, 90)]
    assert err[0] > err[1] > err[2]


def test_motion_blur_lowers_gradient_energy_and_kernels_are_normalised():
    img = textured_image()
    assert gradient_energy(degrade(img, "motion-blurry", 0)) < 0.3 * gradient_energy(img)
    rng = np.random.default_rng(0)
    for size in (9, 15, 25):
        kernel = motion_kernel(rng, size)
        assert kernel.shape == (size, size) and kernel.min() >= 0
        assert kernel.sum() == pytest.approx(1.0)
        assert (kernel > 1e-3).sum() >= size // 2, "a trajectory, not a point"
    # A straight path of full length spans the kernel.
    straight = motion_kernel(np.random.default_rng(1), 15, length=1.0, curvature=0.0, shake_prob=0.0)
    ys, xs = np.nonzero(straight > 1e-4)
    assert max(ys.max() - ys.min(), xs.max() - xs.min()) >= 13


def test_low_light_closed_form_and_darker():
    img = smooth_image()
    out = low_light(img, np.random.default_rng(0), gamma=2.5, gain=0.6, noise_sigma=0.0)
    np.testing.assert_allclose(out, 0.6 * img**2.5, rtol=1e-5, atol=1e-6)
    assert luminance(degrade(img, "low-light", 0)).mean() < 0.6 * luminance(img).mean()


def test_haze_closed_form_lowers_contrast_and_raises_dark_channel():
    img = smooth_image()
    depth = np.linspace(0, 1, img.shape[1], dtype=np.float32)[None, :].repeat(img.shape[0], 0)
    out = hazy(img, np.random.default_rng(0), beta=1.2, airlight=0.9, depth=depth)
    t = np.exp(-1.2 * depth)[:, :, None]
    np.testing.assert_allclose(out, img * t + 0.9 * (1 - t), rtol=1e-5, atol=1e-6)  # I = J t + A (1 - t)

    hazed = degrade(img, "hazy", 0)
    assert luminance(hazed).std() < 0.8 * luminance(img).std()
    assert dark_channel(hazed) > dark_channel(img) + 0.1
    with pytest.raises(ValueError, match="depth"):
        hazy(img, np.random.default_rng(0), depth=depth[:10])


def test_inpainting_masks_the_documented_fraction():
    for mask_type in ("free-form", "box", "mixed"):
        for seed, coverage in enumerate((0.1, 0.25, 0.4)):
            mask = inpainting_mask(
                np.random.default_rng(seed), 96, 128, coverage=coverage, mask_type=mask_type
            )
            assert coverage <= mask.mean() <= coverage + 0.02, (mask_type, coverage, mask.mean())
    img = smooth_image()  # values in [0.1, 0.9], so holes (white) are identifiable
    out = degrade(img, "uncompleted", 0, coverage=0.2, fill=1.0)
    holes = (out == 1.0).all(axis=2)
    assert 0.2 <= holes.mean() <= 0.22
    assert np.array_equal(out[~holes], img[~holes]), "pixels outside the mask are untouched"


def test_rain_adds_bright_near_vertical_streaks():
    img = np.full((96, 96, 3), 0.4, dtype=np.float32)
    out = degrade(img, "rainy", 0, angle=0.0)
    assert (out >= img - 1e-6).all(), "screen blend only brightens"
    assert out.mean() > img.mean() + 0.01
    # Vertical streaks vary across columns, not along them.
    assert gradient_energy(out, axis=1) > 3 * gradient_energy(out, axis=0)
    slanted = degrade(img, "rainy", 0, angle=45.0)
    assert gradient_energy(slanted, axis=1) < 2 * gradient_energy(slanted, axis=0)


def test_raindrops_blur_inside_drops_and_leave_the_rest():
    img = textured_image()
    out = degrade(img, "raindrop", 0)
    changed = np.abs(out - img).max(axis=2) > 1e-6
    assert 0.02 < changed.mean() < 0.7
    assert np.array_equal(out[~changed], img[~changed])
    # Inside the drops the (refracted, blurred) view is much smoother than the texture it covers.
    inside = changed[1:, :] & changed[:-1, :]
    dy_out = np.diff(luminance(out), axis=0)[inside]
    dy_img = np.diff(luminance(img), axis=0)[inside]
    assert (dy_out**2).mean() < 0.3 * (dy_img**2).mean()


def test_snow_brightens_with_flakes_at_several_scales():
    from skimage.measure import label, regionprops

    img = smooth_image()
    out = degrade(img, "snowy", 0)
    assert (out >= img - 1e-6).all() and out.mean() > img.mean() + 0.01

    black = np.zeros((256, 256, 3), dtype=np.float32)
    flakes = degrade(black, "snowy", 1, veil=0.0, amount=0.05)[:, :, 0] > 0.3
    areas = np.array([region.area for region in regionprops(label(flakes))])
    assert len(areas) > 20
    assert areas.min() <= 4 and areas.max() >= 25, "small and large flakes"
    small_only = degrade(black, "snowy", 1, veil=0.0, amount=0.05, scales=(0.003,))[:, :, 0] > 0.3
    assert max(region.area for region in regionprops(label(small_only))) < areas.max()


def test_shadow_darkens_a_soft_edged_bluish_region():
    img = smooth_image()
    out = degrade(img, "shadowed", 0, attenuation=0.4, softness=0.03)
    ratio = luminance(out) / luminance(img)
    assert (out <= img + 1e-6).all()
    assert luminance(out).mean() < luminance(img).mean()
    assert (ratio > 1 - 1e-6).mean() > 0.2, "part of the image stays lit"
    umbra = ratio < 0.5
    assert umbra.mean() > 0.02
    assert ((ratio > 0.5) & (ratio < 0.95)).sum() > 0.2 * umbra.sum(), "soft penumbra, not a hard edge"
    channel_ratio = out[umbra] / img[umbra]
    assert channel_ratio[:, 0].mean() < channel_ratio[:, 2].mean(), "red loses more than blue"


def test_wild_chain_degrades_and_keeps_the_size():
    img = textured_image(80, 72)
    out = wild_degradation(img, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.float32
    # Several seeds: every chain loses detail of the fine texture (blur + resize).
    for seed in range(3):
        out = degrade(img, "wild", seed)
        assert gradient_energy(out) < 0.8 * gradient_energy(img)
    assert degrade(img, "wild", 0, scale=1.0).shape == img.shape
    with pytest.raises(ValueError, match="scale"):
        wild_degradation(img, np.random.default_rng(0), WildConfig(scale=0.5))


# ----------------------------------------------------------------------------- chains


def test_cdd11_chains_keep_shape_range_and_are_finite():
    from data.degradations import CDD11_COMBINATIONS, combination_name, degrade_chain

    assert len(CDD11_COMBINATIONS) == 11 and len({combination_name(c) for c in CDD11_COMBINATIONS}) == 11
    assert {n for c in CDD11_COMBINATIONS for n in c} == {"low-light", "hazy", "rainy", "snowy"}
    assert sorted(len(c) for c in CDD11_COMBINATIONS) == [1] * 4 + [2] * 5 + [3] * 2
    img = textured_image(24, 32)
    for combo in CDD11_COMBINATIONS:
        out = degrade_chain(img, combo, 3)
        assert out.shape == img.shape and out.dtype == np.float32, combo
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0, combo
        assert np.abs(out - img).mean() > 0.002, combo  # sparse rain on a tiny image moves ~0.006


def test_chain_order_is_canonical_and_one_type_chain_equals_degrade():
    from data.degradations import (
        CHAIN_ORDER,
        canonical_order,
        combination_name,
        degrade_chain,
        parse_combination,
    )

    assert set(CHAIN_ORDER) == set(DEFAULT_DEGRADATIONS)
    img = smooth_image(24, 32)
    a = degrade_chain(img, ["low-light", "rainy", "hazy"], 5)
    b = degrade_chain(img, ["hazy", "low-light", "rainy"], 5)
    np.testing.assert_array_equal(a, b)
    # The order matters (else canonicalising would be untested): applied by hand, another order differs.
    by_hand = degrade(
        degrade(degrade(img, "hazy", rng := np.random.default_rng(5)), "rainy", rng), "low-light", rng
    )
    np.testing.assert_array_equal(a, by_hand)
    reversed_order = degrade(
        degrade(degrade(img, "low-light", rng := np.random.default_rng(5)), "rainy", rng), "hazy", rng
    )
    assert np.abs(reversed_order - a).max() > 0.05
    assert canonical_order(["low-light", "hazy"]) == ("hazy", "low-light")
    assert (
        combination_name(("low-light", "hazy"))
        == "hazy+low-light"
        == "+".join(parse_combination("low-light+hazy"))
    )
    np.testing.assert_array_equal(degrade_chain(img, ["snowy"], 9), degrade(img, "snowy", 9))


def test_chain_rejects_unknown_and_repeated_names_and_parameters():
    from data.degradations import degrade_chain, parse_combination

    img = smooth_image(16, 16)
    with pytest.raises(
        ValueError, match=r"unknown degradation 'foggy' in a chain; valid: shadowed, hazy"
    ) as err:
        degrade_chain(img, ["hazy", "foggy"], 0)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown degradation 'wild'"):
        parse_combination("wild+hazy")
    with pytest.raises(ValueError, match="listed twice"):
        degrade_chain(img, ["hazy", "hazy"], 0)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['bta'\] for 'hazy'"):
        degrade_chain(img, ["hazy"], 0, params={"hazy": {"bta": 1.0}})
    # Parameters reach their generator; parameters of types outside the chain are allowed.
    fixed = degrade_chain(img, ["hazy"], 0, params={"hazy": {"beta": 0.0}, "noisy": {"sigma": 5.0}})
    np.testing.assert_allclose(fixed, img, atol=1e-6)  # beta = 0: transmission 1, no haze


def test_a_one_pixel_box_survives_floating_point_rounding():
    """(x0 + 1) - 1 < x0 for some x0 (here 31.23783199163238): PIL rejected the box, crashing synthesis."""
    from PIL import Image, ImageDraw

    from data.degradations import _box

    x0 = 31.23783199163238
    assert (x0 + 1.0) - 1.0 < x0
    box = _box(x0, 2.0, 1.0, 1.0)
    assert box[2] >= box[0] and box[3] >= box[1]
    ImageDraw.Draw(Image.new("L", (40, 8))).rectangle(box, fill=255)  # would raise without the guard
