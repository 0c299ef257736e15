"""Paired and LQ-only datasets: pairing, sampling, cropping, augmentation, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.io import read_image, write_image
from data.paired import LQImageDataset, PairedDataset, find_pairs
from data.transforms import clip_transform


def _write_pair(root, degradation: str, name: str, gt: np.ndarray, lq_ext: str = ".png") -> None:
    """GT as given, LQ = 1 - GT (exact at 8 bits), so any mismatch of crop or flip shows."""
    write_image(root / degradation / "GT" / f"{name}.png", gt)
    write_image(root / degradation / "LQ" / f"{name}{lq_ext}", 1.0 - gt)


def _gt(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.float32) / 255.0


def _assert_paired(item: dict) -> None:
    torch.testing.assert_close(item["lq"], 1.0 - item["gt"], atol=1e-6, rtol=0)


def test_pairs_match_by_stem_across_extensions(tmp_path):
    _write_pair(tmp_path, "noisy", "a", _gt(8, 8, 0), lq_ext=".bmp")
    _write_pair(tmp_path, "noisy", "a-1", _gt(8, 8, 1))
    _write_pair(tmp_path, "noisy", "b", _gt(8, 8, 2))
    pairs = find_pairs(tmp_path, "noisy")
    assert [p.name for p in pairs] == ["a", "a-1", "b"]
    assert all(p.lq_path.stem == p.gt_path.stem for p in pairs)
    dataset = PairedDataset(tmp_path, ["noisy"], mode="eval", clip_size=16)
    for item in dataset:
        _assert_paired(item)


def test_equal_counts_with_different_names_are_not_paired_by_position(tmp_path):
    # Zipping two sorted listings (the official loaders) would silently pair c with b here.
    _write_pair(tmp_path, "noisy", "a", _gt(8, 8, 0))
    write_image(tmp_path / "noisy" / "LQ" / "c.png", _gt(8, 8, 1))
    write_image(tmp_path / "noisy" / "GT" / "b.png", _gt(8, 8, 2))
    with pytest.raises(ValueError, match=r"1 LQ without GT \['c.png'\], 1 GT without LQ \['b.png'\]"):
        find_pairs(tmp_path, "noisy")


def test_unmatched_files_are_listed(tmp_path):
    _write_pair(tmp_path, "noisy", "a", _gt(8, 8, 0))
    write_image(tmp_path / "noisy" / "LQ" / "only_lq.png", _gt(8, 8, 1))
    for i in range(7):
        write_image(tmp_path / "noisy" / "GT" / f"only_gt{i}.png", _gt(8, 8, 1))
    with pytest.raises(ValueError) as info:
        PairedDataset(tmp_path, ["noisy"], mode="eval")
    message = str(info.value)
    assert "1 LQ without GT ['only_lq.png']" in message
    assert "7 GT without LQ" in message and "only_gt0.png" in message and "only_gt6.png" not in message


def test_missing_degradation_folder_and_subfolder(tmp_path):
    _write_pair(tmp_path, "noisy", "a", _gt(8, 8, 0))
    with pytest.raises(FileNotFoundError, match="degradation 'hazy'.*hazy"):
        PairedDataset(tmp_path, ["noisy", "hazy"], mode="eval")
    (tmp_path / "rainy" / "LQ").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="GT folder"):
        PairedDataset(tmp_path, ["rainy"], mode="eval")
    with pytest.raises(FileNotFoundError, match="root"):
        PairedDataset(tmp_path / "nowhere", ["noisy"], mode="eval")
    with pytest.raises(ValueError, match="mode"):
        PairedDataset(tmp_path, ["noisy"], mode="test")


def test_size_mismatch_names_both_files(tmp_path):
    write_image(tmp_path / "noisy" / "GT" / "a.png", _gt(8, 8, 0))
    write_image(tmp_path / "noisy" / "LQ" / "a.png", _gt(8, 10, 0))
    dataset = PairedDataset(tmp_path, ["noisy"], mode="eval")
    with pytest.raises(ValueError, match=r"LQ/a\.png.*GT/a\.png"):
        dataset[0]


def test_eval_mode_every_pair_once_in_order_full_size(tmp_path):
    for d, deg in enumerate(("snowy", "hazy")):
        for n in (2, 0, 1):
            _write_pair(tmp_path, deg, f"img{n}", _gt(10 + n, 12, 10 * d + n))
    dataset = PairedDataset(tmp_path, ["snowy", "hazy"], mode="eval", patch_size=4, clip_size=16)
    items = list(dataset)
    assert [(i["degradation"], i["lq_path"].split("/")[-1]) for i in items] == [
        (deg, f"img{n}.png") for deg in ("snowy", "hazy") for n in range(3)
    ]
    assert [i["degradation_index"] for i in items] == [0, 0, 0, 1, 1, 1]
    assert [tuple(i["gt"].shape) for i in items[:3]] == [(3, 10, 12), (3, 11, 12), (3, 12, 12)]
    for item in items:
        _assert_paired(item)
        torch.testing.assert_close(item["lq_clip"], clip_transform(read_image(item["lq_path"]), 16))
    assert [dataset.degradation_of(i) for i in range(len(dataset))] == [i["degradation"] for i in items]
    assert dataset.eval_indices() == {"snowy": [0, 1, 2], "hazy": [3, 4, 5]}
    assert dataset.eval_indices(2) == {"snowy": [0, 1], "hazy": [3, 4]}


def test_keyed_training_draws_are_reproducible(tmp_path):
    for deg in ("snowy", "hazy"):
        for n in range(3):
            _write_pair(tmp_path, deg, f"img{n}", _gt(24, 24, n + 7 * len(deg)))
    dataset = PairedDataset(tmp_path, ["snowy", "hazy"], mode="train", patch_size=8, clip_size=16)
    first = dataset.get_item(0, seed=(3, 41))
    dataset[0], dataset[1]  # unrelated draws in between must not matter
    again = dataset.get_item(0, seed=(3, 41))
    torch.testing.assert_close(first["lq"], again["lq"], rtol=0, atol=0)
    assert first["lq_path"] == again["lq_path"]
    others = [dataset.get_item(0, seed=(3, k)) for k in range(8)]
    assert any(not torch.equal(o["gt"], first["gt"]) for o in others)
    with pytest.raises(ValueError, match="eval mode"):
        dataset.degradation_of(0)


def test_train_mode_picks_degradations_uniformly(tmp_path):
    _write_pair(tmp_path, "rare", "only", _gt(8, 8, 0))
    for n in range(9):
        _write_pair(tmp_path, "common", f"c{n}", _gt(8, 8, n + 1))
    dataset = PairedDataset(tmp_path, ["rare", "common"], mode="train", patch_size=8, clip_size=8, length=300)
    assert len(dataset) == 300
    names = [dataset[i]["degradation"] for i in range(len(dataset))]
    # Uniform over pairs would give 10% "rare"; uniform over types gives 50%.
    assert 0.4 < names.count("rare") / len(names) < 0.6
    assert len(PairedDataset(tmp_path, ["rare", "common"], mode="train", patch_size=8)) == 10


def test_train_crop_and_all_eight_augmentations_applied_to_both(tmp_path):
    gt = _gt(12, 12, 0)
    _write_pair(tmp_path, "noisy", "a", gt)
    full = PairedDataset(tmp_path, ["noisy"], mode="train", patch_size=None, clip_size=8, length=80)
    seen = set()
    gt_tensor = torch.from_numpy(gt).permute(2, 0, 1)
    dihedral = {
        (h, v, t): (lambda x, h=h, v=v, t=t: _transform(x, h, v, t))
        for h in (0, 1)
        for v in (0, 1)
        for t in (0, 1)
    }
    for i in range(len(full)):
        item = full[i]
        _assert_paired(item)
        matches = [
            key for key, fn in dihedral.items() if torch.allclose(fn(gt_tensor), item["gt"], atol=1e-6)
        ]
        assert matches, "the output is a flip/rotation of the input"
        seen.add(tuple(item["gt"].flatten()[:5].tolist()))
    assert len(seen) == 8, "all eight flip/rotation combinations occur"

    patches = PairedDataset(
        tmp_path, ["noisy"], mode="train", patch_size=5, augment=False, clip_size=8, length=20
    )
    corners = set()
    for i in range(len(patches)):
        item = patches[i]
        assert item["gt"].shape == (3, 5, 5) and item["lq_clip"].shape == (3, 8, 8)
        _assert_paired(item)
        # A crop without augmentation is a window of the GT image.
        found = [
            (y, x)
            for y in range(8)
            for x in range(8)
            if torch.allclose(gt_tensor[:, y : y + 5, x : x + 5], item["gt"], atol=1e-6)
        ]
        assert found
        corners.add(found[0])
    assert len(corners) > 5, "crops are random"


def test_clip_input_patch_or_whole_image(tmp_path):
    gt = _gt(16, 16, 3)
    _write_pair(tmp_path, "noisy", "a", gt)
    whole = clip_transform(read_image(tmp_path / "noisy" / "LQ" / "a.png"), 8)
    kwargs = dict(mode="train", patch_size=6, augment=False, clip_size=8, length=6)
    for i in range(6):
        item = PairedDataset(tmp_path, ["noisy"], clip_input="image", **kwargs)[i]
        torch.testing.assert_close(item["lq_clip"], whole)  # whatever the crop, as at test time
        item = PairedDataset(tmp_path, ["noisy"], clip_input="patch", **kwargs).get_item(i, seed=i)
        lq_patch = item["lq"].permute(1, 2, 0).numpy()
        torch.testing.assert_close(item["lq_clip"], clip_transform(lq_patch, 8))  # the crop (official)
        assert not torch.allclose(item["lq_clip"], whole)
    with pytest.raises(ValueError, match="clip_input"):
        PairedDataset(tmp_path, ["noisy"], clip_input="crop", **kwargs)


def _transform(x: torch.Tensor, hflip: int, vflip: int, transpose: int) -> torch.Tensor:
    if hflip:
        x = x.flip(2)
    if vflip:
        x = x.flip(1)
    if transpose:
        x = x.transpose(1, 2)
    return x


def test_small_images_padded_or_rejected(tmp_path):
    _write_pair(tmp_path, "noisy", "small", _gt(6, 9, 0))
    padded = PairedDataset(tmp_path, ["noisy"], mode="train", patch_size=16, augment=False, clip_size=8)
    item = padded[0]
    assert item["lq"].shape == (3, 16, 16)
    _assert_paired(item)
    reject = PairedDataset(tmp_path, ["noisy"], mode="train", patch_size=16, small_images="reject")
    with pytest.raises(ValueError, match=r"smaller than patch_size 16.*small\.png is 9x6"):
        reject[0]


def test_sampling_is_reproducible_and_workers_differ(tmp_path):
    for n in range(6):
        _write_pair(tmp_path, "noisy", f"a{n}", _gt(16, 16, n))
        _write_pair(tmp_path, "hazy", f"b{n}", _gt(16, 16, 10 + n))

    def make() -> PairedDataset:
        return PairedDataset(tmp_path, ["noisy", "hazy"], mode="train", patch_size=8, clip_size=8, length=16)

    first = [make()[i]["gt"] for i in range(4)]
    second = [make()[i]["gt"] for i in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))

    def run() -> list[torch.Tensor]:
        torch.manual_seed(123)
        loader = DataLoader(make(), batch_size=4, num_workers=2)
        return [batch["gt"] for batch in loader]

    batches = run()
    assert [b.shape for b in batches] == [(4, 3, 8, 8)] * 4
    assert all(torch.equal(a, b) for a, b in zip(batches, run())), "same torch seed, same batches"
    # Worker 0 makes batches 0 and 2, worker 1 batches 1 and 3: different RNG streams.
    assert not torch.equal(batches[0], batches[1])


def test_lq_image_dataset_folder_and_file(tmp_path):
    write_image(tmp_path / "in" / "b.png", _gt(10, 14, 0))
    write_image(tmp_path / "in" / "a.jpg", _gt(20, 8, 1))
    dataset = LQImageDataset(tmp_path / "in", clip_size=16)
    assert [item["path"].split("/")[-1] for item in dataset] == ["a.jpg", "b.png"]
    assert dataset[1]["lq"].shape == (3, 10, 14) and dataset[1]["lq_clip"].shape == (3, 16, 16)
    single = LQImageDataset(tmp_path / "in" / "b.png", clip_size=16)
    assert len(single) == 1
    torch.testing.assert_close(single[0]["lq"], dataset[1]["lq"])
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        LQImageDataset(tmp_path / "nothing.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        LQImageDataset(tmp_path / "empty")


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_errors_in_dataloader_workers_name_the_file(tmp_path, capsys, workers):
    """A corrupt image or an LQ/GT size mismatch read in a worker process is still one line naming the file."""
    from daclip.engine.cli import run_main
    from data.io import ImageReadError

    _write_pair(tmp_path, "noisy", "a", _gt(8, 8, 0))
    _write_pair(tmp_path, "noisy", "b", _gt(8, 8, 1))
    raw = (tmp_path / "noisy" / "LQ" / "b.png").read_bytes()
    (tmp_path / "noisy" / "LQ" / "b.png").write_bytes(raw[: len(raw) // 2])  # truncated
    dataset = PairedDataset(tmp_path, ["noisy"], mode="eval")
    loader = DataLoader(dataset, batch_size=1, num_workers=workers)

    with pytest.raises(ImageReadError) as caught:
        list(loader)
    assert str(caught.value).startswith("cannot read image ") and "b.png" in str(caught.value)
    assert run_main(lambda: list(loader)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LQ/b.png" in err and "Caught" not in err, err

    # A ValueError from a worker (not our exception type) is unwrapped by the scripts' reporter too.
    write_image(tmp_path / "noisy" / "LQ" / "b.png", _gt(6, 8, 1))
    assert run_main(lambda: list(DataLoader(dataset, batch_size=1, num_workers=workers))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: LQ and GT sizes differ: ") and "LQ/b.png is 8x6" in err, err


def test_clean_fraction_makes_identity_pairs_that_daclip_sees_clean(tmp_path):
    for i in range(3):
        _write_pair(tmp_path, "noisy", f"n{i}", _gt(24, 20, i))
        _write_pair(tmp_path, "hazy", f"h{i}", _gt(24, 20, 10 + i))
    kwargs = dict(mode="train", patch_size=16, clip_size=16, clip_input="image", length=400)
    dataset = PairedDataset(tmp_path, ["noisy", "hazy"], clean_fraction=0.3, **kwargs)
    items = [dataset.get_item(i, seed=(0, i)) for i in range(400)]
    clean = [item for item in items if item["degradation"] == "clean"]
    assert 0.22 < len(clean) / len(items) < 0.38  # 0.3 +- 4 standard deviations of a binomial
    for item in clean:
        assert item["degradation_index"] == -1 and item["lq_path"] == item["gt_path"]
        assert torch.equal(item["lq"], item["gt"])  # the restorer must give the input back
        whole_gt = read_image(item["gt_path"])  # DA-CLIP sees the whole clean image, not an LQ one
        torch.testing.assert_close(item["lq_clip"], clip_transform(whole_gt, 16))
    for item in items:
        if item["degradation"] != "clean":
            _assert_paired(item)  # the other samples stay degraded pairs
    # 0 keeps the random stream of runs made before the option existed
    plain = PairedDataset(tmp_path, ["noisy", "hazy"], **kwargs)
    zero = PairedDataset(tmp_path, ["noisy", "hazy"], clean_fraction=0.0, **kwargs)
    for i in range(20):
        a, b = plain.get_item(i, seed=(0, i)), zero.get_item(i, seed=(0, i))
        assert a["lq_path"] == b["lq_path"] and torch.equal(a["lq"], b["lq"])
    with pytest.raises(ValueError, match="clean_fraction"):
        PairedDataset(tmp_path, ["noisy"], clean_fraction=1.0, **kwargs)


def test_clean_dark_shows_a_share_of_the_clean_pairs_as_a_dark_noise_free_exposure(tmp_path):
    for i in range(3):
        _write_pair(tmp_path, "noisy", f"n{i}", _gt(24, 20, i))
    kwargs = dict(mode="train", patch_size=16, clip_size=16, clip_input="image", length=300, augment=False)
    dataset = PairedDataset(tmp_path, ["noisy"], clean_fraction=0.5, clean_dark=0.5, **kwargs)
    items = [dataset.get_item(i, seed=(0, i)) for i in range(300)]
    clean = [item for item in items if item["degradation"] == "clean"]
    # The photos are uniform noise in [0, 1] (a 16-px crop peaks near 1); a dark exposure is at most
    # gain 0.9 times the photo (and gamma >= 1.5), so it peaks below 0.9.
    peaks = [float(item["gt"].max()) for item in clean]
    assert all(torch.equal(item["lq"], item["gt"]) for item in clean)  # still identity pairs
    assert all(p < 0.9 or p > 0.95 for p in peaks)  # dark, or the photo itself
    assert 0.3 < sum(p < 0.9 for p in peaks) / len(clean) < 0.7  # about half of them dark
    with pytest.raises(ValueError, match="clean_dark"):
        PairedDataset(tmp_path, ["noisy"], clean_fraction=0.5, clean_dark=1.5, **kwargs)
