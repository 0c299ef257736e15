"""The demo's stage-1 recipe (configs/daclip_demo.yml) on a small synthetic set: a tiny DA-CLIP trained for
seconds from random weights names degradations, and 'clean', on crops of photos it never trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from daclip.classify import evaluate_classification, labelled_images
from daclip.engine.config import ConfigError, load_config
from daclip.inference import load_frozen_daclip
from daclip.pretrained import ClipSource
from daclip.train import DaCLIPTrainConfig, train_daclip
from data import CLEAN
from data.degradations import DEGRADATIONS
from data.io import write_image
from data.synthetic import SyntheticCaptionDataset
from data.transforms import grid_views, native_crop

ROOT = Path(__file__).resolve().parents[1]
TYPES = ("hazy", "low-light", "noisy")
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def photo(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A smooth random 'photo': a colour gradient with a few soft blobs (mid-grey on average)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = 0.3 + 0.4 * np.stack([x, y, 1 - x], axis=-1) * rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    for _ in range(3):
        cy, cx, r = rng.uniform(0, 1, size=3)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (0.02 + 0.05 * r))
        image = image + 0.3 * blob[..., None] * (rng.uniform(0, 1, size=3) - 0.5)
    return np.clip(image, 0, 1).astype(np.float32)


def photos(folder: Path, count: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        write_image(folder / f"photo_{i}.png", photo(rng))
    return folder


def held_out_set(folder: Path, seed: int, per_class: int = 6) -> Path:
    """``<folder>/<type>/{LQ,GT}`` crops of new photos, degraded by the project's generators (and clean)."""
    rng = np.random.default_rng(seed)
    for name in (*TYPES, CLEAN):
        for i in range(per_class):
            gt = photo(rng)
            lq = gt if name == CLEAN else DEGRADATIONS[name](gt, rng)
            write_image(folder / name / "GT" / f"{i}.png", gt)
            write_image(folder / name / "LQ" / f"{i}.png", lq)
    return folder


def demo_recipe(tmp_path: Path, clean_root: Path, **extra: str) -> DaCLIPTrainConfig:
    model_config = tmp_path / "ViT-Tiny-Test.json"
    model_config.write_text(json.dumps(TINY))
    overrides = {
        "experiment.root": str(tmp_path / "runs"),
        "model.clip_model": "ViT-Tiny-Test",
        "model.model_config": str(model_config),
        "data.clean_root": str(clean_root),
        "data.val_csv": "",
        "data.degradations": "[" + ", ".join(TYPES) + "]",
        "data.synthesis.types": "[" + ", ".join(TYPES) + "]",
        "data.synthesis.params": "{}",
        "data.synthesis.exclusive": "[]",
        "data.num_workers": "0",
        "data.samples_per_epoch": "384",
        "data.clean_fraction": "0.25",
        "train.epochs": "1",
        "train.warmup_steps": "5",
        "train.log_every": "100",
        **extra,
    }
    return load_config(
        DaCLIPTrainConfig, ROOT / "configs/daclip_demo.yml", [f"{k}={v}" for k, v in overrides.items()]
    )


def test_tiny_daclip_names_degradations_and_clean_on_unseen_photos(tmp_path: Path) -> None:
    train_photos = photos(tmp_path / "train_photos", 12, seed=1)
    run = train_daclip(demo_recipe(tmp_path, train_photos), progress=False)
    daclip = load_frozen_daclip(run / "checkpoints" / "daclip_final.pt")
    assert daclip.vocabulary == (*TYPES, CLEAN) and daclip.views == 3
    test_root = held_out_set(tmp_path / "held_out", seed=2)
    names = list(daclip.vocabulary)
    dataset = labelled_images(test_root, names, daclip.image_size, daclip.mean, daclip.std, daclip.views)
    assert dataset[0]["image"].shape == (9, 3, 32, 32)  # a 3 x 3 grid of native 32-px crops
    report = evaluate_classification(daclip, dataset, names, methods=("daclip",))
    # Chance is 25% over the four answers; a model that learned nothing general stays near it.
    assert report.accuracy("daclip") >= 0.6, report.format_table()
    per_class = dict(zip(names, report.per_class_accuracy("daclip")))
    assert sum(v >= 0.5 for v in per_class.values()) >= 3, report.format_table()


