"""Stage-2 training: the loss falls, resume is exact, checkpoints rebuild the model."""

from __future__ import annotations

import errno
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from daclip.engine.checkpoint import NonFiniteWeightsError, load_checkpoint
from daclip.engine.config import ConfigError, load_config
from daclip.engine.runtime import NonFiniteLossError
from data.io import read_image, write_image
from irsde.diffusion.sde import IRSDE
from irsde.inference.pipeline import load_restoration_checkpoint
from irsde.models.families import build_model
from irsde.training.losses import MaximumLikelihoodLoss
from irsde.training.stage import IRTrainConfig, loss_history, train

DEGRADATIONS = ["noisy", "low-light"]
ROOT = Path(__file__).resolve().parents[1]


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


def _overrides(root, tmp_path) -> list[str]:
    return [
        f"experiment.root={tmp_path}",
        "experiment.name=tiny",
        "experiment.device=cpu",
        "daclip.checkpoint=",
        "model.use_degra_context=false",
        "model.use_image_context=false",
        "model.nf=8",
        "model.ch_mult=[1, 2]",
        # The paper's parametrisation and training (the tiny demo config trains a residual at t = T only).
        "model.prediction=noise",
        "train.loss_kind=l1",
        "train.timestep_grid=null",
        "train.grad_clip=0",
        "train.warmup_steps=0",
        "sde.max_sigma=50",
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


def _config(root, tmp_path, *overrides: str) -> IRTrainConfig:
    return load_config(
        IRTrainConfig, ROOT / "configs/universal_ir_tiny.yml", [*_overrides(root, tmp_path), *overrides]
    )


def _fixed_batch_loss(weights: dict, cfg: IRTrainConfig, root) -> float:
    """The ML loss of a model on a fixed batch with fixed timesteps and noise."""
    from data.paired import PairedDataset

    dataset = PairedDataset(root / "train", DEGRADATIONS, mode="eval", clip_size=16)
    items = [dataset[i] for i in range(len(dataset))]
    gt = torch.stack([i["gt"] for i in items])
    lq = torch.stack([i["lq"] for i in items])
    unet = build_model(cfg.model)
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
    initial = build_model(cfg.model).state_dict()  # train() seeds identically before building
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
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state["model"][key])
    assert loaded.sde.T == 10 and loaded.source == "ours"


def test_resume_follows_the_uninterrupted_loss_sequence(paired_root, tmp_path):
    # 8 training pairs at batch 2 -> 4 batches per epoch: step 3 stops mid-epoch. The loss is logged
    # (as the mean since the last log line) every step, so each step's loss can be compared.
    common = ["train.total_steps=6", "train.save_every=3", "train.val_every=0", "train.log_every=1"]
    straight = train(_config(paired_root, tmp_path, *common))
    # What an interrupted run leaves, copied out of its run folder: the resumed run gets a new folder.
    stopped_at_3 = tmp_path / "saved" / "step_0000003.pt"
    stopped_at_3.parent.mkdir()
    stopped_at_3.write_bytes((straight / "checkpoints" / "step_0000003.pt").read_bytes())
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
    for part in ("model", "ema"):  # the trained weights and their average
        assert final_resumed[part].keys() == final_straight[part].keys()
        for key, value in final_straight[part].items():
            torch.testing.assert_close(final_resumed[part][key], value, rtol=1e-5, atol=1e-7)
    # The optimiser's moments and step counts, and the schedule, continue where they stopped.
    optim_straight, optim_resumed = final_straight["optimizer"], final_resumed["optimizer"]
    assert optim_resumed["param_groups"] == optim_straight["param_groups"]
    assert optim_resumed["state"].keys() == optim_straight["state"].keys()
    for index, state in optim_straight["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(optim_resumed["state"][index][name], value, rtol=1e-5, atol=1e-7)
    assert final_resumed["scheduler"] == final_straight["scheduler"]


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
    initial = build_model(cfg.model).state_dict()
    run_dir = train(cfg)
    trained = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["model"]
    # The prompt module (degradation embedding) and the cross-attention (content embedding) learn;
    # proj_out starts at zero, so the cross-attention weights only move from the second step on.
    for key in ("text_mlp.0.weight", "prompt", "mid_attn.fn.fn.transformer_blocks.0.attn2.to_k.weight"):
        assert not torch.equal(trained[key], initial[key]), key
    assert "validation PSNR" in (run_dir / "train.log").read_text()


# ----------------------------------------------------------------------------- lifecycle: NaN, resume, saves


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script_args(root, tmp_path, *overrides: str) -> list[str]:
    """The command line of scripts/train_ir.py with the settings of :func:`_config`."""
    return ["-c", str(ROOT / "configs/universal_ir_tiny.yml"), *_overrides(root, tmp_path), *overrides]


def _error_lines(stderr: str) -> list[str]:
    """The error lines of a script's stderr (the training progress bar writes there too)."""
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _finite_checkpoints(folder: Path) -> int:
    count = 0
    for path in folder.rglob("*.pt"):
        state = load_checkpoint(path)
        for part in ("model", "ema"):
            for key, value in state[part].items():
                assert torch.isfinite(value).all(), f"{path}: {part} {key} is not finite"
        count += 1
    return count


def test_a_nan_loss_stops_training_naming_the_step(paired_root, tmp_path):
    overrides = ["train.lr=1e9", "train.lr_min=1e9", "train.total_steps=8", "train.save_every=1"]
    cfg = _config(paired_root, tmp_path, *overrides, "train.val_every=0")
    with pytest.raises(NonFiniteLossError, match=r"^step (\d+): the training loss is (nan|inf)") as info:
        train(cfg)
    bad_step = int(str(info.value).split(":")[0].split()[1])
    run = tmp_path / "tiny"
    # Every checkpoint on disk is finite, and none was written for the bad step or after it.
    assert _finite_checkpoints(run) >= 1
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] < bad_step
    assert not (run / "checkpoints" / f"step_{bad_step:07d}.pt").exists()


