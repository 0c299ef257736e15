"""The demo's stage-1 levers: crops on the JPEG grid that show the degradation, several crops per
synthesised sample, a content-free step when the content loss is off, and the calibrated 'clean' answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from daclip.loss import DaCLIPLoss
from daclip.model import DaCLIP
from daclip.pretrained import ClipSource
from daclip.train import CaptionCollate
from daclip.zero_shot import ZeroShotClassifier, clean_weight_for_rate, view_probabilities
from data import CLEAN
from data.io import write_image
from data.synthetic import SyntheticCaptionDataset
from data.transforms import CROP_ALIGN, grid_views, native_crops

PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _offset(crop: torch.Tensor, image: np.ndarray) -> tuple[int, int]:
    """Where an unflipped-or-flipped ``(3, S, S)`` crop sits in ``image`` (``(H, W, 3)``)."""
    pixels = crop.permute(1, 2, 0).numpy()
    size = pixels.shape[0]
    for top in range(image.shape[0] - size + 1):
        for left in range(image.shape[1] - size + 1):
            window = image[top : top + size, left : left + size]
            if any(
                np.allclose(pixels, w, atol=1e-6)
                for w in (window, window[:, ::-1], window[::-1], window[::-1, ::-1])
            ):
                return top, left
    raise AssertionError("the crop is not a window of the image")


def test_native_crops_lie_on_the_jpeg_grid_and_show_a_local_degradation() -> None:
    rng = np.random.default_rng(0)
    clean = (rng.integers(0, 256, size=(64, 64, 3)) / 255.0).astype(np.float32)
    degraded = clean.copy()
    degraded[48:60, 50:62] = 1.0  # a small hole in one corner only (like 'uncompleted')
    hits_evidence, hits_random = 0, 0
    for seed in range(40):
        picked = native_crops(
            degraded, 16, np.random.default_rng(seed), 1, reference=clean, tries=8, **PLAIN
        )[0]
        random = native_crops(degraded, 16, np.random.default_rng(seed), 1, **PLAIN)[0]
        for crop in (picked, random):
            top, left = _offset(crop, degraded)
            assert top % CROP_ALIGN == 0 and left % CROP_ALIGN == 0
        hits_evidence += bool((picked == 1.0).all(dim=0).any())
        hits_random += bool((random == 1.0).all(dim=0).any())
    # The hole touches 4 of the 49 aligned 16-px windows: a random crop rarely shows it, the picked one
    # whenever one of its 8 tries does (1 - (45/49)^8, about 50%).
    assert hits_random <= 8 and hits_evidence >= 12, (hits_random, hits_evidence)


def test_several_crops_per_sample_are_rows_with_the_samples_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(tmp_path / f"p{i}.png", rng.uniform(0.2, 0.8, size=(48, 48, 3)).astype(np.float32))
    dataset = SyntheticCaptionDataset(
        tmp_path, None, image_size=16, length=4, clip_view="crop", crops_per_sample=3, clean_fraction=0.3
    )
    items = [dataset[i] for i in range(4)]
    assert all(item["image"].shape == (3, 3, 16, 16) for item in items)
    batch = CaptionCollate(lambda texts: torch.zeros(len(texts), 4, dtype=torch.long))(items)
    assert batch["image"].shape == (12, 3, 16, 16)
    expected = torch.tensor([item["degradation_index"] for item in items]).repeat_interleave(3)
    assert torch.equal(batch["degradation_index"], expected)
    assert torch.equal(batch["image"][3:6], items[1]["image"])
    with pytest.raises(ValueError, match="crops_per_sample"):
        SyntheticCaptionDataset(tmp_path, None, image_size=16, crops_per_sample=2)  # needs crops


def test_grid_views_start_on_the_jpeg_grid() -> None:
    image = (np.random.default_rng(0).integers(0, 256, size=(100, 90, 3)) / 255.0).astype(np.float32)
    views = grid_views(image, 32, 3, **PLAIN)
    offsets = [_offset(view, image) for view in views]
    assert all(t % CROP_ALIGN == 0 and x % CROP_ALIGN == 0 for t, x in offsets)
    assert {t for t, _ in offsets} == {0, 32, 64} and {x for _, x in offsets} == {0, 24, 56}


def _tiny_daclip() -> DaCLIP:
    import open_clip

    torch.manual_seed(0)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    model = DaCLIP(open_clip.CLIP(**cfg))
    for linear in model.controller.zero_linears:  # as after some training: the control is on
        torch.nn.init.normal_(linear.weight, std=0.1)
    return model


def test_the_content_free_step_has_the_full_losss_value_and_gradients() -> None:
    """With ``content_weight`` 0 the trainer runs the controller alone (half the work); the loss and
    every gradient equal those of the full forward with the content term weighted 0."""
    images, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    names = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    captions = torch.randn(6, 16)
    results = []
    for content_free in (False, True):
        model = _tiny_daclip()
        criterion = DaCLIPLoss("class_aware", gather=lambda t: t, content_weight=0.0)
        if content_free:
            degra, _ = model.controller(images)
            loss = criterion.degradation_only(degra, names, labels, model.logit_scale)
        else:
            content, degra = model(images)
            loss = criterion(content, degra, captions, names, labels, model.logit_scale)
        loss.total.backward()
        grads = {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and p.grad.any()
        }
        results.append((loss.total.detach(), grads))
    (full_loss, full_grads), (free_loss, free_grads) = results
    assert torch.allclose(full_loss, free_loss)
    assert full_grads.keys() == free_grads.keys() and len(free_grads) > 10
    assert all(torch.allclose(full_grads[n], free_grads[n], atol=1e-7) for n in full_grads)
    with pytest.raises(ValueError, match="content_weight 0"):
        DaCLIPLoss("class_aware", content_weight=0.1).degradation_only(
            degra, names, labels, model.logit_scale
        )


def test_clean_weight_hits_the_asked_share_of_degraded_images_called_clean() -> None:
    names = ("hazy", "noisy", CLEAN)
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(400, 3) * 2, dim=-1)  # (N, K) of degraded images
    for rate in (0.05, 0.2):
        weight = clean_weight_for_rate(probs, names, rate)
        calibrated = ZeroShotClassifier(torch.eye(3), names, clean_weight=weight)
        called = (calibrated.adjust(probs).argmax(-1) == 2).float().mean().item()
        assert abs(called - rate) <= 0.01, (rate, called)
        assert torch.allclose(calibrated.adjust(probs).sum(-1), torch.ones(400))
    # Weight 1, or a vocabulary without 'clean', leaves the probabilities alone.
    assert torch.equal(ZeroShotClassifier(torch.eye(3), names).adjust(probs), probs)
    assert torch.equal(
        ZeroShotClassifier(torch.eye(3), ("a", "b", "c"), clean_weight=3.0).adjust(probs), probs
    )
    with pytest.raises(ValueError, match="no 'clean'"):
        clean_weight_for_rate(probs, ("a", "b", "c"), 0.05)


def test_views_are_averaged_before_the_clean_calibration() -> None:
    names = ("hazy", "noisy", CLEAN)
    classifier = ZeroShotClassifier(torch.eye(3), names, clean_weight=2.0)
    views = torch.randn(2, 4, 3)  # embeddings of 4 views of 2 images, the identity embeds them
    out = view_probabilities(lambda x: x.flatten(1), classifier, views[..., None, None])  # (2, 4, 3, 1, 1)
    expected = classifier.adjust(classifier.softmax(views.flatten(0, 1)).view(2, 4, 3).mean(1))
    assert torch.allclose(out, expected)


def test_clip_source_records_the_clean_weight_only_when_calibrated() -> None:
    paper = ClipSource("ViT-B-32", {"embed_dim": 512})
    assert "clean_weight" not in paper.to_dict()
    demo = ClipSource("ViT-Tiny-8", {"embed_dim": 32}, views=3, vocabulary=("hazy", CLEAN), clean_weight=0.4)
    assert ClipSource.from_dict(demo.to_dict()) == demo


def test_dct_patch_filters_are_an_orthonormal_frequency_basis() -> None:
    from daclip.model import dct_patch_filters

    filters = dct_patch_filters(64, 8)
    assert filters.shape == (64, 3, 8, 8)
    flat = filters.flatten(1).double()  # (64, 192)
    ac = flat[3:]
    assert torch.allclose(ac @ ac.T, torch.eye(61, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(flat[:3] @ ac.T, torch.zeros(3, 61, dtype=torch.float64), atol=1e-6)
    flat_colour = torch.rand(3, 1, 1).expand(3, 8, 8)  # a patch of one colour: only the DC filters respond
    response = (filters * flat_colour).sum(dim=(1, 2, 3))
    assert torch.allclose(response[:3], flat_colour[:, 0, 0] * 8, atol=1e-5)
    assert response[3:].abs().max() < 1e-5
    assert dct_patch_filters(8, 8).shape[0] == 8 and dct_patch_filters(100, 4).shape[0] == 18  # 3 DC + 15 AC


def test_dct_init_changes_only_the_controllers_patch_embedding() -> None:
    from daclip.model import dct_patch_filters, init_patch_embedding_dct

    model = _tiny_daclip()
    with torch.no_grad():
        for linear in model.controller.zero_linears:
            linear.weight.zero_()  # as at the start of training
    images = torch.rand(2, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = model.encode_image(images, control=False)
    init_patch_embedding_dct(model.controller.tower)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["controller.tower.conv1.weight"]
    assert torch.equal(model.controller.tower.conv1.weight, dct_patch_filters(32, 8)[:32])
    content, _ = model.encode_image(images, control=True)
    assert torch.allclose(content, plain)  # the frozen CLIP is untouched and the control still zero


def test_the_demo_stage1_config_starts_the_controller_from_the_dct_basis() -> None:
    import yaml

    from daclip.engine.config import ConfigError, load_config
    from daclip.train import DaCLIPTrainConfig

    configs = Path(__file__).resolve().parents[1] / "configs"
    demo = yaml.safe_load((configs / "daclip_demo.yml").read_text())
    assert demo["model"]["patch_init"] == "dct"
    paper = yaml.safe_load((configs / "daclip.yml").read_text())
    assert "patch_init" not in paper["model"]  # the paper: a copy of the pretrained tower
    assert load_config(DaCLIPTrainConfig, None, []).model.patch_init == "copy"
    with pytest.raises(ConfigError, match="model.patch_init"):
        load_config(DaCLIPTrainConfig, None, ["model.patch_init=fft"])


def test_native_crops_take_the_windows_where_most_pixels_changed_in_any_channel() -> None:
    """The pick, against a per-window count written out: a pixel counts as changed when any one of its
    channels moved by more than 1.5 levels (here the changes are single-channel, so a mean or a
    one-channel test would count them wrongly)."""
    from data.transforms import _aligned_offsets

    rng = np.random.default_rng(3)
    clean = ((rng.integers(0, 250, size=(72, 80, 3)) + 0.5) / 255.0).astype(np.float32)  # mid-level
    degraded = clean.copy()
    for channel, (top, left, h, w) in enumerate([(5, 7, 20, 9), (40, 50, 25, 26), (60, 3, 10, 30)]):
        degraded[top : top + h, left : left + w, channel] += 2.0 / 255.0  # one channel, just over the bar
    degraded[0:30, 60:80, 1] += 1.0 / 255.0  # below the bar: not a change
    for seed in range(20):
        offsets = _aligned_offsets(np.random.default_rng(seed), 72, 80, 24, 8)
        changed = (np.abs(degraded - clean) > 1.5 / 255.0).any(axis=2)
        counts = [int(changed[t : t + 24, x : x + 24].sum()) for t, x in offsets]
        best = [tuple(offsets[i]) for i in np.argsort(-np.asarray(counts), kind="stable")[:2]]
        crops = native_crops(degraded, 24, np.random.default_rng(seed), 2, reference=clean, tries=8, **PLAIN)
        levels = np.floor(degraded * 255.0) / 255.0  # the crops are truncated to uint8 levels
        assert [_offset(crop, levels) for crop in crops] == best


def test_crops_the_degradation_does_not_show_in_are_labelled_clean(tmp_path: Path) -> None:
    """``visible_psnr``: a degraded crop within that PSNR of its clean crop is labelled clean, the others
    keep the sample's label; the crops themselves are the ones the dataset cuts without it."""
    from data.synthetic import SynthesisConfig

    write_image(tmp_path / "p.png", np.full((64, 64, 3), 0.5, dtype=np.float32))  # flat: holes show, rest not
    kwargs = dict(image_size=16, length=8, clip_view="crop", crops_per_sample=4, **PLAIN)
    config = SynthesisConfig(types=["uncompleted"])
    plain = SyntheticCaptionDataset(tmp_path, config, **kwargs, clean_fraction=0.0)
    labelled = SyntheticCaptionDataset(tmp_path, config, **kwargs, clean_fraction=1e-9, visible_psnr=40.0)
    clean_index = labelled.degradation_texts.index(CLEAN)
    grey = float(plain[0]["image"].flatten().mode().values)  # the photo's level, as the crops store it
    seen = set()
    for i in range(8):
        item = labelled[i]
        assert torch.equal(item["image"], plain[i]["image"])  # the same draws and crops
        for crop, label in zip(item["image"], item["crop_degradation_index"].tolist()):
            shows = float(((crop - grey) ** 2).mean()) >= 1e-4  # 40 dB
            assert label == (item["degradation_index"] if shows else clean_index)
            seen.add(shows)
    assert seen == {True, False}  # both cases happened
    collate = CaptionCollate(lambda texts: torch.zeros(len(texts), 4, dtype=torch.long))
    batch = collate([labelled[0], labelled[1]])
    expected = torch.cat([labelled[0]["crop_degradation_index"], labelled[1]["crop_degradation_index"]])
    assert torch.equal(batch["degradation_index"], expected)
    with pytest.raises(ValueError, match="visible_psnr"):
        SyntheticCaptionDataset(tmp_path, config, **kwargs, visible_psnr=40.0)  # no 'clean' answer to give


