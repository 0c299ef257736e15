"""Stage-2 training: the loss falls, resume is exact, checkpoints rebuild the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from daclip.utils.checkpoint import load_checkpoint
from daclip.utils.config import ConfigError, load_config
from data.io import write_image
from irsde.losses import MaximumLikelihoodLoss
from irsde.pipeline import load_restoration_checkpoint
from irsde.sde import IRSDE
from irsde.train import IRTrainConfig, build_unet, loss_history, train

DEGRADATIONS = ["noisy", "low-light"]


@pytest.fixture(scope="module")
def paired_root(tmp_path_factory):
    """A tiny paired set: smooth GT images, LQ = noisy or darkened GT."""
    root = tmp_path_factory.mktemp("paired")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 1)):
        for index in range(count):
            coarse = rng.random((4, 4, 3)).astype(np.float32)
            gt = np.kron(coarse, np.ones((8, 8, 1), dtype=np.float32))  # (32, 32, 3), blocky
            noisy = np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1)
            for name, lq in (("noisy", noisy), ("low-light", 0.3 * gt)):
                write_image(root / split / name / "GT" / f"{index}.png", gt)
                write_image(root / split / name / "LQ" / f"{index}.png", lq)
    return root


def _config(root, tmp_path, *overrides: str) -> IRTrainConfig:
    base = [
        f"experiment.root={tmp_path}",
        "experiment.name=tiny",
        "experiment.device=cpu",
        "daclip.checkpoint=",
        "model.use_degra_context=false",
        "model.use_image_context=false",
        "model.nf=8",
        "model.ch_mult=[1, 2]",
        "sde.T=10",
        f"data.train_root={root / 'train'}",
        f"data.val_root={root / 'val'}",
        f"data.degradations={DEGRADATIONS}",
        "data.patch_size=16",
        "data.num_workers=0",
        "train.batch_size=2",
        "train.lr=2e-3",
        "train.log_every=5",
        "train.val_steps=3",
        "train.ema_every=1",
    ]
    return load_config(IRTrainConfig, "configs/universal_ir_tiny.yml", [*base, *overrides])


def _fixed_batch_loss(weights: dict, cfg: IRTrainConfig, root) -> float:
    """The ML loss of a model on a fixed batch with fixed timesteps and noise."""
    from data.paired import PairedDataset

    dataset = PairedDataset(root / "train", DEGRADATIONS, mode="eval", clip_size=16)
    items = [dataset[i] for i in range(len(dataset))]
    gt = torch.stack([i["gt"] for i in items])
    lq = torch.stack([i["lq"] for i in items])
    unet = build_unet(cfg.model)
    unet.load_state_dict(weights)
    sde = IRSDE(cfg.sde.max_sigma, cfg.sde.T, cfg.sde.schedule, cfg.sde.eps)
    generator = torch.Generator().manual_seed(123)
    total = 0.0
    with torch.no_grad():
        for t_value in range(1, cfg.sde.T + 1):
            t = torch.full((gt.shape[0],), t_value)
            xt = sde.add_noise(gt, lq, t, torch.randn(gt.shape, generator=generator))
            total += MaximumLikelihoodLoss(sde)(unet(xt, lq, t), xt, gt, lq, t).item()
    return total / cfg.sde.T


def test_loss_falls_and_checkpoint_rebuilds(paired_root, tmp_path):
    cfg = _config(
        paired_root,
        tmp_path,
        "train.total_steps=80",
        "train.save_every=80",
        "train.val_every=80",
        "train.lr=5e-3",
        "train.lr_min=5e-3",  # constant: 80 steps of cosine decay barely move this tiny model
    )
    torch.manual_seed(cfg.experiment.seed)
    initial = build_unet(cfg.model).state_dict()  # train() seeds identically before building
    run_dir = train(cfg)
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert state["step"] == 80
    assert _fixed_batch_loss(state["model"], cfg, paired_root) < 0.6 * _fixed_batch_loss(
        initial, cfg, paired_root
    )
    for name in ("config.yaml", "command.txt", "train.log"):
        assert (run_dir / name).is_file()
    assert "validation PSNR" in (run_dir / "train.log").read_text()
    assert any((run_dir / "tensorboard").iterdir())

    loaded = load_restoration_checkpoint(run_dir / "checkpoints" / "latest.pt", use_ema=False)
    for key, value in loaded.unet.state_dict().items():
        assert torch.equal(value, state["model"][key])
    assert loaded.sde.T == 10 and loaded.source == "ours"


def test_resume_follows_the_uninterrupted_loss_sequence(paired_root, tmp_path):
    # 8 training pairs at batch 2 -> 4 batches per epoch: step 3 stops mid-epoch.
    common = ["train.total_steps=6", "train.save_every=3", "train.val_every=0"]
    straight = train(_config(paired_root, tmp_path, *common))
    stopped_at_3 = straight / "checkpoints" / "step_0000003.pt"  # what an interrupted run leaves
    resumed = train(
        _config(
            paired_root, tmp_path, *common, "experiment.name=resumed", f"experiment.resume={stopped_at_3}"
        )
    )
    expected = [(s, v) for s, v in loss_history(straight) if s > 3]
    got = loss_history(resumed)
    assert [s for s, _ in got] == [4, 5, 6]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6, abs=1e-7)
    final_straight = load_checkpoint(straight / "checkpoints" / "latest.pt")
    final_resumed = load_checkpoint(resumed / "checkpoints" / "latest.pt")
    for key, value in final_straight["ema"].items():
        torch.testing.assert_close(final_resumed["ema"][key], value, rtol=1e-5, atol=1e-7)


def test_context_without_daclip_fails_naming_the_key(paired_root, tmp_path):
    with pytest.raises(ConfigError, match="daclip.checkpoint"):
        _config(paired_root, tmp_path, "model.use_image_context=true")
    with pytest.raises(ConfigError, match=r"sde\.schedule: 'cosin' is not one of"):
        _config(paired_root, tmp_path, "sde.schedule=cosin")
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        _config(paired_root, tmp_path, "train.lrr=1")


def test_training_with_daclip_context_trains_the_conditioning_paths(
    paired_root, tmp_path, tiny_daclip_checkpoint
):
    cfg = _config(
        paired_root,
        tmp_path,
        f"daclip.checkpoint={tiny_daclip_checkpoint}",
        "model.use_degra_context=true",
        "model.use_image_context=true",
        "model.nf=16",
        "model.context_dim=32",
        "train.total_steps=3",
        "train.save_every=3",
        "train.val_every=3",
    )
    torch.manual_seed(cfg.experiment.seed)
    initial = build_unet(cfg.model).state_dict()
    run_dir = train(cfg)
    trained = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["model"]
    # The prompt module (degradation embedding) and the cross-attention (content embedding) learn;
    # proj_out starts at zero, so the cross-attention weights only move from the second step on.
    for key in ("text_mlp.0.weight", "prompt", "mid_attn.fn.fn.transformer_blocks.0.attn2.to_k.weight"):
        assert not torch.equal(trained[key], initial[key]), key
    assert "validation PSNR" in (run_dir / "train.log").read_text()