def test_non_finite_weights_are_never_written(paired_root, tmp_path, monkeypatch):
    """A finite loss with weights gone NaN (here the EMA): the save refuses, naming file and tensor."""
    import irsde.training.stage

    def nan_ema(ema, model, decay):
        with torch.no_grad():
            next(ema.parameters()).fill_(float("nan"))

    monkeypatch.setattr(irsde.training.stage, "update_ema", nan_ema)
    cfg = _config(paired_root, tmp_path, "train.total_steps=2", "train.save_every=1", "train.val_every=0")
    with pytest.raises(NonFiniteWeightsError, match=r"not writing checkpoint .*step_0000001\.pt: ema\["):
        train(cfg)
    assert list((tmp_path / "tiny" / "checkpoints").iterdir()) == []


def test_skipped_nonfinite_steps_make_no_update(paired_root, tmp_path, monkeypatch):
    import irsde.training.stage

    real_build_loss = irsde.training.stage.build_loss
    calls = {"n": 0}

    def nan_at_second_step(*args, **kwargs):
        loss_fn = real_build_loss(*args, **kwargs)

        def wrapped(*a, **k):
            calls["n"] += 1
            loss = loss_fn(*a, **k)
            return loss * float("nan") if calls["n"] == 2 else loss

        return wrapped

    monkeypatch.setattr(irsde.training.stage, "build_loss", nan_at_second_step)
    common = ["train.total_steps=3", "train.save_every=1", "train.val_every=0"]
    run = train(_config(paired_root, tmp_path, *common, "train.max_nonfinite_steps=1"))
    assert "step 2: the loss is nan; update skipped" in (run / "train.log").read_text()
    one, two = (load_checkpoint(run / "checkpoints" / f"step_000000{i}.pt") for i in (1, 2))
    for key, value in one["model"].items():
        assert torch.equal(two["model"][key], value), key  # the skipped step changed no weight
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 3
    calls["n"] = 0
    with pytest.raises(NonFiniteLossError, match="^step 2:"):  # the default: stop at the first
        train(_config(paired_root, tmp_path, *common))


def test_explicit_resume_continues_in_the_checkpoints_run_never_a_third_one(paired_root, tmp_path):
    common = ["train.save_every=1", "train.val_every=0"]
    a = train(_config(paired_root, tmp_path, *common, "experiment.name=a", "train.total_steps=2"))
    b = train(_config(paired_root, tmp_path, *common, "experiment.name=b", "train.total_steps=1"))
    b_files = {p: p.read_bytes() for p in b.rglob("*") if p.is_file()}
    resumed = train(
        _config(
            paired_root,
            tmp_path,
            *common,
            "experiment.name=b",
            f"experiment.resume={a / 'checkpoints' / 'step_0000001.pt'}",
            "train.total_steps=3",
        )
    )
    assert resumed == a
    assert load_checkpoint(a / "checkpoints" / "latest.pt")["step"] == 3
    assert {p: p.read_bytes() for p in b.rglob("*") if p.is_file()} == b_files  # b untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["a", "b"]


