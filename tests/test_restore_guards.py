"""Nothing lost, nothing silent: scripts/restore.py and scripts/test.py against unwritable outputs, full
disks, huge images, unvalidated sampler settings and suspicious outputs (issue 24)."""

from __future__ import annotations

import csv
import errno
import importlib.util
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from daclip.engine.errors import UserError
from daclip.engine.preflight import check_writable
from data.io import read_image, write_image
from data.paired import LQImageDataset
from irsde.diffusion.sde import IRSDE
from irsde.inference.pipeline import RestorationPipeline
from irsde.inference.restore import (
    NonFiniteOutputError,
    output_warning,
    restore_images,
)
from tests.conftest import TEST_DEGRADATIONS, write_paired_set, write_tiny_ir_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_guard_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _restore(*argv) -> int:
    return _script("restore").main([str(a) for a in argv])


def _photos(folder: Path, names=("a.png", "b.png", "c.png"), size=(16, 16)) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        write_image(folder / name, 0.2 + 0.6 * rng.random((*size, 3)).astype(np.float32))
    return folder


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if a restoration model is loaded (the checks must come first)."""
    loaded = []

    def refuse(*args, **kwargs):
        loaded.append(args)
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(RestorationPipeline, "from_checkpoint", classmethod(lambda cls, *a, **k: refuse(*a)))
    return loaded


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_ir_checkpoint(tmp_path_factory.mktemp("guard") / "ir.pt")


@pytest.fixture(scope="module")
def daclip_checkpoint(tmp_path_factory, tiny_daclip_checkpoint) -> Path:
    path = tmp_path_factory.mktemp("guard_daclip") / "ir.pt"
    return write_tiny_ir_checkpoint(path, daclip_checkpoint=str(tiny_daclip_checkpoint), context=True)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


# ----------------------------------------------------------------------------- 1: unwritable outputs


def test_check_writable_probes_by_creating_a_file(tmp_path, monkeypatch):
    check_writable(tmp_path / "new" / "deeper", "-o")  # missing folders are made later: fine
    assert not (tmp_path / "new").exists() and not list(tmp_path.iterdir())  # the probe left nothing
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match=r"a_file/sub \(-o\): .*a_file is a file, not a folder"):
        check_writable(tmp_path / "a_file" / "sub", "-o")

    def read_only(*args, **kwargs):  # a read-only file system refuses root too
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("daclip.engine.preflight.tempfile.mkstemp", read_only)
    with pytest.raises(UserError, match=r"output folder .*out \(output_root\): Read-only file system$"):
        check_writable(tmp_path / "out", "output_root")


@pytest.mark.parametrize("case", ["under a file", "read-only file system", "new folder on a read-only one"])
def test_restore_refuses_an_unwritable_output_before_loading_the_model(
    case, tmp_path, monkeypatch, capsys, checkpoint, no_model_load
):
    inputs = _photos(tmp_path / "photos")
    (tmp_path / "a_file").write_text("x")
    output = {
        "under a file": tmp_path / "a_file" / "out",
        "read-only file system": tmp_path / "ro",
        "new folder on a read-only one": tmp_path / "ro" / "new",
    }[case]
    reason = "is a file, not a folder"
    if case != "under a file":
        (tmp_path / "ro").mkdir()

        def mkstemp(*args, dir=None, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr("daclip.engine.preflight.tempfile.mkstemp", mkstemp)
        reason = "Read-only file system"
    assert _restore("-i", inputs, "-o", output, "--checkpoint", checkpoint, "--device", "cpu") == 2
    err = _one_line_error(capsys)
    assert f"{output} (-o)" in err and reason in err
    assert not no_model_load


def _chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_restore_refuses_an_immutable_folder_for_real(tmp_path, capsys, checkpoint, no_model_load):
    """chattr +i stops root too: no monkeypatching, the probe itself must fail."""
    inputs = _photos(tmp_path / "photos")
    locked = tmp_path / "locked"
    locked.mkdir()
    if not _chattr("+i", locked):
        pytest.skip("chattr +i is not available here (needs root and a file system that supports it)")
    try:
        for output in (locked, locked / "sub"):
            assert _restore("-i", inputs, "-o", output, "--checkpoint", checkpoint, "--device", "cpu") == 2
            err = _one_line_error(capsys)
            assert f"{output} (-o): Operation not permitted" in err
    finally:
        _chattr("-i", locked)
    assert not no_model_load


def _test_args(tmp_path: Path, checkpoint: Path, *overrides: str) -> list[str]:
    data = write_paired_set(tmp_path / "val", count=1, size=24)
    return [
        "-c",
        str(ROOT / "configs" / "test.yml"),
        f"model.checkpoint={checkpoint}",
        f"data.root={data}",
        f"data.degradations={TEST_DEGRADATIONS}",
        "device=cpu",
        *overrides,
    ]


def test_test_script_checks_output_root_and_every_pair_before_loading_the_model(
    tmp_path, monkeypatch, capsys, checkpoint, no_model_load
):
    (tmp_path / "a_file").write_text("x")
    test = _script("test")
    args = _test_args(tmp_path, checkpoint, f"output_root={tmp_path / 'a_file' / 'results'}")
    assert test.main(args) == 2
    assert "(output_root): " in _one_line_error(capsys)

    def mkstemp(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with monkeypatch.context() as patch:
        patch.setattr("daclip.engine.preflight.tempfile.mkstemp", mkstemp)
        assert test.main([*args[:-1], f"output_root={tmp_path / 'results'}"]) == 2
        assert _one_line_error(capsys).endswith("(output_root): Read-only file system")
    # A GT of another size than its LQ is found at start-up, not mid-evaluation.
    gt = tmp_path / "val" / "low-light" / "GT" / "img0.png"
    write_image(gt, np.zeros((24, 20, 3), dtype=np.float32))
    assert test.main([*args[:-1], f"output_root={tmp_path / 'results'}"]) == 2
    err = _one_line_error(capsys)
    assert "LQ and GT sizes differ" in err and str(gt) in err and "20x24" in err
    assert not no_model_load and not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- 2: full disks, honest predictions


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_what_was_written(
    tmp_path, monkeypatch, capsys, daclip_checkpoint
):
    inputs = _photos(tmp_path / "photos")
    out = tmp_path / "restored"
    import irsde.inference.restore as restore_module

    real_write = restore_module.write_image

    def full_after_a(path, image):
        if Path(path).name != "a.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, image)

    monkeypatch.setattr(restore_module, "write_image", full_after_a)
    args = ["--checkpoint", daclip_checkpoint, "--device", "cpu", "--no-contact-sheet"]
    assert _restore("-i", inputs, "-o", out, *args) == 2
    err = _one_line_error(capsys)
    assert f"could not write {out / 'b.png'}: No space left on device" in err
    assert read_image(out / "a.png").shape == (16, 16, 3) and not (out / "b.png").exists()
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["output"]).name for r in rows] == ["a.png"]  # only what this run wrote


def test_a_full_disk_before_any_image_leaves_the_old_contact_sheet_and_says_one_line(
    tmp_path, monkeypatch, capsys, daclip_checkpoint
):
    inputs = _photos(tmp_path / "photos")
    out = tmp_path / "restored"
    args = ["--checkpoint", daclip_checkpoint, "--device", "cpu"]
    assert _restore("-i", inputs, "-o", out, *args) == 0
    sheet = (out / "contact_sheet.png").read_bytes()
    capsys.readouterr()

    def full(path, image):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("irsde.inference.restore.write_image", full)  # the disk is full for everything
    monkeypatch.setattr("irsde.inference.restore.write_contact_sheets", full)
    assert _restore("-i", inputs, "-o", out, *args, "--overwrite") == 2
    err = _one_line_error(capsys)  # the image's error only, not a second one for the contact sheet
    assert f"could not write {out / 'a.png'}: No space left on device (0 image(s)" in err
    assert (out / "contact_sheet.png").read_bytes() == sheet  # still shows the folder as it is


def test_predictions_say_which_run_and_settings_made_each_image(tmp_path, capsys, daclip_checkpoint):
    inputs = _photos(tmp_path / "photos", names=("a.png", "b.png"))
    out = tmp_path / "restored"
    common = ["--checkpoint", daclip_checkpoint, "--device", "cpu", "--no-contact-sheet"]
    assert _restore("-i", inputs, "-o", out, *common, "--sampler", "posterior", "--steps", "2") == 0
    first = {Path(r["output"]).name: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert (
        _restore("-i", inputs / "a.png", "-o", out, *common, "--overwrite", "--sampler", "mr", "--steps", "1")
        == 0
    )
    rows = {Path(r["output"]).name: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert "sampler=posterior steps=2" in rows["b.png"]["settings"] and rows["b.png"] == first["b.png"]
    assert "sampler=mr steps=1 order=2" in rows["a.png"]["settings"]
    assert f"checkpoint={daclip_checkpoint}" in rows["a.png"]["settings"]
    assert rows["a.png"]["run"] and rows["a.png"]["run"] >= rows["b.png"]["run"]
    entries = {
        Path(e["output"]).name: e for e in json.loads((out / "predictions.json").read_text())["images"]
    }
    assert entries["a.png"]["settings"] == rows["a.png"]["settings"]
    assert entries["b.png"]["settings"] == rows["b.png"]["settings"]


def test_a_contact_sheet_that_cannot_be_written_is_an_error(tmp_path, monkeypatch, capsys, checkpoint):
    inputs = _photos(tmp_path / "photos", names=("a.png",))
    out = tmp_path / "restored"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("irsde.inference.restore.write_contact_sheets", full)
    assert _restore("-i", inputs, "-o", out, "--checkpoint", checkpoint, "--device", "cpu") == 2
    err = _one_line_error(capsys)
    assert f"could not write {out / 'contact_sheet.png'}: No space left on device" in err
    assert (out / "a.png").is_file()


def test_a_file_size_limit_for_real_is_one_line(tmp_path, checkpoint):
    """``ulimit -f``: the second, larger output exceeds it (Python ignores SIGXFSZ: EFBIG)."""
    inputs = tmp_path / "photos"
    rng = np.random.default_rng(0)
    write_image(inputs / "a.png", np.full((8, 8, 3), 0.5, dtype=np.float32))
    write_image(
        inputs / "b.png", rng.random((256, 256, 3)).astype(np.float32)
    )  # noise: its restoration is > 16 KB
    out = tmp_path / "restored"
    out.mkdir()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))

    command = [sys.executable, str(ROOT / "scripts" / "restore.py"), "-i", str(inputs), "-o", str(out)]
    command += ["--checkpoint", str(checkpoint), "--device", "cpu", "--sampler", "mr", "--steps", "1"]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (
        f"error: could not write {out / 'b.png'}: File too large (1 image(s) of this run written before it; "
        "files already there are unchanged)"
    ), done.stderr
    assert "Traceback" not in done.stderr and (out / "a.png").is_file() and not (out / "b.png").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


# ----------------------------------------------------------------------------- 3: the size guard


class LocalNet(nn.Module):
    """A small noise predictor (3x3 receptive field per layer)."""

    use_degra_context = use_image_context = False

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x, mu, t, **kwargs):
        return self.body(torch.cat([x - mu, mu], dim=1)) * 0.1


def test_an_image_over_max_pixels_is_restored_in_tiles_with_a_notice(tmp_path):
    write_image(tmp_path / "in" / "wide.png", np.full((40, 600, 3), 0.5, dtype=np.float32))
    pipeline = RestorationPipeline(LocalNet(), IRSDE(T=2), sampler="mr")
    widths = []
    pipeline.model.register_forward_hook(lambda module, inputs, output: widths.append(inputs[0].shape[-1]))
    lines = []
    records = restore_images(
        pipeline, LQImageDataset(tmp_path / "in"), tmp_path / "out", log=lines.append, max_pixels=20_000
    )
    assert len(records) == 1 and read_image(tmp_path / "out" / "wide.png").shape == (40, 600, 3)
    assert set(widths) == {256}  # 256-pixel tiles, never the whole 600
    notice = [line for line in lines if "tiles" in line]
    assert notice == [
        "wide.png: 600x40 (0.0 MP) is over the 0.0 MP restored in one piece (--max-pixels): restoring it in "
        "tiles of 256 pixels (--tile to choose the size)"
    ]
    assert "tile=256" in records[0]["settings"] and pipeline.tile is None  # for that image only
    widths.clear()
    restore_images(pipeline, LQImageDataset(tmp_path / "in"), tmp_path / "again", log=lines.append)
    assert set(widths) == {600}  # under the default limit: one piece


def test_restore_help_says_what_happens_over_max_pixels(capsys):
    with pytest.raises(SystemExit):
        _script("restore").main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-pixels" in text and "without --tile is restored in tiles of 256" in text


# ----------------------------------------------------------------------------- 4: silent garbage


def test_unvalidated_sampler_settings_are_a_warning_before_running(tmp_path, capsys):
    checkpoint = write_tiny_ir_checkpoint(
        tmp_path / "ir.pt", overrides=("train.val_sampler=mr", "train.val_steps=1")
    )
    inputs = _photos(tmp_path / "photos", names=("a.png",))
    common = ["-i", inputs, "--checkpoint", checkpoint, "--device", "cpu", "--no-contact-sheet"]
    assert _restore(*common, "-o", tmp_path / "o1") == 0
    assert "was validated with" not in capsys.readouterr().out  # the validated setting: nothing to say
    assert _restore(*common, "-o", tmp_path / "o2", "--sampler", "posterior", "--steps", "3") == 0
    out = capsys.readouterr().out.splitlines()
    warning = [line for line in out if line.startswith("warning: ir.pt")]
    assert warning == [
        "warning: ir.pt was validated with mr at 1 step(s) in training; posterior at 3 step(s) was never "
        "checked on it: look at the outputs before trusting them"
    ]
    assert out.index(warning[0]) < next(i for i, line in enumerate(out) if "a.png" in line)  # before running


class ConstantNet(nn.Module):
    """A one-pass restorer that returns a flat grey (or, with ``value`` 0, black) image."""

    use_degra_context = use_image_context = False

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))

    def forward(self, mu, **kwargs):
        return torch.zeros_like(mu) + self.value


def test_nearly_constant_or_clipped_outputs_are_warnings_naming_the_image(tmp_path):
    _photos(tmp_path / "in", names=("a.png", "b.png"))
    lines = []
    restore_images(
        RestorationPipeline(ConstantNet(0.5), None),
        LQImageDataset(tmp_path / "in"),
        tmp_path / "o",
        log=lines.append,
    )
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 2 and all("the restored image is nearly constant" in w for w in warnings)
    assert warnings[0].startswith("warning: a.png: ") and warnings[1].startswith("warning: b.png: ")
    normal = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    washed = (normal * 8).clamp(0, 1)  # most values at 1
    assert "clipped to white" in output_warning("x.png", normal, washed)
    assert output_warning("x.png", normal, normal * 0.9 + 0.05) is None
    assert output_warning("flat.png", torch.full((3, 8, 8), 0.5), torch.full((3, 8, 8), 0.5)) is None
    assert output_warning("night.png", torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)) is None  # a black input
    # A low-light input, a quarter of it black, that comes back mostly white (the off-default sampler
    # the issue found): the white end is judged on its own.
    dark = torch.rand(3, 8, 8) * 0.2
    dark[:, :4, :4] = 0.0
    white = torch.ones(3, 8, 8)
    white[:, 0, :] = 0.8
    assert "88% of the restored values are clipped to white (the input's: 0%)" in output_warning(
        "low.png", dark, white
    )


# ----------------------------------------------------------------------------- the NaN guard, audited


class OnePixelNaN(nn.Module):
    """A noise predictor that is finite everywhere but one pixel (of the first image in a batch)."""

    use_degra_context = use_image_context = False

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.1))

    def forward(self, x, mu, t, **kwargs):
        out = (x - mu) * self.scale
        out[0, 1, 3, 5] = float("nan")
        return out


def test_one_nan_pixel_or_one_nan_tile_is_caught(tmp_path):
    _photos(tmp_path / "in", names=("a.png",), size=(32, 48))
    for tile in (None, 16):  # with tiles: the NaN is in one tile only
        pipeline = RestorationPipeline(OnePixelNaN(), IRSDE(T=2), sampler="mr", tile=tile, tile_overlap=4)
        with pytest.raises(NonFiniteOutputError, match=r"a\.png gave a restored image with NaN"):
            restore_images(pipeline, LQImageDataset(tmp_path / "in"), tmp_path / "out", log=lambda _: None)
        assert not (tmp_path / "out" / "a.png").exists()


def test_nan_degradation_probabilities_behind_a_finite_restorer(tmp_path, tiny_daclip_checkpoint):
    from daclip.inference import DaCLIPSection, build_embedder

    embedder = build_embedder(DaCLIPSection(str(tiny_daclip_checkpoint)), "cpu")
    with torch.no_grad():
        for param in embedder.parameters():
            param.fill_(float("nan"))
    pipeline = RestorationPipeline(LocalNet(), IRSDE(T=2), embedder, sampler="mr")
    clip = dict(clip_size=embedder.image_size, clip_mean=embedder.mean, clip_std=embedder.std)
    _photos(tmp_path / "in", names=("a.png",))
    with pytest.raises(NonFiniteOutputError, match=r"a\.png gave degradation probabilities with NaN"):
        restore_images(
            pipeline,
            LQImageDataset(tmp_path / "in", **clip),
            tmp_path / "out",
            degradations=["noisy", "hazy"],
            log=lambda _: None,
        )
    assert not (tmp_path / "out" / "a.png").exists()


# ----------------------------------------------------------------------------- options and inputs


def test_tile_overlap_follows_the_tile_and_options_are_named(tmp_path, capsys, checkpoint, no_model_load):
    restore = _script("restore")
    base = ["-i", tmp_path, "-o", tmp_path / "o", "--checkpoint", checkpoint]
    assert restore.parse_args([*map(str, base), "--tile", "64"]).overlap == 16  # tile / 4
    assert restore.parse_args([*map(str, base), "--tile", "512"]).overlap == 64  # at most 64, as before
    with pytest.raises(SystemExit):
        restore.parse_args([*map(str, base), "--tile", "64", "--overlap", "64"])
    assert "argument --overlap: must be smaller than --tile (64), got 64" in capsys.readouterr().err
    inputs = _photos(tmp_path / "photos", names=("a.png",))
    assert _restore("-i", inputs, "-o", tmp_path / "out", "--checkpoint", checkpoint, "--steps", "1000") == 2
    assert _one_line_error(capsys) == f"error: --steps 1000: more than the 5 steps (T) of {checkpoint}"
    assert not no_model_load  # found before loading the model


def test_restore_says_what_it_skips_and_refuses_a_lossy_output(tmp_path, capsys, checkpoint, no_model_load):
    inputs = _photos(tmp_path / "photos", names=("a.png",))
    (inputs / "more").mkdir()
    (inputs / "gone.png").symlink_to(tmp_path / "missing.png")
    (inputs / "notes.txt").write_text("x")
    with pytest.raises(AssertionError, match="model was loaded"):  # the notice comes before the model
        _restore("-i", inputs, "-o", tmp_path / "out", "--checkpoint", checkpoint)
    assert capsys.readouterr().out.splitlines() == [
        f"not restored from {inputs}: 1 subfolder(s) (more); 1 broken link(s) (gone.png); 1 other file(s) "
        "(notes.txt) (only the images directly in the folder are read)"
    ]
    no_model_load.clear()
    for name in ("out.jpg", "out.JPEG", "out.webp"):
        assert _restore("-i", inputs / "a.png", "-o", tmp_path / name, "--checkpoint", checkpoint) == 2
        assert "is a lossy format" in _one_line_error(capsys) and not (tmp_path / name).exists()
    assert not no_model_load


def test_unknown_degradation_names_are_a_warning(tmp_path, capsys, daclip_checkpoint):
    inputs = _photos(tmp_path / "photos", names=("a.png",))
    args = ["--checkpoint", daclip_checkpoint, "--device", "cpu", "--no-contact-sheet", "--steps", "1"]
    assert (
        _restore("-i", inputs, "-o", tmp_path / "o", *args, "--degradations", "noisy", "foggy", "dark") == 0
    )
    out = capsys.readouterr().out
    assert "warning: --degradations foggy, dark: not among the degradations this model was trained on" in out
    assert _restore("-i", inputs, "-o", tmp_path / "o2", *args, "--degradations", "noisy", "hazy") == 0
    assert "--degradations" not in capsys.readouterr().out


def test_an_image_restores_the_same_wherever_it_is_in_the_batch(tmp_path):
    """Its noise depends on the image and the seed, not on its place in the batch (posterior: noise every step)."""
    rng = np.random.default_rng(3)
    same = (0.2 + 0.6 * rng.random((16, 16, 3))).astype(np.float32)
    for name in ("a.png", "c.png"):
        write_image(tmp_path / "in" / name, same)
    write_image(tmp_path / "in" / "b.png", (0.2 + 0.6 * rng.random((16, 16, 3))).astype(np.float32))
    pipeline = RestorationPipeline(LocalNet(), IRSDE(T=3), sampler="posterior")
    outputs = {}
    for batch_size in (1, 3):
        folder = tmp_path / f"out{batch_size}"
        restore_images(
            pipeline, LQImageDataset(tmp_path / "in"), folder, batch_size=batch_size, log=lambda _: None
        )
        outputs[batch_size] = {name: read_image(folder / name) for name in ("a.png", "b.png", "c.png")}
    assert np.array_equal(outputs[3]["a.png"], outputs[3]["c.png"])  # the same image, twice in one batch
    for name in ("a.png", "b.png", "c.png"):
        assert np.array_equal(outputs[1][name], outputs[3][name])  # alone or batched
    assert not np.array_equal(outputs[3]["a.png"], outputs[3]["b.png"])
    other_seed = tmp_path / "seed1"
    restore_images(pipeline, LQImageDataset(tmp_path / "in"), other_seed, seed=1, log=lambda _: None)
    assert np.abs(read_image(other_seed / "a.png") - outputs[1]["a.png"]).max() > 2 / 255  # the seed matters
