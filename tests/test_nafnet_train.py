"""NAFNet as a stage-2 family: trained by the one trainer, loaded, evaluated and restored like the U-Net."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from daclip.engine.checkpoint import load_checkpoint
from daclip.engine.config import ConfigError, load_config
from data.io import read_image, write_image
from irsde.evaluation.metrics import psnr
from irsde.inference.pipeline import RestorationPipeline, load_restoration_checkpoint
from irsde.models.nafnet import NAFNet
from irsde.training.losses import PixelLoss
from irsde.training.stage import IRTrainConfig, train
from tests.conftest import TEST_DEGRADATIONS, write_paired_set

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paired(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nafnet_data")
    write_paired_set(root / "train", count=3, size=32, seed=0)
    write_paired_set(root / "val", count=1, size=40, seed=1)
    return root


def _cfg(paired: Path, tmp_path: Path, *overrides: str) -> IRTrainConfig:
    settings = [
        f"experiment.root={tmp_path}",
        f"data.train_root={paired / 'train'}",
        f"data.val_root={paired / 'val'}",
        f"data.degradations={TEST_DEGRADATIONS}",
        "data.patch_size=16",
        "train.batch_size=2",
        "train.total_steps=60",
        "train.save_every=60",
        "train.val_every=60",
        "train.lr_min=1e-3",  # constant lr: 60 steps of cosine barely move a tiny model
        "train.warmup_steps=0",
        *overrides,
    ]
    return load_config(IRTrainConfig, ROOT / "configs/nafnet_daclip_tiny.yml", settings)


def _val_psnr_gain(checkpoint: Path, paired: Path, **kwargs) -> float:
    """Mean PSNR(output) - PSNR(input) over the validation pairs."""
    pipeline = RestorationPipeline.from_checkpoint(checkpoint, device="cpu", **kwargs)
    gains = []
    for name in TEST_DEGRADATIONS:
        lq = torch.from_numpy(read_image(paired / "val" / name / "LQ" / "img0.png")).permute(2, 0, 1)[None]
        gt = torch.from_numpy(read_image(paired / "val" / name / "GT" / "img0.png")).permute(2, 0, 1)[None]
        gains.append((psnr(pipeline(lq), gt) - psnr(lq, gt)).item())
    return sum(gains) / len(gains)


def test_the_one_trainer_trains_a_nafnet_that_restores(paired, tmp_path):
    run = train(
        _cfg(paired, tmp_path, "train.loss_kind=psnr", "train.total_steps=300", "train.save_every=300",
             "train.val_every=300", "train.ema_decay=0.9"),
        progress=False,
    )  # fmt: skip
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["config"]["model"]["family"] == "nafnet" and state["step"] == 300
    assert "validation PSNR" in (run / "train.log").read_text()

    loaded = load_restoration_checkpoint(run / "checkpoints" / "latest.pt")
    assert isinstance(loaded.model, NAFNet) and loaded.sde is None
    assert loaded.default_sampling() == ("one-pass", 1)
    for key, value in loaded.model.state_dict().items():  # the EMA weights, rebuilt from the file alone
        assert torch.equal(value, state["ema"][key])
    # 300 steps (7 s) on three pairs: the restorer beats doing nothing on unseen validation images.
    assert _val_psnr_gain(run / "checkpoints" / "latest.pt", paired) > 1.0


def test_nafnet_with_daclip_trains_and_restores_through_the_scripts(
    paired, tmp_path, tiny_daclip_checkpoint, capsys
):
    from scripts.restore import main as restore_main
    from scripts.test import main as test_main

    cfg = _cfg(
        paired,
        tmp_path,
        f"daclip.checkpoint={tiny_daclip_checkpoint}",
        "model.use_degra_context=true",
        "model.use_image_context=true",
        "model.context_dim=32",
        "train.total_steps=4",
        "train.save_every=4",
        "train.val_every=0",
    )
    checkpoint = train(cfg, progress=False) / "checkpoints" / "latest.pt"
    pipeline = RestorationPipeline.from_checkpoint(checkpoint, device="cpu")
    assert pipeline.one_pass and pipeline.nfe == 1 and pipeline.embedder is not None

    # An odd size, tiled into tiles smaller than the image: the output keeps the input's size.
    inputs = tmp_path / "photos"
    write_image(inputs / "odd.png", torch.rand(37, 29, 3).numpy())
    assert restore_main(["-i", str(inputs), "-o", str(tmp_path / "out"), "--checkpoint", str(checkpoint),
                         "--tile", "16", "--overlap", "4"]) == 0  # fmt: skip
    assert "a one-pass restorer: 1 network evaluation(s) per image" in capsys.readouterr().out
    assert read_image(tmp_path / "out" / "odd.png").shape == (37, 29, 3)

    args = ["-c", str(ROOT / "configs/test.yml"), f"model.checkpoint={checkpoint}", f"data.root={paired / 'val'}",
            f"data.degradations={TEST_DEGRADATIONS}", f"output_root={tmp_path / 'results'}", "metrics.lpips=false",
            "metrics.fid=false", "device=cpu"]  # fmt: skip
    assert test_main(args) == 0
    report = (tmp_path / "results" / "universal-ir" / "results.md").read_text()
    assert "A one-pass restorer (nafnet): 1 network evaluation(s) per image." in report


def test_family_specific_settings_are_one_line_errors(paired, tmp_path):
    with pytest.raises(ConfigError, match=r"train.loss: 'ml' is an IR-SDE loss; a one-pass restorer"):
        _cfg(paired, tmp_path, "train.loss=ml")
    with pytest.raises(ConfigError, match=r"model.family: 'unet' is not one of 'irsde', 'nafnet'"):
        _cfg(paired, tmp_path, "model.family=unet")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.nf'"):
        _cfg(paired, tmp_path, "model.nf=8")  # a U-Net setting in a NAFNet section


def test_the_psnr_loss_is_minus_the_mean_psnr():
    torch.manual_seed(0)
    gt = torch.rand(3, 3, 8, 8)
    out = (gt + 0.05 * torch.randn_like(gt)).clamp(0, 1)
    assert PixelLoss("psnr")(out, gt).item() == pytest.approx(-psnr(out, gt).mean().item(), abs=1e-4)
    assert PixelLoss("l1")(out, gt).item() == pytest.approx((out - gt).abs().mean().item(), rel=1e-6)