def test_auto_resume_finds_the_newest_run_of_the_name(paired_root, tmp_path, monkeypatch):
    import daclip.engine.lifecycle

    (tmp_path / "tiny").mkdir()  # a start killed before its first checkpoint
    (tmp_path / "tiny" / "config.yaml").write_text("killed: true\n")
    common = ["experiment.resume=auto", "train.save_every=1", "train.val_every=0", "train.keep_last=1"]
    first = train(_config(paired_root, tmp_path, *common, "train.total_steps=2"))
    assert first.name == "tiny_1"

    class Clock:  # one second per call: steps/s = steps of this process / seconds
        now = 0.0

        def perf_counter(self):
            self.now += 1.0
            return self.now

    monkeypatch.setattr(daclip.engine.lifecycle, "time", Clock())
    again = train(_config(paired_root, tmp_path, *common, "train.total_steps=6", "train.log_every=6"))
    assert again == first and not (tmp_path / "tiny_2").exists()
    log = (first / "train.log").read_text()
    assert "resumed from" in log and "step_0000002" not in log.split("resumed from")[1].split("\n")[0]
    assert "(4.00 steps/s)" in log  # 4 steps in one (fake) second, not the 6 of the whole run
    assert load_checkpoint(first / "checkpoints" / "latest.pt")["step"] == 6
    assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["latest.pt", "step_0000006.pt"]


def _copy_root(paired_root, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(paired_root, tmp_path / "data"))


