"""Stage 1 on the fly (``data.source: synthetic``): clean photos in, no files written, reproducible draws."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from daclip.engine.checkpoint import load_checkpoint
from daclip.engine.config import ConfigError, load_config
from daclip.pretrained import make_tokenizer
from daclip.train import (
    CaptionCollate,
    DaCLIPTrainConfig,
    EpochKeyedCaptions,
    EpochKeySampler,
    train_daclip,
)
from data.captions import CaptionRow, write_caption_csv
from data.io import write_image
from data.synthetic import SynthesisConfig, SyntheticCaptionDataset
from tests.test_daclip_train import _tiny_source

ROOT = Path(__file__).resolve().parents[1]
TYPES = ("hazy", "low-light", "noisy", "rainy", "snowy")
STEP_LINE = re.compile(r"step (\d+)/\d+\s+loss (\S+)")


def clean_photos(folder: Path, count: int = 6, size: int = 40) -> Path:
    """``count`` small clean 'photos' (smooth gradients with a square), no captions."""
    rng = np.random.default_rng(0)
    for i in range(count):
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
        image = np.stack([x, y, 0.5 * (x + y)], axis=-1) * rng.uniform(0.5, 1.0, size=3).astype(np.float32)
        image[size // 4 : size // 2, size // 4 : size // 2] = rng.uniform(0, 1, size=3)
        write_image(folder / f"photo_{i}.png", np.clip(image, 0, 1))
    return folder


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def _overrides(tmp_path: Path, photos: Path, **extra: str) -> list[str]:
    settings = {
        "experiment.root": str(tmp_path / "runs"),
        "experiment.seed": "3",
        "data.clean_root": str(photos),
        "data.val_csv": "",
        "data.val_clean_root": "",
        "data.samples_per_epoch": "8",
        "data.max_size": "40",
        "data.degradations": "[" + ", ".join(TYPES) + "]",
        "data.synthesis.types": "[" + ", ".join(TYPES) + "]",
        "data.synthesis.params": "{}",
        "model.model_config": str(ROOT / "configs/open_clip/ViT-Tiny-16.json"),
        "train.epochs": "2",
        "train.batch_size": "4",
        "train.warmup_steps": "1",
        "train.save_every_epochs": "1",
        "train.log_every": "1",
        **extra,
    }
    return [f"{k}={v}" for k, v in settings.items()]


def _cfg(tmp_path: Path, photos: Path, **extra: str) -> DaCLIPTrainConfig:
    return load_config(
        DaCLIPTrainConfig, ROOT / "configs/daclip_synthetic_tiny.yml", _overrides(tmp_path, photos, **extra)
    )


def _losses(run: Path) -> dict[int, float]:
    """Every logged step's loss (log_every = 1), from the run's train.log."""
    found = {int(m[1]): float(m[2]) for m in STEP_LINE.finditer((run / "train.log").read_text())}
    assert found, "no step lines in train.log"
    return found


def test_synthetic_stage1_trains_reproducibly_and_resumes_without_writing_images(tmp_path) -> None:
    photos = clean_photos(tmp_path / "photos")
    before = _files(photos)
    run = train_daclip(_cfg(tmp_path, photos), ["test"], progress=False)
    assert _files(photos) == before  # nothing written (or touched) under the data folder
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(v) for v in losses.values())
    checkpoints = run / "checkpoints"
    assert {"latest.pt", "epoch_1.pt", "epoch_2.pt", "daclip_final.pt"} <= {
        p.name for p in checkpoints.glob("*.pt")
    }
    final = load_checkpoint(checkpoints / "latest.pt")
    assert (final["epoch"], final["step"]) == (2, 4)
    assert final["config"]["data"]["source"] == "synthetic"
    log = (run / "train.log").read_text()
    assert "6 clean photos" in log and "no caption" in log

    # The same seed: the same first-epoch losses (the draws are a function of the seed, not of time).
    again = train_daclip(_cfg(tmp_path, photos, **{"train.epochs": "1"}), progress=False)
    assert again != run
    assert _losses(again) == {1: losses[1], 2: losses[2]}

    # Resume from epoch 1 (copied elsewhere: a new run folder) reproduces the uninterrupted epoch 2.
    saved = tmp_path / "saved" / "epoch_1.pt"
    saved.parent.mkdir()
    saved.write_bytes((checkpoints / "epoch_1.pt").read_bytes())
    resumed = train_daclip(_cfg(tmp_path, photos, **{"experiment.resume": str(saved)}), progress=False)
    assert _losses(resumed) == {3: losses[3], 4: losses[4]}
    state = load_checkpoint(resumed / "checkpoints" / "latest.pt")
    for key, value in final["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=0, atol=1e-6, msg=key)
    assert _files(photos) == before


def test_validation_on_single_names_and_on_synthetic_mixtures(tmp_path) -> None:
    photos = clean_photos(tmp_path / "photos")
    held_out = clean_photos(tmp_path / "held_out", count=3)
    rows = [
        CaptionRow(str(p), "a small test picture", TYPES[i]) for i, p in enumerate(sorted(held_out.iterdir()))
    ]
    write_caption_csv(tmp_path / "val.csv", rows)
    extra = {
        "train.epochs": "1",
        "data.val_csv": str(tmp_path / "val.csv"),
        "data.val_clean_root": str(held_out),
        "data.val_samples": "5",
    }
    run = train_daclip(_cfg(tmp_path, photos, **extra), progress=False)
    log = (run / "train.log").read_text()
    assert "validation before training: CLIP" in log and "epoch 1: DA-CLIP validation accuracy" in log
    lines = [line for line in log.splitlines() if "synthetic multi-label validation (5 images" in line]
    assert len(lines) == 2 and all("macro F1" in line and "hazy" in line for line in lines)


def test_each_epoch_draws_new_degradations_and_ranks_draw_different_ones(tmp_path) -> None:
    photos = clean_photos(tmp_path / "photos")
    config = SynthesisConfig(types=list(TYPES))
    keyed = EpochKeyedCaptions(SyntheticCaptionDataset(photos, config, image_size=32, length=6), seed=3)

    def epoch_items(epoch: int, rank: int = 0, world: int = 1) -> dict[int, dict]:
        sampler = EpochKeySampler(
            torch.utils.data.DistributedSampler(keyed, world, rank, shuffle=True, seed=3, drop_last=True), 6
        )
        sampler.set_epoch(epoch)
        return {key % 6: keyed[key] for key in sampler}

    first, second = epoch_items(0), epoch_items(1)
    assert set(first) == set(second) == set(range(6))  # every photo once per epoch
    assert any(not torch.equal(first[i]["image"], second[i]["image"]) for i in range(6))
    again = epoch_items(0)  # a pure function of (seed, epoch, index)
    assert all(torch.equal(first[i]["image"], again[i]["image"]) for i in range(6))
    rank0, rank1 = epoch_items(1, 0, 2), epoch_items(1, 1, 2)
    assert not set(rank0) & set(rank1)  # ranks see different photos, hence different draws
    assert all(torch.equal(rank0[i]["image"], second[i]["image"]) for i in rank0)

    # CaptionCollate batches variable-length degradation lists and the loss label of every mixture.
    batch = CaptionCollate(make_tokenizer(_tiny_source()))([first[i] for i in range(6)])
    assert [len(names) for names in batch["degradations"]] == [
        len(first[i]["degradations"]) for i in range(6)
    ]
    assert batch["multi_hot"].shape == (6, len(TYPES))
    texts = keyed.dataset.degradation_texts
    for names, index in zip(batch["degradations"], batch["degradation_index"].tolist()):
        assert texts[index] == ", ".join(names)


def test_bad_synthesis_tables_are_one_line_config_errors_naming_the_key(tmp_path) -> None:
    photos = clean_photos(tmp_path / "photos", count=1)
    bad = {
        "data.synthesis.probabilities": "{rainy: -1}",
        "data.synthesis.max_types": "5",
        "data.synthesis.types": "[hazy, foggy]",
    }
    keys = {
        "data.synthesis.probabilities": "data.synthesis.probabilities.rainy",
        "data.synthesis.max_types": "data.synthesis.max_types",
        "data.synthesis.types": "data.synthesis.types",
    }
    for key, value in bad.items():
        with pytest.raises(ConfigError) as err:
            _cfg(tmp_path, photos, **{key: value})
        message = str(err.value)
        assert keys[key] in message and "\n" not in message, message
    with pytest.raises(ConfigError, match="unknown config key 'data.synthesis.probabilites'"):
        _cfg(tmp_path, photos, **{"data.synthesis.probabilites": "{rainy: 2}"})
    with pytest.raises(ConfigError, match="data.synthesis.types.*not in data.degradations"):
        _cfg(tmp_path, photos, **{"data.synthesis.types": "[hazy, noisy, shadowed]"})
    with pytest.raises(ConfigError, match="data.clean_root: required"):
        _cfg(tmp_path, photos, **{"data.clean_root": ""})
    # The paper-scale config loads (no data needed beyond the clean photos) and the default stays csv.
    paper = load_config(
        DaCLIPTrainConfig, ROOT / "configs/daclip_synthetic.yml", [f"data.clean_root={photos}"]
    )
    assert paper.data.source == "synthetic" and paper.model.clip_model == "ViT-L-14"
    assert DaCLIPTrainConfig().data.source == "csv"


# ----------------------------------------------------------------------------- stage 2 on the fly


def _ir_config(tmp_path: Path, photos: Path, *extra: str):
    from irsde.training.stage import IRTrainConfig

    settings = [
        f"experiment.root={tmp_path / 'runs'}",
        "experiment.name=ir-synthetic",
        "experiment.seed=5",
        "data.source=synthetic",
        "data.train_root=",
        "data.val_root=",
        f"data.clean_root={photos}",
        "data.samples_per_epoch=6",
        f"data.synthesis.types=[{', '.join(TYPES)}]",
        "data.patch_size=16",
        "model.nf=8",
        "model.ch_mult=[1, 2]",
        "train.batch_size=2",
        "train.total_steps=6",
        "train.save_every=3",
        "train.val_every=0",
        "train.log_every=1",
        *extra,
    ]
    return load_config(IRTrainConfig, ROOT / "configs/universal_ir_tiny.yml", settings)


def test_stage2_trains_on_the_fly_reproducibly_and_resumes_the_same_stream(tmp_path):
    from irsde.training.stage import loss_history, train

    photos = clean_photos(tmp_path / "photos")
    before = _files(photos)
    first = train(_ir_config(tmp_path, photos), progress=False)
    again = train(_ir_config(tmp_path, photos, "experiment.name=again"), progress=False)
    assert _files(photos) == before  # nothing written next to the photos
    losses = loss_history(first)
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(v) for _, v in losses)
    assert losses == loss_history(again)  # the same seed draws the same degradations
    other = train(_ir_config(tmp_path, photos, "experiment.name=other", "experiment.seed=6"), progress=False)
    assert loss_history(other) != losses  # another seed, another stream

    # Stopped after step 3 (mid-epoch: 3 batches per epoch of 6 samples) and resumed elsewhere.
    saved = tmp_path / "saved" / "step_0000003.pt"
    saved.parent.mkdir()
    saved.write_bytes((first / "checkpoints" / "step_0000003.pt").read_bytes())
    resumed = train(_ir_config(tmp_path, photos, "experiment.name=resumed", f"experiment.resume={saved}"))
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in losses if s > 3] == loss_history(resumed)


def test_stage2_synthetic_settings_are_one_line_errors(tmp_path):
    photos = clean_photos(tmp_path / "photos", count=1)
    with pytest.raises(ConfigError, match=r"data.synthesis.types: .*'foggy'"):
        _ir_config(tmp_path, photos, "data.synthesis.types=[foggy]")
    with pytest.raises(ConfigError, match=r"data.synthesis.probabilities.rainy"):
        _ir_config(tmp_path, photos, "data.synthesis.probabilities={rainy: -1}")
