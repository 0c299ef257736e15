"""The hole fill (irsde.inference.holes): the white holes of images DA-CLIP calls ``uncompleted``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.degradations import uncompleted
from irsde.evaluation.metrics import psnr
from irsde.inference.holes import fill_holes, harmonic_fill, has_hole_region, hole_mask
from irsde.inference.pipeline import RestorationPipeline
from tests.conftest import write_tiny_ir_checkpoint

NAMES = ("noisy", "uncompleted", "clean")


def _smooth_photo(size: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth colour picture (HWC in [0.1, 0.9]): a few low-frequency waves per channel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    channels = []
    for _ in range(3):
        a, b, c, d = rng.uniform(0.5, 2.0, size=4)
        channels.append(
            0.5 + 0.2 * np.sin(2 * np.pi * (a * x + b * y)) + 0.15 * np.cos(2 * np.pi * (c * x - d * y))
        )
    return np.clip(np.stack(channels, axis=-1), 0.1, 0.9).astype(np.float32)


def _batch(*images: np.ndarray) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1) for i in images])


def test_holes_are_the_pixels_white_in_every_channel_and_count_as_a_region():
    image = torch.full((1, 3, 10, 10), 0.5)
    image[0, :, 1:4, 1:5] = 1.0  # a 3 x 4 white box
    image[0, :, 2, 3] = 1.0 - 0.4 / 255  # within half a grey level: an 8-bit white
    image[0, :, 6, 7] = 1.0  # a single white pixel
    image[0, :2, 5:8, 5:8] = 1.0  # white in two channels only: a colour, not a hole
    expected = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    expected[0, 0, 1:4, 1:5] = expected[0, 0, 6, 7] = True
    assert torch.equal(hole_mask(image), expected)
    # A region is a 3 x 3 square of holes (against the border too); specks and thin lines are none.
    specks = torch.full((3, 3, 10, 10), 0.5)
    specks[0, :, 2, 2] = specks[0, :, 7, 8] = 1.0  # noise clipped at white
    specks[1, :, :, 4:6] = 1.0  # a line two pixels wide
    specks[2, :, 7:10, 0:3] = 1.0  # a 3 x 3 box in the corner
    assert has_hole_region(hole_mask(specks)).tolist() == [False, False, True]
    assert has_hole_region(hole_mask(image)).tolist() == [True]


@pytest.mark.parametrize("size", [(33, 47), (128, 128)])
def test_the_fill_solves_laplace_s_equation_and_keeps_the_known_pixels(size):
    """A plane is harmonic: the fill gives it back inside a large hole, and every known pixel is untouched."""
    h, w = size
    y, x = torch.meshgrid(torch.linspace(0.1, 0.7, h), torch.linspace(0.0, 0.3, w), indexing="ij")
    plane = torch.stack([x + y, 0.9 - y, 0.2 + 0.5 * x]).unsqueeze(0)  # (1, 3, H, W), linear in x and y
    holes = torch.zeros(1, 1, h, w, dtype=torch.bool)
    holes[..., h // 4 : 3 * h // 4, w // 5 : 4 * w // 5] = True  # half the rows, 60% of the columns
    damaged = torch.where(holes, torch.ones_like(plane), plane)
    filled = harmonic_fill(damaged, holes)
    assert torch.equal(filled[~holes.expand_as(plane)], plane[~holes.expand_as(plane)])
    assert (filled - plane).abs().max() < 1 / 255  # within one grey level everywhere (16 relaxations a level)
    # An image that is all hole has nothing to fill from: it comes back as it came.
    assert torch.equal(harmonic_fill(damaged, torch.ones_like(holes)), damaged)


def test_the_generators_holes_come_back_close_to_a_smooth_truth_and_only_where_the_answer_says():
    clean = [_smooth_photo(seed=s) for s in range(3)]
    lq = [uncompleted(c, np.random.default_rng(10 + s)) for s, c in enumerate(clean)]
    lq_t, clean_t = _batch(*lq), _batch(*clean)
    answer = torch.tensor([True, True, False])
    restored = (lq_t * 0.9).clamp(0, 1)  # a restorer's output, different from its input everywhere
    out = fill_holes(lq_t, restored, answer)
    for k in range(2):
        before, after = psnr(lq_t[k : k + 1], clean_t[k : k + 1]), psnr(out[k : k + 1], clean_t[k : k + 1])
        assert before < 16 and after > before + 15, (before, after)
        # Called uncompleted: the input as it came, the holes filled from the input's own pixels.
        known = ~hole_mask(lq_t[k : k + 1]).expand(1, 3, -1, -1)
        assert torch.equal(out[k : k + 1][known], lq_t[k : k + 1][known])
    assert torch.equal(out[2], restored[2])  # not called uncompleted: the restorer's
    # An image without white pixels is the restorer's whatever the answer.
    assert torch.equal(fill_holes(clean_t, restored, torch.ones(3, dtype=torch.bool)), restored)


class _Darken(torch.nn.Module):
    """A one-pass "restorer" conditioned on DA-CLIP that darkens its input by 10%."""

    use_degra_context = True
    use_image_context = False

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, lq, **kwargs):
        return lq * 0.9


class _BrightIsUncompleted:
    """A stand-in DA-CLIP that knows the answer: images brighter than 0.5 are uncompleted, the others noisy."""

    image_size, mean, std, views = 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1

    def __call__(self, clip_images):
        zeros = torch.zeros(clip_images.shape[0], 32)
        return zeros, zeros

    def classify(self, clip_images, names):
        bright = clip_images.mean(dim=(1, 2, 3)) > 0.5
        probs = torch.full((clip_images.shape[0], len(names)), 0.05)
        probs[bright, list(names).index("uncompleted")] = 0.9
        probs[~bright, list(names).index("noisy")] = 0.9
        return probs / probs.sum(dim=1, keepdim=True)


def test_the_pipeline_fills_only_the_images_da_clip_calls_uncompleted():
    bright = np.full((32, 32, 3), 0.8, dtype=np.float32)
    bright[8:20, 10:14] = 1.0  # a white stroke in a flat grey picture
    dark = np.full((32, 32, 3), 0.2, dtype=np.float32)
    dark[4:10, 4:10] = 1.0  # white too, but DA-CLIP says noisy
    lq = _batch(bright, dark)
    pipeline = RestorationPipeline(_Darken(), None, _BrightIsUncompleted(), hole_fill=True)
    pipeline.degradations = NAMES
    out = pipeline(lq)
    # Called uncompleted: the input as it came, the stroke filled from the grey around it.
    assert torch.allclose(out[0], torch.full_like(out[0], 0.8), atol=1e-4)
    assert torch.allclose(out[1], lq[1] * 0.9)  # called noisy: the restorer's output, white patch and all
    specks = torch.full((1, 3, 32, 32), 0.8)
    specks[..., 5, 5] = specks[..., 20, 11] = (
        1.0  # noise clipped at white, no region: restored, not given back
    )
    assert torch.allclose(pipeline(specks), specks * 0.9)
    off = RestorationPipeline(_Darken(), None, _BrightIsUncompleted())  # the default: off
    off.degradations = NAMES
    assert torch.allclose(off(lq), lq * 0.9)


def test_the_hole_fill_refuses_a_vocabulary_without_uncompleted_or_a_daclip_that_cannot_classify():
    pipeline = RestorationPipeline(_Darken(), None, _BrightIsUncompleted(), hole_fill=True)
    pipeline.degradations = ("noisy", "hazy")
    with pytest.raises(ValueError, match="'uncompleted', which is not among"):
        pipeline(torch.full((1, 3, 16, 16), 0.9))

    class EncodeOnly(_BrightIsUncompleted):
        classify = None

    with pytest.raises(ValueError, match="hole_fill needs a DA-CLIP that classifies"):
        RestorationPipeline(_Darken(), None, EncodeOnly(), hole_fill=True)


def test_a_checkpoint_restores_with_the_hole_fill_it_was_validated_with(tmp_path, tiny_daclip_checkpoint):
    on = write_tiny_ir_checkpoint(
        tmp_path / "on.pt", daclip_checkpoint=str(tiny_daclip_checkpoint), context=True,
        overrides=("train.val_hole_fill=true",),
    )  # fmt: skip
    off = write_tiny_ir_checkpoint(
        tmp_path / "off.pt", daclip_checkpoint=str(tiny_daclip_checkpoint), context=True
    )
    assert RestorationPipeline.from_checkpoint(on, device="cpu").hole_fill is True
    assert RestorationPipeline.from_checkpoint(off, device="cpu").hole_fill is False
    assert RestorationPipeline.from_checkpoint(on, device="cpu", hole_fill=False).hole_fill is False


def test_restore_py_writes_the_filled_image_and_says_so(tmp_path):
    """Through restore_images (restore.py's loop): the image DA-CLIP calls uncompleted is written as it came
    with its holes filled, predictions.json says ``holes_filled``, and the log line too; the other is the
    restorer's."""
    from data.io import read_image, write_image
    from data.paired import LQImageDataset
    from irsde.inference.restore import restore_images

    bright = np.full((32, 32, 3), 0.8, dtype=np.float32)
    bright[8:20, 10:14] = 1.0
    dark = np.full((32, 32, 3), 0.2, dtype=np.float32)
    dark[4:10, 4:10] = 1.0
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    write_image(inputs / "bright.png", bright)
    write_image(inputs / "dark.png", dark)
    pipeline = RestorationPipeline(_Darken(), None, _BrightIsUncompleted(), hole_fill=True)
    pipeline.degradations = NAMES
    logs: list[str] = []
    dataset = LQImageDataset(inputs, clip_size=16, clip_mean=(0, 0, 0), clip_std=(1, 1, 1))
    restore_images(pipeline, dataset, out, degradations=NAMES, log=logs.append)
    written = read_image(out / "bright.png")
    assert np.abs(written - 0.8).max() <= 0.5 / 255  # the stroke filled, the rest as it came
    assert np.abs(read_image(out / "dark.png") - np.round(dark * 0.9 * 255) / 255).max() <= 0.5 / 255
    entries = {
        Path(e["output"]).name: e for e in json.loads((out / "predictions.json").read_text())["images"]
    }
    assert entries["bright.png"]["holes_filled"] is True and entries["dark.png"]["holes_filled"] is False
    assert sum("bright.png: uncompleted" in line and "holes filled (hole_fill)" in line for line in logs) == 1


def test_holes_are_found_by_the_rule_of_restore_py_s_predictions():
    """``uncompleted`` counts when it ranks first or reaches the presence threshold (0.3), as restore.py lists
    the degradations present, and never when ``clean`` ranks first (then nothing is present)."""
    pipeline = RestorationPipeline(_Darken(), None, _BrightIsUncompleted(), hole_fill=True)
    pipeline.degradations = NAMES  # noisy, uncompleted, clean
    probs = torch.tensor(
        [
            [0.2, 0.7, 0.1],  # first
            [0.6, 0.35, 0.05],  # second, but present
            [0.75, 0.25, 0.0],  # second and below the threshold
            [0.1, 0.35, 0.55],  # present, but clean ranks first
        ]
    )
    assert pipeline.finds_holes(probs).tolist() == [True, True, False, False]


class _UncompletedWhenSmall(_BrightIsUncompleted):
    """A stand-in DA-CLIP classifying from its own views of the image: ``uncompleted`` when the image's shorter
    side is at most 128 px (the holes then look as in training), ``hazy`` otherwise."""

    views = 3

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def classify_images(self, images, names):
        self.sizes.append(min(images.shape[-2:]))
        probs = torch.full((images.shape[0], len(names)), 0.05)
        probs[:, list(names).index("uncompleted" if min(images.shape[-2:]) <= 128 else "hazy")] = 0.9
        return probs / probs.sum(dim=1, keepdim=True)


def test_a_large_photo_s_holes_are_also_looked_for_at_the_training_scale():
    image = torch.full((1, 3, 256, 384), 0.6)
    image[..., 40:120, 100:220] = 1.0  # one large white box: a bright flat field to a 64-px view
    daclip = _UncompletedWhenSmall()
    pipeline = RestorationPipeline(_Darken(), None, daclip, hole_fill=True)
    pipeline.degradations = ("noisy", "hazy", "uncompleted", "clean")
    out = pipeline(image)
    assert daclip.sizes == [256, 128]  # as it is, then downscaled to a shorter side of 128
    assert torch.allclose(out, torch.full_like(out, 0.6), atol=1e-4)
    daclip.sizes.clear()  # without white pixels DA-CLIP is not asked, and the restorer's output stands
    assert torch.allclose(pipeline(torch.full((1, 3, 256, 384), 0.6)), torch.full((1, 3, 256, 384), 0.54))
    assert daclip.sizes == []


def test_the_app_gives_the_filled_image_and_says_so(tmp_path):
    from data.io import write_image
    from irsde.apps.app import AppRestorer

    bright = np.full((32, 32, 3), 0.8, dtype=np.float32)
    bright[8:20, 10:14] = 1.0
    pipeline = RestorationPipeline(_Darken(), None, _BrightIsUncompleted(), hole_fill=True)
    pipeline.degradations = NAMES
    restorer = AppRestorer(pipeline, output_dir=tmp_path / "out")
    result = restorer.restore(write_image(tmp_path / "holes.png", bright), sampler="posterior", steps=1)
    assert np.abs(result["output"].astype(np.int16) - 204).max() <= 1  # 0.8 of 255, the stroke filled
    assert "given back as it came with its white holes filled (hole_fill)" in result["status"]
