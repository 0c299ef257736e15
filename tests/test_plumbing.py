"""Shared experiment plumbing: checkpoints, RNG state, run folders, script errors."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from daclip.utils.checkpoint import (
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    strip_prefix,
    unwrap_state_dict,
)
from daclip.utils.config import ConfigError
from daclip.utils.experiment import create_run_dir, run_main, write_run_info


class NotATensor:
    """A class a weights_only load must refuse to construct."""


def test_checkpoint_round_trip_and_atomic_failure(tmp_path):
    path = tmp_path / "ckpt" / "latest.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "step": 7})
    assert load_checkpoint(path)["step"] == 7
    # A failing save (unpicklable object) must leave the previous file intact and no temp files.
    with pytest.raises((AttributeError, pickle.PicklingError, TypeError)):
        save_checkpoint(path, {"model": {"w": torch.zeros(1)}, "bad": lambda: None})
    assert load_checkpoint(path)["step"] == 7
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.pt"]


def test_load_checkpoint_refuses_code_and_names_file(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": NotATensor()}, path)
    with pytest.raises(ValueError, match="evil.pt.*weights_only"):
        load_checkpoint(path)
    truncated = tmp_path / "cut.pt"
    save_checkpoint(tmp_path / "ok.pt", {"w": torch.randn(1000)})
    truncated.write_bytes((tmp_path / "ok.pt").read_bytes()[:500])
    with pytest.raises(ValueError, match="cut.pt is corrupt or truncated"):
        load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_unwrap_state_dict_variants():
    sd = {"a.weight": torch.ones(1), "b.bias": torch.zeros(1)}
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    for obj in (sd, prefixed, {"state_dict": prefixed, "epoch": 3}, {"params": sd}):
        assert list(unwrap_state_dict(obj)) == list(sd)
    assert strip_prefix({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}  # only when all keys carry it
    with pytest.raises(ValueError, match="not a state dict"):
        unwrap_state_dict({"epoch": 3})


def test_rng_state_round_trip(tmp_path):
    state = get_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_run_dir_never_overwrites(tmp_path):
    first = create_run_dir(tmp_path, "exp")
    (first / "train.log").write_text("precious")
    second = create_run_dir(tmp_path, "exp")
    assert second.name == "exp_1" and (first / "train.log").read_text() == "precious"
    assert create_run_dir(tmp_path, "exp", resume=True) == first
    assert all((second / sub).is_dir() for sub in ("checkpoints", "tensorboard", "samples"))
    with pytest.raises(ConfigError):
        create_run_dir(tmp_path, "a/b")


def test_write_run_info(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        lr: float = 0.1

    write_run_info(tmp_path, Cfg(), ["train.py", "-c", "x.yml"])
    assert "lr: 0.1" in (tmp_path / "config.yaml").read_text()
    text = (tmp_path / "command.txt").read_text()
    assert "train.py -c x.yml" in text and "git:" in text


def test_run_main_turns_user_errors_into_exit_2(capsys):
    def bad_config():
        raise ConfigError("train.lrr: unknown key\nsecond line")

    assert run_main(bad_config) == 2
    err = capsys.readouterr().err
    assert err == "error: train.lrr: unknown key\n"
    assert run_main(lambda argv: len(argv), ["a", "b", "c"]) == 3  # arguments and return value pass through
    with pytest.raises(ZeroDivisionError):  # bugs keep their traceback
        run_main(lambda: 1 / 0)