def test_bad_validation_pairs_fail_at_start_up_without_a_run_folder(paired_root, tmp_path):
    from data.io import ImageReadError

    root = _copy_root(paired_root, tmp_path)
    runs = tmp_path / "runs"
    lq = root / "val" / "noisy" / "LQ" / "0.png"
    good = lq.read_bytes()
    lq.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match=r"validation set .*noisy/LQ/0\.png"):
        train(_config(root, runs, "train.total_steps=2", "train.val_every=2"))
    lq.write_bytes(good)
    write_image(root / "val" / "low-light" / "GT" / "0.png", np.zeros((24, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"LQ and GT sizes differ: .*low-light/LQ/0\.png is 32x32"):
        train(_config(root, runs, "train.total_steps=2", "train.val_every=2"))
    assert not runs.exists()


def test_the_checkpoint_is_saved_before_validation_at_the_same_step(paired_root, tmp_path):
    from data.io import ImageReadError

    root = _copy_root(paired_root, tmp_path)
    gt = root / "val" / "noisy" / "GT" / "0.png"
    gt.write_bytes(gt.read_bytes()[:120])  # the header reads; the pixels are cut off
    cfg = _config(root, tmp_path / "runs", "train.total_steps=4", "train.val_every=2", "train.save_every=2")
    with pytest.raises(ImageReadError, match=r"noisy/GT/0\.png"):
        train(cfg)
    assert load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoints" / "latest.pt")["step"] == 2


def test_disk_full_is_one_line_and_keeps_the_previous_checkpoint(paired_root, tmp_path, monkeypatch, capsys):
    real_save = torch.save
    calls = {"n": 0}

    def full_after_two(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # step_0000001.pt and latest.pt fit; step_0000002.pt does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_after_two)
    code = _script("train_ir").main(
        _script_args(paired_root, tmp_path, "train.total_steps=3", "train.save_every=1", "train.val_every=0")
    )
    monkeypatch.setattr(torch, "save", real_save)
    (err,) = _error_lines(capsys.readouterr().err)
    assert code == 2 and "step_0000002.pt" in err and "No space left on device" in err
    checkpoints = tmp_path / "tiny" / "checkpoints"
    assert load_checkpoint(checkpoints / "latest.pt")["step"] == 1
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest.pt", "step_0000001.pt"]


def test_wrong_checkpoint_kinds_are_one_line_and_leave_no_folder(
    paired_root, tmp_path, tiny_daclip_checkpoint, capsys
):
    from tests.conftest import write_tiny_ir_checkpoint

    runs = tmp_path / "runs"
    ir_only = write_tiny_ir_checkpoint(tmp_path / "ir.pt")  # restoration weights, no training state
    cases = [
        (f"experiment.resume={tiny_daclip_checkpoint}", "is a DA-CLIP (stage-1) checkpoint, not a stage-2"),
        (f"experiment.resume={ir_only}", "without the training state"),
        (f"daclip.checkpoint={ir_only}", "ir.pt is a restoration (stage-2) checkpoint, not a DA-CLIP"),
    ]
    for override, expected in cases:
        code = _script("train_ir").main(_script_args(paired_root, runs, override, "train.total_steps=1"))
        (err,) = _error_lines(capsys.readouterr().err)
        assert code == 2 and expected in err, err
    assert not runs.exists()


def test_the_daclip_weights_are_recorded_by_absolute_path_and_content(
    paired_root, tmp_path, tiny_daclip_checkpoint, monkeypatch, capsys
):
    import hashlib
    import shutil

    from daclip.engine.errors import UserError
    from irsde.evaluation.evaluate import TestConfig, evaluate

    weights = tmp_path / "weights" / "daclip.pt"
    weights.parent.mkdir()
    shutil.copy(tiny_daclip_checkpoint, weights)
    monkeypatch.chdir(tmp_path)
    cfg = _config(
        paired_root,
        tmp_path / "runs",
        "daclip.checkpoint=weights/daclip.pt",  # relative to where training runs
        "model.use_degra_context=true",
        "model.use_image_context=true",
        "model.nf=16",
        "model.context_dim=32",
        "train.total_steps=1",
        "train.save_every=1",
        "train.val_every=0",
    )
    ckpt = train(cfg) / "checkpoints" / "latest.pt"
    record = load_checkpoint(ckpt)["daclip"]
    assert record["path"] == str(weights.resolve())
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "weights").mkdir()
    (elsewhere / "weights" / "daclip.pt").write_bytes(b"another file at the same relative path")
    monkeypatch.chdir(elsewhere)
    loaded = load_restoration_checkpoint(ckpt)
    assert loaded.daclip_weights() == str(weights.resolve())  # not ./weights/daclip.pt
    assert loaded.daclip_weights("mine.pt") == "mine.pt"  # an explicit choice wins

    image = tmp_path / "in.png"
    write_image(image, np.full((16, 16, 3), 0.5, np.float32))
    weights.write_bytes(weights.read_bytes() + b"changed")
    capsys.readouterr()
    code = _script("restore").main(["-i", str(image), "-o", str(tmp_path / "out"), "--checkpoint", str(ckpt)])
    (err,) = _error_lines(capsys.readouterr().err)
    assert code == 2 and "sha256" in err and "--daclip" in err and str(weights.resolve()) in err
    weights.unlink()
    with pytest.raises(UserError, match=r"do not exist here; point model\.daclip_checkpoint at that file"):
        evaluate(
            load_config(
                TestConfig,
                None,
                [
                    f"model.checkpoint={ckpt}",
                    f"data.root={paired_root / 'val'}",
                    f"data.degradations={DEGRADATIONS}",
                    "device=cpu",
                ],
            ),
            log=lambda _: None,
        )

    # A checkpoint written before the fingerprint existed still loads, with its recorded path.
    old = write_tiny_ir_checkpoint_with(tmp_path / "old.pt", str(tiny_daclip_checkpoint))
    assert load_restoration_checkpoint(old).daclip_weights() == str(tiny_daclip_checkpoint)


def write_tiny_ir_checkpoint_with(path: Path, daclip_checkpoint: str) -> Path:
    from tests.conftest import write_tiny_ir_checkpoint

    return write_tiny_ir_checkpoint(path, daclip_checkpoint=daclip_checkpoint, context=True)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / torch.mean((a - b) ** 2)))


def _stack(folder: Path) -> torch.Tensor:
    """The images of ``folder`` (sorted by name) as a ``(N, 3, H, W)`` batch."""
    return torch.stack([torch.from_numpy(read_image(p)).permute(2, 0, 1) for p in sorted(folder.iterdir())])


