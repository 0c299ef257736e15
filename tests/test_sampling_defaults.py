"""Sampling defaults follow the checkpoint: scripts/test.py without a sampler samples as the checkpoint was
validated in training (the paper's posterior at T for the released weights), counted in network calls."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from irsde.models.unet import ConditionalUNet
from tests.conftest import TEST_DEGRADATIONS, write_paired_set, write_tiny_ir_checkpoint

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 2 * len(TEST_DEGRADATIONS)  # two pairs per test degradation


@pytest.fixture
def network_calls(monkeypatch) -> list[int]:
    """Every U-Net forward from now on appends its batch size here."""
    calls: list[int] = []
    forward = ConditionalUNet.forward

    def counting(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(ConditionalUNet, "forward", counting)
    return calls


def _script(name: str):
    """``scripts/<name>.py`` loaded as a module."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _test_script():
    return _script("test")


def _nafnet(tmp_path: Path, daclip: Path, name: str, *overrides: str) -> Path:
    """A perturbed NAFNet checkpoint (not flip-equivariant, not the identity) with training ``overrides``."""
    from tests.test_export import perturbed_checkpoint

    return perturbed_checkpoint(tmp_path / name, daclip, "nafnet", *overrides)


def _evaluate(tmp_path: Path, checkpoint: Path, name: str, *overrides: str) -> dict:
    """``scripts/test.py -c configs/test.yml`` on the checkpoint (its sampling section as shipped, unless
    ``overrides`` set it); returns the results.json it wrote."""
    data = tmp_path / "val"
    if not data.is_dir():
        write_paired_set(data, count=2, size=24)
    argv = [
        "-c",
        str(ROOT / "configs" / "test.yml"),
        f"model.checkpoint={checkpoint}",
        f"data.root={data}",
        f"data.degradations={TEST_DEGRADATIONS}",
        f"output_root={tmp_path / 'results'}",
        f"name={name}",
        "device=cpu",
        "metrics.lpips=false",
        "metrics.fid=false",
        *overrides,
    ]
    assert _test_script().main(argv) == 0
    return json.loads((tmp_path / "results" / name / "results.json").read_text())


def test_test_script_without_a_sampler_uses_the_checkpoints_validation_sampler(
    tmp_path, network_calls, capsys
):
    one_step = write_tiny_ir_checkpoint(  # as the demo's restorer: validated with mr at 1 NFE
        tmp_path / "mr1.pt",
        overrides=("train.val_sampler=mr", "train.val_steps=1", "model.prediction=residual"),
    )
    paper = write_tiny_ir_checkpoint(tmp_path / "paper.pt")  # the paper's: posterior, val_steps null, T = 5

    results = _evaluate(tmp_path, one_step, "mr1")
    assert network_calls == [1] * IMAGES  # one network evaluation per image
    assert (results["sampler"], results["nfe"]) == ("mr", 1)
    assert results["config"]["sampling"]["sampler"] is None
    out = capsys.readouterr().out
    assert "sampler: mr at 1 NFE, the checkpoint's validation sampler" in out
    report = (tmp_path / "results" / "mr1" / "results.md").read_text()
    assert "sampler: mr (the checkpoint's validation sampler" in report

    network_calls.clear()
    results = _evaluate(tmp_path, paper, "paper")
    assert network_calls == [1] * (5 * IMAGES) and (results["sampler"], results["nfe"]) == ("posterior", 5)

    # A sampler or a number of steps given in the config wins over the checkpoint's.
    network_calls.clear()
    results = _evaluate(tmp_path, one_step, "posterior", "sampling.sampler=posterior")
    assert len(network_calls) == 5 * IMAGES and results["sampler"] == "posterior"
    assert "the checkpoint's" not in (tmp_path / "results" / "posterior" / "results.md").read_text()
    network_calls.clear()
    results = _evaluate(tmp_path, one_step, "mr3", "sampling.num_steps=3")
    assert len(network_calls) == 3 * IMAGES and (results["sampler"], results["nfe"]) == ("mr", 3)


