"""On-the-fly degradation synthesis: clean photos in, freshly degraded training samples out.

Each sample draws one to three degradation types (:class:`SynthesisConfig`), applies them to a clean
photo with :func:`data.degradations.degrade_chain` (in the physical order
:data:`data.degradations.CHAIN_ORDER`) and serves

* stage 2: :class:`SyntheticPairedDataset`, restoration pairs with the item keys of
  :class:`data.paired.PairedDataset` in train mode;
* stage 1: :class:`SyntheticCaptionDataset`, the degraded image for CLIP with the clean caption and
  a per-sample degradation text (``"hazy, rainy"``).

Randomness. A sample is a pure function of ``(run_seed, draw_key, index)``:
``get_item(index, seed=(run_seed, draw_key))`` seeds a NumPy generator with
``SeedSequence([run_seed, draw_key, index])``, as the trainers' ``KeyedDataset``/``EpochSampler``
pass it (``draw_key``: the sample's global position in the run). So a sample is the same in any
DataLoader worker, ranks (which see different draw keys) draw different samples, and a resumed run
continues the same stream. The global RNGs are never used. ``dataset[i]`` uses ``draw_key = i``.

Clean photos come from a folder (searched recursively) or a CSV with a ``filepath`` column and an
optional ``title`` column holding the clean caption. :func:`make_mixed_dataset` writes a fixed test
set of combinations (CDD-11's by default) in the paired layout. Nothing else is written.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from data import CLEAN, DEFAULT_DEGRADATIONS
from data.degradations import (
    CDD11_COMBINATIONS,
    CHAIN_ORDER,
    COMBINATION_SEPARATOR,
    DEGRADATIONS,
    canonical_order,
    combination_name,
    dark_exposure,
    degrade_chain,
    parameter_names,
)
from data.io import is_image_file, read_image
from data.paired import (
    MANIFEST_NAME,
    _by_stem,
    _limit_size,
    _pad_to,
    check_clip_input,
    check_output_folder,
    claim_output_root,
    finish_output_root,
    pair_seed,
    pair_tensors,
    write_pairs,
)
from data.transforms import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    at_least,
    augment_photo,
    check_photo_augmentations,
    clip_transform,
    crop_views,
    cut_view,
    native_crop,
    native_crops,
    normalise_crop,
)

__all__ = [
    "SynthesisConfig",
    "CleanImage",
    "find_clean_images",
    "degradation_text",
    "synthetic_collate",
    "SyntheticPairedDataset",
    "SyntheticCaptionDataset",
    "MixedDataset",
    "make_mixed_dataset",
]

#: Separator of the names in a stage-1 degradation text (``"hazy, rainy"``).
TEXT_SEPARATOR = ", "
MAX_TYPES = 3
_TOLERANCE = 1e-6


@dataclass
class SynthesisConfig:
    """Which degradations a synthetic sample gets.

    A sample first draws how many types it gets, ``k`` (1 with probability
    ``num_types_probs[0]``, 2 with ``num_types_probs[1]``, ...), then one set of ``k`` types among
    the allowed sets of that size (distinct types, no two from one ``exclusive`` group, every type of
    positive weight), with probability proportional to the **product of the types' weights**. For
    ``k = 1`` that is ``weight / sum of weights``; equal weights make every allowed set of a size
    equally likely.

    Fields:
        types: the types to draw from (names of :data:`data.degradations.CHAIN_ORDER`); default the
            ten DA-CLIP types.
        probabilities: relative weight of each type (``>= 0``, not necessarily summing to 1); types
            not listed weigh 1, weight 0 never draws the type. Default: all 1.
        max_types: the most types in one sample, 1 to 3 (default 3).
        num_types_probs: probabilities of 1, 2, ... ``max_types`` types (``max_types`` numbers
            summing to 1); ``None`` (default): uniform over the sizes that some allowed set has
            (``types=["hazy"]`` draws one type, whatever ``max_types``).
        params: per type, parameter overrides passed to its generator (a value or a ``[low, high]``
            range, see :mod:`data.degradations`); names are checked against
            :func:`data.degradations.parameter_names`.
        exclusive: groups of types never drawn together; default ``[["rainy", "snowy"]]`` (CDD-11
            never combines rain and snow).

    :meth:`validate` (called by the datasets, and by the project's config loader) raises a one-line
    ``ValueError`` naming the key, e.g. ``data.synthesis.probabilities.rainy: ...``.
    """

    types: list[str] = field(default_factory=lambda: list(DEFAULT_DEGRADATIONS))
    probabilities: dict[str, float] = field(default_factory=dict)
    max_types: int = 3
    num_types_probs: list[float] | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    exclusive: list[list[str]] = field(default_factory=lambda: [["rainy", "snowy"]])

    def validate(self, prefix: str = "data.synthesis") -> None:
        """Check every field; ``prefix`` is the config key of this section in error messages."""
        types = list(self.types)
        if not types:
            raise ValueError(f"{prefix}.types: no degradation types given")
        for name in types:
            if name not in CHAIN_ORDER:
                raise ValueError(
                    f"{prefix}.types: unknown degradation {name!r}; valid: {', '.join(CHAIN_ORDER)}"
                )
        repeated = sorted({n for n in types if types.count(n) > 1})
        if repeated:
            raise ValueError(f"{prefix}.types: {repeated} listed twice")
        for name, weight in self.probabilities.items():
            if name not in types:
                raise ValueError(f"{prefix}.probabilities.{name}: not one of the types {types}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"{prefix}.probabilities.{name}: expected a finite number, got {weight!r}")
            if weight < 0:
                raise ValueError(f"{prefix}.probabilities.{name}: a weight must be >= 0, got {weight}")
        if not any(w > 0 for w in self.weights()):
            raise ValueError(f"{prefix}.probabilities: every weight is 0, no type can be drawn")
        if isinstance(self.max_types, bool) or not 1 <= self.max_types <= MAX_TYPES:
            raise ValueError(f"{prefix}.max_types: must be 1 to {MAX_TYPES}, got {self.max_types!r}")
        if self.num_types_probs is not None:
            probs = list(self.num_types_probs)
            key = f"{prefix}.num_types_probs"
            if len(probs) != self.max_types:
                raise ValueError(f"{key}: expected {self.max_types} probabilities (max_types), got {probs}")
            if any(not math.isfinite(p) or p < 0 for p in probs):
                raise ValueError(f"{key}: probabilities must be finite and >= 0, got {probs}")
            if abs(sum(probs) - 1.0) > _TOLERANCE:
                raise ValueError(f"{key}: probabilities must sum to 1, got {probs} (sum {sum(probs):g})")
        for group_index, group in enumerate(self.exclusive):
            for name in group:
                if name not in CHAIN_ORDER:
                    raise ValueError(
                        f"{prefix}.exclusive[{group_index}]: unknown degradation {name!r}; "
                        f"valid: {', '.join(CHAIN_ORDER)}"
                    )
        for name, settings in self.params.items():
            self._validate_params(name, settings, prefix)
        for count, prob in enumerate(self.count_probabilities(), start=1):
            if prob > 0 and not self._combinations(count):
                raise ValueError(
                    f"{prefix}.num_types_probs: {count} types have probability {prob:g}, but no {count} "
                    "types of positive weight can be combined (see probabilities and exclusive)"
                )

    def _validate_params(self, name: str, settings: Any, prefix: str) -> None:
        """One type's generator parameters: known names, ``[low, high]`` ranges, values the generator takes
        (tried at both ends of every range on a small probe image, so a bad value fails at load, naming
        the key, not in a data-loading worker once training has started)."""
        key = f"{prefix}.params.{name}"
        if name not in self.types:
            raise ValueError(f"{key}: not one of the types {list(self.types)}")
        if not isinstance(settings, Mapping):
            raise ValueError(f"{key}: expected a mapping of parameters, got {settings!r}")
        valid = parameter_names(DEGRADATIONS[name])
        for param, value in settings.items():
            if valid is not None and param not in valid:
                raise ValueError(f"{key}.{param}: unknown parameter; valid: {valid}")
            if isinstance(value, (list, tuple)) and (
                len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                or value[0] > value[1]
            ):
                raise ValueError(
                    f"{key}.{param}: expected a number or a [low, high] range with low <= high, got {value!r}"
                )
        probe = np.full((64, 64, 3), 0.5, dtype=np.float32)
        for end in (0, 1):
            values = {p: v[end] if isinstance(v, (list, tuple)) else v for p, v in settings.items()}
            try:
                DEGRADATIONS[name](probe, np.random.default_rng(0), **values)
            except (ValueError, TypeError) as err:
                raise ValueError(f"{key}: {err}") from None

    def weights(self) -> list[float]:
        """The weight of each of :attr:`types`."""
        return [float(self.probabilities.get(name, 1.0)) for name in self.types]

    def count_probabilities(self) -> list[float]:
        """Probabilities of drawing 1, 2, ... ``max_types`` types."""
        if self.num_types_probs is None:
            possible = [1.0 if self._combinations(k) else 0.0 for k in range(1, self.max_types + 1)]
            return [p / sum(possible) for p in possible]
        return [float(p) for p in self.num_types_probs]

    def combinations(self, count: int | None = None) -> list[tuple[str, ...]]:
        """Every set of types a sample can get (of ``count`` types, or of any drawable size), each in
        chain order; sorted by size, then by the order of :attr:`types`."""
        if count is not None:
            return self._combinations(count)
        probs = self.count_probabilities()
        return [c for k in range(1, self.max_types + 1) if probs[k - 1] > 0 for c in self._combinations(k)]

    def _combinations(self, count: int) -> list[tuple[str, ...]]:
        weights = dict(zip(self.types, self.weights()))
        usable = [n for n in self.types if weights[n] > 0]
        groups = [set(g) for g in self.exclusive]
        return [
            canonical_order(combo)
            for combo in itertools.combinations(usable, count)
            if not any(len(g.intersection(combo)) > 1 for g in groups)
        ]

    def _tables(self) -> list[tuple[list[tuple[str, ...]], np.ndarray]]:
        """Per size: the allowed sets and their probabilities given the size."""
        weights = dict(zip(self.types, self.weights()))
        tables = []
        for k in range(1, self.max_types + 1):
            combos = self._combinations(k)
            mass = np.array([math.prod(weights[n] for n in c) for c in combos], dtype=np.float64)
            tables.append((combos, mass / mass.sum() if mass.sum() > 0 else mass))
        return tables

    def draw(self, rng: np.random.Generator) -> tuple[str, ...]:
        """One sample's types, in chain order (the config must be valid)."""
        count = int(rng.choice(self.max_types, p=np.asarray(self.count_probabilities()))) + 1
        combos, probs = self._tables()[count - 1]
        return combos[int(rng.choice(len(combos), p=probs))]


def degradation_text(names: Sequence[str]) -> str:
    """The stage-1 text of a set of types: ``("rainy", "hazy")`` -> ``"hazy, rainy"`` (chain order)."""
    return TEXT_SEPARATOR.join(canonical_order(names))


# ----------------------------------------------------------------------------- clean sources


@dataclass(frozen=True)
class CleanImage:
    """A clean photo and its caption (``""`` when none is known)."""

    path: Path
    caption: str = ""


def _read_clean_csv(path: Path) -> list[CleanImage]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in next(reader, [])]
    if "filepath" not in header:
        raise ValueError(f"{path}: header {header} has no 'filepath' column")
    path_col = header.index("filepath")
    title_col = header.index("title") if "title" in header else None
    base = path.resolve().parent
    images = []
    for row_number, record in enumerate(reader, start=2):
        if not record or all(not f.strip() for f in record):
            continue
        if len(record) <= path_col or not record[path_col].strip():
            raise ValueError(f"{path}: row {row_number}: no filepath")
        image = Path(record[path_col].strip())
        image = image if image.is_absolute() else base / image
        if not image.is_file():
            raise ValueError(f"{path}: row {row_number}: image file not found: {image}")
        caption = record[title_col].strip() if title_col is not None and len(record) > title_col else ""
        images.append(CleanImage(image, caption))
    return images


