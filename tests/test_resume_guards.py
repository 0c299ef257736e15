"""Resuming safely (issue 24): a truncated latest.pt, another DA-CLIP, another restorer family."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from daclip.engine.checkpoint import load_checkpoint, save_checkpoint
from daclip.engine.errors import UserError
from daclip.engine.lifecycle import run_training
from irsde.training.stage import train
from tests.test_lifecycle import ToyStage, _cfg
from tests.test_train_ir import _config, paired_root  # noqa: F401 - paired_root is a fixture


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_truncated_latest_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    stage = ToyStage(_cfg(tmp_path, total_steps=300), save_every=100)
    run_dir = run_training(stage, stage.cfg)
    checkpoints = run_dir / "checkpoints"
    _truncate(checkpoints / "latest.pt")
    _truncate(checkpoints / "step_0000300.pt")  # the newest numbered one is cut too: step 200 is next
    resumed = ToyStage(_cfg(tmp_path, total_steps=400, resume="auto"), save_every=100)
    assert run_training(resumed, resumed.cfg) == run_dir
    assert resumed.seen == list(range(201, 401))
    log = (run_dir / "train.log").read_text()
    notice = f"{checkpoints / 'latest.pt'} is corrupt or truncated; resuming from {checkpoints / 'step_0000200.pt'}"
    assert notice in log and f"resumed from {checkpoints / 'step_0000200.pt'} at step 200" in log


def test_a_truncated_checkpoint_named_explicitly_or_without_a_fallback_is_one_error(tmp_path):
    stage = ToyStage(_cfg(tmp_path, total_steps=100), save_every=100)
    checkpoints = run_training(stage, stage.cfg) / "checkpoints"
    _truncate(checkpoints / "latest.pt")
    explicit = ToyStage(_cfg(tmp_path, total_steps=200, resume=str(checkpoints / "latest.pt")))
    with pytest.raises(ValueError, match=r"latest\.pt is corrupt or truncated"):
        run_training(explicit, explicit.cfg)  # the file the user named: no silent substitute
    _truncate(checkpoints / "step_0000100.pt")
    auto = ToyStage(_cfg(tmp_path, total_steps=200, resume="auto"))
    with pytest.raises(
        ValueError, match=r"corrupt or truncated: .*; no intact step_<N>\.pt beside it either"
    ):
        run_training(auto, auto.cfg)


def _daclip_config(paired_root, tmp_path, weights: Path, *overrides: str):  # noqa: F811
    return _config(
        paired_root,
        tmp_path / "runs",
        f"daclip.checkpoint={weights}",
        "model.use_degra_context=true",
        "model.use_image_context=true",
        "model.nf=16",
        "model.context_dim=32",
        "train.save_every=1",
        "train.val_every=0",
        *overrides,
    )


def test_another_daclip_on_resume_is_refused_unless_allowed_and_then_both_are_recorded(
    paired_root,  # noqa: F811
    tmp_path,
    tiny_daclip_checkpoint,
):
    first = tiny_daclip_checkpoint
    other = tmp_path / "other_daclip.pt"
    state = load_checkpoint(first)
    weights = next(key for key in ("model", "state_dict") if isinstance(state.get(key), dict))
    name = next(k for k, v in state[weights].items() if v.is_floating_point())
    state[weights][name] = state[weights][name] + 1e-3  # another DA-CLIP: other weights, other sha256
    save_checkpoint(other, state)
    run = train(_daclip_config(paired_root, tmp_path, first, "train.total_steps=1"))
    latest = run / "checkpoints" / "latest.pt"
    resume = [f"experiment.resume={latest}", "train.total_steps=2"]
    with pytest.raises(UserError) as info:
        train(_daclip_config(paired_root, tmp_path, other, *resume))
    message = str(info.value)
    assert message.startswith(
        f"daclip.checkpoint {other} is not the DA-CLIP {latest} was trained with ({first}"
    )
    assert message.endswith("point daclip.checkpoint at that file, or set daclip.allow_changed=true")
    assert load_checkpoint(latest)["step"] == 1  # nothing was trained or written
    train(_daclip_config(paired_root, tmp_path, other, *resume, "daclip.allow_changed=true"))
    record = load_checkpoint(latest)["daclip"]
    assert record["path"] == str(other) and record["sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()
    (earlier,) = record["earlier"]
    assert earlier["path"] == str(Path(first).resolve()) and earlier["until_step"] == 1
    assert earlier["sha256"] == hashlib.sha256(Path(first).read_bytes()).hexdigest()
    assert "both are recorded" in (run / "train.log").read_text()


def test_resuming_another_restorer_family_names_both(paired_root, tmp_path):  # noqa: F811
    run = train(_config(paired_root, tmp_path / "runs", "train.total_steps=1", "train.val_every=0"))
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    state["config"]["model"]["family"] = "nafnet"  # as a NAFNet run's checkpoint says
    nafnet = save_checkpoint(tmp_path / "nafnet_latest.pt", state)
    with pytest.raises(UserError) as info:
        train(_config(paired_root, tmp_path / "runs", f"experiment.resume={nafnet}", "train.total_steps=2"))
    assert str(info.value) == (
        f"{nafnet} is a NAFNet checkpoint; the config is an IR-SDE U-Net (model.family: irsde)"
    )


def test_ema_update_moves_the_average_towards_the_weights():
    """ema = 0, p = 1, decay 0.9 -> 0.1 (not 0.9: the direction of the update)."""
    from irsde.training.stage import update_ema

    ema, model = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        ema.weight.fill_(0.0)
        model.weight.fill_(1.0)
    update_ema(ema, model, decay=0.9)
    assert ema.weight.item() == pytest.approx(0.1)