def _tiny_demo_recipe(tmp_path: Path, name: str, train_root: Path, degradation: str, *overrides: str):
    """The demo's IR-SDE recipe (residual, t = T, mr at 1 NFE) at a width that trains in seconds: 300
    steps of batch 4 on 16-px patches of ``train_root``'s one ``degradation``, no validation."""
    return load_config(
        IRTrainConfig,
        ROOT / "configs/universal_ir_tiny.yml",
        [
            f"experiment.root={tmp_path / 'runs'}",
            f"experiment.name={name}",
            "model.nf=8",
            "model.ch_mult=[1, 2]",
            f"data.train_root={train_root}",
            "data.val_root=",
            f"data.degradations=[{degradation}]",
            "data.patch_size=16",
            "train.batch_size=4",
            "train.total_steps=300",
            "train.warmup_steps=0",
            "train.lr=3e-3",
            "train.betas=[0.9, 0.99]",  # the optimiser these tests were measured with (not the demo's)
            "train.ema_decay=0.9",
            "train.val_every=0",
            "train.save_every=300",
            *overrides,
        ],
    )


def _write_low_light_set(root: Path, count: int, seed: int) -> Path:
    """Blocky 32-px photos in [0.4, 1] and their low-light versions (0.3 x): told apart by brightness."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        gt = np.kron(0.4 + 0.6 * rng.random((4, 4, 3)), np.ones((8, 8, 1))).astype(np.float32)
        write_image(root / "low-light" / "GT" / f"{index}.png", gt)
        write_image(root / "low-light" / "LQ" / f"{index}.png", 0.3 * gt)
    return root


def test_clean_pairs_teach_the_restorer_to_leave_clean_input_alone(tmp_path):
    """Low light (LQ = 0.3 GT) only: without clean pairs the restorer brightens a clean photo too;
    with data.clean_fraction it gives the clean photo back and still restores the dark one."""
    from irsde.inference.pipeline import RestorationPipeline

    root = _write_low_light_set(tmp_path / "pairs", count=8, seed=1)
    val = _write_low_light_set(tmp_path / "val", count=3, seed=2)
    lq, gt = _stack(val / "low-light" / "LQ"), _stack(val / "low-light" / "GT")
    results = {}
    for fraction in (0.0, 0.4):
        cfg = _tiny_demo_recipe(
            tmp_path, f"clean{fraction}", root, "low-light", f"data.clean_fraction={fraction}"
        )
        run_dir = train(cfg)
        pipeline = RestorationPipeline.from_checkpoint(run_dir / "checkpoints" / "latest.pt", device="cpu")
        with torch.no_grad():
            results[fraction] = (_psnr(pipeline(gt), gt), _psnr(pipeline(lq), gt))
    input_psnr = _psnr(lq, gt)
    (clean_without, _), (clean_with, restored_with) = results[0.0], results[0.4]
    # Measured (2-core CPU): clean 35.9 dB with clean pairs; low light 6.0 -> 18.4 dB.
    assert clean_with >= 32.0, results  # a clean photo comes back (nearly) unchanged
    assert clean_without < clean_with - 10.0, results  # and that is the clean pairs' doing
    assert restored_with > input_psnr + 8.0, (results, input_psnr)  # low light is still restored


class HazeOracle(torch.nn.Module):
    """DA-CLIP's stand-in: one embedding for "hazy" (bright images, mean > 0.62), another for "clean";
    ``always_hazy`` misreads every image as hazy (as the tiny DA-CLIP does on bright, low-contrast photos)."""

    image_size, mean, std, views = 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1
    WIDTH = 32  # the tiny configs' context_dim

    def __init__(self, always_hazy: bool = False) -> None:
        super().__init__()
        self.always_hazy = always_hazy

    def forward(self, clip_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hazy = (clip_images.mean(dim=(1, 2, 3)) > 0.62) | self.always_hazy  # (B,)
        codes = torch.zeros(clip_images.shape[0], self.WIDTH)
        codes[hazy, 0] = 3.0
        codes[~hazy, 1] = 3.0
        return codes, codes


def _write_hazy_set(root: Path, count: int, seed: int) -> Path:
    """Blocky 32-px photos in [0, 1] and their hazy versions (halfway to white): bright, low contrast."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        gt = np.kron(rng.random((4, 4, 3)), np.ones((8, 8, 1))).astype(np.float32)
        write_image(root / "hazy" / "GT" / f"{index}.png", gt)
        write_image(root / "hazy" / "LQ" / f"{index}.png", 0.5 * gt + 0.5)
    return root