def find_clean_images(
    source: str | os.PathLike, *, missing_caption: Literal["empty", "stem"] = "empty"
) -> list[CleanImage]:
    """The clean photos of a folder (recursively, sorted, hidden files and folders skipped) or a CSV.

    A CSV (comma- or tab-separated, detected from the header) needs a ``filepath`` column (relative
    paths are relative to the CSV) and may have a ``title`` column with the clean caption. Images
    without a caption get ``""`` or, with ``missing_caption="stem"``, their file name stem.
    """
    source = Path(source)
    if source.is_dir():
        relative = (p.relative_to(source) for p in source.rglob("*"))
        images = [
            CleanImage(source / p)
            for p in sorted(relative)
            if not any(part.startswith(".") for part in p.parts)
            and is_image_file(p)
            and (source / p).is_file()
        ]
    elif source.is_file():
        images = _read_clean_csv(source)
    else:
        raise FileNotFoundError(f"clean image source not found (a folder or a CSV): {source}")
    if not images:
        raise ValueError(f"no clean images in {source}")
    if missing_caption == "stem":
        images = [CleanImage(i.path, i.caption or i.path.stem) for i in images]
    return images


# ----------------------------------------------------------------------------- datasets


def synthetic_collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The default collate, except ``degradations`` (lists of different lengths): a list of lists."""
    names = [list(item["degradations"]) for item in items]
    batch = default_collate([{k: v for k, v in item.items() if k != "degradations"} for item in items])
    batch["degradations"] = names
    return batch


class _SyntheticBase(Dataset):
    def __init__(
        self,
        source: str | os.PathLike | Sequence[CleanImage],
        config: SynthesisConfig | None,
        *,
        length: int | None,
        seed: int,
        max_size: int | None,
        missing_caption: Literal["empty", "stem"] = "empty",
        config_key: str = "data.synthesis",
        cache_mb: float = 0.0,
    ) -> None:
        self.config = config if config is not None else SynthesisConfig()
        self.config.validate(config_key)
        if isinstance(source, (str, os.PathLike)):
            self.images = find_clean_images(source, missing_caption=missing_caption)
        else:
            self.images = list(source)
            if not self.images:
                raise ValueError("no clean images given")
        if length is not None and length < 1:
            raise ValueError(f"length must be positive or None, got {length}")
        if max_size is not None and max_size < 8:
            raise ValueError(f"max_size must be at least 8, got {max_size}")
        self.length = length if length is not None else len(self.images)
        self.seed = seed
        self.max_size = max_size
        self.types: tuple[str, ...] = tuple(self.config.types)
        #: Every set of types a sample can get: the vocabulary of ``degradation_index``.
        self.combinations: tuple[tuple[str, ...], ...] = tuple(self.config.combinations())
        self.combination_names: tuple[str, ...] = tuple(combination_name(c) for c in self.combinations)
        self.degradation_texts: tuple[str, ...] = tuple(degradation_text(c) for c in self.combinations)
        self._combination_index = {c: i for i, c in enumerate(self.combinations)}
        self._params = {k: dict(v) for k, v in self.config.params.items()}
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be 0 (off) or positive, got {cache_mb}")
        #: Decoded clean photos kept in memory (read-only arrays), up to ``cache_mb`` MiB per process;
        #: filled as photos are first read, never evicted. Samples are the same with or without it.
        self._cache: dict[Path, np.ndarray] = {}
        self._cache_left = int(cache_mb * 2**20)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index)

    def _generators(
        self, index: int, seed: int | Sequence[int] | None, count: int = 3
    ) -> list[np.random.Generator]:
        """Independent generators of sample ``index``: types, degradation, crop/flips (and, with
        ``count=4``, the photo augmentation; the first three do not depend on ``count``)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        key = [self.seed, index] if seed is None else ([seed] if isinstance(seed, int) else list(seed))
        sequence = np.random.SeedSequence([*[int(k) for k in key], index])
        return [np.random.default_rng(s) for s in sequence.spawn(count)]

    def _sample(self, index: int, rng: np.random.Generator) -> tuple[CleanImage, tuple[str, ...]]:
        return self.images[index % len(self.images)], self.config.draw(rng)

    def _read(self, image: CleanImage) -> np.ndarray:
        cached = self._cache.get(image.path)
        if cached is not None:
            return cached
        photo = _limit_size(read_image(image.path), self.max_size)
        if photo.nbytes <= self._cache_left:  # small training sets: decode each photo once
            photo.setflags(write=False)  # a generator that wrote into its input would corrupt the cache
            self._cache[image.path] = photo
            self._cache_left -= photo.nbytes
        return photo

    def _labels(self, names: tuple[str, ...]) -> dict[str, Any]:
        multi_hot = torch.zeros(len(self.types), dtype=torch.float32)
        for name in names:
            multi_hot[self.types.index(name)] = 1.0
        return {
            "degradation": combination_name(names) if names else CLEAN,
            "degradations": list(names),
            "degradation_index": self._combination_index[names] if names else -1,
            "multi_hot": multi_hot,  # (K,) over self.types
        }