def test_released_weights_default_to_the_papers_posterior_sampler_at_T(tmp_path, network_calls, capsys):
    torch.manual_seed(0)
    unet = ConditionalUNet(
        nf=8, ch_mult=(1, 2), context_dim=None, use_degra_context=False, use_image_context=False
    )
    torch.save(unet.state_dict(), tmp_path / "universal-ir.pth")  # a bare state dict, as the released file
    results = _evaluate(
        tmp_path, tmp_path / "universal-ir.pth", "released", "data.max_images_per_degradation=1"
    )
    assert results["checkpoint_source"] == "official"
    assert network_calls == [1] * (100 * len(TEST_DEGRADATIONS))  # T = 100 steps per image
    assert (results["sampler"], results["nfe"]) == ("posterior", 100)
    assert "the paper's posterior sampler at T" in capsys.readouterr().out


def test_an_order_needs_a_named_sampler_and_a_misspelt_sampler_is_named(tmp_path, capsys):
    checkpoint = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    data = write_paired_set(tmp_path / "val", count=1, size=24)
    argv = ["-c", str(ROOT / "configs" / "test.yml"), f"model.checkpoint={checkpoint}", f"data.root={data}"]
    assert _test_script().main([*argv, "sampling.order=1"]) == 2
    assert "sampling.order: set sampling.sampler too" in capsys.readouterr().err
    # The sampler may be null now; a typo still gets the choices and the closest one.
    assert _test_script().main([*argv, "sampling.sampler=posterir"]) == 2
    assert "did you mean 'posterior'" in capsys.readouterr().err


def test_the_checkpoints_validation_clamping_is_the_default(tmp_path, capsys):
    # A noise predictor validated with x̂0 clamped (train.val_clamp_x0, as configs/universal_ir_paper_tiny.yml)
    # samples clamped by default; the paper's default (off for noise) stays where nothing is recorded.
    clamped = write_tiny_ir_checkpoint(tmp_path / "clamped.pt", overrides=("train.val_clamp_x0=true",))
    paper = write_tiny_ir_checkpoint(tmp_path / "paper.pt")
    on = _evaluate(tmp_path, clamped, "clamp-on")
    off = _evaluate(tmp_path, clamped, "clamp-off", "sampling.clamp_x0=false")  # the config wins when given
    assert (on["clamp_x0"], off["clamp_x0"]) == (True, False)
    assert _evaluate(tmp_path, paper, "paper")["clamp_x0"] is False
    # Same weights, same seed: the clamp really reached the sampler (a random network's x̂0 leaves [0, 1]).
    assert on["rows"]["average"]["psnr"] != pytest.approx(off["rows"]["average"]["psnr"], abs=1e-4)
    assert "x0 clamping on" in (tmp_path / "results" / "clamp-on" / "results.md").read_text()


def test_the_witness_config_keeps_the_papers_recipe():
    # configs/universal_ir_paper_tiny.yml witnesses the paper's objective and sampler: only the scale, the
    # data, max_sigma and the recorded x̂0 clamp may differ from configs/universal_ir.yml.
    import yaml

    witness = yaml.safe_load((ROOT / "configs" / "universal_ir_paper_tiny.yml").read_text())
    paper = yaml.safe_load((ROOT / "configs" / "universal_ir.yml").read_text())
    assert witness["model"]["prediction"] == paper["model"].get("prediction", "noise") == "noise"
    assert witness["train"]["loss"] == "ml" and paper["train"].get("loss", "auto") in ("ml", "auto")
    assert witness["train"].get("timestep_grid") is None  # uniform t in 1..T
    assert {k: witness["sde"][k] for k in ("T", "schedule", "eps")} == {
        k: paper["sde"][k] for k in ("T", "schedule", "eps")
    }
    assert witness["train"]["val_sampler"] == "posterior" and witness["train"].get("val_steps") is None
    assert witness["train"]["val_clamp_x0"] is True and "val_clamp_x0" not in paper["train"]