def test_visible_psnr_needs_native_crops_and_a_clean_answer(tmp_path: Path) -> None:
    import yaml

    from daclip.engine.config import ConfigError, load_config
    from daclip.train import DaCLIPTrainConfig

    configs = Path(__file__).resolve().parents[1] / "configs"
    assert yaml.safe_load((configs / "daclip_demo.yml").read_text())["data"]["visible_psnr"] == 40
    assert "visible_psnr" not in yaml.safe_load((configs / "daclip.yml").read_text())["data"]  # the paper
    base = ["data.source=synthetic", f"data.clean_root={tmp_path}", "data.visible_psnr=40"]
    assert load_config(DaCLIPTrainConfig, None, [*base, "data.clip_view=crop", "data.clean_fraction=0.2"])
    for override in (["data.clip_view=crop", "data.clean_fraction=0"], ["data.clean_fraction=0.2"]):
        with pytest.raises(ConfigError, match="data.visible_psnr"):
            load_config(DaCLIPTrainConfig, None, [*base, *override])


def test_augment_photo_turns_and_recolours_but_keeps_every_pixel() -> None:
    import itertools

    from data.transforms import augment_photo

    rng = np.random.default_rng(0)
    photo = rng.random((6, 9, 3)).astype(np.float32)  # not square: a quarter turn swaps the sides
    candidates = {
        (k, perm): np.rot90(photo, k)[..., list(perm)]
        for k in range(4)
        for perm in itertools.permutations(range(3))
    }
    seen = set()
    for seed in range(60):
        out = augment_photo(photo, ("rotate", "channels"), np.random.default_rng(seed))
        assert out.flags["C_CONTIGUOUS"]
        match = [key for key, c in candidates.items() if c.shape == out.shape and np.array_equal(out, c)]
        assert len(match) == 1  # a turn of the photo with its colour planes reordered, nothing else
        seen.add(match[0])
    assert {k for k, _ in seen} == {0, 1, 2, 3} and len({p for _, p in seen}) == 6  # all happen
    assert np.array_equal(augment_photo(photo, (), rng), photo)
    turned_only = augment_photo(photo, ("rotate",), np.random.default_rng(1))
    assert any(np.array_equal(turned_only, np.rot90(photo, k)) for k in range(4))
    with pytest.raises(ValueError, match="unknown photo augmentations"):
        augment_photo(photo, ("hue",), rng)


