"""Model folders (scripts/export.py, RestorationPipeline.from_pretrained): exact round trips, nothing unpickled,
the released weights unchanged through a folder, one-line errors for broken folders, the scripts taking
folders, the model card, and the numpy solver of the PyTorch-free runner."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from daclip.engine.checkpoint import save_checkpoint
from daclip.engine.folder import read_folder_config
from data import DEFAULT_DEGRADATIONS
from data.io import read_image, write_image
from irsde.diffusion.samplers import make_timesteps, sample
from irsde.diffusion.sde import IRSDE
from irsde.export.runtime import SDETables, mr_sample, mr_timesteps
from irsde.inference.pipeline import PAPER_SDE, RestorationPipeline
from irsde.inference.pretrained import load_pretrained
from irsde.models.convert import load_official_unet
from irsde.models.unet import ConditionalUNet
from scripts.export import main as export_main
from tests.conftest import TEST_DEGRADATIONS, write_paired_set, write_tiny_ir_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = ("nafnet", "irsde")


def perturbed_checkpoint(path: Path, daclip: Path, family: str, *overrides: str) -> Path:
    """A tiny stage-2 checkpoint with DA-CLIP and every weight moved off its initial value (zero-initialised
    layers included), so that no path of the network is trivially zero."""
    write_tiny_ir_checkpoint(
        path, daclip_checkpoint=str(daclip), context=True, family=family, overrides=overrides
    )
    ckpt = torch.load(path, weights_only=True)
    gen = torch.Generator().manual_seed(1)
    weights = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in ckpt["ema"].items()}
    save_checkpoint(path, {**ckpt, "model": weights, "ema": weights, "step": 7})
    return path


def export(checkpoint: Path, out: Path, *extra: str) -> Path:
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_daclip_checkpoint) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "nafnet": perturbed_checkpoint(root / "nafnet.pt", tiny_daclip_checkpoint, "nafnet"),
        "irsde": perturbed_checkpoint(
            root / "irsde.pt", tiny_daclip_checkpoint, "irsde", "train.val_sampler=mr", "train.val_steps=3"
        ),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory, checkpoints) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("folders")
    return {family: export(checkpoints[family], root / family) for family in FAMILIES}


def _lq(height: int = 21, width: int = 19, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------------------- the folder


@pytest.mark.parametrize("family", FAMILIES)
def test_export_writes_one_self_contained_folder(family, folders, checkpoints, tmp_path):
    folder = folders[family]
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "daclip.safetensors",
        "restorer.safetensors",
    ]
    config = read_folder_config(folder)
    assert config["model"]["family"] == family and config["degradations"] == list(DEFAULT_DEGRADATIONS)
    assert config["daclip"]["clip_model"] == "ViT-Tiny-16" and config["daclip"]["image_size"] == 32
    if family == "irsde":
        assert config["sde"] == {"max_sigma": 50.0, "T": 5, "schedule": "cosine", "eps": 0.005}
        assert config["sampling"]["sampler"] == "mr" and config["sampling"]["num_steps"] == 3
    else:
        assert config["sde"] is None and config["sampling"]["sampler"] == "one-pass"
    assert config["source"]["checkpoint"] == checkpoints[family].name and config["source"]["step"] == 7
    # Self-contained: a copy elsewhere loads, without the DA-CLIP checkpoint the restorer was trained with.
    moved = shutil.copytree(folder, tmp_path / "elsewhere")
    assert RestorationPipeline.from_pretrained(moved, device="cpu").embedder is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_round_trip_is_exact(family, folders, checkpoints):
    original = RestorationPipeline.from_checkpoint(checkpoints[family], device="cpu")
    loaded = RestorationPipeline.from_pretrained(folders[family], device="cpu")
    for ours, theirs in ((original.model, loaded.model), (original.embedder.model, loaded.embedder.model)):
        expected, got = ours.state_dict(), theirs.state_dict()
        assert list(got) == list(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert loaded.embedder.source == original.embedder.source  # architecture, input, views, vocabulary
    assert (loaded.sampler, loaded.num_steps, loaded.clamp_x0, loaded.degradations) == (
        original.sampler,
        original.num_steps,
        original.clamp_x0,
        original.degradations,
    )
    lq = _lq()
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(loaded(lq, generator=gen()), original(lq, generator=gen()))
    assert loaded.classify(lq) == original.classify(lq)


def test_a_vocabulary_with_clean_survives_the_folder(tmp_path):
    """A DA-CLIP that learned "clean" keeps it through the folder: the restorer's classifier can say
    "no degradation" when loaded from the folder as from the checkpoint."""
    import dataclasses

    from daclip.pretrained import build_daclip
    from daclip.train import make_checkpoint
    from data import CLEAN
    from tests.test_daclip_model import TINY_CONFIG, TINY_NAME

    torch.manual_seed(0)
    model, source = build_daclip(TINY_NAME, "", TINY_CONFIG)
    source = dataclasses.replace(source, vocabulary=(*DEFAULT_DEGRADATIONS, CLEAN))
    save_checkpoint(tmp_path / "daclip.pt", make_checkpoint(model, source, full=True))
    checkpoint = perturbed_checkpoint(tmp_path / "nafnet.pt", tmp_path / "daclip.pt", "nafnet")
    folder = export(checkpoint, tmp_path / "folder")
    assert read_folder_config(folder)["daclip"]["vocabulary"][-1] == CLEAN
    original = RestorationPipeline.from_checkpoint(checkpoint, device="cpu")
    loaded = RestorationPipeline.from_pretrained(folder, device="cpu")
    assert loaded.degradations == original.degradations and loaded.degradations[-1] == CLEAN
    assert loaded.embedder.vocabulary == original.embedder.vocabulary


def test_from_pretrained_unpickles_nothing(folders, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model folder must load without unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    for family in FAMILIES:
        pipeline = RestorationPipeline.from_checkpoint(folders[family], device="cpu")  # the scripts' path
        assert pipeline.loaded.source == "pretrained"
        assert torch.isfinite(pipeline(_lq(batch=1))).all()


def test_released_pair_through_the_folder_computes_the_official_numbers(tmp_path):
    """universal-ir.pth + daclip_ViT-B-32.pt in the official layouts (a small U-Net with the released structure
    and the official code's outputs, tests/fixtures/unet_small.pt; a tiny DA-CLIP) -> folder -> from_pretrained."""
    from tests.test_daclip_convert import official_file
    from tests.test_daclip_model import TINY_CONFIG, TINY_NAME, images, tiny_daclip

    small = torch.load(FIXTURES / "unet_small.pt", weights_only=True)
    torch.save(dict(small["state_dict"]), tmp_path / "universal-ir.pth")  # a bare state dict, as released
    daclip = tiny_daclip(perturb_control=True)
    official_file(daclip, tmp_path / "daclip_tiny.pt")
    (tmp_path / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CONFIG))
    folder = export(tmp_path / "universal-ir.pth", tmp_path / "released", "--daclip", str(tmp_path / "daclip_tiny.pt"),
                    "--clip-model", TINY_NAME, "--model-config", str(tmp_path / f"{TINY_NAME}.json"))  # fmt: skip

    loaded = load_pretrained(folder)
    official = load_official_unet(small["state_dict"], config=small["config"])
    inputs = small["inputs"]
    with torch.no_grad():
        for name, t, use_degra in (("text_image", "time", True), ("image_only", "time", False)):
            args = (inputs["xt"], inputs["cond"], inputs[t])
            kwargs = {"degra_emb": inputs["text_context"] if use_degra else None,
                      "content_emb": inputs["image_context"]}  # fmt: skip
            got = loaded.model(*args, **kwargs)
            assert torch.equal(got, official(*args, **kwargs))
            torch.testing.assert_close(got, small["outputs"][name], atol=1e-4, rtol=0)
        x = images()
        for got, expected in zip(loaded.daclip.encode_image(x), daclip.encode_image(x)):
            assert torch.equal(got, expected)
    config = loaded.config
    assert (config.sde.max_sigma, config.sde.T, config.sde.schedule, config.sde.eps) == tuple(
        PAPER_SDE.values()
    )
    assert (config.sampling.sampler, config.sampling.num_steps, config.model.prediction) == (
        "posterior",
        None,
        "noise",
    )
    assert config.degradations == list(DEFAULT_DEGRADATIONS) and config.source["kind"] == "official"
    assert "DA-CLIP authors' release" in (folder / "README.md").read_text()


