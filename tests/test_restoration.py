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

from daclip.engine.config import load_config
from data.io import read_image, write_image
from irsde.diffusion.sde import IRSDE
from irsde.evaluation.evaluate import TestConfig, evaluate
from irsde.evaluation.metrics import FIDMetric, LPIPSMetric
from irsde.inference.pipeline import RestorationPipeline, load_restoration_checkpoint
from tests.conftest import TEST_DEGRADATIONS, CleanOrNoisyDaclip, write_paired_set, write_tiny_ir_checkpoint

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


class RampNet(nn.Module):
    """An x0 predictor that adds a left-to-right ramp: its error depends on the image's orientation."""

    use_degra_context = use_image_context = False
    prediction = "x0"

    def __init__(self, ramp: float) -> None:
        super().__init__()
        self.ramp = nn.Parameter(torch.tensor(ramp), requires_grad=False)

    def forward(self, x, mu, t, **kwargs):
        width = mu.shape[-1]
        return mu + self.ramp * torch.linspace(-1.0, 1.0, width).expand_as(mu)


def test_self_ensemble_averages_the_eight_orientations():
    sde = IRSDE(max_sigma=5, T=10)
    lq = 0.25 + 0.5 * torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(0))
    plain = RestorationPipeline(RampNet(0.2), sde, sampler="mr", num_steps=1)(lq)
    ensemble = RestorationPipeline(RampNet(0.2), sde, sampler="mr", num_steps=1, self_ensemble=True)(lq)
    ramp = 0.2 * torch.linspace(-1.0, 1.0, 20)
    torch.testing.assert_close(plain, lq + ramp)  # one orientation keeps the ramp
    # The flips cancel the ramp (and the transposed passes' vertical ramp), every undo is exact.
    torch.testing.assert_close(ensemble, lq, atol=1e-6, rtol=0)
    # A network without orientation bias gives the same result with or without the ensemble.
    flat = RampNet(0.0)
    torch.testing.assert_close(
        RestorationPipeline(flat, sde, sampler="mr", num_steps=1, self_ensemble=True)(lq),
        RestorationPipeline(flat, sde, sampler="mr", num_steps=1)(lq),
    )