def test_augment_photo_scales_the_saturation_around_each_pixels_grey() -> None:
    from data.transforms import SATURATION_RANGE, augment_photo

    photo = (0.3 + 0.4 * np.random.default_rng(0).random((8, 8, 3))).astype(np.float32)  # no clipping
    grey = photo.mean(axis=2, keepdims=True)
    factors = []
    for seed in range(40):
        out = augment_photo(photo, ("saturation",), np.random.default_rng(seed))
        assert out.dtype == np.float32
        np.testing.assert_allclose(out.mean(axis=2, keepdims=True), grey, atol=1e-6)  # the grey stays
        factor = float(np.median((out - grey) / (photo - grey)))
        np.testing.assert_allclose(out - grey, (photo - grey) * factor, atol=1e-5)  # one factor per photo
        factors.append(factor)
    low, high = SATURATION_RANGE
    assert low <= min(factors) < 0.7 and 1.3 < max(factors) <= high  # desaturated and saturated photos
    bright = np.array([[[1.0, 0.9, 0.0]]], dtype=np.float32)
    for seed in range(10):
        out = augment_photo(bright, ("saturation",), np.random.default_rng(seed))
        assert out.min() >= 0.0 and out.max() <= 1.0  # clipped to the range


def test_photo_augment_changes_the_photo_not_the_draws_or_the_degradation(tmp_path: Path) -> None:
    """With ``photo_augment`` a sample is the same draw (types, degradation, crops) on a turned, recoloured
    photo; without it, samples are those of earlier runs (the augmentation has a generator of its own)."""
    from data.synthetic import SynthesisConfig
    from data.transforms import augment_photo

    rng = np.random.default_rng(3)
    write_image(tmp_path / "p.png", rng.random((40, 40, 3)).astype(np.float32))
    config = SynthesisConfig(types=["noisy", "hazy"])
    kwargs = dict(image_size=16, length=6, clip_view="crop", clean_fraction=0.3, **PLAIN)
    plain = SyntheticCaptionDataset(tmp_path, config, **kwargs)
    kinds = ("rotate", "channels", "saturation")
    turned = SyntheticCaptionDataset(tmp_path, config, **kwargs, photo_augment=kinds)
    changed = 0
    for i in range(6):
        clean, lq, names = plain.degraded(i)
        clean_t, lq_t, names_t = turned.degraded(i)
        assert names == names_t  # the same degradation types, drawn from the same generator
        augmented = augment_photo(clean, kinds, turned._generators(i, None, 4)[3])
        assert np.array_equal(clean_t, augmented)  # the photo is turned and recoloured before degrading
        if not names:
            assert np.array_equal(lq_t, clean_t)  # a clean draw stays the (augmented) photo
        changed += not np.array_equal(clean_t, clean)
        assert plain[i]["degradation_text"] == turned[i]["degradation_text"]
    assert changed >= 4
    with pytest.raises(ValueError, match="photo_augment"):
        SyntheticCaptionDataset(tmp_path, config, **kwargs, photo_augment=["flip"])