class SyntheticPairedDataset(_SyntheticBase):
    """Stage-2 training pairs synthesized on the fly from clean photos.

    Items match :class:`data.paired.PairedDataset` in train mode: ``lq``, ``gt`` ``(3, P, P)`` in
    ``[0, 1]`` (a random ``patch_size`` crop, the same on both, small images reflect-padded, then with
    ``augment`` the same random flips / transpose), ``lq_clip`` ``(3, S, S)`` (the CLIP transform of the
    patch or, ``clip_input="image"``, of the whole degraded image), ``degradation`` (the joined names,
    ``"hazy+rainy"``), ``degradation_index`` (index into :attr:`combination_names`), ``lq_path`` and
    ``gt_path`` (both the clean photo: no LQ file exists); plus ``degradations`` (the list of names, in
    chain order) and ``multi_hot`` ``(K,)`` over :attr:`types`. Batch with :func:`synthetic_collate`
    (``degradations`` differ in length).

    Args:
        source: folder or CSV of clean photos (see :func:`find_clean_images`), or a list of
            :class:`CleanImage`.
        config: what to draw; default :class:`SynthesisConfig()`.
        degrade_at: ``"image"`` (default) degrades the whole photo, then crops (what an offline
            dataset holds; scene sizes are relative to the photo); ``"patch"`` crops first and
            degrades only the patch (much faster on large photos; needs ``clip_input="patch"``).
        max_size: downscale photos whose longer side exceeds this first (Lanczos), as
            ``scripts/make_dataset.py --max-size``.
        length: epoch length; item ``i`` uses photo ``i % len(images)``. Default: one per photo.
        seed: the run seed used when ``get_item`` gets no key (``dataset[i]`` = draw key ``i``).
        clean_fraction: the share of samples left clean (an identity pair, no degradation drawn),
            labelled :data:`data.CLEAN` with ``degradation_index`` -1 and an all-zero ``multi_hot``.
        clean_dark: as :class:`data.paired.PairedDataset` (a share of the clean pairs shown dark).
        cache_mb: keep decoded clean photos in memory, up to this many MiB per process (0 = off): a
            small set is then decoded once, not at every draw. Samples do not change.
        patch_size, small_images, augment, clip_size, clip_mean, clip_std, clip_input, clip_views: as
            :class:`data.paired.PairedDataset`.
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[CleanImage],
        config: SynthesisConfig | None = None,
        *,
        patch_size: int | None = 256,
        small_images: Literal["pad", "reject"] = "pad",
        augment: bool = True,
        clip_size: int = 224,
        clip_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        clip_std: Sequence[float] = OPENAI_CLIP_STD,
        clip_input: Literal["patch", "image", "views"] = "patch",
        clip_views: int = 0,
        degrade_at: Literal["image", "patch"] = "image",
        max_size: int | None = None,
        length: int | None = None,
        seed: int = 0,
        config_key: str = "data.synthesis",
        clean_fraction: float = 0.0,
        clean_dark: float = 0.0,
        cache_mb: float = 0.0,
    ) -> None:
        check_clip_input(clip_input, clip_views)
        if degrade_at not in ("image", "patch"):
            raise ValueError(f"degrade_at must be 'image' or 'patch', got {degrade_at!r}")
        if degrade_at == "patch" and clip_input != "patch":
            raise ValueError("degrade_at='patch' degrades only the patch: it needs clip_input='patch'")
        if small_images not in ("pad", "reject"):
            raise ValueError(f"small_images must be 'pad' or 'reject', got {small_images!r}")
        if patch_size is not None and patch_size < 1:
            raise ValueError(f"patch_size must be positive or None, got {patch_size}")
        super().__init__(
            source,
            config,
            length=length,
            seed=seed,
            max_size=max_size,
            config_key=config_key,
            cache_mb=cache_mb,
        )
        self.patch_size = patch_size
        self.small_images = small_images
        self.augment = augment
        self.clip_size = clip_size
        self.clip_mean = tuple(clip_mean)
        self.clip_std = tuple(clip_std)
        self.clip_input = clip_input
        self.clip_views = int(clip_views)
        self.degrade_at = degrade_at
        if not 0.0 <= clean_fraction < 1.0:
            raise ValueError(f"clean_fraction must be in [0, 1), got {clean_fraction}")
        self.clean_fraction = float(clean_fraction)
        if not 0.0 <= clean_dark <= 1.0:
            raise ValueError(f"clean_dark must be in [0, 1], got {clean_dark}")
        self.clean_dark = float(clean_dark)

    def _crop(
        self, image: CleanImage, arrays: list[np.ndarray], rng: np.random.Generator
    ) -> list[np.ndarray]:
        size = self.patch_size
        if size is None:
            return arrays
        h, w = arrays[0].shape[:2]
        if h < size or w < size:
            if self.small_images == "reject":
                raise ValueError(
                    f"image smaller than patch_size {size}: {image.path} is {w}x{h} "
                    "(set small_images='pad' or a smaller patch_size)"
                )
            arrays = [_pad_to(a, size) for a in arrays]
            h, w = arrays[0].shape[:2]
        top = int(rng.integers(0, h - size + 1))
        left = int(rng.integers(0, w - size + 1))
        return [a[top : top + size, left : left + size] for a in arrays]

    def get_item(self, index: int, seed: int | Sequence[int] | None = None) -> dict[str, Any]:
        """Sample ``index`` with draw key ``seed = (run_seed, draw_key)`` (default ``(self.seed, index)``)."""
        pick, degrade, crop = self._generators(index, seed)
        image, names = self._sample(index, pick)
        # Drawn after the types, so clean_fraction = 0 keeps the random stream of earlier runs.
        if self.clean_fraction > 0 and pick.random() < self.clean_fraction:
            names = ()  # an identity pair: degrade_chain of no types is the clean image
        clean = self._read(image)
        if not names:
            if self.clean_dark > 0 and pick.random() < self.clean_dark:  # a dark scene, correctly captured
                clean = dark_exposure(clean, degrade)
            (gt,) = self._crop(image, [clean], crop)
            lq, full_lq = gt, clean
        elif self.degrade_at == "image":
            full_lq = degrade_chain(clean, names, degrade, self._params)
            lq, gt = self._crop(image, [full_lq, clean], crop)
        else:
            (gt,) = self._crop(image, [clean], crop)
            lq = full_lq = degrade_chain(gt, names, degrade, self._params)
        clip = (self.clip_size, self.clip_mean, self.clip_std)
        augment = crop if self.augment else None
        return {
            **pair_tensors(
                lq, gt, full_lq, augment, clip=clip, clip_input=self.clip_input, clip_views=self.clip_views
            ),
            **self._labels(names),
            "lq_path": str(image.path),
            "gt_path": str(image.path),
        }


class SyntheticCaptionDataset(_SyntheticBase):
    """Stage-1 (DA-CLIP) samples synthesized on the fly from clean photos and their captions.

    Items: ``image`` ``(3, S, S)`` (the degraded photo after the CLIP transform, as
    :class:`data.captions.CaptionDataset`), ``caption`` (the clean caption), ``degradation_text``
    (``"hazy, rainy"``: the names in chain order, the per-sample text to contrast the degradation
    embedding with), ``degradation`` (``"hazy+rainy"``), ``degradations`` (list), ``multi_hot``
    ``(K,)`` over :attr:`types`, ``degradation_index`` (index into :attr:`degradation_texts`, every
    set a sample can get) and ``path`` (the clean photo). Batch with :func:`synthetic_collate`.

    Args:
        source, config, max_size, length, seed: as :class:`SyntheticPairedDataset`. Degrading a large
            photo costs far more than the CLIP input needs: a ``max_size`` of about twice
            ``image_size`` keeps samples cheap.
        image_size, mean, std: the CLIP transform.
        missing_caption: caption of photos without one: ``""`` or (``"stem"``) the file stem.
        clean_fraction: the share of samples left clean: text :data:`data.CLEAN`, the last entry of
            :attr:`degradation_texts` (added only when the fraction is positive), all-zero ``multi_hot``.
        clip_view: ``"resize"`` (the paper's transform of the whole photo) or ``"crop"``: a random
            ``image_size`` crop at native resolution, randomly flipped (:func:`data.transforms.native_crop`),
            so pixel-level degradations are not averaged away by the resize.
        crops_per_sample: with ``clip_view="crop"``, ``image`` is ``(n, 3, S, S)``: ``n`` crops of the one
            degraded sample, those where the degradation shows most (:func:`data.transforms.native_crops`).
        visible_psnr: with ``clip_view="crop"`` and ``clean_fraction > 0``: a degraded crop within this
            PSNR (dB) of the same crop of the clean photo is labelled :data:`data.CLEAN` (the degradation
            does not show there: a mild one on a flat region, a shadow or a raindrop elsewhere). Items
            then carry ``crop_degradation_index`` ``(n,)``, one label per crop. 0 = off.
        cache_mb: as :class:`SyntheticPairedDataset`.
        photo_augment: what :func:`data.transforms.augment_photo` does to each clean photo before it is
            degraded (``"rotate"``, ``"channels"``, ``"saturation"``); empty: nothing (the samples of earlier
            runs).
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[CleanImage],
        config: SynthesisConfig | None = None,
        *,
        image_size: int = 224,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        max_size: int | None = None,
        length: int | None = None,
        seed: int = 0,
        missing_caption: Literal["empty", "stem"] = "empty",
        config_key: str = "data.synthesis",
        clean_fraction: float = 0.0,
        clip_view: Literal["resize", "crop"] = "resize",
        crops_per_sample: int = 1,
        visible_psnr: float = 0.0,
        cache_mb: float = 0.0,
        photo_augment: Sequence[str] = (),
    ) -> None:
        check_photo_augmentations(photo_augment)
        if visible_psnr < 0 or (visible_psnr > 0 and (clip_view != "crop" or clean_fraction <= 0)):
            raise ValueError("visible_psnr needs clip_view 'crop' and clean_fraction > 0 (a 'clean' text)")
        if crops_per_sample < 1 or (crops_per_sample > 1 and clip_view != "crop"):
            raise ValueError(f"crops_per_sample {crops_per_sample} needs clip_view 'crop' (1: one image)")
        if not 0.0 <= clean_fraction < 1.0:
            raise ValueError(f"clean_fraction must be in [0, 1), got {clean_fraction}")
        if clip_view not in ("resize", "crop"):
            raise ValueError(f"clip_view must be 'resize' or 'crop', got {clip_view!r}")
        super().__init__(
            source,
            config,
            length=length,
            seed=seed,
            max_size=max_size,
            missing_caption=missing_caption,
            config_key=config_key,
            cache_mb=cache_mb,
        )
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.clean_fraction = float(clean_fraction)
        self.clip_view = clip_view
        self.crops_per_sample = int(crops_per_sample)
        self.visible_psnr = float(visible_psnr)
        self.photo_augment = tuple(photo_augment)
        if self.clean_fraction > 0:  # "no degradation" is one more text of the loss's vocabulary
            self.degradation_texts = (*self.degradation_texts, CLEAN)

    def _draw(
        self, index: int, seed: int | Sequence[int] | None
    ) -> tuple[CleanImage, tuple[str, ...], np.ndarray, np.ndarray, np.random.Generator]:
        # A fourth generator for the photo augmentation: the first three (and so runs without it) are unchanged.
        pick, degrade, crop, *augment = self._generators(index, seed, 4 if self.photo_augment else 3)
        image, names = self._sample(index, pick)
        # Drawn after the types, so clean_fraction = 0 keeps the random stream of earlier runs.
        if self.clean_fraction > 0 and pick.random() < self.clean_fraction:
            names = ()
        clean = self._read(image)
        if augment:
            clean = augment_photo(clean, self.photo_augment, augment[0])
        lq = degrade_chain(clean, names, degrade, self._params) if names else clean
        return image, names, clean, lq, crop

    def _labelled_crops(
        self, clean: np.ndarray, lq: np.ndarray, rng: np.random.Generator, label: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(n, 3, S, S)`` crops of a degraded sample (as :func:`data.transforms.native_crops` cuts
        them) and their ``(n,)`` labels: ``label``, or :data:`data.CLEAN` where the degradation does not
        show (within ``visible_psnr`` dB of the clean photo's crop)."""
        size, limit = self.image_size, 10.0 ** (-self.visible_psnr / 10.0)  # the MSE at that PSNR
        views = crop_views(lq, size, rng, self.crops_per_sample, reference=clean)
        lq, clean = at_least(lq, size), at_least(clean, size)
        crops = [cut_view(lq, size, view) for view in views]
        shows = [
            float(np.mean(np.square(c - cut_view(clean, size, v)))) >= limit for c, v in zip(crops, views)
        ]
        labels = [label if show else len(self.degradation_texts) - 1 for show in shows]  # CLEAN is last
        images = torch.stack([normalise_crop(crop, self.mean, self.std) for crop in crops])
        return images, torch.tensor(labels, dtype=torch.long)

    def degraded(
        self, index: int, seed: int | Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """The whole sample behind :meth:`get_item` (same key): ``(clean, degraded, names)``, images
        ``(H, W, 3)`` in [0, 1]; ``names`` is empty for a clean draw."""
        _, names, clean, lq, _ = self._draw(index, seed)
        return clean, lq, names

    def get_item(self, index: int, seed: int | Sequence[int] | None = None) -> dict[str, Any]:
        """Sample ``index`` with draw key ``seed = (run_seed, draw_key)`` (default ``(self.seed, index)``)."""
        image, names, clean, lq, crop = self._draw(index, seed)
        labels = self._labels(names)
        if not names:
            labels["degradation_index"] = len(self.degradation_texts) - 1  # CLEAN, the last text
        if self.clip_view == "crop" and self.visible_psnr > 0 and names:  # a label per crop
            clip_image, labels["crop_degradation_index"] = self._labelled_crops(
                clean, lq, crop, labels["degradation_index"]
            )
        elif self.clip_view == "crop" and self.crops_per_sample > 1:  # (n, 3, S, S)
            clip_image = native_crops(
                lq, self.image_size, crop, self.crops_per_sample, self.mean, self.std, reference=clean
            )
        elif self.clip_view == "crop":  # the crop where the degradation shows most (of a few tries)
            clip_image = native_crop(lq, self.image_size, crop, self.mean, self.std, reference=clean)
        else:
            clip_image = clip_transform(lq, self.image_size, self.mean, self.std)  # (3, S, S)
        return {
            "image": clip_image,
            "caption": image.caption,
            "degradation_text": degradation_text(names) if names else CLEAN,
            **labels,
            "path": str(image.path),
        }


# ----------------------------------------------------------------------------- a fixed mixed test set


@dataclass(frozen=True)
class MixedDataset:
    """What :func:`make_mixed_dataset` wrote."""

    root: Path
    combinations: tuple[str, ...]
    written: int
    skipped: int


def _csv_images(path: Path) -> dict[str, Path]:
    """``{name: image}`` of a clean-image CSV, each named after its path relative to the CSV's folder."""
    base = path.resolve().parent
    images = {}
    for image in _read_clean_csv(path):
        resolved = image.path.resolve()
        relative = resolved.relative_to(base) if resolved.is_relative_to(base) else Path(resolved.name)
        images["_".join(relative.with_suffix("").parts)] = image.path
    return images


def _checked_combinations(
    combinations: Sequence[Sequence[str] | str], params: Mapping[str, Mapping[str, Any]]
) -> tuple[list[tuple[str, ...]], list[str]]:
    """The combinations in canonical order and their names, checked: at least one, none twice, and every
    parameter belongs to a type of some combination and to its generator."""
    combos = [
        canonical_order(c.split(COMBINATION_SEPARATOR) if isinstance(c, str) else c) for c in combinations
    ]
    if not combos:
        raise ValueError("no combinations chosen")
    names = [combination_name(c) for c in combos]
    if len(set(names)) != len(names):
        raise ValueError(f"a combination is listed twice: {names}")
    used = {n for c in combos for n in c}
    extra = sorted(set(params) - used)
    if extra:
        raise ValueError(f"parameters given for degradation(s) {extra} that are in no combination")
    probe = np.zeros((8, 8, 3), dtype=np.float32)
    degrade_chain(probe, combos[0], 0, params)  # checks the parameter names before anything is written
    return combos, names


def make_mixed_dataset(
    source: str | os.PathLike,
    root: str | os.PathLike,
    combinations: Sequence[Sequence[str] | str] = CDD11_COMBINATIONS,
    *,
    seed: int = 0,
    max_size: int | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> MixedDataset:
    """Write every clean photo under every combination: ``<root>/<combination>/{LQ,GT}/<stem>.png``.

    ``combination`` is the canonical name (``"hazy+rainy"``, see
    :func:`data.degradations.combination_name`), so ``PairedDataset(root, [those names], mode="eval")``
    reads the set. Deterministic from ``seed`` (per combination and photo, as
    :func:`data.paired.pair_seed`); reruns skip finished pairs, and a different dataset in ``root`` is
    an error unless ``overwrite`` (see :func:`data.paired.claim_output_root`).

    Args:
        source: folder of clean photos (directly inside it, as ``make_paired_dataset``), or a CSV with a
            ``filepath`` column (e.g. the demo's ``val_clean.csv``); its images are named after their
            path relative to the CSV (``val/hazy/GT/a.png`` -> ``val_hazy_GT_a``), so equal stems in
            different folders stay apart.
        combinations: sets of types, as name sequences or ``"a+b"`` strings; default CDD-11's eleven.
        params: keyword parameters per type, passed to its generator in every chain.
    """
    source, root = Path(source), Path(root)
    params = {k: dict(v) for k, v in (params or {}).items()}
    combos, names = _checked_combinations(combinations, params)
    check_output_folder(source, root, max_size)
    images = _by_stem(source) if source.is_dir() else _csv_images(source)
    if not images:
        raise ValueError(f"no images in {source}")
    identity = {
        "kind": "make_mixed_dataset",
        "source": str(source.resolve()),
        "images": sorted(images),
        "combinations": names,
        "seed": seed,
        "max_size": max_size,
        "params": params,
    }
    complete = claim_output_root(root, MANIFEST_NAME, identity, names, overwrite=overwrite)
    chains = dict(zip(names, combos))

    def make_lq(clean: np.ndarray, name: str, stem: str) -> np.ndarray:
        return degrade_chain(clean, chains[name], np.random.default_rng(pair_seed(seed, name, stem)), params)

    jobs = [(stem, images[stem], root) for stem in sorted(images)]
    written, skipped = write_pairs(jobs, names, make_lq, max_size, progress)
    if written or not complete:  # a finished set is left untouched
        finish_output_root(root, MANIFEST_NAME, identity)
    return MixedDataset(root, tuple(names), written, skipped)
