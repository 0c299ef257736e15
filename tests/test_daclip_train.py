"""Stage-1 training: what a step changes, a falling loss, run folders, resume, configs, the script."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import daclip.pretrained
from daclip.engine.checkpoint import load_checkpoint
from daclip.engine.config import ConfigError, load_config
from daclip.engine.errors import UserError
from daclip.engine.runtime import NonFiniteLossError
from daclip.inference import load_frozen_daclip
from daclip.loss import DaCLIPLoss
from daclip.pretrained import make_tokenizer
from daclip.train import (
    CaptionCollate,
    DaCLIPTrainConfig,
    cosine_warmup_lambda,
    param_groups,
    train_daclip,
    train_step,
)
from daclip.zero_shot import encode_names
from data.captions import CaptionDataset, CaptionRow, write_caption_csv
from data.io import ImageReadError, write_image
from tests.test_daclip_model import TINY_CONFIG, TINY_NAME, tiny_daclip

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("noisy", "hazy", "dark")
CAPTIONS = ("a red square on grass", "a cat on a sofa", "a boat on a lake", "a tall tree")


def synthetic_captions(folder: Path, per_class: int = 4, size: int = 40, seed: int = 0) -> Path:
    """Images whose look depends on the degradation (so it is learnable), with captions; returns the CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, name in enumerate(NAMES):
        for i in range(per_class):
            base = np.full((size, size, 3), 0.2 + 0.3 * k, dtype=np.float32)
            base[:, : size // 2, k] = 0.9
            image = np.clip(base + 0.05 * rng.standard_normal(base.shape).astype(np.float32), 0, 1)
            path = folder / name / f"{i}.png"
            write_image(path, image)
            rows.append(CaptionRow(str(path), CAPTIONS[i % len(CAPTIONS)], name))
    csv_path = folder / "captions.csv"
    write_caption_csv(csv_path, rows)
    return csv_path


def one_batch(csv_path: Path, source_size: int = 32, batch: int = 12) -> dict:
    model_tok = make_tokenizer(_tiny_source())
    dataset = CaptionDataset(csv_path, NAMES, image_size=source_size)
    return next(
        iter(DataLoader(dataset, batch_size=batch, shuffle=False, collate_fn=CaptionCollate(model_tok)))
    )


def _tiny_source():
    from daclip.pretrained import build_clip

    return build_clip(TINY_NAME, "", TINY_CONFIG, device=None)[1]


def test_a_step_moves_only_the_controller_and_logit_scale(tmp_path) -> None:
    model = tiny_daclip().train()
    batch = one_batch(synthetic_captions(tmp_path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = encode_names(model.encode_text, make_tokenizer(_tiny_source()), NAMES)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    losses = train_step(model, batch, DaCLIPLoss("clip"), names, optimizer)
    assert math.isfinite(losses.total.item())
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith("clip."):
            assert torch.equal(after[key], value), f"frozen {key} changed"
    moved = [k for k in before if not k.startswith("clip.") and not torch.equal(after[k], before[k])]
    assert "logit_scale" in moved
    # zero-Linears start at zero, so the first step moves them (and nothing else in the controller yet).
    assert all(f"controller.zero_linears.{i}.weight" in moved for i in range(3))


def test_loss_falls_on_a_tiny_captioned_set(tmp_path) -> None:
    torch.manual_seed(0)
    model = tiny_daclip().train()
    batch = one_batch(synthetic_captions(tmp_path))
    names = encode_names(model.encode_text, make_tokenizer(_tiny_source()), NAMES)
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-3)
    criterion = DaCLIPLoss("class_aware")
    history = [train_step(model, batch, criterion, names, optimizer).total.item() for _ in range(25)]
    assert np.mean(history[-5:]) < 0.6 * history[0]


def test_param_groups_exclude_gains_biases_embeddings_and_logit_scale() -> None:
    model = tiny_daclip()
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "controller.zero_linears.0.weight" in decayed and "controller.tower.proj" in decayed
    for name in (
        "logit_scale",
        "controller.zero_linears.0.bias",
        "controller.tower.ln_post.weight",
        "controller.tower.class_embedding",
        "controller.tower.positional_embedding",
    ):
        assert name in undecayed
    assert not any(n.startswith("clip.") for n in decayed | undecayed)
    assert len(decayed) + len(undecayed) == sum(p.requires_grad for p in model.parameters())


def test_cosine_schedule_with_warmup() -> None:
    factor = cosine_warmup_lambda(total_steps=110, warmup_steps=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5)  # half-way through the cosine
    assert factor(110) == pytest.approx(0.0, abs=1e-12)
    assert cosine_warmup_lambda(100, 0)(0) == pytest.approx(1.0)
    with_floor = cosine_warmup_lambda(100, 0, floor=0.01)  # stage 2: cosine down to lr_min / lr
    assert with_floor(100) == pytest.approx(0.01) and with_floor(50) == pytest.approx(0.505)


def _tiny_cfg_overrides(tmp_path: Path, csv_path: Path, **extra: str) -> list[str]:
    overrides = {
        "experiment.root": str(tmp_path / "runs"),
        "data.train_csv": str(csv_path),
        "data.val_csv": str(csv_path),
        "data.degradations": "[" + ", ".join(NAMES) + "]",
        "model.model_config": str(ROOT / "configs/open_clip/ViT-Tiny-16.json"),
        "train.epochs": "2",
        "train.batch_size": "4",
        "train.warmup_steps": "2",
        "train.save_every_epochs": "1",
        "train.log_every": "1",
        **extra,
    }
    return [f"{k}={v}" for k, v in overrides.items()]


def _tiny_cfg(tmp_path: Path, csv_path: Path, **extra: str) -> DaCLIPTrainConfig:
    overrides = _tiny_cfg_overrides(tmp_path, csv_path, **extra)
    return load_config(DaCLIPTrainConfig, ROOT / "configs/daclip_tiny.yml", overrides)


def test_training_run_folder_and_resume_reproduce_an_uninterrupted_run(tmp_path) -> None:
    csv_path = synthetic_captions(tmp_path / "data", per_class=4)
    run = train_daclip(_tiny_cfg(tmp_path, csv_path), ["test"], progress=False)
    for name in ("config.yaml", "command.txt", "train.log"):
        assert (run / name).is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    checkpoints = run / "checkpoints"
    assert {p.name for p in checkpoints.glob("*.pt")} == {
        "latest.pt",
        "epoch_1.pt",
        "epoch_2.pt",
        "daclip_final.pt",
    }
    final = load_checkpoint(checkpoints / "latest.pt")
    assert final["epoch"] == 2 and final["step"] == 2 * (12 // 4)
    assert "accuracy" in (run / "train.log").read_text()

    # Resume from the epoch-1 checkpoint (copied elsewhere: a new run folder) and finish epoch 2.
    elsewhere = tmp_path / "saved" / "epoch_1.pt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes((checkpoints / "epoch_1.pt").read_bytes())
    resumed = train_daclip(
        _tiny_cfg(tmp_path, csv_path, **{"experiment.resume": str(elsewhere)}), progress=False
    )
    assert resumed != run and resumed.name.startswith(run.name)  # the first run is never overwritten
    again = load_checkpoint(resumed / "checkpoints" / "latest.pt")
    assert (again["epoch"], again["step"]) == (final["epoch"], final["step"])
    for key, value in final["model"].items():
        torch.testing.assert_close(again["model"][key], value, rtol=0, atol=1e-6, msg=key)
    torch.testing.assert_close(
        again["optimizer"]["state"][0]["exp_avg"], final["optimizer"]["state"][0]["exp_avg"]
    )

    # The final export rebuilds the model from the file alone.
    frozen = load_frozen_daclip(checkpoints / "daclip_final.pt")
    assert torch.equal(
        frozen.model.controller.zero_linears[0].weight, final["model"]["controller.zero_linears.0.weight"]
    )


def test_configs_carry_the_paper_settings_and_reject_mistakes(tmp_path) -> None:
    csv_path = synthetic_captions(tmp_path / "data", per_class=1)
    paths = [f"data.train_csv={csv_path}", f"data.val_csv={csv_path}"]
    paper = load_config(DaCLIPTrainConfig, ROOT / "configs/daclip.yml", paths)
    assert (paper.model.clip_model, paper.model.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")
    t = paper.train
    assert (t.batch_size, t.lr, t.weight_decay, t.warmup_steps, t.epochs) == (784, 3e-5, 0.05, 100, 50)
    assert t.degradation_loss == "clip" and len(paper.data.degradations) == 10
    tiny = load_config(DaCLIPTrainConfig, ROOT / "configs/daclip_tiny.yml", paths)
    assert tiny.experiment.device == "cpu" and tiny.model.pretrained == ""

    with pytest.raises(ConfigError, match="train.degradation_loss.*class_aware"):
        load_config(
            DaCLIPTrainConfig, ROOT / "configs/daclip.yml", [*paths, "train.degradation_loss=clss_aware"]
        )
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        load_config(DaCLIPTrainConfig, ROOT / "configs/daclip.yml", [*paths, "train.batchsize=4"])
    with pytest.raises(ConfigError, match="model.model_config.*ViT-Tiny-16.*ViT-B-32"):
        load_config(
            DaCLIPTrainConfig,
            ROOT / "configs/daclip.yml",
            [*paths, f"model.model_config={ROOT / 'configs/open_clip/ViT-Tiny-16.json'}"],
        )
    with pytest.raises(ConfigError, match="data.degradations: duplicate"):
        load_config(
            DaCLIPTrainConfig, ROOT / "configs/daclip.yml", [*paths, "data.degradations=[hazy, hazy]"]
        )


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_offline_pretrained_tag_fails_in_one_line_without_writing(
    tmp_path, monkeypatch, capsys
) -> None:
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(daclip.pretrained, "_cached_tag_file", lambda *args: None)  # as on a fresh machine
    csv_path = synthetic_captions(tmp_path / "data", per_class=1)
    code = _script("train_daclip").main(
        [
            "-c",
            str(ROOT / "configs/daclip.yml"),
            f"data.train_csv={csv_path}",
            f"data.val_csv={csv_path}",
            f"experiment.root={tmp_path / 'runs'}",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "laion2b_s34b_b79k" in err and "model.pretrained=" in err
    assert not (tmp_path / "runs").exists()


def test_script_trains_the_tiny_config(tmp_path, capsys) -> None:
    csv_path = synthetic_captions(tmp_path / "data", per_class=2)
    cfg_args = [f"{k}={v}" for k, v in {"data.train_csv": csv_path, "data.val_csv": csv_path}.items()]
    code = _script("train_daclip").main(
        [
            "-c",
            str(ROOT / "configs/daclip_tiny.yml"),
            *cfg_args,
            "data.degradations=[" + ", ".join(NAMES) + "]",
            f"experiment.root={tmp_path / 'runs'}",
            f"model.model_config={ROOT / 'configs/open_clip/ViT-Tiny-16.json'}",
            "train.epochs=1",
            "train.batch_size=3",
            "--no-progress",
        ]
    )
    assert code == 0
    assert (tmp_path / "runs" / "daclip_tiny" / "checkpoints" / "daclip_final.pt").is_file()
    assert "run folder:" in capsys.readouterr().out
    # A user mistake is one line and exit code 2.
    assert _script("train_daclip").main(["-c", str(tmp_path / "missing.yml")]) == 2


def test_two_processes_match_one_process_with_the_global_batch(tmp_path) -> None:
    """Two ranks (gloo on CPU) end where one process with the 2x batch ends.

    Started as ``python -m torch.distributed.run`` with the arguments scripts/dist_train.sh gives
    torchrun, through this interpreter, so the test runs wherever torch is installed.

    The tolerance comes from the reduction order. Both runs add the same per-token contributions to
    each gradient entry, in different orders (one process: one sum over the global batch; two ranks:
    a sum per rank, then the all-reduce). Each order is within n·u·Σ|terms| of the exact sum, n =
    global batch x tokens and u = 2^-24, so the gradients differ by up to 2n·u relative to their
    scale. AdamW runs with eps = 1 (above every |gradient| here): its map from gradients to updates
    is then Lipschitz with constant <= 2 and keeps the gradient's scale, so a synchronisation bug
    (a mean instead of the sum) changes every update. With the paper's eps = 1e-6 Adam divides the
    scale away and turns rounding noise in gradients near zero into updates of up to lr (a
    difference of 3.7e-5 was seen on another machine), which no tolerance from the arithmetic bounds. Over 3 steps: |difference| <= 3 x 2 x 2n·u·max|change of the tensor| plus
    one rounding of the weight per step (<= 1 ulp = 2u·|w| each).
    """
    csv_path = synthetic_captions(tmp_path / "data", per_class=4)
    steps, per_rank, world = 3, 2, 2
    common = {"train.epochs": "1", "train.warmup_steps": "0", "data.val_csv": "''", "train.eps": "1.0"}
    single = train_daclip(
        _tiny_cfg(tmp_path / "one", csv_path, **common, **{"train.batch_size": str(per_rank * world)}),
        progress=False,
    )
    overrides = _tiny_cfg_overrides(
        tmp_path / "two", csv_path, **common, **{"train.batch_size": str(per_rank)}
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    result = subprocess.run(
        [*launcher, f"--nproc_per_node={world}", str(ROOT / "scripts/train_daclip.py")]
        + ["-c", str(ROOT / "configs/daclip_tiny.yml"), "--no-progress", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    one = load_checkpoint(single / "checkpoints" / "latest.pt")
    two = load_checkpoint(tmp_path / "two" / "runs" / "daclip_tiny" / "checkpoints" / "latest.pt")
    assert one["step"] == two["step"] == steps
    assert isinstance(two["rng"], list) and len(two["rng"]) == world  # every rank's generators

    vision = json.loads((ROOT / "configs/open_clip/ViT-Tiny-16.json").read_text())["vision_cfg"]
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    n = per_rank * world * tokens  # terms in the largest gradient sum
    u = 2.0**-24
    for key, value in one["model"].items():
        if key.startswith("controller.tower."):  # the controller starts as a copy of the frozen tower
            start = one["model"]["clip.visual." + key.removeprefix("controller.tower.")]
        elif key == "logit_scale":
            start = one["model"]["clip.logit_scale"].reshape(())
        elif key.startswith("controller."):  # the zero Linears
            start = torch.zeros_like(value)
        else:  # frozen: bit for bit
            assert torch.equal(two["model"][key], value), key
            continue
        change = float((value - start).abs().max())
        assert change > 0, f"{key} did not train"
        bound = steps * 2 * u * value.abs() + steps * 2 * (2 * n * u) * change
        error = (two["model"][key] - value).abs()
        assert bool((error <= bound).all()), (key, float(error.max()), float(bound.min()))


# ----------------------------------------------------------------------------- lifecycle: NaN, resume, saves


def _all_checkpoints_finite(root: Path) -> int:
    count = 0
    for path in root.rglob("*.pt"):
        ckpt = load_checkpoint(path)
        for key, value in ckpt["model"].items():
            assert torch.isfinite(value).all(), f"{path}: {key} is not finite"
        count += 1
    return count


def test_a_nan_loss_stops_training_naming_the_step_without_writing_nan(tmp_path, capsys) -> None:
    csv_path = synthetic_captions(tmp_path / "data", per_class=4)
    with pytest.raises(NonFiniteLossError, match=r"^step \d+: the training loss is (nan|inf)"):
        train_daclip(
            _tiny_cfg(tmp_path, csv_path, **{"train.lr": "1e9", "train.epochs": "4"}), progress=False
        )
    runs = tmp_path / "runs"
    _all_checkpoints_finite(runs)
    assert not list(runs.rglob("daclip_final.pt"))  # the run did not "finish"
    # Through the script: one line, exit code 2.
    code = _script("train_daclip").main(
        ["-c", str(ROOT / "configs/daclip_tiny.yml"), *_tiny_cfg_overrides(tmp_path, csv_path)]
        + ["train.lr=1e9", "train.epochs=4", "--no-progress"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: step ")
    _all_checkpoints_finite(runs)


def test_skipped_nonfinite_steps_make_no_update(tmp_path, monkeypatch) -> None:
    """train.max_nonfinite_steps: a NaN loss within the allowance skips its update and training goes on."""
    csv_path = synthetic_captions(tmp_path / "data", per_class=4)
    calls = {"n": 0}
    real_forward = DaCLIPLoss.forward

    def nan_at_second_call(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            return type(out)(out.total * float("nan"), out.content, out.degradation)
        return out

    monkeypatch.setattr(DaCLIPLoss, "forward", nan_at_second_call)
    cfg = _tiny_cfg(
        tmp_path, csv_path, **{"train.epochs": "1", "data.val_csv": "''", "train.max_nonfinite_steps": "1"}
    )
    run = train_daclip(cfg, progress=False)
    assert "step 2: the loss is nan; update skipped" in (run / "train.log").read_text()
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 3
    # Without the allowance the same NaN stops the run at step 2.
    calls["n"] = 0
    cfg = _tiny_cfg(tmp_path, csv_path, **{"train.epochs": "1", "data.val_csv": "''"})
    with pytest.raises(NonFiniteLossError, match="^step 2:"):
        train_daclip(cfg, progress=False)


def test_train_step_skips_the_update_on_a_nan_loss(tmp_path) -> None:
    model = tiny_daclip().train()
    batch = one_batch(synthetic_captions(tmp_path))
    names = encode_names(model.encode_text, make_tokenizer(_tiny_source()), NAMES)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def nan_loss(*args, **kwargs):
        out = DaCLIPLoss("clip")(*args, **kwargs)
        return type(out)(out.total * float("nan"), out.content, out.degradation)

    losses = train_step(model, batch, nan_loss, names, optimizer)
    assert math.isnan(losses.total.item())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not optimizer.state  # Adam took no step


def test_auto_resume_finds_the_run_an_earlier_resume_wrote_to(tmp_path) -> None:
    csv_path = synthetic_captions(tmp_path / "data", per_class=4)
    runs = tmp_path / "runs"
    # A start killed before its first checkpoint left daclip_tiny/ with a config and no checkpoint.
    (runs / "daclip_tiny").mkdir(parents=True)
    (runs / "daclip_tiny" / "config.yaml").write_text("killed: true\n")
    auto = {"experiment.resume": "auto", "train.keep_last": "1"}
    first = train_daclip(_tiny_cfg(tmp_path, csv_path, **auto, **{"train.epochs": "1"}), progress=False)
    assert first.name == "daclip_tiny_1"  # nothing to resume: a new folder
    assert not (runs / "daclip_tiny" / "checkpoints").exists()
    again = train_daclip(_tiny_cfg(tmp_path, csv_path, **auto, **{"train.epochs": "3"}), progress=False)
    assert again == first  # resumed where the checkpoint is, not from zero in daclip_tiny_2
    assert not (runs / "daclip_tiny_2").exists()
    assert "resumed from" in (first / "train.log").read_text()
    latest = load_checkpoint(first / "checkpoints" / "latest.pt")
    assert (latest["epoch"], latest["step"]) == (3, 3 * (12 // 4))
    # train.keep_last=1: only the newest numbered checkpoint is kept.
    assert {p.name for p in (first / "checkpoints").glob("*.pt")} == {
        "latest.pt",
        "epoch_3.pt",
        "daclip_final.pt",
    }


def test_explicit_resume_continues_in_the_checkpoints_run_never_a_third_one(tmp_path) -> None:
    csv_path = synthetic_captions(tmp_path / "data", per_class=4)
    one_epoch = {"train.epochs": "1", "data.val_csv": "''"}
    a = train_daclip(_tiny_cfg(tmp_path, csv_path, **one_epoch, **{"experiment.name": "a"}), progress=False)
    b = train_daclip(_tiny_cfg(tmp_path, csv_path, **one_epoch, **{"experiment.name": "b"}), progress=False)
    b_files = {p: p.read_bytes() for p in b.rglob("*") if p.is_file()}
    resumed = train_daclip(
        _tiny_cfg(
            tmp_path,
            csv_path,
            **{
                "experiment.name": "b",
                "experiment.resume": str(a / "checkpoints" / "epoch_1.pt"),
                "train.epochs": "2",
                "data.val_csv": "''",
            },
        ),
        progress=False,
    )
    assert resumed == a
    assert load_checkpoint(a / "checkpoints" / "latest.pt")["epoch"] == 2
    assert {p: p.read_bytes() for p in b.rglob("*") if p.is_file()} == b_files  # b untouched


def test_wrong_checkpoint_kinds_are_one_line_and_leave_no_folder(tmp_path, capsys) -> None:
    from tests.conftest import write_tiny_ir_checkpoint

    csv_path = synthetic_captions(tmp_path / "data", per_class=4)
    ir_ckpt = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    code = _script("train_daclip").main(
        ["-c", str(ROOT / "configs/daclip_tiny.yml"), *_tiny_cfg_overrides(tmp_path, csv_path)]
        + [f"experiment.resume={ir_ckpt}", "--no-progress"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{ir_ckpt} is a restoration (stage-2) checkpoint, not a stage-1" in err
    assert not (tmp_path / "runs").exists()  # a failed start leaves no run folder
    with pytest.raises(UserError, match=r"ir\.pt is a restoration \(stage-2\) checkpoint, not a DA-CLIP"):
        load_frozen_daclip(ir_ckpt)


def test_bad_validation_image_fails_at_start_up_without_a_run_folder(tmp_path) -> None:
    csv_path = synthetic_captions(tmp_path / "data", per_class=4)
    (tmp_path / "data" / "hazy" / "2.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageReadError, match=r"validation set .*hazy/2\.png"):
        train_daclip(_tiny_cfg(tmp_path, csv_path), progress=False)
    assert not (tmp_path / "runs").exists()


def test_the_epoch_is_saved_before_it_is_validated(tmp_path, monkeypatch) -> None:
    import daclip.train

    csv_path = synthetic_captions(tmp_path / "data", per_class=4)
    real_accuracy = daclip.train.DaCLIPStage._accuracy
    calls = {"n": 0}

    def failing_after_training(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first is the baseline before training
            raise ImageReadError("cannot read image val.png: truncated")
        return real_accuracy(*args, **kwargs)

    monkeypatch.setattr(daclip.train.DaCLIPStage, "_accuracy", failing_after_training)
    with pytest.raises(ImageReadError):
        train_daclip(_tiny_cfg(tmp_path, csv_path), progress=False)
    latest = load_checkpoint(tmp_path / "runs" / "daclip_tiny" / "checkpoints" / "latest.pt")
    assert latest["epoch"] == 1
