"""Settings found wrong at start-up, naming the key, writing nothing (issue 24): synthesis parameters,
make_dataset's combinations."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from daclip.engine.config import ConfigError, load_config
from data.io import write_image
from irsde.training.stage import IRTrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for index in range(3):
        write_image(tmp_path / "clean" / f"{index}.png", rng.random((40, 40, 3)).astype(np.float32))
    return tmp_path / "clean"


def _synthetic(clean: Path, params: str) -> list[str]:
    return [f"data.clean_root={clean}", "data.val_root=", f"data.synthesis.params={params}"]


@pytest.mark.parametrize(
    "params, message",
    [
        (
            "{motion-blurry: {kernel_size: [13, 5]}}",
            "data.synthesis.params.motion-blurry.kernel_size: expected a number or a [low, high] range with "
            "low <= high, got [13, 5]",
        ),
        ("{motion-blurry: {kernel_size: [5, 9, 13]}}", "data.synthesis.params.motion-blurry.kernel_size: "),
        (
            "{jpeg-compressed: {quality: [10, 300]}}",  # the high end is out of the generator's domain
            "data.synthesis.params.jpeg-compressed: parameter 'quality' must be in 1..100, got 300",
        ),
    ],
)
def test_bad_synthesis_parameters_fail_at_load_naming_the_key(clean, params, message):
    config = ROOT / "configs" / "universal_ir_synthetic_tiny.yml"
    with pytest.raises(ConfigError) as info:
        load_config(IRTrainConfig, config, _synthetic(clean, params))
    assert message in str(info.value)
    good = load_config(IRTrainConfig, config, _synthetic(clean, "{motion-blurry: {kernel_size: [5, 13]}}"))
    assert good.data.synthesis.params == {"motion-blurry": {"kernel_size": [5, 13]}}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_guard_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_bad_synthesis_parameter_leaves_no_run_folder(clean, tmp_path, capsys):
    argv = [
        "-c",
        str(ROOT / "configs" / "universal_ir_synthetic_tiny.yml"),
        *_synthetic(clean, "{motion-blurry: {kernel_size: [13, 5]}}"),
        f"experiment.root={tmp_path / 'runs'}",
        "experiment.device=cpu",
    ]
    assert _script("train_ir").main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.synthesis.params.motion-blurry.kernel_size" in err
    assert not (tmp_path / "runs").exists()


def test_make_dataset_refuses_a_combination_of_four_types(clean, tmp_path, capsys):
    from scripts.make_dataset import main

    out = tmp_path / "mixed"
    argv = ["--mixed", "--source", str(clean), "--out", str(out), "--no-progress"]
    assert main([*argv, "--combinations", "hazy+rainy,hazy+rainy+snowy+low-light"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--combinations: hazy+rainy+snowy+low-light has 4 types" in err
    assert not out.exists()
    assert main([*argv, "--combinations", "hazy+rainy+low-light"]) == 0
    assert (out / "hazy+rainy+low-light" / "LQ").is_dir()


@pytest.mark.parametrize("key", ["context_shuffle", "clean_context_shuffle"])
def test_a_context_shuffle_needs_a_conditioned_restorer(clean, key):
    with pytest.raises(ConfigError, match=f"train.{key}: needs a DA-CLIP-conditioned restorer"):
        load_config(
            IRTrainConfig,
            ROOT / "configs" / "universal_ir_synthetic_tiny.yml",  # plain: both contexts off
            [*_synthetic(clean, "{}"), f"train.{key}=0.3", "data.clean_fraction=0.2"],
        )


def test_clean_context_shuffle_needs_clean_pairs(clean):
    conditioned = [
        "model.use_degra_context=true",
        f"daclip.checkpoint={ROOT / 'pyproject.toml'}",  # any file: the check comes first
        "train.clean_context_shuffle=1",
    ]
    with pytest.raises(ConfigError, match="train.clean_context_shuffle: needs clean pairs"):
        load_config(
            IRTrainConfig,
            ROOT / "configs" / "universal_ir_synthetic_tiny.yml",
            [*_synthetic(clean, "{}"), *conditioned, "data.clean_fraction=0"],
        )