def test_tiled_unet_with_one_tile_is_exact(tmp_path):
    loaded = load_restoration_checkpoint(write_tiny_ir_checkpoint(tmp_path / "ir.pt"))
    lq = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    plain = RestorationPipeline(loaded.model, loaded.sde)(lq, generator=torch.Generator().manual_seed(3))
    tiled = RestorationPipeline(loaded.model, loaded.sde, tile=64, tile_overlap=16)(
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
    cfg = _test_config(tmp_path, checkpoint, data, "metrics.classification=false")
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


def _test_config(tmp_path: Path, checkpoint: Path, data: Path, *overrides: str) -> TestConfig:
    """The evaluation config of ``checkpoint`` on the paired set ``data`` (the test degradations, CPU)."""
    base = [
        f"model.checkpoint={checkpoint}",
        f"data.root={data}",
        f"data.degradations={TEST_DEGRADATIONS}",
        f"output_root={tmp_path / 'results'}",
        "device=cpu",
    ]
    return load_config(TestConfig, None, [*base, *overrides])


def _test_script_args(tmp_path: Path, *overrides: str) -> list[str]:
    """scripts/test.py arguments: a tiny random checkpoint on one 24-pixel pair per test degradation."""
    data = write_paired_set(tmp_path / "val", count=1, size=24)
    checkpoint = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    return [
        "-c",
        str(ROOT / "configs" / "test.yml"),
        f"model.checkpoint={checkpoint}",
        f"data.root={data}",
        f"data.degradations={TEST_DEGRADATIONS}",
        f"output_root={tmp_path / 'results'}",
        "device=cpu",
        *overrides,
    ]


def test_test_script_reports_unavailable_metrics_and_bad_keys(tmp_path, capsys):
    args = _test_script_args(
        tmp_path,
        "metrics.lpips_weights=" + str(tmp_path / "missing_alexnet.pth"),
        "metrics.fid_weights=" + str(tmp_path / "missing_inception.pth"),
        "sampling.num_steps=2",
    )
    assert _script("test").main(args) == 0
    table = (tmp_path / "results" / "universal-ir" / "results.md").read_text()
    assert "lpips: unavailable" in table and "fid: unavailable" in table and "| low-light | 1 |" in table
    capsys.readouterr()
    assert _script("test").main([*args, "sampling.num_step=3"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'sampling.num_steps'" in err and err.count("\n") == 1


def test_sampler_sweep_table_matches_each_evaluation(tmp_path, capsys):
    args = _test_script_args(tmp_path, "metrics.lpips=false", "metrics.fid=false", "name=sweep")
    specs = "posterior:3,mr:2:1,ode:2,mr:2:1:logsnr"
    assert _script("test").main([*args, "--samplers", specs]) == 0
    sweep = tmp_path / "results" / "sweep"
    table = json.loads((sweep / "samplers.json").read_text())
    assert [(r["sampler"], r["nfe"], r["order"], r["grid"]) for r in table["rows"]] == [
        ("posterior", 3, 1, "uniform"),
        ("mr", 2, 1, "uniform"),
        ("ode", 2, 1, "uniform"),
        ("mr", 2, 1, "logsnr"),  # a spec's own grid wins over sampling.grid
    ]
    reference = table["rows"][0]["psnr"]
    for row, folder in zip(table["rows"], ("posterior_3", "mr_2_1", "ode_2", "mr_2_1_logsnr")):
        own = json.loads((sweep / folder / "results.json").read_text())
        assert own["sampler"] == row["sampler"] and own["nfe"] == row["nfe"] and own["grid"] == row["grid"]
        assert row["psnr"] == pytest.approx(own["rows"]["average"]["psnr"])
        assert row["psnr_vs_reference"] == pytest.approx(row["psnr"] - reference)
        assert row["speedup_vs_reference"] == pytest.approx(table["rows"][0]["seconds"] / row["seconds"])
    # Different samplers really ran (the deterministic ODE and the stochastic posterior give other images;
    # at T = 5 the log-SNR grid visits the uniform grid's timesteps, so its row is checked by its grid).
    assert len({round(r["psnr"], 6) for r in table["rows"][:3]}) == 3
    assert "| mr | 1 | 2 | uniform |" in (sweep / "samplers.md").read_text()
    capsys.readouterr()
    assert _script("test").main([*args, "--samplers", "posterior,fast:3"]) == 2
    err = capsys.readouterr().err
    assert "--samplers" in err and "fast" in err and err.count("\n") == 1
    assert _script("test").main([*args, "--samplers", "mr:2:1:cosine"]) == 2
    err = capsys.readouterr().err
    assert "--samplers" in err and "unknown grid 'cosine'" in err and err.count("\n") == 1


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
    from irsde.models.families import build_model
    from irsde.training.stage import IRTrainConfig

    cfg = load_config(
        IRTrainConfig, ROOT / "configs" / "universal_ir_tiny.yml", ["data.train_root=", "data.val_root="]
    )
    assert result["train"]["parameters"] == sum(p.numel() for p in build_model(cfg.model).parameters())
    assert result["torch"] == torch.__version__
    # Without --sampler the restore is timed as the config validates: the tiny config's mr at 1 NFE.
    assert (result["restore"]["sampler"], result["restore"]["num_steps"]) == ("mr", 1)
    assert result["restore"]["sampler_source"].startswith("the config's validation sampler")
    assert result["train"]["images_per_second"] > 0 and result["restore"]["seconds_per_image"] > 0
    assert json.loads(capsys.readouterr().out)["device"].startswith("CPU")


# ----------------------------------------------------------------------------- restore.py: names, errors, outputs


def _restore(argv) -> int:
    return _script("restore").main([str(a) for a in argv])


def _restore_args(checkpoint, *extra):
    return ["--checkpoint", str(checkpoint), "--device", "cpu", "--steps", "2", *map(str, extra)]


def _nan_checkpoint(source: Path, target: Path) -> Path:
    """``source`` with NaN weights, written with plain torch.save (our writer refuses NaN weights)."""
    from daclip.engine.checkpoint import load_checkpoint

    obj = load_checkpoint(source)
    for key in ("model", "ema"):
        obj[key] = {
            k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in obj[key].items()
        }
    torch.save(obj, target)
    return target


def test_restore_gives_inputs_with_one_stem_distinct_outputs(tmp_path, capsys):
    inputs = tmp_path / "photos"
    rng = np.random.default_rng(0)
    sizes = {"photo.jpg": (20, 28), "photo.png": (24, 16), "Photo.bmp": (12, 12), "other.png": (16, 20)}
    for name, (h, w) in sizes.items():
        write_image(inputs / name, rng.random((h, w, 3)).astype(np.float32))
    checkpoint = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    out = tmp_path / "restored"
    assert _restore(["-i", inputs, "-o", out, *_restore_args(checkpoint)]) == 0
    expected = {
        "photo_jpg.png": (20, 28),
        "photo_png.png": (24, 16),
        "Photo_bmp.png": (12, 12),
        "other.png": (16, 20),
    }
    assert {p.name for p in out.glob("*.png")} == {*expected, "contact_sheet.png"}
    for name, (h, w) in expected.items():
        assert read_image(out / name).shape == (h, w, 3)
    assert "keep the extension" in capsys.readouterr().out
    # A rerun finds every output in place.
    assert _restore(["-i", inputs, "-o", out, *_restore_args(checkpoint)]) == 0
    assert "skipping 4 image(s) already restored" in capsys.readouterr().out


def test_restore_with_non_finite_weights_is_an_error_naming_the_image(
    tmp_path, tiny_daclip_checkpoint, capsys
):
    inputs = tmp_path / "photos"
    for name in ("a.png", "b.png"):
        write_image(inputs / name, np.full((16, 16, 3), 0.5, dtype=np.float32))
    good = write_tiny_ir_checkpoint(
        tmp_path / "ir.pt", daclip_checkpoint=str(tiny_daclip_checkpoint), context=True
    )
    bad = _nan_checkpoint(good, tmp_path / "nan.pt")
    out = tmp_path / "restored"
    assert _restore(["-i", inputs, "-o", out, *_restore_args(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN" in err, err
    assert not list(out.glob("*.png")), "no black image is written"
    assert not (out / "predictions.csv").exists() or "nan" not in (out / "predictions.csv").read_text()
    # The restore itself names the image (whatever the checkpoint loader checks first).
    from data.paired import LQImageDataset
    from irsde.inference.restore import NonFiniteOutputError, restore_images

    net = LocalNet()
    with torch.no_grad():
        net.body[0].bias.fill_(float("nan"))
    with pytest.raises(
        NonFiniteOutputError, match=r"restoring .*a\.png gave a restored image with NaN or Inf"
    ):
        restore_images(RestorationPipeline(net, IRSDE(T=3)), LQImageDataset(inputs), out, log=lambda _: None)
    assert not list(out.glob("*.png"))
    # The same folder restores with good weights; predictions.csv holds only finite probabilities.
    assert _restore(["-i", inputs, "-o", out, *_restore_args(good)]) == 0
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["output"]).name for r in rows] == ["a.png", "b.png"]
    assert all(np.isfinite(float(r["probability"])) for r in rows)


def test_restore_skips_an_unreadable_image_reports_it_and_fails_at_the_end(tmp_path, capsys):
    inputs = tmp_path / "photos"
    for name in ("a.png", "c.png"):
        write_image(inputs / name, np.full((16, 16, 3), 0.5, dtype=np.float32))
    (inputs / "b.png").write_bytes(b"not a png")
    checkpoint = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    out = tmp_path / "restored"
    assert _restore(["-i", inputs, "-o", out, *_restore_args(checkpoint)]) == 2
    captured = capsys.readouterr()
    assert {p.name for p in out.glob("*.png")} == {"a.png", "c.png", "contact_sheet.png"}
    assert captured.err.count("\n") == 1 and "1 of 3 images could not be restored" in captured.err
    assert "b.png" in captured.err and "b.png" in captured.out


def test_restore_output_file_batch_size_and_input_checks(tmp_path, capsys):
    inputs = tmp_path / "photos"
    write_image(inputs / "a.png", np.full((16, 12, 3), 0.25, dtype=np.float32))
    write_image(inputs / "b.jpg", np.full((16, 12, 3), 0.75, dtype=np.float32))
    checkpoint = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    # -o with an image name for one input writes exactly that file.
    target = tmp_path / "out" / "restored.png"
    assert _restore(["-i", inputs / "a.png", "-o", target, *_restore_args(checkpoint)]) == 0
    assert target.is_file() and read_image(target).shape == (16, 12, 3)
    assert not (target.parent / "a.png").exists() and not (target.parent / "predictions.csv").exists()
    # ... but not for a folder of several images, and never onto the input itself.
    before = (inputs / "a.png").read_bytes()
    for args, message in [
        (["-i", inputs, "-o", tmp_path / "x.png"], "names one image file, but there are 2 input images"),
        (["-i", inputs / "a.png", "-o", inputs / "a.png"], "is the input image"),
        (["-i", inputs / "a.png", "-o", inputs], "is the input folder"),
    ]:
        assert _restore([*args, *_restore_args(checkpoint)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert (inputs / "a.png").read_bytes() == before and not (tmp_path / "x.png").exists()
    for bad in (["--batch-size", "0"], ["--steps", "0"], ["--tile", "-16"], ["--overlap", "-1"]):
        with pytest.raises(SystemExit) as caught:
            _restore(["-i", inputs, "-o", tmp_path / "o", *_restore_args(checkpoint), *bad])
        assert caught.value.code == 2 and "must be >=" in capsys.readouterr().err
    from irsde.inference.restore import restore_images

    pipeline = RestorationPipeline(LocalNet(), IRSDE(T=3))
    with pytest.raises(ValueError, match="batch size must be an integer >= 1"):
        restore_images(pipeline, [], tmp_path / "o", batch_size=0)


def test_restore_keeps_predictions_of_earlier_runs(tmp_path, tiny_daclip_checkpoint, capsys):
    inputs = tmp_path / "photos"
    write_image(inputs / "a.png", np.full((16, 16, 3), 0.5, dtype=np.float32))
    checkpoint = write_tiny_ir_checkpoint(
        tmp_path / "ir.pt", daclip_checkpoint=str(tiny_daclip_checkpoint), context=True
    )
    out = tmp_path / "restored"
    args = _restore_args(checkpoint, "--degradations", "noisy", "hazy")
    assert _restore(["-i", inputs, "-o", out, *args]) == 0
    write_image(inputs / "b.png", np.full((16, 16, 3), 0.2, dtype=np.float32))  # a new photo, then a rerun
    assert _restore(["-i", inputs, "-o", out, *args]) == 0
    with open(out / "predictions.csv") as handle:
        assert [Path(r["input"]).name for r in csv.DictReader(handle)] == ["a.png", "b.png"]


def test_restore_accepts_a_daclip_model_config(tmp_path, capsys):
    """A released-format DA-CLIP of a custom open_clip architecture, described by --model-config."""
    from daclip.pretrained import build_daclip
    from tests.test_daclip_convert import official_file
    from tests.test_daclip_model import TINY_CONFIG

    name = "ViT-Restore-Tiny"  # registered by nothing else: only --model-config describes it
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    torch.manual_seed(0)
    model, _ = build_daclip(name, "", TINY_CONFIG)
    daclip_file = tmp_path / "daclip_custom.pt"
    official_file(model, daclip_file)
    checkpoint = write_tiny_ir_checkpoint(
        tmp_path / "ir.pt", daclip_checkpoint=str(daclip_file), context=True
    )
    write_image(tmp_path / "in.png", np.full((16, 16, 3), 0.5, dtype=np.float32))
    common = [
        "-i",
        tmp_path / "in.png",
        *_restore_args(checkpoint, "--daclip", daclip_file, "--clip-model", name),
    ]
    assert _restore([*common, "-o", tmp_path / "out", "--model-config", config]) == 0
    assert (tmp_path / "out" / "in.png").is_file() and "in.png:" in capsys.readouterr().out


def test_restore_progress_within_an_image_at_a_bounded_rate(tmp_path):
    """With tiles, progress counts network calls within the image; lines come at most every interval."""
    import io

    from data.paired import LQImageDataset
    from irsde.inference.restore import ProgressReporter, restore_images

    write_image(tmp_path / "in" / "big.png", np.random.default_rng(0).random((40, 56, 3)).astype(np.float32))
    pipeline = RestorationPipeline(LocalNet(), IRSDE(T=6), tile=16, tile_overlap=4, tile_batch_size=2)
    calls = []
    pipeline.model.register_forward_hook(lambda *_: calls.append(1))  # each network call takes 1 s
    stream = io.StringIO()  # not a terminal: whole lines
    reporter = ProgressReporter(stream, interval=5.0, clock=lambda: float(len(calls)))
    records = restore_images(pipeline, LQImageDataset(tmp_path / "in"), tmp_path / "out", progress=reporter)
    assert len(records) == 1 and (tmp_path / "out" / "big.png").is_file()
    # 40x56 in 16-pixel tiles with stride 12: 3 x 5 = 15 tiles, 8 calls of <= 2 tiles per step, 6 steps.
    assert len(calls) == reporter.total == 6 * 8
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("[1/1] big.png (56x40): ") for line in lines)
    assert lines[0].endswith("10% (step 1/6, network call 5/48), 5s elapsed, about 43s left")
    assert "\r" not in stream.getvalue()
    assert len(lines) == (len(calls) - 1) // 5  # a line every 5 s, none for the last call
    done = [int(line.split("network call ")[1].split("/")[0]) for line in lines]
    assert done == sorted(done) and done[-1] < len(calls)


def test_benchmark_restore_peak_memory_is_its_own_not_the_process_peak():
    """An earlier, larger allocation (as the training benchmark makes) does not count for the restore."""
    import resource

    from irsde.apps.benchmark import benchmark_restoration
    from irsde.training.stage import IRTrainConfig

    cfg = load_config(
        IRTrainConfig,
        ROOT / "configs" / "universal_ir_tiny.yml",
        ["data.train_root=", "data.val_root=", "sde.T=3", "train.val_steps=3", "experiment.device=cpu"],
    )
    big = torch.ones(150 * 2**20)  # 600 MiB, written, then returned to the OS
    del big
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = benchmark_restoration(cfg, torch.device("cpu"), size=16, repeats=1)
    if "could not reset" in result["peak_memory_kind"]:
        pytest.skip("this OS offers no resettable peak RSS")
    assert "since the reset" in result["peak_memory_kind"]
    assert result["peak_memory_mib"] < process_peak - 400, (result["peak_memory_mib"], process_peak)


def test_checkpoint_whose_weights_do_not_fit_its_config_is_one_line(tmp_path, capsys):
    from daclip.engine.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    obj = load_checkpoint(checkpoint)
    obj["config"]["model"]["nf"] = 16  # the weights are of nf = 8
    save_checkpoint(tmp_path / "edited.pt", obj)
    with pytest.raises(
        ValueError, match=r"edited\.pt: weights do not fit the model in its config \(\d+ shape mismatch"
    ):
        load_restoration_checkpoint(tmp_path / "edited.pt")
    write_image(tmp_path / "in.png", np.full((16, 16, 3), 0.5, dtype=np.float32))
    assert (
        _restore(["-i", tmp_path / "in.png", "-o", tmp_path / "out", *_restore_args(tmp_path / "edited.pt")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "size mismatch for " in err, err


# ----------------------------------------------------------------------------- restore.py on real photos: no ground truth


def test_restore_writes_multilabel_predictions_and_a_contact_sheet(tmp_path, tiny_daclip_checkpoint, capsys):
    from PIL import Image

    from daclip.zero_shot import DEFAULT_THRESHOLD

    inputs = tmp_path / "photos"
    rng = np.random.default_rng(1)
    sizes = {"a.png": (37, 45), "b.png": (20, 30), "c.png": (24, 24)}
    for name, (h, w) in sizes.items():
        write_image(inputs / name, rng.random((h, w, 3)).astype(np.float32))
    checkpoint = write_tiny_ir_checkpoint(
        tmp_path / "ir.pt", daclip_checkpoint=str(tiny_daclip_checkpoint), context=True
    )
    names = ["noisy", "hazy", "dark"]
    out = tmp_path / "restored"
    assert _restore(["-i", inputs, "-o", out, *_restore_args(checkpoint, "--degradations", *names)]) == 0
    assert "contact sheet of 3 image(s)" in capsys.readouterr().out

    document = json.loads((out / "predictions.json").read_text())
    images = document["images"]
    assert [Path(e["output"]).name for e in images] == ["a.png", "b.png", "c.png"]
    for entry in images:
        probs = entry["probabilities"]
        assert list(probs) == names and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert entry["threshold"] == DEFAULT_THRESHOLD
        best = max(probs, key=probs.get)
        expected = {n for n, p in probs.items() if p >= DEFAULT_THRESHOLD} | {best}
        assert entry["degradations"] and set(entry["degradations"]) == expected
        assert entry["degradations"][0] == best
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["degradations"] for r in rows] == ["+".join(e["degradations"]) for e in images]
    assert [r["degradation"] for r in rows] == [e["degradations"][0] for e in images]

    # The sheet: one row of `height` pixels per image, input | output each scaled to that height.
    sheet = Image.open(out / "contact_sheet.png")
    height = 192
    widths = [2 * round(w * height / h) for h, w in sizes.values()]
    assert sheet.size == (max(widths), 3 * height)
    assert not list(out.glob("contact_sheet_*.png"))

    # --threshold 0: every type is present; the rows are replaced, not duplicated.
    again = ["-i", inputs, "-o", out, "--overwrite", "--threshold", "0", "--no-contact-sheet"]
    assert _restore([*again, *_restore_args(checkpoint, "--degradations", *names)]) == 0
    images = json.loads((out / "predictions.json").read_text())["images"]
    assert len(images) == 3 and all(set(e["degradations"]) == set(names) for e in images)
    with pytest.raises(SystemExit):
        _restore(["-i", inputs, "-o", out, "--threshold", "1.5", *_restore_args(checkpoint)])
    assert "must be in [0, 1]" in capsys.readouterr().err


def test_contact_sheet_after_a_failed_image_and_over_several_sheets(tmp_path, capsys):
    from PIL import Image

    from irsde.inference.reports import write_contact_sheets

    inputs = tmp_path / "photos"
    for name in ("a.png", "c.png"):
        write_image(inputs / name, np.full((16, 32, 3), 0.5, dtype=np.float32))
    (inputs / "b.png").write_bytes(b"not a png")
    checkpoint = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    out = tmp_path / "restored"
    assert _restore(["-i", inputs, "-o", out, *_restore_args(checkpoint), "--sheet-height", "40"]) == 2
    assert "could not be restored" in capsys.readouterr().err
    assert Image.open(out / "contact_sheet.png").size == (2 * 80, 2 * 40)  # the two readable images

    # Many rows: numbered sheets, and the single sheet of an earlier run is removed.
    rows = [(inputs / "a.png", out / "a.png", f"image {i}") for i in range(5)]
    written = write_contact_sheets(out, rows, height=20, rows_per_sheet=2)
    assert [p.name for p in written] == ["contact_sheet_1.png", "contact_sheet_2.png", "contact_sheet_3.png"]
    assert not (out / "contact_sheet.png").exists()
    assert [Image.open(p).size for p in written] == [(80, 40), (80, 40), (80, 20)]
    assert {p.name for p in out.glob("*.png")} >= {"a.png", "c.png"}


def test_keep_clean_writes_back_what_daclip_finds_nothing_wrong_with(tmp_path):
    from data.paired import LQImageDataset
    from irsde.inference.pipeline import RestorationPipeline
    from irsde.inference.restore import restore_images

    inputs = tmp_path / "photos"
    rng = np.random.default_rng(0)
    write_image(inputs / "bright.png", 0.6 + 0.3 * rng.random((24, 20, 3)))
    write_image(inputs / "dark.png", 0.4 * rng.random((24, 20, 3)))
    pipeline = RestorationPipeline.from_checkpoint(write_tiny_ir_checkpoint(tmp_path / "ir.pt"), device="cpu")
    pipeline.embedder = CleanOrNoisyDaclip()
    names = ["noisy", "hazy", "clean"]
    logs: list[str] = []
    runs = {}
    for keep in (True, False):
        out = tmp_path / f"keep{keep}"
        dataset = LQImageDataset(inputs, clip_size=16, clip_mean=(0, 0, 0), clip_std=(1, 1, 1))
        restore_images(pipeline, dataset, out, degradations=names, keep_clean=keep, log=logs.append)
        runs[keep] = out
    # --keep-clean: the clean image's pixels come back exactly (8-bit PNG in, the same PNG pixels out) ...
    assert np.array_equal(read_image(runs[True] / "bright.png"), read_image(inputs / "bright.png"))
    # ... the degraded one is restored, and by default the clean one is restored too.
    assert not np.array_equal(read_image(runs[True] / "dark.png"), read_image(inputs / "dark.png"))
    assert not np.array_equal(read_image(runs[False] / "bright.png"), read_image(inputs / "bright.png"))
    for keep, out in runs.items():
        entries = {
            Path(e["output"]).name: e for e in json.loads((out / "predictions.json").read_text())["images"]
        }
        assert entries["bright.png"]["clean"] and entries["bright.png"]["degradations"] == []
        assert not entries["dark.png"]["clean"] and entries["dark.png"]["degradations"][0] == "noisy"
        with open(out / "predictions.csv") as handle:
            rows = {Path(r["output"]).name: r for r in csv.DictReader(handle)}
        assert (
            rows["bright.png"]["degradations"] == "no degradation found"
            and rows["bright.png"]["degradation"] == "clean"
        )
        assert ("kept as it came" in rows["bright.png"]["settings"]) == keep
        # The share of pixels given back exactly: all of the kept image, none of a restored one.
        assert entries["bright.png"]["unchanged"] == (1.0 if keep else 0.0)
        assert entries["dark.png"]["unchanged"] == 0.0
        assert float(rows["bright.png"]["unchanged"]) == entries["bright.png"]["unchanged"]
    said = [line for line in logs if line.startswith("bright.png:")]
    assert len(said) == 2 and all("no degradation found" in line for line in said)
    assert "kept as it came" in said[0] and "kept as it came" not in said[1]

    # The min_change gate far above anything the network changes: every image is given back as it
    # came (bit-identical), the records and the log say so; the network still ran (no --keep-clean).
    pipeline.min_change = 1000.0
    out = tmp_path / "gated"
    dataset = LQImageDataset(inputs, clip_size=16, clip_mean=(0, 0, 0), clip_std=(1, 1, 1))
    logs.clear()
    restore_images(pipeline, dataset, out, degradations=names, log=logs.append)
    for name in ("bright.png", "dark.png"):
        assert np.array_equal(read_image(out / name), read_image(inputs / name))
    entries = json.loads((out / "predictions.json").read_text())["images"]
    assert [e["unchanged"] for e in entries] == [1.0, 1.0]
    assert all("min-change=1000" in e["settings"] for e in entries)
    assert sum("the restorer changed nothing by 1000 grey level(s) or more" in line for line in logs) == 2


def test_evaluation_accuracy_chooses_among_the_vocabulary_daclip_learned(tmp_path, monkeypatch):
    """The accuracy column asks over the test set's types plus ``clean`` when DA-CLIP learned it (as the
    demo's classification report does), so an image called clean counts as a miss."""
    from irsde.inference.pipeline import classifier_vocabulary

    class Learned:
        vocabulary = ("noisy", "hazy", "low-light", "clean")

    class TenTypes:
        vocabulary = ("noisy", "hazy", "low-light")

    assert classifier_vocabulary(TEST_DEGRADATIONS, Learned()) == (*TEST_DEGRADATIONS, "clean")
    assert classifier_vocabulary(TEST_DEGRADATIONS, TenTypes()) == tuple(TEST_DEGRADATIONS)
    assert classifier_vocabulary(TEST_DEGRADATIONS, None) == tuple(TEST_DEGRADATIONS)
    assert classifier_vocabulary(["noisy", "clean"], Learned()) == ("noisy", "clean")  # never twice

    # Through evaluate(): an oracle DA-CLIP that calls bright images clean and dark ones noisy.
    data = write_paired_set(tmp_path / "val", count=2, size=24)
    asked: list[list[str]] = []

    class Oracle(CleanOrNoisyDaclip):
        vocabulary = ("noisy", "low-light", "clean")

        def classify_images(self, images, names):
            asked.append(list(names))
            return self.classify(images, list(names))

    import irsde.evaluation.evaluate as evaluation

    checkpoint = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    build = evaluation._build_pipeline

    def with_oracle(cfg):
        pipeline = build(cfg)
        pipeline.embedder = Oracle()
        return pipeline

    cfg = _test_config(
        tmp_path, checkpoint, data, "metrics.lpips=false", "metrics.fid=false", "save_images=false"
    )
    monkeypatch.setattr(evaluation, "_build_pipeline", with_oracle)
    results = evaluate(cfg, log=lambda _: None, progress=False)
    assert asked and all(names == [*TEST_DEGRADATIONS, "clean"] for names in asked)
    dark = [np.mean(read_image(p)) <= 0.5 for p in sorted((data / "noisy" / "LQ").glob("*.png"))]
    assert results["rows"]["noisy"]["accuracy"] == pytest.approx(np.mean(dark))
    assert results["rows"]["low-light"]["accuracy"] == 0.0  # never asked for, and clean is a miss