def test_clean_pairs_on_a_wrong_answer_teach_the_restorer_to_give_a_misread_clean_photo_back(
    tmp_path, monkeypatch, tiny_daclip_checkpoint
):
    """train.clean_context_shuffle through the real trainer, with a stand-in DA-CLIP that knows haze in
    training and misreads a clean photo as hazy at test time."""
    from irsde.inference.pipeline import RestorationPipeline
    from irsde.training import stage as stage_module

    root = _write_hazy_set(tmp_path / "pairs", count=8, seed=1)
    val = _write_hazy_set(tmp_path / "val", count=4, seed=2)
    lq, gt = _stack(val / "hazy" / "LQ"), _stack(val / "hazy" / "GT")
    monkeypatch.setattr(stage_module, "build_embedder", lambda section, device: HazeOracle())
    results = {}
    for share in (0.0, 1.0):
        cfg = _tiny_demo_recipe(
            tmp_path,
            f"share{share}",
            root,
            "hazy",
            f"daclip.checkpoint={tiny_daclip_checkpoint}",  # recorded; the oracle answers instead
            "model.use_degra_context=true",
            "data.clean_fraction=0.25",
            f"train.clean_context_shuffle={share}",
        )
        run_dir = train(cfg)
        loaded = load_restoration_checkpoint(run_dir / "checkpoints" / "latest.pt")
        outputs = {}
        for name, embedder in (("right", HazeOracle()), ("misread", HazeOracle(always_hazy=True))):
            pipeline = RestorationPipeline(loaded.model, loaded.sde, embedder, sampler="mr", num_steps=1)
            with torch.no_grad():
                outputs[name] = (_psnr(pipeline(gt), gt), _psnr(pipeline(lq), gt))
        results[share] = outputs
    input_psnr = _psnr(lq, gt)  # 10.8 dB
    # Measured (2-core CPU), clean / hazy PSNR against the clean photo:
    #   share 0: DA-CLIP right 42.1 / 17.4, misread 10.7 / 17.3 (the clean photo is "dehazed" to ruin);
    #   share 1: right 37.8 / 12.8, misread 37.9 / 12.7 (given back; dehazing now needs the image's word).
    without, with_ = results[0.0], results[1.0]
    assert without["misread"][0] < 20.0, results  # the failure the switch is for
    assert with_["misread"][0] >= 33.0, results  # a misread clean photo comes back
    assert with_["right"][0] >= 33.0, results  # and a rightly read one
    assert with_["misread"][1] > input_psnr + 1.0, (results, input_psnr)  # haze is still lifted
    # The price: the code no longer proves haze, so the restorer dehazes less than with it.
    assert with_["right"][1] < without["right"][1], results


def test_clean_fraction_out_of_range_names_the_key(paired_root, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.clean_fraction"):
        _config(paired_root, tmp_path, "data.clean_fraction=1.0")


def test_rank_shards_are_disjoint_and_together_the_single_process_order():
    """Stage 2 under torchrun: each rank's samples (index and augmentation draw key) are its own, and
    rank 0's batch followed by rank 1's is, step by step, the batch of one process at twice the batch
    size; so two ranks train on exactly the samples one process would. Mid-epoch resume included."""
    from irsde.training.stage import EpochSampler

    size, batch = 24, 3
    for epoch, skip in ((0, 0), (2, 1)):
        single = EpochSampler(size, 2 * batch, rank=0, world_size=1, seed=5)
        ranks = [EpochSampler(size, batch, rank=r, world_size=2, seed=5) for r in range(2)]
        for sampler in (single, *ranks):
            sampler.epoch, sampler.skip_batches = epoch, skip
        whole, parts = list(single), [list(r) for r in ranks]
        assert len(parts[0]) == len(parts[1]) == len(whole) // 2 > 0
        assert not set(parts[0]) & set(parts[1])  # disjoint, draw keys included
        interleaved = [
            key
            for step in range(len(whole) // (2 * batch))
            for part in parts
            for key in part[step * batch : (step + 1) * batch]
        ]
        assert interleaved == whole
