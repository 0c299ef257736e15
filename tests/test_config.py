"""The typed YAML config mechanism shared by every stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from daclip.engine.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    spec,
    to_dict,
)


@dataclass
class SDESection:
    T: int = spec(100, minimum=1)
    max_sigma: float = spec(50.0, minimum=0.0, exclusive_minimum=True)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"


@dataclass
class TrainSection:
    lr: float = spec(2e-4, minimum=0.0, exclusive_minimum=True)
    betas: tuple[float, float] = (0.9, 0.99)
    milestones: list[int] = field(default_factory=lambda: [10, 20])
    resume: str | None = None
    use_ema: bool = True

    def validate(self) -> None:
        if self.betas[0] >= 1:
            raise ConfigError("train.betas: the first beta must be < 1")


@dataclass
class StageConfig:
    name: str = "run"
    sde: SDESection = field(default_factory=SDESection)
    train: TrainSection = field(default_factory=TrainSection)
    weights: str = spec("", must_exist=True)


def write(tmp_path, data) -> str:
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_and_values_are_typed(tmp_path):
    cfg = load_config(
        StageConfig, write(tmp_path, {"sde": {"T": 50}, "train": {"lr": "1e-4", "betas": [0.5, 0.9]}})
    )
    assert cfg.sde.T == 50 and cfg.sde.schedule == "cosine"
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.betas == (0.5, 0.9)


def test_typo_names_key_and_suggests(tmp_path):
    path = write(tmp_path, {"train": {"lrr": 1e-3}})
    with pytest.raises(ConfigError) as info:
        load_config(StageConfig, path)
    message = str(info.value)
    assert "train.lrr" in message and "did you mean 'train.lr'" in message
    assert path in message and "\n" not in message


def test_typo_is_reported_before_other_problems(tmp_path):
    # weights names a missing file and comes first, but the typo is what the user must see first.
    path = write(tmp_path, {"weights": "missing.pt", "train": {"lrr": 1e-3}})
    with pytest.raises(ConfigError, match=r"did you mean 'train.lr'"):
        load_config(StageConfig, path)


def test_unknown_top_level_key_lists_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'zzz'.*valid keys: name, sde, train, weights"):
        load_config(StageConfig, write(tmp_path, {"zzz": 1}))


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({"train": {"lr": "fast"}}, r"train\.lr: expected a number, got 'fast'"),
        ({"sde": {"T": 1.5}}, r"sde\.T: expected an integer"),
        ({"train": {"use_ema": "yes"}}, r"train\.use_ema: expected true/false"),
        ({"train": {"betas": [0.9]}}, r"train\.betas: expected 2 values"),
        ({"sde": {"schedule": "cosin"}}, r"sde\.schedule: 'cosin' is not one of .*did you mean 'cosine'"),
        ({"sde": {"T": 0}}, r"sde\.T: must be >= 1"),
        ({"sde": {"max_sigma": 0}}, r"sde\.max_sigma: must be > 0"),
        ({"train": {"betas": [1.0, 0.9]}}, r"train\.betas: the first beta must be < 1"),
        ({"weights": "no/such/file.pt"}, r"weights: file or folder not found: no/such/file.pt"),
        ({"sde": 3}, r"sde: expected a mapping"),
    ],
)
def test_bad_values_name_the_key(tmp_path, data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(StageConfig, write(tmp_path, data))


def test_overrides_apply_and_are_validated(tmp_path):
    path = write(tmp_path, {"sde": {"T": 50}})
    cfg = load_config(
        StageConfig, path, ["sde.T=20", "train.betas=[0.8, 0.95]", "train.resume=null", "name=abc"]
    )
    assert (
        cfg.sde.T == 20 and cfg.train.betas == (0.8, 0.95) and cfg.train.resume is None and cfg.name == "abc"
    )
    with pytest.raises(ConfigError, match="train.lrate"):
        load_config(StageConfig, path, ["train.lrate=1"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(StageConfig, path, ["sde.T"])
    with pytest.raises(ConfigError, match="'sde.T' is not a section"):
        apply_overrides({"sde": {"T": 3}}, ["sde.T.x=1"])


def test_round_trip_through_yaml_and_dict(tmp_path):
    cfg = load_config(StageConfig, None, ["sde.schedule=linear", "train.milestones=[1, 2, 3]"])
    save_config(cfg, tmp_path / "saved.yml")
    again = load_config(StageConfig, tmp_path / "saved.yml")
    assert again == cfg
    assert from_dict(StageConfig, to_dict(cfg)) == cfg
    assert to_dict(cfg)["train"]["betas"] == [0.9, 0.99]  # plain YAML types


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(StageConfig, tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(StageConfig, bad)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_an_empty_file_says_it_is_empty(tmp_path, text):
    path = tmp_path / "empty.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"empty\.yml: the config file is empty"):
        load_config(StageConfig, path)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("name: a\nname: b\n", r"duplicate key 'name' \(line 2; first given on line 1\)"),
        (
            "train:\n  lr: 0.1\n  use_ema: false\n  lr: 0.2\n",
            r"duplicate key 'lr' \(line 4; first given on line 2\)",
        ),
        ("sde: {T: 5, T: 6}\n", r"duplicate key 'T' \(line 1; first given on line 1\)"),
        ("train: {lr: 0.1}\ntrain: {use_ema: false}\n", r"duplicate key 'train' \(line 2"),
    ],
)
def test_duplicate_keys_are_an_error_naming_the_line(tmp_path, text, pattern):
    path = tmp_path / "dup.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"dup\.yml: " + pattern):
        load_config(StageConfig, path)


def test_merge_keys_bom_and_non_utf8(tmp_path):
    # A YAML merge key may be overridden on purpose: not a duplicate.
    merged = tmp_path / "m.yml"
    merged.write_text("sde:\n  <<: {T: 5, schedule: linear}\n  T: 7\n")
    assert load_config(StageConfig, merged).sde.T == 7
    # A byte-order mark (Windows editors) is not part of the first key.
    bom = tmp_path / "bom.yml"
    bom.write_bytes("\ufeffname: from-windows\n".encode("utf-8"))
    assert load_config(StageConfig, bom).name == "from-windows"
    latin = tmp_path / "latin.yml"
    latin.write_bytes("name: ok\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yml: not UTF-8 text \(line 2"):
        load_config(StageConfig, latin)