def test_photo_augment_is_a_demo_switch_and_a_checked_key(tmp_path: Path) -> None:
    import yaml

    from daclip.engine.config import ConfigError, load_config
    from daclip.train import DaCLIPTrainConfig

    configs = Path(__file__).resolve().parents[1] / "configs"
    assert yaml.safe_load((configs / "daclip_demo.yml").read_text())["data"]["photo_augment"] == [
        "rotate",
        "channels",
        "saturation",
    ]
    assert "photo_augment" not in yaml.safe_load((configs / "daclip.yml").read_text())["data"]  # the paper
    assert load_config(DaCLIPTrainConfig, None, []).data.photo_augment == []
    base = ["data.source=synthetic", f"data.clean_root={tmp_path}"]
    csv = tmp_path / "train.csv"
    csv.write_text("filepath\ttitle\n")
    assert load_config(
        DaCLIPTrainConfig, None, [*base, "data.photo_augment=[rotate]"]
    ).data.photo_augment == ["rotate"]
    with pytest.raises(ConfigError, match="data.photo_augment"):
        load_config(DaCLIPTrainConfig, None, [*base, "data.photo_augment=[sepia]"])
    with pytest.raises(ConfigError, match="data.photo_augment"):
        load_config(DaCLIPTrainConfig, None, [f"data.train_csv={csv}", "data.photo_augment=[rotate]"])