def test_clean_vocabulary_needs_synthetic_data_and_is_no_degradation(tmp_path: Path) -> None:
    clean_root = photos(tmp_path / "p", 2, seed=0)
    with pytest.raises(ConfigError, match="data.clean_fraction"):
        demo_recipe(
            tmp_path, clean_root, **{"data.source": "csv", "data.train_csv": str(clean_root / "photo_0.png")}
        )
    with pytest.raises(ConfigError, match="data.degradations"):
        demo_recipe(tmp_path, clean_root, **{"data.degradations": "[hazy, clean]"})
    cfg = demo_recipe(tmp_path, clean_root)
    assert cfg.data.vocabulary() == (*TYPES, CLEAN)
    no_clean = {"data.clean_fraction": "0", "data.visible_psnr": "0"}  # the clean labels go with it
    assert demo_recipe(tmp_path, clean_root, **no_clean).data.vocabulary() == TYPES


def test_synthetic_captions_with_clean_samples_and_native_crops(tmp_path: Path) -> None:
    clean_root = photos(tmp_path / "p", 3, seed=0)
    dataset = SyntheticCaptionDataset(
        clean_root, None, image_size=32, length=60, clean_fraction=0.3, clip_view="crop", seed=0
    )
    assert dataset.degradation_texts[-1] == CLEAN
    items = [dataset[i] for i in range(60)]
    clean = [item for item in items if item["degradation"] == CLEAN]
    assert 8 <= len(clean) <= 30  # about 30% of 60
    assert all(item["degradation_index"] == len(dataset.degradation_texts) - 1 for item in clean)
    assert all(item["multi_hot"].sum() == 0 and item["degradation_text"] == CLEAN for item in clean)
    assert all(item["image"].shape == (3, 32, 32) for item in items)
    # Without clean samples the vocabulary is exactly the combinations (the paper's configs).
    plain = SyntheticCaptionDataset(clean_root, None, image_size=32, length=4)
    assert CLEAN not in plain.degradation_texts


def test_native_crop_keeps_pixels_and_grid_views_cover_the_image() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(48, 80, 3)).astype(np.float32) / 255.0
    crop = native_crop(image, 16, np.random.default_rng(1), mean=(0, 0, 0), std=(1, 1, 1))
    pixels = crop.permute(1, 2, 0).numpy()
    # Every crop pixel is an image pixel (a crop and flips: nothing is interpolated).
    windows = [image[t : t + 16, x : x + 16] for t in range(0, 33) for x in range(0, 65)]
    flips = [w for win in windows for w in (win, win[:, ::-1], win[::-1], win[::-1, ::-1])]
    assert any(np.allclose(pixels, w, atol=1e-6) for w in flips)
    views = grid_views(image, 16, 3, mean=(0, 0, 0), std=(1, 1, 1))
    assert views.shape == (9, 3, 16, 16)
    assert torch.allclose(views[0].permute(1, 2, 0), torch.from_numpy(image[:16, :16]))
    assert torch.allclose(views[-1].permute(1, 2, 0), torch.from_numpy(image[-16:, -16:]))


def test_clip_source_records_views_and_vocabulary_only_when_set() -> None:
    paper = ClipSource("ViT-B-32", {"embed_dim": 512})
    assert "views" not in paper.to_dict() and "vocabulary" not in paper.to_dict()
    demo = ClipSource("ViT-Tiny-8", {"embed_dim": 32}, views=3, vocabulary=(*TYPES, CLEAN))
    assert ClipSource.from_dict(demo.to_dict()) == demo
    assert ClipSource.from_dict(paper.to_dict()) == paper
