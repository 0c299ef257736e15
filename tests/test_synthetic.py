"""On-the-fly synthesis: the config, the draws, both item kinds and the keyed randomness."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.degradations import CDD11_COMBINATIONS
from data.io import write_image
from data.paired import PairedDataset
from data.synthetic import (
    SynthesisConfig,
    SyntheticCaptionDataset,
    SyntheticPairedDataset,
    find_clean_images,
    synthetic_collate,
)
from tests.conftest import write_paired_set

CDD = ["low-light", "hazy", "rainy", "snowy"]


@pytest.fixture
def photos(tmp_path):
    """Five small clean photos, two in a subfolder, plus files that are not photos."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    for i, sub in enumerate(["", "", "", "trip/", "trip/"]):
        write_image(folder / f"{sub}p{i}.png", rng.random((20 + 2 * i, 24, 3)))
    (folder / "notes.txt").write_text("not a photo")
    write_image(folder / ".hidden" / "x.png", rng.random((8, 8, 3)))
    return folder


class Keyed(Dataset):
    """What the trainers' KeyedDataset does: a packed (draw_key, index) -> get_item(index, (seed, key))."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, packed: int):
        draw_key, index = divmod(packed, len(self.dataset))
        return self.dataset.get_item(index, seed=(self.seed, draw_key))


class Packed(Sampler[int]):
    """Draw keys ``start, start + 1, ...`` over a fixed order of indices (one rank, one epoch)."""

    def __init__(self, order: list[int], start: int = 0) -> None:
        self.order, self.start = order, start

    def __len__(self) -> int:
        return len(self.order) - self.start

    def __iter__(self):
        n = len(self.order)
        return iter(key * n + self.order[key] for key in range(self.start, n))


def _batches(dataset, seed: int, order: list[int], start: int = 0, workers: int = 0) -> list[dict]:
    loader = DataLoader(
        Keyed(dataset, seed),
        batch_size=2,
        sampler=Packed(order, start),
        num_workers=workers,
        collate_fn=synthetic_collate,
    )
    return list(loader)


# ----------------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"probabilities": {"rainy": -1.0}}, "data.synthesis.probabilities.rainy: a weight must be >= 0"),
        ({"probabilities": {"rainy": float("nan")}}, "data.synthesis.probabilities.rainy: expected a finite"),
        ({"probabilities": {n: 0.0 for n in CDD}}, "data.synthesis.probabilities: every weight is 0"),
        ({"probabilities": {"foggy": 1.0}}, "data.synthesis.probabilities.foggy: not one of the types"),
        ({"types": ["hazy", "foggy"]}, "data.synthesis.types: unknown degradation 'foggy'; valid: shadowed"),
        ({"types": ["hazy", "hazy"]}, "data.synthesis.types: ['hazy'] listed twice"),
        ({"params": {"rainy": {"densty": 0.1}}}, "data.synthesis.params.rainy.densty: unknown parameter"),
        ({"params": {"noisy": {"sigma": 5}}}, "data.synthesis.params.noisy: not one of the types"),
        ({"num_types_probs": [0.5, 0.2, 0.2]}, "data.synthesis.num_types_probs: probabilities must sum to 1"),
        ({"num_types_probs": [0.5, 0.5]}, "data.synthesis.num_types_probs: expected 3 probabilities"),
        ({"max_types": 4}, "data.synthesis.max_types: must be 1 to 3"),
        ({"exclusive": [["rainy", "sleet"]]}, "data.synthesis.exclusive[0]: unknown degradation 'sleet'"),
        (  # only rainy and snowy may be drawn, and never together: two types are impossible
            {"probabilities": {"low-light": 0, "hazy": 0}, "max_types": 2, "num_types_probs": [0.5, 0.5]},
            "data.synthesis.num_types_probs: 2 types have probability 0.5",
        ),
    ],
)
def test_config_errors_are_one_line_and_name_the_key(settings, message):
    config = SynthesisConfig(**{"types": CDD, **settings})
    with pytest.raises(ValueError) as err:
        config.validate()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="^train.synth"):
        config.validate("train.synth")


def test_cdd11_config_draws_exactly_the_cdd11_sets_with_the_documented_probabilities():
    config = SynthesisConfig(types=CDD)
    config.validate()
    assert sorted(config.combinations()) == sorted(CDD11_COMBINATIONS)  # rain and snow never together
    weighted = SynthesisConfig(
        types=CDD, probabilities={"hazy": 3.0, "low-light": 0.0}, max_types=2, num_types_probs=[0.75, 0.25]
    )
    rng = np.random.default_rng(0)
    counts = Counter(weighted.draw(rng) for _ in range(4000))
    # One type (0.75): weight / sum = 3/5, 1/5, 1/5; two types (0.25): product of weights over
    # {hazy+rainy: 3, hazy+snowy: 3} (rainy+snowy excluded), so 1/2 each.
    expected = {
        ("hazy",): 0.75 * 0.6,
        ("rainy",): 0.75 * 0.2,
        ("snowy",): 0.75 * 0.2,
        ("hazy", "rainy"): 0.125,
        ("hazy", "snowy"): 0.125,
    }
    assert set(counts) == set(expected)
    for combo, p in expected.items():
        assert abs(counts[combo] / 4000 - p) < 0.03, combo


# ----------------------------------------------------------------------------- stage 2 items


def test_paired_items_match_paired_dataset_and_cover_every_cdd11_chain(tmp_path, photos):
    reference = PairedDataset(
        write_paired_set(tmp_path / "paired", size=24), ["noisy", "low-light"], mode="train", patch_size=16
    )
    reference.clip_size = 16
    synthetic = SyntheticPairedDataset(photos, SynthesisConfig(types=CDD), patch_size=16, clip_size=16)
    assert len(synthetic) == 5 and len(synthetic.images) == 5  # recursive, hidden and non-images skipped
    item, expected = synthetic[0], reference[0]
    assert set(expected) <= set(item)
    for key in ("lq", "gt", "lq_clip"):
        assert item[key].shape == expected[key].shape and item[key].dtype == expected[key].dtype, key
    seen = set()
    for key in range(60):  # every CDD-11 set shows up, each image valid
        item = synthetic.get_item(key % 5, seed=(1, key))
        names = tuple(item["degradations"])
        seen.add(names)
        assert item["degradation"] == "+".join(names)
        assert synthetic.combination_names[item["degradation_index"]] == item["degradation"]
        assert item["multi_hot"].tolist() == [float(n in names) for n in CDD]
        for image in (item["lq"], item["gt"]):
            assert image.shape == (3, 16, 16) and torch.isfinite(image).all()
            assert image.min() >= 0 and image.max() <= 1
        assert not torch.equal(item["lq"], item["gt"])
    assert seen == set(CDD11_COMBINATIONS)


def test_crop_flip_and_clip_input_follow_paired_dataset(photos):
    whole = SyntheticPairedDataset(photos, SynthesisConfig(types=["hazy"]), patch_size=None, augment=False)
    cropped = SyntheticPairedDataset(photos, SynthesisConfig(types=["hazy"]), patch_size=16, augment=False)
    a, b = whole.get_item(2, seed=(0, 7)), cropped.get_item(2, seed=(0, 7))
    assert a["gt"].shape == (3, 24, 24)
    # The crop is a window of the same degraded image ("image" mode degrades before cropping).
    windows = [
        (top, left)
        for top in range(9)
        for left in range(9)
        if torch.equal(a["lq"][:, top : top + 16, left : left + 16], b["lq"])
        and torch.equal(a["gt"][:, top : top + 16, left : left + 16], b["gt"])
    ]
    assert len(windows) == 1
    image_clip = SyntheticPairedDataset(
        photos, SynthesisConfig(types=["hazy"]), patch_size=16, augment=False, clip_input="image"
    )
    assert torch.equal(image_clip.get_item(2, seed=(0, 7))["lq_clip"], a["lq_clip"])
    patch = SyntheticPairedDataset(photos, SynthesisConfig(types=["hazy"]), patch_size=16, degrade_at="patch")
    assert patch.get_item(2, seed=(0, 7))["lq"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="needs clip_input='patch'"):
        SyntheticPairedDataset(photos, degrade_at="patch", clip_input="image")
    with pytest.raises(ValueError, match="smaller than patch_size 64"):
        SyntheticPairedDataset(photos, patch_size=64, small_images="reject")[0]


# ----------------------------------------------------------------------------- keyed randomness


def test_a_sample_is_a_function_of_seed_and_draw_key_in_any_worker(photos):
    config = SynthesisConfig(types=CDD)
    dataset = SyntheticPairedDataset(photos, config, patch_size=16, clip_size=16, length=6)
    order = [3, 0, 5, 1, 4, 2]
    in_main = _batches(dataset, 11, order)
    in_workers = _batches(
        SyntheticPairedDataset(photos, config, patch_size=16, clip_size=16, length=6), 11, order, workers=2
    )
    assert len(in_main) == len(in_workers) == 3
    for x, y in zip(in_main, in_workers):
        assert x["degradations"] == y["degradations"] and x["degradation"] == y["degradation"]
        for key in ("lq", "gt", "lq_clip", "multi_hot", "degradation_index"):
            assert torch.equal(x[key], y[key]), key
    # Without a key, item i uses draw key i.
    assert torch.equal(dataset[4]["lq"], dataset.get_item(4, seed=(0, 4))["lq"])


def test_draw_keys_runs_and_ranks_give_distinct_samples(photos):
    dataset = SyntheticPairedDataset(photos, SynthesisConfig(types=CDD), patch_size=16, clip_size=16)
    # Two ranks of one step see the same index under different draw keys; other runs use other seeds.
    samples = [dataset.get_item(1, seed=s) for s in [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0)]]
    for i in range(len(samples)):
        for j in range(i):
            assert not torch.equal(samples[i]["lq"], samples[j]["lq"]), (i, j)
    assert len({s["degradation"] for s in samples}) > 1


def test_a_resumed_stream_equals_the_tail_of_the_full_stream(photos):
    config = SynthesisConfig(types=CDD)
    order = [4, 2, 0, 1, 3, 5, 7, 6]
    full = _batches(SyntheticPairedDataset(photos, config, patch_size=16, clip_size=16, length=8), 3, order)
    # A fresh dataset (a restarted process) starting at draw key 4, as a resumed run does.
    resumed = _batches(
        SyntheticPairedDataset(photos, config, patch_size=16, clip_size=16, length=8), 3, order, start=4
    )
    assert len(full) == 4 and len(resumed) == 2
    for x, y in zip(full[2:], resumed):
        assert x["degradations"] == y["degradations"]
        assert torch.equal(x["lq"], y["lq"]) and torch.equal(x["gt"], y["gt"])


# ----------------------------------------------------------------------------- stage 1 items


def test_caption_items_from_a_csv_carry_caption_text_and_multi_hot(tmp_path, photos):
    csv_path = tmp_path / "clean.csv"
    csv_path.write_text("filepath\ttitle\nphotos/p0.png\ta red door: at night\nphotos/trip/p3.png\t\n")
    images = find_clean_images(csv_path)
    assert [(i.path.name, i.caption) for i in images] == [("p0.png", "a red door: at night"), ("p3.png", "")]
    assert find_clean_images(csv_path, missing_caption="stem")[1].caption == "p3"
    config = SynthesisConfig(types=CDD, num_types_probs=[0.0, 0.0, 1.0])
    dataset = SyntheticCaptionDataset(csv_path, config, image_size=16, length=4)
    assert dataset.degradation_texts == ("hazy, rainy, low-light", "hazy, snowy, low-light")
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=synthetic_collate)))
    assert batch["image"].shape == (4, 3, 16, 16) and torch.isfinite(batch["image"]).all()
    assert batch["caption"] == ["a red door: at night", "", "a red door: at night", ""]
    for text, names, hot, index in zip(
        batch["degradation_text"], batch["degradations"], batch["multi_hot"], batch["degradation_index"]
    ):
        assert text == ", ".join(names) and len(names) == 3 and hot.sum() == 3
        assert dataset.degradation_texts[index] == text
    # The image is the CLIP transform of the degraded photo, not of the clean one.
    clean = SyntheticCaptionDataset(
        csv_path, SynthesisConfig(types=["hazy"], params={"hazy": {"beta": 0.0}}), image_size=16
    )
    assert not torch.equal(dataset[0]["image"], clean[0]["image"])
    with pytest.raises(ValueError, match="no 'filepath' column"):
        (tmp_path / "bad.csv").write_text("path,title\nx.png,a\n")
        find_clean_images(tmp_path / "bad.csv")


def test_clean_fraction_leaves_samples_undegraded_and_keeps_the_stream_at_zero(photos):
    config = SynthesisConfig(types=["noisy", "hazy"])
    kwargs = dict(patch_size=12, clip_size=16, length=300, seed=3)
    dataset = SyntheticPairedDataset(photos, config, clean_fraction=0.25, **kwargs)
    items = [dataset[i] for i in range(300)]
    clean = [item for item in items if item["degradation"] == "clean"]
    assert 0.17 < len(clean) / len(items) < 0.33  # 0.25 +- 3.5 standard deviations
    for item in clean:
        assert torch.equal(item["lq"], item["gt"]) and item["degradations"] == []
        assert item["degradation_index"] == -1 and item["multi_hot"].sum() == 0
    assert all(not torch.equal(i["lq"], i["gt"]) for i in items if i["degradation"] != "clean")
    batch = synthetic_collate(items[:8])  # clean and degraded samples batch together
    assert batch["lq"].shape == (8, 3, 12, 12)
    plain = SyntheticPairedDataset(photos, config, **kwargs)  # 0: the stream of earlier runs
    for i in range(10):
        assert torch.equal(
            plain[i]["lq"], SyntheticPairedDataset(photos, config, clean_fraction=0.0, **kwargs)[i]["lq"]
        )


@pytest.mark.parametrize("kind", ["paired", "caption"])
def test_the_image_cache_changes_no_sample_and_keeps_to_its_budget(photos, kind) -> None:
    """``cache_mb``: every item equals the uncached one (all ten types, clean and dark-clean draws, so a
    generator writing into its input would fail on the read-only cached photo), and a budget smaller
    than the set caches only the photos that fit."""
    config = SynthesisConfig(max_types=2, num_types_probs=[0.5, 0.5])
    if kind == "paired":
        make = lambda cache: SyntheticPairedDataset(  # noqa: E731
            photos, config, patch_size=16, clip_size=16, length=30, clean_fraction=0.2, clean_dark=0.5,
            cache_mb=cache,
        )  # fmt: skip
    else:
        make = lambda cache: SyntheticCaptionDataset(  # noqa: E731
            photos, config, image_size=16, length=30, clean_fraction=0.2, clip_view="crop",
            crops_per_sample=2, cache_mb=cache,
        )  # fmt: skip
    plain, cached = make(0.0), make(64.0)
    for epoch in range(2):  # the second pass reads every photo from the cache
        for i in range(30):
            a, b = plain.get_item(i, seed=(0, epoch)), cached.get_item(i, seed=(0, epoch))
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], torch.Tensor):
                    assert torch.equal(a[key], b[key]), key
                else:
                    assert a[key] == b[key], key
    assert len(cached._cache) == 5 and not plain._cache
    one_photo = next(iter(cached._cache.values())).nbytes
    small = make(1.5 * one_photo / 2**20)  # room for one of the five (they are about the same size)
    for i in range(10):
        small.get_item(i)
    assert len(small._cache) == 1
    with pytest.raises(ValueError, match="cache_mb"):
        make(-1.0)
