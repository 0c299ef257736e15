"""A DA-CLIP that learned 'clean' (data.clean_fraction): its vocabulary reaches the restoring pipeline, and
restore.py (predictions.csv / .json, contact sheet) and the web app say 'no degradation found'."""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from daclip.engine.checkpoint import save_checkpoint
from daclip.inference import FrozenDaCLIP, load_frozen_daclip
from data import CLEAN, DEFAULT_DEGRADATIONS
from data.io import write_image
from irsde.apps.app import AppRestorer
from irsde.inference.pipeline import RestorationPipeline
from tests.conftest import write_tiny_ir_checkpoint

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = (*DEFAULT_DEGRADATIONS, CLEAN)


@pytest.fixture(scope="module")
def clean_aware(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random DA-CLIP recorded as trained with 'clean' and 2 x 2 test views, and a restorer on it."""
    from daclip.pretrained import build_daclip
    from daclip.train import make_checkpoint
    from tests.test_daclip_model import TINY_CONFIG, TINY_NAME

    torch.manual_seed(0)
    model, source = build_daclip(TINY_NAME, "", TINY_CONFIG)
    folder = tmp_path_factory.mktemp("clean_aware")
    daclip = folder / "daclip.pt"
    source = replace(source, views=2, vocabulary=VOCABULARY)
    save_checkpoint(daclip, make_checkpoint(model, source, full=True))
    restorer = write_tiny_ir_checkpoint(folder / "ir.pt", daclip_checkpoint=str(daclip), context=True)
    return daclip, restorer


def _always_clean(self: FrozenDaCLIP, images: torch.Tensor, names) -> torch.Tensor:
    probs = torch.full((images.shape[0], len(names)), 0.01)
    probs[:, list(names).index(CLEAN)] = 1.0 - 0.01 * (len(names) - 1)
    return probs


def test_the_vocabulary_and_views_travel_with_the_checkpoint(clean_aware) -> None:
    daclip_path, restorer = clean_aware
    daclip = load_frozen_daclip(daclip_path)
    assert daclip.vocabulary == VOCABULARY and daclip.views == 2
    pipeline = RestorationPipeline.from_checkpoint(restorer, device="cpu")
    assert pipeline.degradations == VOCABULARY  # the restorer's ten, then the DA-CLIP's 'clean'
    lq = torch.rand(2, 3, 40, 52)
    probs = pipeline.class_probabilities(lq)  # from a 2 x 2 grid of native crops of each image
    assert probs.shape == (2, len(VOCABULARY)) and torch.allclose(probs.sum(dim=1), torch.ones(2))
    grid = daclip.classify_images(lq, VOCABULARY)
    assert torch.allclose(grid, probs)
    # The paper's DA-CLIP (no vocabulary recorded) keeps the ten names and the whole-image input.
    assert load_frozen_daclip(daclip_path).classifier(DEFAULT_DEGRADATIONS).names == DEFAULT_DEGRADATIONS


def test_restore_and_app_say_no_degradation_found(clean_aware, tmp_path, monkeypatch, capsys) -> None:
    _, restorer = clean_aware
    monkeypatch.setattr(FrozenDaCLIP, "classify_images", _always_clean)
    inputs = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_image(inputs / f"{name}.png", rng.random((36, 44, 3)).astype(np.float32))
    spec = importlib.util.spec_from_file_location("_restore", ROOT / "scripts" / "restore.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "restored"
    argv = [
        "-i",
        str(inputs),
        "-o",
        str(out),
        "--checkpoint",
        str(restorer),
        "--device",
        "cpu",
        "--steps",
        "1",
    ]
    assert script.main(argv) == 0
    assert "no degradation found" in capsys.readouterr().out
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["degradation"], r["degradations"]) for r in rows] == [(CLEAN, "no degradation found")] * 2
    images = json.loads((out / "predictions.json").read_text())["images"]
    assert [entry["degradations"] for entry in images] == [[], []]
    assert all(max(entry["probabilities"], key=entry["probabilities"].get) == CLEAN for entry in images)

    pipeline = RestorationPipeline.from_checkpoint(restorer, device="cpu")
    _, top, status = AppRestorer(pipeline, output_dir=tmp_path / "app").analyse(inputs / "a.png")
    assert top[0][0] == CLEAN and "no degradation found" in status
