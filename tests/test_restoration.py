"""Restoring and evaluating: tiling, scripts/test.py numbers, scripts/restore.py, the benchmark."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from daclip.utils.config import load_config
from data.io import read_image, write_image
from irsde.evaluate import TestConfig, evaluate
from irsde.metrics import FIDMetric, LPIPSMetric
from irsde.pipeline import RestorationPipeline, load_restoration_checkpoint
from irsde.sde import IRSDE
from tests.conftest import TEST_DEGRADATIONS, write_paired_set, write_tiny_ir_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LocalNet(nn.Module):
    """A noise predictor with a 5x5 receptive field (so tiles with a wide overlap can reproduce it)."""

    use_degra_context = use_image_context = False

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x, mu, t, **kwargs):
        return self.body(torch.cat([x - mu, mu], dim=1)) * 0.1


def test_tiled_restoration_matches_untiled():
    sde = IRSDE(max_sigma=20, T=8)
    lq = torch.rand(1, 3, 56, 72, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for tile in (None, 32):
        pipeline = RestorationPipeline(LocalNet(), sde, sampler="ode", tile=tile, tile_overlap=16)
        outputs[tile] = pipeline(lq, generator=torch.Generator().manual_seed(1))
    difference = (outputs[None] - outputs[32]).abs()
    assert difference.mean() < 2e-3 and difference.max() < 0.05
    # A different sampling seed changes the ODE result by far more than tiling does (ODE: only x_T is random).
    other = RestorationPipeline(LocalNet(), sde, sampler="ode")(
        lq, generator=torch.Generator().manual_seed(2)
    )
    assert (other - outputs[None]).abs().mean() > 10 * difference.mean()


def test_tiled_unet_with_one_tile_is_exact(tmp_path):
    loaded = load_restoration_checkpoint(write_tiny_ir_checkpoint(tmp_path / "ir.pt"))
    lq = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    plain = RestorationPipeline(loaded.unet, loaded.sde)(lq, generator=torch.Generator().manual_seed(3))
    tiled = RestorationPipeline(loaded.unet, loaded.sde, tile=64, tile_overlap=16)(
        lq, generator=torch.Generator().manual_seed(3)
    )
    assert plain.shape == lq.shape and torch.equal(plain, tiled)


class TinyFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )

    def forward(self, x):
        return self.net(x)


def _psnr_numpy(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / mse)


def test_evaluation_reports_the_psnr_of_its_saved_images(tmp_path):
    data = write_paired_set(tmp_path / "val", count=2, size=40)
    checkpoint = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    cfg = load_config(
        TestConfig,
        None,
        [
            f"model.checkpoint={checkpoint}",
            f"data.root={data}",
            f"data.degradations={TEST_DEGRADATIONS}",
            f"output_root={tmp_path / 'results'}",
            "device=cpu",
            "metrics.classification=false",
        ],
    )
    shared_fid = FIDMetric(TinyFeatures())  # one network for every degradation, as evaluate() builds it
    results = evaluate(
        cfg,
        log=lambda _: None,
        lpips_metric=LPIPSMetric(random_init=True),
        fid_factory=lambda: shared_fid,
        progress=False,
    )
    out = Path(results["output"])
    for name in TEST_DEGRADATIONS:
        values, values_y = [], []
        for index in range(2):
            restored = np.round(read_image(out / "images" / name / f"img{index}.png") * 255)[4:-4, 4:-4]
            gt = np.round(read_image(data / name / "GT" / f"img{index}.png") * 255)[4:-4, 4:-4]
            values.append(_psnr_numpy(restored, gt))
            luma = lambda img: 16 + img @ np.array([65.481, 128.553, 24.966]) / 255.0  # noqa: E731  BT.601
            values_y.append(_psnr_numpy(luma(restored), luma(gt)))
        row = results["rows"][name]
        assert row["psnr"] == pytest.approx(np.mean(values), abs=1e-4)
        assert row["psnr_y"] == pytest.approx(np.mean(values_y), abs=1e-4)
        assert row["images"] == 2 and 0 < row["ssim"] < 1 and row["lpips"] > 0 and row["fid"] >= 0
    # FID is accumulated per degradation (not one pool for all): the two sets give different values.
    assert results["rows"]["noisy"]["fid"] != pytest.approx(results["rows"]["low-light"]["fid"])
    assert results["rows"]["average"]["psnr"] == pytest.approx(
        np.mean([results["rows"][n]["psnr"] for n in TEST_DEGRADATIONS])
    )
    table = (out / "results.md").read_text()
    assert "| noisy | 2 |" in table and "**average**" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"]["noisy"]["psnr"] == pytest.approx(results["rows"]["noisy"]["psnr"])
    with open(out / "results.csv") as handle:
        assert [r["degradation"] for r in csv.DictReader(handle)] == [*TEST_DEGRADATIONS, "average"]


def test_test_script_reports_unavailable_metrics_and_bad_keys(tmp_path, capsys):
    data = write_paired_set(tmp_path / "val", count=1, size=24)
    checkpoint = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    args = [
        "-c",
        str(ROOT / "configs" / "test.yml"),
        f"model.checkpoint={checkpoint}",
        f"data.root={data}",
        f"data.degradations={TEST_DEGRADATIONS}",
        f"output_root={tmp_path / 'results'}",
        "metrics.lpips_weights=" + str(tmp_path / "missing_alexnet.pth"),
        "metrics.fid_weights=" + str(tmp_path / "missing_inception.pth"),
        "sampling.num_steps=2",
        "device=cpu",
    ]
    assert _script("test").main(args) == 0
    table = (tmp_path / "results" / "universal-ir" / "results.md").read_text()
    assert "lpips: unavailable" in table and "fid: unavailable" in table and "| low-light | 1 |" in table
    capsys.readouterr()
    assert _script("test").main([*args, "sampling.num_step=3"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'sampling.num_steps'" in err and err.count("\n") == 1


def test_restore_script_images_predictions_and_no_overwrite(tmp_path, tiny_daclip_checkpoint, capsys):
    inputs = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a": (37, 45), "b": (37, 45), "c": (20, 30)}.items():
        write_image(inputs / f"{name}.png", rng.random((h, w, 3)).astype(np.float32))
    checkpoint = write_tiny_ir_checkpoint(
        tmp_path / "ir.pt", daclip_checkpoint=str(tiny_daclip_checkpoint), context=True
    )
    restore = _script("restore")
    out = tmp_path / "restored"
    common = [
        "--checkpoint",
        str(checkpoint),
        "--device",
        "cpu",
        "--steps",
        "2",
        "--degradations",
        "noisy",
        "hazy",
        "dark",
    ]
    assert restore.main(["-i", str(inputs), "-o", str(out), "--batch-size", "2", *common]) == 0
    for name, (h, w) in {"a": (37, 45), "b": (37, 45), "c": (20, 30)}.items():
        assert read_image(out / f"{name}.png").shape == (h, w, 3)
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["input"]).name for r in rows] == ["a.png", "b.png", "c.png"]
    for row in rows:
        assert row["degradation"] in ("noisy", "hazy", "dark") and 1 / 3 <= float(row["probability"]) <= 1
    printed = capsys.readouterr().out
    assert "a.png:" in printed and "%" in printed
    before = (inputs / "a.png").read_bytes()
    assert restore.main(["-i", str(inputs), "-o", str(inputs), *common]) == 2
    assert "input folder" in capsys.readouterr().err and (inputs / "a.png").read_bytes() == before


def test_benchmark_reports_json(tmp_path, capsys):
    result_path = tmp_path / "bench.json"
    args = [
        "-c",
        str(ROOT / "configs" / "universal_ir_tiny.yml"),
        "experiment.device=cpu",
        "train.batch_size=2",
        "data.patch_size=16",
        "sde.T=10",
        "--size",
        "16",
        "--json",
        str(result_path),
    ]
    assert _script("benchmark").main(args) == 0
    result = json.loads(result_path.read_text())
    from irsde.train import IRTrainConfig, build_unet

    cfg = load_config(
        IRTrainConfig, ROOT / "configs" / "universal_ir_tiny.yml", ["data.train_root=", "data.val_root="]
    )
    assert result["train"]["parameters"] == sum(p.numel() for p in build_unet(cfg.model).parameters())
    assert result["torch"] == torch.__version__ and result["restore"]["num_steps"] == 10
    assert result["train"]["images_per_second"] > 0 and result["restore"]["seconds_per_image"] > 0
    assert json.loads(capsys.readouterr().out)["device"].startswith("CPU")