def test_the_checkpoints_self_ensemble_is_the_default(tmp_path, tiny_daclip_checkpoint):
    # A restorer validated with the 8-flip self-ensemble (train.val_self_ensemble, the demo's restorers)
    # restores with it by default in scripts/test.py, scripts/restore.py and the app; the config or the
    # flag turns it off; a checkpoint that records nothing (the released weights) restores without it.
    from irsde.inference.pipeline import RestorationPipeline

    ensembled = _nafnet(tmp_path, tiny_daclip_checkpoint, "ens.pt", "train.val_self_ensemble=true")
    plain = _nafnet(tmp_path, tiny_daclip_checkpoint, "plain.pt")
    on = _evaluate(tmp_path, ensembled, "ens-on")
    off = _evaluate(tmp_path, ensembled, "ens-off", "sampling.self_ensemble=false")
    assert (on["self_ensemble"], on["nfe"], off["self_ensemble"], off["nfe"]) == (True, 8, False, 1)
    assert (_evaluate(tmp_path, plain, "plain")["nfe"]) == 1
    # Same weights: the eight orientations were really averaged (a perturbed NAFNet is not flip-equivariant).
    assert on["rows"]["average"]["psnr"] != pytest.approx(off["rows"]["average"]["psnr"], abs=1e-4)
    assert (
        "self-ensemble of 8 flips/transposes" in (tmp_path / "results" / "ens-on" / "results.md").read_text()
    )
    assert RestorationPipeline.from_checkpoint(ensembled, device="cpu").self_ensemble is True
    assert (
        RestorationPipeline.from_checkpoint(ensembled, device="cpu", self_ensemble=False).self_ensemble
        is False
    )
    assert RestorationPipeline.from_checkpoint(plain, device="cpu").self_ensemble is False

    restore = _script("restore")
    base = ["--checkpoint", str(ensembled), "-i", str(tmp_path), "-o", str(tmp_path / "out")]
    assert restore.parse_args(base).self_ensemble is None  # None: the checkpoint's
    assert restore.parse_args([*base, "--no-self-ensemble"]).self_ensemble is False
    assert restore.parse_args([*base, "--self-ensemble"]).self_ensemble is True


def test_the_checkpoints_min_change_is_the_default(tmp_path, tiny_daclip_checkpoint):
    # A restorer validated with the min_change gate (train.val_min_change, the demo's restorers) restores
    # with it by default in scripts/test.py, scripts/restore.py and the app; the config or the flag set
    # another; a checkpoint that records nothing (the released weights) restores without it.
    from irsde.inference.pipeline import RestorationPipeline

    # A gate far above anything the perturbed network changes: every image comes back as it came.
    gated = _nafnet(tmp_path, tiny_daclip_checkpoint, "gated.pt", "train.val_min_change=1000")
    plain = _nafnet(tmp_path, tiny_daclip_checkpoint, "plain.pt")
    on = _evaluate(tmp_path, gated, "gate-on")
    off = _evaluate(tmp_path, gated, "gate-off", "sampling.min_change=0")
    assert (on["min_change"], off["min_change"], _evaluate(tmp_path, plain, "plain")["min_change"]) == (
        1000.0,
        0.0,
        0.0,
    )
    assert all(row["psnr_gain"] == 0.0 for row in on["rows"].values())
    assert off["rows"]["average"]["psnr_gain"] != 0.0  # the same weights change the images without it
    assert (
        "given back unchanged (min_change)" in (tmp_path / "results" / "gate-on" / "results.md").read_text()
    )
    assert RestorationPipeline.from_checkpoint(gated, device="cpu").min_change == 1000.0
    assert RestorationPipeline.from_checkpoint(gated, device="cpu", min_change=0.5).min_change == 0.5
    assert RestorationPipeline.from_checkpoint(plain, device="cpu").min_change == 0.0

    restore = _script("restore")
    base = ["--checkpoint", str(gated), "-i", str(tmp_path), "-o", str(tmp_path / "out")]
    assert restore.parse_args(base).min_change is None  # None: the checkpoint's
    assert restore.parse_args([*base, "--min-change", "0"]).min_change == 0.0
    for bad in ("-1", "nan", "one"):
        with pytest.raises(SystemExit) as exit_info:
            restore.parse_args([*base, "--min-change", bad])
        assert exit_info.value.code == 2
