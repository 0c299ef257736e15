"""The restorer must restore: a short stage-2 run on a trivially learnable degradation beats its input.

The degradation is a fixed brightness drop (LQ = 0.5·GT) on smooth images the test writes. The run goes
through the real trainer (``irsde.training.stage.train``), the checkpoint is reloaded the way ``test.py`` and
``restore.py`` load it (the parametrisation comes from the file), and held-out images are restored with
the deterministic solver and with the paper's posterior sampler.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from daclip.engine.config import load_config
from data.io import write_image
from irsde.evaluation.metrics import psnr
from irsde.inference.pipeline import RestorationPipeline, load_restoration_checkpoint
from irsde.training.stage import IRTrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _smooth_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    coarse = torch.from_numpy(rng.random((1, 3, 4, 4)).astype(np.float32))
    image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return image[0].permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def darkened(tmp_path_factory):
    root = tmp_path_factory.mktemp("darkened")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for index in range(count):
            gt = _smooth_image(rng)
            write_image(root / split / "low-light" / "GT" / f"{index}.png", gt)
            write_image(root / split / "low-light" / "LQ" / f"{index}.png", 0.5 * gt)
    return root


def _config(root: Path, tmp_path: Path, *overrides: str) -> IRTrainConfig:
    """A plain (no DA-CLIP) tiny restorer on the darkened set, paper-style uniform timesteps."""
    return load_config(
        IRTrainConfig,
        ROOT / "configs/universal_ir_tiny.yml",
        [
            f"experiment.root={tmp_path}",
            "experiment.device=cpu",
            "daclip.checkpoint=",
            "model.use_degra_context=false",
            "model.use_image_context=false",
            "model.nf=8",
            "model.ch_mult=[1, 2]",
            "sde.T=10",
            "sde.max_sigma=50",
            f"data.train_root={root / 'train'}",
            f"data.val_root={root / 'val'}",
            "data.degradations=[low-light]",
            "data.patch_size=16",
            "data.num_workers=0",
            "train.batch_size=4",
            "train.loss_kind=l1",
            "train.warmup_steps=0",
            "train.grad_clip=0",
            "train.timestep_grid=null",
            *overrides,
        ],
    )


@pytest.mark.parametrize("prediction", ["residual", "x0"])
def test_short_training_beats_the_input_on_a_brightness_drop(darkened, tmp_path, prediction):
    torch.manual_seed(0)
    cfg = _config(
        darkened,
        tmp_path,
        "experiment.name=dark",
        f"model.prediction={prediction}",
        "train.total_steps=150",
        "train.lr=3e-3",
        "train.lr_min=1e-4",
        "train.ema_every=1",
        "train.ema_decay=0.9",
        "train.val_every=0",
        "train.save_every=150",
    )
    run = train(cfg)
    loaded = load_restoration_checkpoint(run / "checkpoints" / "latest.pt")
    assert loaded.model.prediction == prediction  # recorded in the checkpoint, not repeated by the user
    from data.paired import PairedDataset

    val = PairedDataset(darkened / "val", ["low-light"], mode="eval")
    lq = torch.stack([val[i]["lq"] for i in range(len(val))])
    gt = torch.stack([val[i]["gt"] for i in range(len(val))])
    input_psnr = psnr(lq, gt).mean().item()
    for sampler, steps in (("mr", 1), ("mr", 4), ("posterior", 4)):
        pipeline = RestorationPipeline(loaded.model, loaded.sde, sampler=sampler, num_steps=steps)
        out = pipeline(lq, generator=torch.Generator().manual_seed(0))
        gain = psnr(out, gt).mean().item() - input_psnr
        assert gain > 3.0, f"{prediction}, {sampler} at {steps} NFE: PSNR gain only {gain:.2f} dB"


def test_timestep_grid_trains_only_where_the_sampler_evaluates(darkened, tmp_path, monkeypatch):
    from irsde.models.unet import ConditionalUNet

    seen: list[int] = []
    original = ConditionalUNet.forward

    def recording(self, x, mu, time, *args, **kwargs):
        seen.extend(torch.as_tensor(time).reshape(-1).tolist())
        return original(self, x, mu, time, *args, **kwargs)

    monkeypatch.setattr(ConditionalUNet, "forward", recording)
    cfg = _config(
        darkened,
        tmp_path,
        "train.total_steps=10",
        "train.val_every=0",
        "train.save_every=10",
        "train.timestep_grid=3",
    )
    train(cfg)
    assert len(seen) == 40 and set(seen) == {10, 6, 1}  # make_timesteps(10, 3): the 3-NFE grid
