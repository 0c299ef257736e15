"""Shared fixtures: tiny checkpoints and datasets written by the tests themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from daclip.engine.checkpoint import save_checkpoint
from daclip.engine.config import load_config, to_dict
from data.io import write_image

TEST_DEGRADATIONS = ["noisy", "low-light"]


def write_paired_set(root: Path, count: int = 2, size: int = 40, seed: int = 0) -> Path:
    """``root/<degradation>/{LQ,GT}/<i>.png`` for noisy and low-light versions of smooth images."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        coarse = rng.random((size // 8, size // 8, 3)).astype(np.float32)
        gt = np.kron(coarse, np.ones((8, 8, 1), dtype=np.float32))
        noisy = np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1)
        for name, lq in (("noisy", noisy), ("low-light", 0.3 * gt)):
            write_image(root / name / "GT" / f"img{index}.png", gt)
            write_image(root / name / "LQ" / f"img{index}.png", lq)
    return root


def write_tiny_ir_checkpoint(
    path: Path,
    *,
    daclip_checkpoint: str = "",
    context: bool = False,
    overrides: tuple[str, ...] = (),
    family: str = "irsde",
) -> Path:
    """A stage-2 checkpoint in our format holding a tiny random U-Net (T = 5), or with ``family="nafnet"``
    a tiny random NAFNet; ``overrides`` go to its config."""
    from irsde.inference.pipeline import IR_CHECKPOINT_FORMAT
    from irsde.models.families import build_model
    from irsde.training.stage import IRTrainConfig

    settings = [
        f"daclip.checkpoint={daclip_checkpoint}",
        f"model.use_degra_context={str(context).lower()}",
        f"model.use_image_context={str(context).lower()}",
        *(
            [f"model.nf={16 if context else 8}", "model.ch_mult=[1, 2]"]  # cross-attention: widths of 32k
            if family == "irsde"
            else [
                "model.family=nafnet",
                "model.width=8",
                "model.enc_blocks=[1]",
                "model.middle_blocks=1",
                "model.dec_blocks=[1]",
            ]  # fmt: skip
        ),
        "model.context_dim=32",
        "sde.T=5",
        "data.train_root=",
        "data.val_root=",
        *overrides,
    ]
    cfg = load_config(IRTrainConfig, None, settings)
    torch.manual_seed(0)
    unet = build_model(cfg.model)
    state = {"format": IR_CHECKPOINT_FORMAT, "model": unet.state_dict(), "ema": unet.state_dict(), "step": 0}
    save_checkpoint(path, {**state, "config": to_dict(cfg)})
    return path


def write_tiny_daclip_checkpoint(path: Path, **source_changes: Any) -> Path:
    """A full (self-contained) checkpoint of a tiny random DA-CLIP with non-zero control;
    ``source_changes`` replace fields of its recorded :class:`daclip.pretrained.ClipSource` (``views``, ...)."""
    from dataclasses import replace

    from daclip.pretrained import build_daclip
    from daclip.train import make_checkpoint
    from tests.test_daclip_model import TINY_CONFIG, TINY_NAME

    torch.manual_seed(0)
    model, source = build_daclip(TINY_NAME, "", TINY_CONFIG)
    with torch.no_grad():
        for linear in model.controller.zero_linears:
            linear.weight.normal_(0.0, 0.2)
    save_checkpoint(path, make_checkpoint(model, replace(source, **source_changes), full=True))
    return path


@pytest.fixture(scope="session")
def tiny_daclip_checkpoint(tmp_path_factory) -> Path:
    """A full (self-contained) checkpoint of a tiny random DA-CLIP with non-zero control."""
    return write_tiny_daclip_checkpoint(tmp_path_factory.mktemp("daclip") / "daclip_tiny.pt")


class CleanOrNoisyDaclip:
    """A stand-in DA-CLIP that knows the answer: images brighter than 0.5 are clean, the others noisy."""

    image_size, mean, std = 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def __call__(self, clip_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros(clip_images.shape[0], 32)
        return zeros, zeros

    def classify(self, clip_images: torch.Tensor, names: list[str]) -> torch.Tensor:
        bright = clip_images.mean(dim=(1, 2, 3)) > 0.5  # (B,)
        probs = torch.full((clip_images.shape[0], len(names)), 0.05)
        probs[bright, names.index("clean")] = 0.9
        probs[~bright, names.index("noisy")] = 0.9
        return probs / probs.sum(dim=1, keepdim=True)
