"""Image-quality metrics as the image-restoration papers compute them: PSNR, SSIM, LPIPS, FID.

Conventions (all functions): images are float RGB tensors in [0, 1], shaped (B, 3, H, W) or
(3, H, W). Per-image metrics return a tensor of shape (B,), or a 0-dim tensor for an unbatched
(3, H, W) input; a benchmark number is the arithmetic mean of the per-image values.

How the official DA-CLIP evaluation computes its numbers (Algolzw/daclip-uir,
``universal-image-restoration/config/daclip-sde/test.py`` with ``options/test.yml``, and
``utils/img_utils.py`` / ``data/util.py``) -- facts that the defaults here reproduce:

- PSNR and SSIM are computed on the *saved 8-bit* result: the restored tensor is clamped to [0, 1],
  multiplied by 255 and rounded (``tensor2img``), and compared with the 8-bit ground truth. Pass
  ``quantize(pred)`` to :func:`psnr` / :func:`ssim` to match; they do not quantise by themselves.
- ``crop_border`` is **4**: the script uses ``opt["crop_border"]`` if set and otherwise falls back to
  ``degradation.scale``; the released ``test.yml`` sets no ``crop_border`` and ``scale: 4``, so four
  pixels are removed from every side before PSNR/SSIM (RGB and Y) although no task is
  super-resolution. Numbers computed with ``crop_border=0`` differ slightly from the paper's.
- Both RGB and Y-channel values are reported. Y is ITU-R BT.601 "studio swing" luma as in MATLAB's
  ``rgb2ycbcr`` (``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for R, G, B in [0, 1]), kept as float
  (not rounded) and divided by 255, exactly as :func:`rgb_to_y` does.
- SSIM is the MATLAB-compatible Wang et al. SSIM (0..255 scale, 11x11 Gaussian window with sigma 1.5,
  valid region only, C1 = (0.01*255)^2, C2 = (0.03*255)^2). For RGB the official code evaluates
  the three-channel array at once, which equals the mean over the channels (as here).
- LPIPS is ``lpips.LPIPS(net="alex")`` (v0.1) on the *unquantised, uncropped* float output and the GT,
  both mapped to [-1, 1].
- FID is not computed by the official script (see :class:`FIDMetric` for ours).
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FIDMetric",
    "LPIPSMetric",
    "MetricUnavailable",
    "frechet_distance",
    "psnr",
    "quantize",
    "rgb_to_y",
    "ssim",
]

LPIPSNet = Literal["alex", "vgg", "squeeze"]

# torchvision's ImageNet weights files, as torch.hub names them in <hub dir>/checkpoints.
_LPIPS_BACKBONE_FILES: dict[str, str] = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
# The same InceptionV3 (TF 2015-12-05 graph) weights under the names torch-fidelity (and so
# torchmetrics) and pytorch-fid cache them; the hash suffix is the file's sha256 prefix in both.
_INCEPTION_FILES: tuple[str, ...] = (
    "weights-inception-2015-12-05-6726825d.pth",
    "pt_inception-2015-12-05-6726825d.pth",
)

# BT.601 studio-swing luma coefficients for R, G, B in [0, 1], giving Y in 0..255 units.
_Y_COEFFS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0


class MetricUnavailable(Exception):
    """A metric cannot be computed here (missing weights or an optional package); the message says why."""


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _as_batch(img: Tensor, name: str) -> tuple[Tensor, bool]:
    """Return ``img`` as (B, C, H, W) and whether the input was unbatched (C, H, W)."""
    if img.dim() == 3:
        return img.unsqueeze(0), True
    if img.dim() == 4:
        return img, False
    raise ValueError(f"{name} must have shape (B, C, H, W) or (C, H, W), got {tuple(img.shape)}")


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")


def _crop(img: Tensor, crop_border: int) -> Tensor:
    """Remove ``crop_border`` pixels from each side of a (B, C, H, W) tensor."""
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border == 0:
        return img
    h, w = img.shape[-2:]
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
    return img[..., crop_border:-crop_border, crop_border:-crop_border]


def _prepare(pred: Tensor, target: Tensor, crop_border: int, y_channel: bool) -> tuple[Tensor, Tensor, bool]:
    """Shared front end of psnr/ssim: shape checks, optional Y conversion, border crop, float64."""
    _check_pair(pred, target)
    pred_b, unbatched = _as_batch(pred, "pred")
    target_b, _ = _as_batch(target, "target")
    if y_channel:
        pred_b, target_b = rgb_to_y(pred_b), rgb_to_y(target_b)
    pred_b = _crop(pred_b, crop_border).to(torch.float64)
    target_b = _crop(target_b, crop_border).to(torch.float64)
    return pred_b, target_b, unbatched


# ---------------------------------------------------------------------------------------------------------
# Pixel metrics


def quantize(img: Tensor) -> Tensor:
    """Round an image in [0, 1] to the uint8 grid (clamp, x255, round half to even, /255).

    This is what saving the result as an 8-bit PNG does; papers compute PSNR/SSIM on saved images.
    Keeps the input dtype and device.
    """
    return (img.clamp(0.0, 1.0) * 255.0).round() / 255.0


def rgb_to_y(img: Tensor) -> Tensor:
    """BT.601 studio-swing luma of an RGB image in [0, 1], returned in [0, 1] units (Y / 255).

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` (MATLAB ``rgb2ycbcr``, BasicSR ``rgb2ycbcr(only_y=True)``
    on float input), so the result lies in [16/255, 235/255]; it is not rounded. Input (B, 3, H, W) or
    (3, H, W); output (B, 1, H, W) or (1, H, W).
    """
    channel_dim = img.dim() - 3
    if img.dim() not in (3, 4) or img.shape[channel_dim] != 3:
        raise ValueError(f"rgb_to_y expects (B, 3, H, W) or (3, H, W), got {tuple(img.shape)}")
    coeffs = torch.tensor(_Y_COEFFS, dtype=img.dtype, device=img.device).view(3, 1, 1)
    y = (img * coeffs).sum(dim=channel_dim, keepdim=True) + _Y_OFFSET  # 0..255 units
    return y / 255.0


def psnr(
    pred: Tensor,
    target: Tensor,
    *,
    crop_border: int = 0,
    y_channel: bool = False,
    data_range: float = 1.0,
) -> Tensor:
    """Peak signal-to-noise ratio per image, ``10 log10(data_range^2 / MSE)``, computed in float64.

    Args:
        pred, target: images (B, 3, H, W) or (3, H, W) in [0, data_range]; for paper numbers pass
            ``quantize(pred)`` and an 8-bit GT (see the module docstring).
        crop_border: pixels removed from each side first (the official evaluation uses 4).
        y_channel: compare the BT.601 luma (:func:`rgb_to_y`) instead of RGB; requires data_range=1.
        data_range: the value of a white pixel (1.0 for [0, 1] images).

    Returns:
        (B,) float64 tensor (0-dim for unbatched input). Identical images give ``inf``, as in the
        official code; average over images yourself and decide how to report ``inf``.
    """
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    if y_channel and data_range != 1.0:
        raise ValueError("y_channel=True expects images in [0, 1] (data_range=1.0)")
    pred_b, target_b, unbatched = _prepare(pred, target, crop_border, y_channel)
    mse = (pred_b - target_b).pow(2).mean(dim=(1, 2, 3))  # (B,)
    value = 10.0 * torch.log10(data_range**2 / mse)  # mse == 0 -> inf
    return value[0] if unbatched else value


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 2-D Gaussian window (size, size), as cv2.getGaussianKernel(size, sigma) outer itself."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: Tensor, target: Tensor, *, crop_border: int = 0, y_channel: bool = False) -> Tensor:
    """Structural similarity (Wang et al. 2004), MATLAB/BasicSR variant, per image, in float64.

    Images in [0, 1] are scaled to 0..255; local statistics use an 11x11 Gaussian window with sigma 1.5
    over the *valid* region only (no padding), C1 = (0.01*255)^2, C2 = (0.03*255)^2; the SSIM map is
    averaged over the valid pixels and, for RGB, over the channels. For paper numbers pass
    ``quantize(pred)`` and ``crop_border=4`` (see the module docstring). Pure torch: runs on GPU.

    Returns:
        (B,) float64 tensor (0-dim for unbatched input); 1 for identical images.
    """
    pred_b, target_b, unbatched = _prepare(pred, target, crop_border, y_channel)
    win_size, data_range = 11, 255.0
    if min(pred_b.shape[-2:]) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size} after cropping")
    x, y = pred_b * data_range, target_b * data_range  # (B, C, H, W), 0..255
    channels = x.shape[1]
    window = _gaussian_window(win_size, 1.5, x.dtype, x.device)
    window = window.expand(channels, 1, win_size, win_size)

    def filt(img: Tensor) -> Tensor:
        return F.conv2d(img, window, groups=channels)  # (B, C, H-10, W-10), valid filtering

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = filt(x), filt(y)
    sigma_xx = filt(x * x) - mu_x**2
    sigma_yy = filt(y * y) - mu_y**2
    sigma_xy = filt(x * y) - mu_x * mu_y
    # SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (sigma_xx + sigma_yy + c2)
    )
    value = ssim_map.mean(dim=(1, 2, 3))  # (B,)
    return value[0] if unbatched else value


# ---------------------------------------------------------------------------------------------------------
# LPIPS


def _hub_checkpoint(filename: str) -> Path:
    """Where torch.hub caches a downloaded weights file (honours $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _load_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """Load a plain state dict safely (weights_only=True); a bad file is a one-line ValueError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: cannot load {what} weights ({first_line})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of {what} weights")
    return state


class LPIPSMetric(nn.Module):
    """LPIPS distance (Zhang et al. 2018, v0.1) from the ``lpips`` package, usable offline.

    ``lpips.LPIPS`` would download torchvision's ImageNet backbone; here the backbone comes from
    ``backbone_weights`` (a torchvision state dict, e.g. ``alexnet-owt-7be5be79.pth``), else from the
    torch hub cache if that file is already there, else :class:`MetricUnavailable` is raised at once
    (no download is ever attempted). ``random_init=True`` keeps a randomly initialised backbone (for
    tests only: the numbers are not LPIPS). The calibrated linear layers ship inside the ``lpips``
    package and are always loaded.

    Call with ``pred, target`` in [0, 1] (B, 3, H, W) or (3, H, W); returns (B,) (0-dim if unbatched).
    """

    def __init__(
        self,
        net: LPIPSNet = "alex",
        backbone_weights: str | os.PathLike[str] | None = None,
        random_init: bool = False,
    ) -> None:
        super().__init__()
        if net not in _LPIPS_BACKBONE_FILES:
            raise ValueError(f"LPIPS net must be one of {sorted(_LPIPS_BACKBONE_FILES)}, got {net!r}")
        backbone_state = None if random_init else self._backbone_state(net, backbone_weights)
        try:
            import lpips
        except ImportError as err:
            raise MetricUnavailable("LPIPS needs the 'lpips' package: pip install lpips") from err

        with warnings.catch_warnings():
            # lpips passes torchvision's deprecated `pretrained=False`; nothing is downloaded here.
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)

        if backbone_state is not None:
            source = (
                Path(backbone_weights) if backbone_weights else _hub_checkpoint(_LPIPS_BACKBONE_FILES[net])
            )
            model.net.load_state_dict(self._to_lpips_keys(model.net, backbone_state, source))

        lin_path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
        if not lin_path.is_file():
            raise MetricUnavailable(f"LPIPS linear-layer weights missing from the lpips package: {lin_path}")
        lin_state = _load_state_dict(lin_path, "LPIPS linear-layer")
        missing, unexpected = model.load_state_dict(lin_state, strict=False)
        lin_keys = {k for k in model.state_dict() if k.startswith("lin") and not k.startswith("lins.")}
        if unexpected or lin_keys & set(missing):
            raise ValueError(f"{lin_path}: does not match the LPIPS {net} linear layers")

        self.model = model.eval().requires_grad_(False)
        self.net_name = net
        self.random_init = random_init

    @staticmethod
    def _backbone_state(net: str, backbone_weights: str | os.PathLike[str] | None) -> dict[str, Tensor]:
        filename = _LPIPS_BACKBONE_FILES[net]
        if backbone_weights is not None:
            path = Path(backbone_weights)
            if not path.is_file():
                raise MetricUnavailable(f"LPIPS backbone weights file not found: {path}")
        else:
            path = _hub_checkpoint(filename)
            if not path.is_file():
                raise MetricUnavailable(
                    f"LPIPS needs {net} ImageNet weights: {path} is not in the torch cache and we do not "
                    f"download; pass metrics.lpips_weights=<file> ({filename})"
                )
        return _load_state_dict(path, f"LPIPS {net} backbone")

    @staticmethod
    def _to_lpips_keys(backbone: nn.Module, state: dict[str, Tensor], source: Path) -> dict[str, Tensor]:
        """Map torchvision keys ``features.<i>.<p>`` onto lpips' ``slice<k>.<i>.<p>``."""
        mapped: dict[str, Tensor] = {}
        for key in backbone.state_dict():
            _, rest = key.split(".", 1)  # "slice2.3.weight" -> "3.weight"
            tv_key = f"features.{rest}"
            if tv_key not in state:
                raise ValueError(f"{source}: missing key {tv_key!r}; expected a torchvision state dict")
            mapped[key] = state[tv_key]
        return mapped

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """LPIPS distance per image; inputs in [0, 1] are mapped to [-1, 1] as lpips expects."""
        _check_pair(pred, target)
        pred_b, unbatched = _as_batch(pred, "pred")
        target_b, _ = _as_batch(target, "target")
        dist = self.model(pred_b * 2 - 1, target_b * 2 - 1)  # (B, 1, 1, 1)
        dist = dist.flatten()  # (B,)
        return dist[0] if unbatched else dist


# ---------------------------------------------------------------------------------------------------------
# FID


def _psd_sqrt(mat: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative round-off clamped)."""
    eigvals, eigvecs = torch.linalg.eigh(mat)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` (Heusel et al. 2017, eq. 6).
    ``S1 S2`` is similar to ``S1^(1/2) S2 S1^(1/2)``, which is symmetric PSD, so the trace term is the
    sum of square roots of the latter's eigenvalues from ``eigh``: real and stable even when the
    covariances are singular (fewer samples than feature dimensions), where ``scipy.linalg.sqrtm``
    returns complex residue and needs an ``eps * I`` retry. It also runs on GPU.
    """
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    sigma1, sigma2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    sqrt_s1 = _psd_sqrt(sigma1)
    middle = sqrt_s1 @ sigma2 @ sqrt_s1
    middle = (middle + middle.T) / 2  # remove round-off asymmetry before eigh
    tr_covmean = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    value = diff.dot(diff) + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    return float(value)


class _InceptionPool3(nn.Module):
    """torch-fidelity's InceptionV3 returning pool3 (2048-d) features of [0, 1] float images."""

    def __init__(self, weights: Path) -> None:
        super().__init__()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err:
            raise MetricUnavailable(
                "FID with InceptionV3 needs the optional package torch-fidelity: pip install torch-fidelity"
            ) from err
        # torch-fidelity loads with weights_only=False; loading the file safely first guarantees that it
        # is plain tensors, so its own load executes nothing but tensor reconstruction.
        _load_state_dict(weights, "InceptionV3")
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], str(weights))

    def forward(self, images: Tensor) -> Tensor:
        uint8 = (quantize(images) * 255).round().to(torch.uint8)  # (B, 3, H, W), it expects uint8
        (features,) = self.net(uint8)  # (B, 2048), resized to 299 inside
        return features