# ----------------------------------------------------------------------------- broken folders


def _rewrite_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def _wrong_shape(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "restorer.safetensors")
    weights["intro.weight"] = torch.zeros(3, 3, 1, 1)
    save_file(weights, folder / "restorer.safetensors")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BREAKAGES = {
    "missing config": (lambda f: (f / "config.json").unlink(), "config.json: missing"),
    "invalid JSON": (lambda f: (f / "config.json").write_text("{"), "config.json: invalid JSON"),
    "key from the future": (
        lambda f: _rewrite_config(f, lambda c: c.update(tiling_hint=256)),
        "config.json: unknown config key 'tiling_hint'",
    ),
    "nested key from the future": (
        lambda f: _rewrite_config(f, lambda c: c["model"].update(new_block="x")),
        "config.json: unknown config key 'model.new_block'",
    ),
    "newer format version": (
        lambda f: _rewrite_config(f, lambda c: c.update(format_version=2)),
        "config.json: format_version 2 is newer",
    ),
    "missing weights": (lambda f: (f / "restorer.safetensors").unlink(), "restorer.safetensors: missing"),
    "truncated weights": (
        lambda f: _truncate(f / "restorer.safetensors"),
        "restorer.safetensors: not a complete",
    ),
    "wrong shapes": (
        _wrong_shape,
        "restorer.safetensors: the weights do not fit the network its config.json describes (1 shape",
    ),
    "missing DA-CLIP": (lambda f: (f / "daclip.safetensors").unlink(), "daclip.safetensors: missing"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_folder_is_one_line_naming_the_file(breakage, folders, tmp_path, capsys):
    from scripts.restore import main as restore_main

    folder = shutil.copytree(folders["nafnet"], tmp_path / "broken")
    damage, message = BREAKAGES[breakage]
    damage(folder)
    write_image(tmp_path / "in" / "a.png", np.full((12, 12, 3), 0.5, dtype=np.float32))
    capsys.readouterr()
    code = restore_main(
        ["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--checkpoint", str(folder)]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {folder}") and message in err, err


# ----------------------------------------------------------------------------- the scripts take folders


def test_restore_test_and_classify_take_the_folder(folders, checkpoints, tmp_path, capsys):
    from scripts.classify import main as classify_main
    from scripts.restore import main as restore_main
    from scripts.test import main as test_main

    write_image(tmp_path / "in" / "a.png", _lq(23, 17, 1)[0].permute(1, 2, 0).numpy())
    for name, source in (("folder", folders["irsde"]), ("checkpoint", checkpoints["irsde"])):
        args = ["-i", str(tmp_path / "in"), "-o", str(tmp_path / name), "--checkpoint", str(source)]
        assert restore_main(args) == 0
    restored = [read_image(tmp_path / name / "a.png") for name in ("folder", "checkpoint")]
    assert np.array_equal(*restored)  # same seed, same weights: the same PNG

    data = write_paired_set(tmp_path / "val", count=1, size=24)
    args = ["-c", str(ROOT / "configs" / "test.yml"), f"model.checkpoint={folders['nafnet']}", f"data.root={data}",
            f"data.degradations={TEST_DEGRADATIONS}", f"output_root={tmp_path / 'results'}", "metrics.lpips=false",
            "metrics.fid=false", "device=cpu"]  # fmt: skip
    assert test_main(args) == 0
    assert "| low-light | 1 |" in (tmp_path / "results" / "universal-ir" / "results.md").read_text()

    capsys.readouterr()
    assert classify_main(["-w", str(folders["nafnet"]), str(tmp_path / "in" / "a.png")]) == 0
    assert "a.png:" in capsys.readouterr().out


def test_export_overwrites_nothing_and_leaves_nothing_on_failure(
    checkpoints, tiny_daclip_checkpoint, tmp_path, capsys
):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert export_main(["--checkpoint", str(checkpoints["nafnet"]), "--out", str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err and (taken / "notes.txt").read_text() == "mine"
    # A DA-CLIP checkpoint is not a restorer: one line, and no folder (nor a temporary one) is left.
    assert export_main(["--checkpoint", str(tiny_daclip_checkpoint), "--out", str(tmp_path / "new")]) == 2
    assert "not a restoration model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_model_card_and_re_export(checkpoints, tmp_path):
    run = tmp_path / "experiments" / "demo"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    (run / "command.txt").write_text("command: python scripts/train_ir.py -c configs/nafnet_daclip_tiny.yml\n"
                                     "git: abc1234\n\n")  # fmt: skip
    checkpoint = shutil.copy(checkpoints["nafnet"], run / "checkpoints" / "latest.pt")
    (tmp_path / "results.md").write_text("| degradation | psnr |\n|---|---|\n| noisy | 21.27 |\n")
    folder = export(Path(checkpoint), tmp_path / "card", "--results", str(tmp_path / "results.md"))
    card = (folder / "README.md").read_text()
    for expected in ("python scripts/train_ir.py -c configs/nafnet_daclip_tiny.yml", "git abc1234", "step 7",
                     "## Evaluation", "| noisy | 21.27 |", "## Licence", "MIT", "Data: `paired`",
                     "--checkpoint card"):  # fmt: skip
        assert expected in card, expected
    # A folder exports again (the scripts' --checkpoint takes folders): same weights, same record.
    again = export(folder, tmp_path / "again")
    assert (again / "restorer.safetensors").read_bytes() == (folder / "restorer.safetensors").read_bytes()
    assert read_folder_config(again)["source"] == read_folder_config(folder)["source"]


# ----------------------------------------------------------------------------- the runner's numpy solver


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_numpy_sde_tables_and_grids_match_torch(schedule):
    sde = IRSDE(max_sigma=50.0, T=20, schedule=schedule, eps=0.005, dtype=torch.float64)
    tables = SDETables(50.0, 20, schedule, 0.005)
    np.testing.assert_allclose(tables.alpha, sde.alpha(torch.arange(21)).flatten().numpy(), rtol=1e-12)
    np.testing.assert_allclose(tables.sigma_bar, sde.sigma_bars.numpy(), rtol=1e-12, atol=1e-15)
    for grid in ("uniform", "logsnr"):
        for steps in (1, 2, 3, 7, 19, 20):
            assert mr_timesteps(tables, steps, grid) == make_timesteps(20, steps, grid, sde=sde).tolist()


@pytest.mark.parametrize(("prediction", "clamp", "order", "grid"), [
    ("noise", False, 2, "uniform"), ("noise", False, 1, "logsnr"), ("residual", True, 2, "logsnr"),
    ("x0", True, 1, "uniform"),
])  # fmt: skip
def test_numpy_mr_loop_matches_the_pytorch_mr_sampler(prediction, clamp, order, grid):
    """The same network step (a tiny U-Net) driven by both loops, from the same x_T."""
    torch.manual_seed(0)
    unet = ConditionalUNet(nf=8, ch_mult=(1, 2), use_degra_context=False, use_image_context=False).eval()
    sde = IRSDE(T=12)
    mu = _lq(10, 13)
    x_T = mu + sde.max_sigma * torch.randn(mu.shape, generator=torch.Generator().manual_seed(9))

    def step(x, mu_, t):  # the numpy side of the same network
        with torch.no_grad():
            return unet(torch.from_numpy(x), torch.from_numpy(mu_), torch.from_numpy(t)).numpy()

    expected = sample(lambda x, m, t: unet(x, m, t), mu, sde, "mr", 5, x_T=x_T, prediction=prediction,
                      clamp_x0=clamp, order=order, grid=grid)  # fmt: skip
    tables = SDETables(50.0, 12, "cosine", 0.005)
    got = mr_sample(
        step, mu.numpy(), x_T.numpy(), tables, mr_timesteps(tables, 5, grid), prediction, clamp, order
    )
    # float64 here, float32 in torch: an untrained noise predictor's x̂_0 reaches ~100 (x 1/eps), so relative.
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)
