"""Tests for irsde.evaluation.metrics: closed forms, an independent SSIM reference, offline LPIPS/FID behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from irsde.evaluation.metrics import (
    FIDMetric,
    LPIPSMetric,
    MetricUnavailable,
    frechet_distance,
    psnr,
    quantize,
    rgb_to_y,
    ssim,
)


def _smooth_images(batch: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Random images with some spatial structure (upsampled noise), in [0, 1], on the uint8 grid."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, size // 8, size // 8, generator=gen)
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    img = img + 0.05 * torch.rand(batch, 3, size, size, generator=gen)
    return quantize(img.clamp(0, 1))


def _add_noise(img: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (img + sigma * torch.randn(img.shape, generator=gen)).clamp(0, 1)


# --------------------------------------------------------------------------------------------------
# quantize / Y


def test_quantize_rounds_to_uint8_grid_and_clamps() -> None:
    x = torch.tensor([-0.2, 0.0, 0.1, 0.5, 0.999, 1.3])
    q = quantize(x)
    assert torch.equal(q * 255, (q * 255).round())
    assert torch.all(q >= 0) and torch.all(q <= 1)
    inside = (x >= 0) & (x <= 1)
    assert torch.all((q[inside] - x[inside]).abs() <= 0.5 / 255 + 1e-7)
    assert torch.equal(quantize(q), q)


def test_rgb_to_y_matches_bt601_formula_on_random_pixels() -> None:
    gen = torch.Generator().manual_seed(3)
    img = torch.rand(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    y = rgb_to_y(img)
    assert y.shape == (2, 1, 5, 7)
    for b, i, j in [(0, 0, 0), (1, 4, 6), (0, 2, 3), (1, 1, 5)]:
        r, g, bl = (float(img[b, c, i, j]) for c in range(3))
        expected = (16.0 + 65.481 * r + 128.553 * g + 24.966 * bl) / 255.0
        assert float(y[b, 0, i, j]) == pytest.approx(expected, abs=1e-12)
    # Studio swing: black -> 16/255, white -> 235/255; unbatched input keeps its rank.
    assert float(rgb_to_y(torch.zeros(3, 1, 1))[0, 0, 0]) == pytest.approx(16 / 255)
    assert float(rgb_to_y(torch.ones(3, 1, 1, dtype=torch.float64))[0, 0, 0]) == pytest.approx(235 / 255)


# --------------------------------------------------------------------------------------------------
# PSNR


def test_psnr_of_constant_error_is_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(10, 240, (2, 3, 16, 16), generator=gen).double() / 255
    for k in (1, 3, 10):
        pred = target + k / 255
        expected = 10 * math.log10(1 / (k / 255) ** 2)
        torch.testing.assert_close(psnr(pred, target), torch.full((2,), expected, dtype=torch.float64))
    # Same error in 0..255 units with data_range=255.
    torch.testing.assert_close(
        psnr(target * 255 + 3, target * 255, data_range=255.0),
        torch.full((2,), 10 * math.log10(255**2 / 9), dtype=torch.float64),
    )


def test_psnr_identical_images_is_inf_and_unbatched_is_scalar() -> None:
    img = _smooth_images(2)
    assert torch.isinf(psnr(img, img)).all()
    single = psnr(img[0], (img[0] + 0.1).clamp(0, 1))
    assert single.dim() == 0 and torch.isfinite(single)


def test_psnr_crop_border_removes_border_errors() -> None:
    gt = _smooth_images(1)
    pred = gt.clone()
    pred[..., :4, :] = 1 - pred[..., :4, :]  # error only inside the 4-pixel border
    pred[..., :, -4:] = 0.0
    assert torch.isfinite(psnr(pred, gt)).all()
    assert torch.isinf(psnr(pred, gt, crop_border=4)).all()
    assert torch.isfinite(psnr(pred, gt, crop_border=3)).all()


def test_psnr_y_channel_uses_luma() -> None:
    gt = _smooth_images(2)
    pred = _add_noise(gt, 0.05)
    y_pred, y_gt = rgb_to_y(pred.double()), rgb_to_y(gt.double())
    mse = ((y_pred - y_gt) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(psnr(pred, gt, y_channel=True), 10 * torch.log10(1 / mse), rtol=1e-5, atol=0)
    # A pure chroma change with equal luma is invisible in Y-PSNR but not in RGB-PSNR.
    shift = torch.tensor([128.553, -65.481, 0.0]).view(1, 3, 1, 1) * 1e-4
    assert torch.all(psnr(gt.double() + shift, gt.double(), y_channel=True) > 150)  # round-off only
    assert torch.all(psnr(gt.double() + shift, gt.double()) < 50)


def test_metrics_reject_bad_input() -> None:
    img = _smooth_images(1, size=16)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(img, img[..., :8])
    with pytest.raises(ValueError, match="crop_border"):
        psnr(img, img, crop_border=8)
    with pytest.raises(ValueError, match="crop_border"):
        ssim(img, img, crop_border=-1)
    with pytest.raises(ValueError, match="at least 11"):
        ssim(img, img, crop_border=3)


# --------------------------------------------------------------------------------------------------
# SSIM


def test_ssim_identity_is_one() -> None:
    img = _smooth_images(3)
    torch.testing.assert_close(ssim(img, img), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(
        ssim(img, img, y_channel=True, crop_border=4), torch.ones(3, dtype=torch.float64)
    )


def test_ssim_decreases_with_noise() -> None:
    gt = _smooth_images(2)
    values = [ssim(quantize(_add_noise(gt, s)), gt) for s in (0.01, 0.03, 0.1, 0.3)]
    for better, worse in zip(values, values[1:]):
        assert torch.all(worse < better)
    assert torch.all(values[-1] < 0.5)


def test_ssim_matches_skimage_gaussian_ssim() -> None:
    skm = pytest.importorskip("skimage.metrics")
    gt = _smooth_images(2, size=40, seed=5)
    pred = quantize(_add_noise(gt, 0.08, seed=6))
    ours_rgb = ssim(pred, gt)
    ours_y = ssim(pred, gt, y_channel=True)
    for b in range(2):
        kwargs = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        ref_rgb = skm.structural_similarity(
            pred[b].double().numpy() * 255, gt[b].double().numpy() * 255, channel_axis=0, **kwargs
        )
        ref_y = skm.structural_similarity(
            rgb_to_y(pred[b].double())[0].numpy() * 255, rgb_to_y(gt[b].double())[0].numpy() * 255, **kwargs
        )
        assert float(ours_rgb[b]) == pytest.approx(ref_rgb, abs=1e-6)
        assert float(ours_y[b]) == pytest.approx(ref_y, abs=1e-6)
    assert not np.isclose(float(ours_rgb[0]), float(ours_y[0]), atol=1e-4)  # Y really differs from RGB


# --------------------------------------------------------------------------------------------------
# LPIPS


@pytest.fixture(scope="module")
def random_lpips() -> LPIPSMetric:
    torch.manual_seed(0)
    return LPIPSMetric(net="alex", random_init=True)


def test_lpips_random_init_runs_offline_zero_on_identity_grows_with_noise(random_lpips: LPIPSMetric) -> None:
    gt = _smooth_images(2, size=64)
    with torch.no_grad():
        assert torch.all(random_lpips(gt, gt).abs() < 1e-7)
        values = [random_lpips(_add_noise(gt, s), gt) for s in (0.02, 0.08, 0.3)]
    assert values[0].shape == (2,)
    for smaller, larger in zip(values, values[1:]):
        assert torch.all(larger > smaller)
    single = random_lpips(gt[0], _add_noise(gt, 0.1)[0])
    assert single.dim() == 0


def test_lpips_loads_linear_layers_from_package(random_lpips: LPIPSMetric) -> None:
    import lpips

    path = f"{lpips.__path__[0]}/weights/v0.1/alex.pth"
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(random_lpips.model.lin0.model[1].weight, shipped["lin0.model.1.weight"])


def test_lpips_missing_backbone_raises_without_trying_to_download(tmp_path, monkeypatch) -> None:
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(socket, "create_connection", no_network)  # every download starts here
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(MetricUnavailable, match="alexnet-owt-7be5be79.pth"):
        LPIPSMetric()
    with pytest.raises(MetricUnavailable, match="not found"):
        LPIPSMetric(backbone_weights=tmp_path / "nope.pth")


def test_lpips_loads_backbone_from_file_and_hub_cache(tmp_path, monkeypatch) -> None:
    import torchvision

    torch.manual_seed(1)
    state = torchvision.models.alexnet(weights=None).state_dict()
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)
    metric = LPIPSMetric(backbone_weights=path)
    torch.testing.assert_close(metric.model.net.slice1[0].weight, state["features.0.weight"])
    torch.testing.assert_close(metric.model.net.state_dict()["slice5.10.bias"], state["features.10.bias"])

    cache = tmp_path / "home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    cached = LPIPSMetric()
    torch.testing.assert_close(cached.model.net.state_dict()["slice3.6.weight"], state["features.6.weight"])


def test_lpips_bad_backbone_file_names_the_file(tmp_path) -> None:
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pth"):
        LPIPSMetric(backbone_weights=bad)
    wrong = tmp_path / "wrong_keys.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="features.0.weight"):
        LPIPSMetric(backbone_weights=wrong)


# --------------------------------------------------------------------------------------------------
# FID


def test_frechet_distance_closed_form_for_commuting_covariances() -> None:
    gen = torch.Generator().manual_seed(0)
    dim = 6
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    a = torch.rand(dim, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(dim, generator=gen, dtype=torch.float64) + 0.1
    mu1, mu2 = torch.randn(dim, generator=gen, dtype=torch.float64), torch.randn(dim, generator=gen)
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    expected = float((mu1 - mu2.double()).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_on_general_covariances() -> None:
    linalg = pytest.importorskip("scipy.linalg")
    gen = torch.Generator().manual_seed(1)
    x1 = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    x2 = torch.randn(40, 5, generator=gen, dtype=torch.float64) @ torch.randn(5, 5, generator=gen).double()
    mu1, mu2, s1, s2 = x1.mean(0), x2.mean(0), torch.cov(x1.T), torch.cov(x2.T)
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace()) - 2 * float(np.trace(covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)


def _feature_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 12, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
    )


def test_fid_same_set_is_zero_and_matches_direct_computation() -> None:
    net = _feature_net()
    real = _smooth_images(32, size=32, seed=10)
    fake = _add_noise(real, 0.1)
    metric = FIDMetric(net)
    metric.update(real, real=True)
    metric.update(real[:20], real=False)
    metric.update(real[20:], real=False)  # accumulation across batches
    with torch.no_grad():
        feats = net(real).flatten(1).double()
    scale = float(torch.cov(feats.T).trace())
    assert abs(metric.compute()) < 1e-6 * scale

    metric.reset()
    metric.update(real[:10], real=True)
    metric.update(real[10:], real=True)
    metric.update(fake, real=False)
    with torch.no_grad():
        fake_feats = net(fake).flatten(1).double()
    expected = frechet_distance(
        feats.mean(0), torch.cov(feats.T), fake_feats.mean(0), torch.cov(fake_feats.T)
    )
    assert metric.compute() == pytest.approx(expected, rel=1e-9)


def test_fid_grows_with_distortion() -> None:
    metric = FIDMetric(_feature_net())
    real = _smooth_images(48, size=32, seed=11)
    values = []
    for sigma in (0.02, 0.1, 0.3):
        metric.reset()
        metric.update(real, real=True)
        metric.update(_add_noise(real, sigma), real=False)
        values.append(metric.compute())
    assert values[0] < values[1] < values[2]


def test_fid_needs_two_images_per_set() -> None:
    metric = FIDMetric(_feature_net())
    metric.update(_smooth_images(4, size=32), real=True)
    with pytest.raises(ValueError, match="generated"):
        metric.compute()


def test_fid_without_weights_is_unavailable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(MetricUnavailable, match="inception"):
        FIDMetric()
    with pytest.raises(MetricUnavailable, match="not found"):
        FIDMetric(inception_weights=tmp_path / "missing.pth")


def test_fid_inception_from_local_file_when_torch_fidelity_installed(tmp_path, monkeypatch) -> None:
    tfi = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    # Build a randomly initialised InceptionV3 without any download, then save its weights to a file.
    monkeypatch.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    torch.manual_seed(0)
    state = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    monkeypatch.undo()
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, path)

    metric = FIDMetric(inception_weights=path)
    images = _smooth_images(2, size=32)
    with torch.no_grad():
        features = metric.feature_extractor(images).double()
    assert features.shape == (2, 2048)
    metric.update(images, real=True)
    metric.update(images, real=False)
    scale = float(torch.cov(features.T).trace() + features.mean(0).pow(2).sum())
    assert abs(metric.compute()) < 1e-6 * scale  # 2048-d float64 eigh: the slow part of this test