class FIDMetric(nn.Module):
    """Fréchet Inception Distance accumulated over batches: ``update(images, real)``, ``compute()``.

    Features come from ``feature_extractor`` (any module mapping (B, 3, H, W) images in [0, 1] to
    (B, D) or (B, D, 1, 1)) or, by default, the InceptionV3 pool3 layer (2048-d) of the standard TF
    FID graph via the optional package ``torch-fidelity`` (the network torchmetrics uses), loaded from
    ``inception_weights`` or the torch hub cache (``weights-inception-2015-12-05-6726825d.pth``;
    pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` is the same file); no download is attempted.

    Mean and covariance are accumulated as float64 sums, so memory does not grow with the number of
    images, and the distance is computed in float64 (see :func:`frechet_distance`).

    Caveat: FID is biased upwards for small sample sizes and has high variance; on the few hundred
    test images per degradation of the DA-CLIP benchmark its absolute value is not comparable across
    set sizes and differences of a few points are noise. Compare methods on identical image sets.
    """

    def __init__(
        self,
        feature_extractor: nn.Module | Callable[[Tensor], Tensor] | None = None,
        *,
        inception_weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if feature_extractor is None:
            if inception_weights is not None:
                path = Path(inception_weights)
                if not path.is_file():
                    raise MetricUnavailable(f"FID InceptionV3 weights file not found: {path}")
            else:
                candidates = [_hub_checkpoint(name) for name in _INCEPTION_FILES]
                found = [p for p in candidates if p.is_file()]
                if not found:
                    raise MetricUnavailable(
                        f"FID needs InceptionV3 weights: {candidates[0]} is not in the torch cache and we do "
                        f"not download; pass metrics.fid_weights=<file> ({_INCEPTION_FILES[0]})"
                    )
                path = found[0]
            feature_extractor = _InceptionPool3(path)
        self.feature_extractor = feature_extractor
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated features."""
        # Plain attributes rather than buffers: module.to(dtype) must not downcast the float64 sums.
        self._count = {True: 0, False: 0}
        self._sum: dict[bool, Tensor | None] = {True: None, False: None}
        self._outer: dict[bool, Tensor | None] = {True: None, False: None}

    @torch.no_grad()
    def update(self, images: Tensor, real: bool) -> None:
        """Add a batch of images (B, 3, H, W) in [0, 1] to the real or the generated set."""
        images, _ = _as_batch(images, "images")
        if isinstance(self.feature_extractor, nn.Module):
            self.feature_extractor.eval()
        features = self.feature_extractor(images)
        features = features.reshape(features.shape[0], -1).to(torch.float64)  # (B, D)
        if self._sum[real] is None:
            dim = features.shape[1]
            self._sum[real] = features.new_zeros(dim)
            self._outer[real] = features.new_zeros(dim, dim)
        if self._sum[real].shape[0] != features.shape[1]:
            raise ValueError(f"feature size changed from {self._sum[real].shape[0]} to {features.shape[1]}")
        self._sum[real] += features.sum(dim=0)
        self._outer[real] += features.T @ features
        self._count[real] += features.shape[0]

    def _stats(self, real: bool) -> tuple[Tensor, Tensor]:
        n = self._count[real]
        if n < 2:
            kind = "real" if real else "generated"
            raise ValueError(f"FID needs at least 2 {kind} images, got {n}")
        mean = self._sum[real] / n
        # Unbiased covariance from the running sums: (sum x x^T - n mu mu^T) / (n - 1).
        cov = (self._outer[real] - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov

    def compute(self) -> float:
        """FID between the accumulated real and generated sets."""
        mu_real, cov_real = self._stats(True)
        mu_fake, cov_fake = self._stats(False)
        if mu_real.shape != mu_fake.shape:
            raise ValueError("real and generated features have different sizes")
        return frechet_distance(mu_real, cov_real, mu_fake.to(mu_real.device), cov_fake.to(mu_real.device))

    def forward(self, images: Tensor, real: bool) -> None:
        """Same as :meth:`update`."""
        self.update(images, real)
