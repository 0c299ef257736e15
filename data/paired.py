"""Paired LQ/GT datasets in the official layout, and an LQ-only dataset for inference.

Layout::

    <root>/<degradation>/LQ/<name>.<ext>
    <root>/<degradation>/GT/<name>.<ext>

An LQ and a GT image form a pair when their file *stems* are equal (``0001.jpg``
pairs with ``0001.png``); sort order plays no part. Every listed degradation must
have a folder; the list comes from the config, so adding a type is adding a
folder and a name.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from data import CLEAN, DEFAULT_DEGRADATIONS
from data.captions import CaptionRow, write_caption_csv
from data.clip_input import grid_views_array
from data.degradations import DEGRADATIONS, DegradationFn, dark_exposure, parameter_names
from data.io import atomic_open, image_to_tensor, is_image_file, list_images, read_image, write_image
from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_transform

__all__ = [
    "ImagePair",
    "find_pairs",
    "PairedDataset",
    "LQImageDataset",
    "SynthesizedDataset",
    "make_paired_dataset",
    "pair_seed",
    "clean_labels",
]

Mode = Literal["train", "eval"]
SmallImages = Literal["pad", "reject"]
ClipInput = Literal["patch", "image", "views"]

_SHOWN = 5  # unmatched names listed in an error message


@dataclass(frozen=True)
class ImagePair:
    """One LQ/GT pair of a degradation type."""

    degradation: str
    name: str
    lq_path: Path
    gt_path: Path


def _by_stem(folder: Path) -> dict[str, Path]:
    images = list_images(folder)
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise ValueError(
                f"two images with the same name in {folder}: {stems[path.stem].name}, {path.name}"
            )
        stems[path.stem] = path
    return stems


def find_pairs(root: str | os.PathLike, degradation: str) -> list[ImagePair]:
    """The pairs of ``<root>/<degradation>/{LQ,GT}``, sorted by name.

    Raises:
        FileNotFoundError: the degradation folder or its ``LQ``/``GT`` subfolder is missing.
        ValueError: unmatched files (the first few of each side are listed) or no images.
    """
    folder = Path(root) / degradation
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder for degradation {degradation!r}: {folder} does not exist")
    for sub in ("LQ", "GT"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"missing {sub} folder for degradation {degradation!r}: {folder / sub}")
    lq, gt = _by_stem(folder / "LQ"), _by_stem(folder / "GT")
    only_lq = sorted(set(lq) - set(gt))
    only_gt = sorted(set(gt) - set(lq))
    if only_lq or only_gt:
        raise ValueError(
            f"unmatched images in {folder}: {len(only_lq)} LQ without GT {[lq[s].name for s in only_lq[:_SHOWN]]}, "
            f"{len(only_gt)} GT without LQ {[gt[s].name for s in only_gt[:_SHOWN]]} (pairs match by file name stem)"
        )
    if not lq:
        raise ValueError(f"no images in {folder / 'LQ'} and {folder / 'GT'}")
    return [ImagePair(degradation, stem, lq[stem], gt[stem]) for stem in sorted(lq)]


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad the bottom/right of an ``(H, W, 3)`` image to at least ``size`` x ``size``."""
    h, w = img.shape[:2]
    pad = ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0))
    if pad[0][1] == 0 and pad[1][1] == 0:
        return img
    # Reflection needs at least 2 pixels along the axis; a 1-pixel image repeats its edge.
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(img, pad, mode=mode)


def check_clip_input(clip_input: str, clip_views: int) -> None:
    """ValueError unless ``clip_input`` is a known DA-CLIP input (``views`` needs a grid of 2 or more)."""
    if clip_input not in ("patch", "image", "views"):
        raise ValueError(f"clip_input must be 'patch', 'image' or 'views', got {clip_input!r}")
    if clip_input == "views" and clip_views < 2:
        raise ValueError(
            f"clip_input='views' needs a grid of at least 2 x 2 views, got clip_views={clip_views}"
        )


def pair_tensors(
    lq: np.ndarray,
    gt: np.ndarray,
    full_lq: np.ndarray,
    augment: np.random.Generator | None,
    *,
    clip: tuple[int, Sequence[float], Sequence[float]],
    clip_input: str,
    clip_views: int = 0,
) -> dict[str, torch.Tensor]:
    """``lq``, ``gt`` ``(3, P, P)`` and DA-CLIP's input ``lq_clip`` ``(3, S, S)`` of a (cropped) pair.

    ``augment``: draw the same flips and transpose for LQ and GT from this generator (None: none).
    ``clip_input``: DA-CLIP sees the crop (``patch``), ``full_lq``, the whole LQ image (``image``), or a
    ``clip_views`` x ``clip_views`` grid of native crops of ``full_lq`` (``views``: ``lq_clip`` is then
    ``(V, 3, S, S)``, and the frozen DA-CLIP averages its embeddings over the views).
    ``clip``: (size, mean, std) of the CLIP transform. Shared by the written and the synthetic pairs.
    """
    if augment is not None:
        hflip, vflip, transpose = (bool(b) for b in augment.integers(0, 2, size=3))
        lq, gt = _augment([lq, gt], hflip, vflip, transpose)
    size, mean, std = clip
    if clip_input == "views":
        lq_clip = torch.from_numpy(grid_views_array(full_lq, size, clip_views, mean, std))  # (V, 3, S, S)
    else:
        lq_clip = clip_transform(full_lq if clip_input == "image" else lq, size, mean, std)  # (3, S, S)
    return {
        "lq": image_to_tensor(lq),  # (3, H, W)
        "gt": image_to_tensor(gt),  # (3, H, W)
        "lq_clip": lq_clip,
    }


def clean_labels(path: str | os.PathLike) -> dict[str, str | int]:
    """The labels of a clean identity pair made from the clean image ``path``: no degradation
    (:data:`data.CLEAN`, ``degradation_index`` -1), and that image as both LQ and GT path."""
    return {"degradation": CLEAN, "degradation_index": -1, "lq_path": str(path), "gt_path": str(path)}


def _augment(images: list[np.ndarray], hflip: bool, vflip: bool, transpose: bool) -> list[np.ndarray]:
    """The same flips and 90-degree rotation (as a transpose, like BasicSR) on every image."""
    out = []
    for img in images:
        if hflip:
            img = img[:, ::-1]
        if vflip:
            img = img[::-1]
        if transpose:
            img = img.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(img))
    return out


class PairedDataset(Dataset):
    """Paired LQ/GT images for stage-2 training and evaluation.

    Args:
        root: the dataset root (``<root>/<degradation>/{LQ,GT}``).
        degradations: the degradation types to use (and the vocabulary of
            ``degradation_index``); each needs a folder.
        mode: ``"train"``: each sample picks a degradation uniformly (so rare
            types are not drowned by frequent ones), then a random pair of it, a
            random ``patch_size`` crop (same window on LQ and GT) and, with
            ``augment``, the same random flips / 90-degree rotation on both.
            ``"eval"``: every pair exactly once, ordered by degradation (in the
            given order) then name; full images, ``patch_size`` ignored. Eval
            images may differ in size: use ``batch_size=1``.
        patch_size: training crop size; ``None`` trains on full images.
        small_images: a training image smaller than ``patch_size`` is reflect-
            padded (bottom/right) up to it (``"pad"``), or rejected with an error
            (``"reject"``).
        augment: random flips and rotation in training.
        clip_size, clip_mean, clip_std: the CLIP transform of ``lq_clip``.
        clip_input: what ``lq_clip`` shows in training: ``"patch"``, the training crop (what the
            restoration network sees; the official code), ``"image"``, the whole LQ image, as at
            test time, where the CLIP input is the whole image too, or ``"views"``, a grid of
            ``clip_views`` x ``clip_views`` native crops of the whole LQ image (the input of a DA-CLIP
            trained on native crops; ``lq_clip`` is ``(V, 3, S, S)``). Eval mode always uses the image.
        clip_views: the grid side of ``clip_input="views"`` (at least 2).
        length: training epoch length; default the total number of pairs.
        clean_fraction: in training, the share of samples that are clean identity pairs: a pair drawn
            as usual whose GT crop is both LQ and GT (DA-CLIP sees the clean image), labelled
            :data:`CLEAN` with ``degradation_index`` -1. 0 (default) draws exactly what it always did.
        clean_dark: the share of those clean pairs shown as a dark, noise-free exposure of the photo
            (:func:`data.degradations.dark_exposure`), so darkness alone does not read as low light.
        seed: base seed of the training sampler. In the main process the
            sampler's generator is seeded with it; in a DataLoader worker it is
            combined with the worker's torch seed, so workers draw different
            samples and a run seeded with ``torch.manual_seed`` is reproducible.

    Items are dicts: ``lq``, ``gt`` ``(3, H, W)`` in ``[0, 1]``; ``lq_clip``
    ``(3, S, S)``, the DA-CLIP transform of the LQ image (in training, of the
    patch or the whole image, see ``clip_input``); ``degradation``,
    ``degradation_index``, ``lq_path``, ``gt_path``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        degradations: Sequence[str] = DEFAULT_DEGRADATIONS,
        *,
        mode: Mode,
        patch_size: int | None = 256,
        small_images: SmallImages = "pad",
        augment: bool = True,
        clip_size: int = 224,
        clip_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        clip_std: Sequence[float] = OPENAI_CLIP_STD,
        clip_input: ClipInput = "patch",
        clip_views: int = 0,
        length: int | None = None,
        seed: int = 0,
        clean_fraction: float = 0.0,
        clean_dark: float = 0.0,
    ) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        check_clip_input(clip_input, clip_views)
        if small_images not in ("pad", "reject"):
            raise ValueError(f"small_images must be 'pad' or 'reject', got {small_images!r}")
        if patch_size is not None and patch_size < 1:
            raise ValueError(f"patch_size must be positive or None, got {patch_size}")
        if length is not None and length < 1:
            raise ValueError(f"length must be positive or None, got {length}")
        if not 0.0 <= clean_fraction < 1.0:
            raise ValueError(f"clean_fraction must be in [0, 1), got {clean_fraction}")
        self.clean_fraction = float(clean_fraction)
        if not 0.0 <= clean_dark <= 1.0:
            raise ValueError(f"clean_dark must be in [0, 1], got {clean_dark}")
        self.clean_dark = float(clean_dark)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        self.degradations: tuple[str, ...] = tuple(degradations)
        if not self.degradations:
            raise ValueError("PairedDataset needs at least one degradation")
        if len(set(self.degradations)) != len(self.degradations):
            raise ValueError(f"duplicate degradation names in {list(self.degradations)}")
        self.mode: Mode = mode
        self.patch_size = patch_size
        self.small_images: SmallImages = small_images
        self.augment = augment
        self.clip_size = clip_size
        self.clip_mean = tuple(clip_mean)
        self.clip_std = tuple(clip_std)
        self.clip_input: ClipInput = clip_input
        self.clip_views = int(clip_views)
        self.seed = seed
        self.pairs_by_degradation: dict[str, list[ImagePair]] = {
            name: find_pairs(self.root, name) for name in self.degradations
        }
        #: Every pair, in evaluation order (degradation order, then name).
        self.pairs: list[ImagePair] = [
            p for name in self.degradations for p in self.pairs_by_degradation[name]
        ]
        self.length = length if length is not None else len(self.pairs)
        self._rng: np.random.Generator | None = None
        self._rng_owner: tuple[int, int | None] | None = None

    def __len__(self) -> int:
        return self.length if self.mode == "train" else len(self.pairs)

    def _generator(self) -> np.random.Generator:
        """This process's sampling RNG, (re)created in each worker from torch's worker seed."""
        worker = get_worker_info()
        owner = (os.getpid(), None if worker is None else worker.id)
        if self._rng is None or self._rng_owner != owner:
            entropy = [self.seed] if worker is None else [self.seed, worker.seed]
            self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
            self._rng_owner = owner
        return self._rng

    def _load(self, pair: ImagePair) -> tuple[np.ndarray, np.ndarray]:
        lq, gt = read_image(pair.lq_path), read_image(pair.gt_path)
        if lq.shape != gt.shape:
            raise ValueError(
                f"LQ and GT sizes differ: {pair.lq_path} is {lq.shape[1]}x{lq.shape[0]}, "
                f"{pair.gt_path} is {gt.shape[1]}x{gt.shape[0]} (width x height)"
            )
        return lq, gt

    def _crop(self, pair: ImagePair, lq: np.ndarray, gt: np.ndarray, rng: np.random.Generator):
        size = self.patch_size
        if size is None:
            return lq, gt
        h, w = lq.shape[:2]
        if h < size or w < size:
            if self.small_images == "reject":
                raise ValueError(
                    f"image smaller than patch_size {size}: {pair.lq_path} is {w}x{h} "
                    "(set small_images='pad' or a smaller patch_size)"
                )
            lq, gt = _pad_to(lq, size), _pad_to(gt, size)
            h, w = lq.shape[:2]
        top = int(rng.integers(0, h - size + 1))
        left = int(rng.integers(0, w - size + 1))
        window = (slice(top, top + size), slice(left, left + size))
        return lq[window], gt[window]

    def degradation_of(self, index: int) -> str:
        """The degradation of evaluation item ``index`` (without reading the images)."""
        if self.mode != "eval":
            raise ValueError("degradation_of is defined in eval mode (training draws the type at random)")
        return self.pairs[index].degradation

    def eval_indices(self, per_degradation: int = 0) -> dict[str, list[int]]:
        """Evaluation item indices grouped by degradation, at most ``per_degradation`` each (0 = all)."""
        groups: dict[str, list[int]] = {name: [] for name in self.degradations}
        for index in range(len(self.pairs)):
            bucket = groups[self.degradation_of(index)]
            if per_degradation == 0 or len(bucket) < per_degradation:
                bucket.append(index)
        return {name: indices for name, indices in groups.items() if indices}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str | int]:
        return self.get_item(index)

    def _clip_settings(self) -> tuple[int, Sequence[float], Sequence[float]]:
        return self.clip_size, self.clip_mean, self.clip_std

    def get_item(
        self, index: int, seed: int | Sequence[int] | None = None
    ) -> dict[str, torch.Tensor | str | int]:
        """Item ``index``; in training, ``seed`` (if given) fixes this sample's random draws.

        Keyed draws make a sample independent of which worker loads it and of what was drawn
        before, which is what an exactly resumable training loop needs.
        """
        if self.mode == "eval":
            pair = self.pairs[index]
            lq, gt = self._load(pair)
            tensors = pair_tensors(lq, gt, lq, None, clip=self._clip_settings(), clip_input="patch")
        else:
            if not 0 <= index < self.length:
                raise IndexError(f"index {index} out of range for a training epoch of {self.length}")
            rng = self._generator() if seed is None else np.random.default_rng(np.random.SeedSequence(seed))
            # Drawn only when asked for, so clean_fraction = 0 keeps the random stream of earlier runs.
            clean = self.clean_fraction > 0 and rng.random() < self.clean_fraction
            # Uniform over degradations first, then over that type's pairs.
            name = self.degradations[int(rng.integers(len(self.degradations)))]
            candidates = self.pairs_by_degradation[name]
            pair = candidates[int(rng.integers(len(candidates)))]
            full_lq, full_gt = self._load(pair)
            if clean:  # an identity pair: the restorer must give the clean image back
                if self.clean_dark > 0 and rng.random() < self.clean_dark:
                    full_gt = dark_exposure(full_gt, rng)  # a dark scene, correctly captured
                full_lq = full_gt
            lq, gt = self._crop(pair, full_lq, full_gt, rng)
            augment = rng if self.augment else None
            tensors = pair_tensors(
                lq,
                gt,
                full_lq,
                augment,
                clip=self._clip_settings(),
                clip_input=self.clip_input,
                clip_views=self.clip_views,
            )
            if clean:
                return {**tensors, **clean_labels(pair.gt_path)}
        return {
            **tensors,
            "degradation": pair.degradation,
            "degradation_index": self.degradations.index(pair.degradation),
            "lq_path": str(pair.lq_path),
            "gt_path": str(pair.gt_path),
        }


class LQImageDataset(Dataset):
    """Low-quality images for inference: every image in a folder (sorted by name), or one file.

    Items are dicts: ``lq`` ``(3, H, W)`` in ``[0, 1]``, ``lq_clip`` ``(3, S, S)``
    (the DA-CLIP transform) and ``path``. Sizes may differ: use ``batch_size=1``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        clip_size: int = 224,
        clip_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        clip_std: Sequence[float] = OPENAI_CLIP_STD,
    ) -> None:
        path = Path(path)
        if path.is_dir():
            self.paths = list_images(path)
            if not self.paths:
                raise ValueError(f"no images in {path}")
        elif path.is_file():
            if not is_image_file(path):
                raise ValueError(f"not an image file (unknown extension): {path}")
            self.paths = [path]
        else:
            raise FileNotFoundError(f"input image or folder not found: {path}")
        self.clip_size = clip_size
        self.clip_mean = tuple(clip_mean)
        self.clip_std = tuple(clip_std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        lq = read_image(self.paths[index])  # (H, W, 3)
        return {
            "lq": image_to_tensor(lq),  # (3, H, W)
            "lq_clip": clip_transform(lq, self.clip_size, self.clip_mean, self.clip_std),  # (3, S, S)
            "path": str(self.paths[index]),
        }


# ----------------------------------------------------------------------------- writing the layout

MANIFEST_NAME = "dataset.json"
_SPLITS = ("train", "val")
_OUTPUTS = (*_SPLITS, *(f"{split}.csv" for split in _SPLITS))  # what make_paired_dataset writes in root


def _normalise(value: object) -> Any:
    """JSON round trip (tuples become lists), so a saved and a fresh description compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def claim_output_root(
    root: Path, manifest: str, identity: dict, outputs: Sequence[str], *, overwrite: bool
) -> bool:
    """Make ``root`` ready for a builder whose result is described by ``identity``.

    The builder's description lives in ``root/<manifest>``. Returns ``True`` when
    the same build already finished (nothing to do). A build of the same
    description that was interrupted is resumed (the caller skips finished
    files). A different build, or a non-empty folder without a manifest, is an
    error unless ``overwrite``, which deletes only the builder's own ``outputs``
    (names inside ``root``), never anything else in the folder.
    """
    manifest_path = root / manifest
    wanted = _normalise(identity)
    saved: dict | None = None
    if manifest_path.is_file():
        try:
            saved = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}  # unreadable: treated as a different dataset
    if saved is not None and saved.get("identity") == wanted:
        return bool(saved.get("complete"))
    if saved is not None or (root.is_dir() and any(root.iterdir())):
        if not overwrite:
            if saved is None:
                reason = f"is not empty and was not made by this tool ({manifest} missing)"
            else:
                previous = saved.get("identity") or {}
                changed = sorted(k for k in set(wanted) | set(previous) if previous.get(k) != wanted.get(k))
                reason = f"holds a different dataset (differs in {changed})"
            raise ValueError(
                f"{root} {reason}; choose another output folder or overwrite it explicitly (--overwrite)"
            )
        for name in [*outputs, manifest]:
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    _write_manifest(manifest_path, wanted, complete=False)
    return False


def _write_manifest(path: Path, identity: object, *, complete: bool) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(
            json.dumps({"identity": identity, "complete": complete}, indent=2, sort_keys=True) + "\n"
        )


def finish_output_root(root: Path, manifest: str, identity: dict) -> None:
    """Mark the build described by ``identity`` in ``root`` as complete."""
    _write_manifest(root / manifest, _normalise(identity), complete=True)


@dataclass(frozen=True)
class SynthesizedDataset:
    """Where :func:`make_paired_dataset` wrote its result, and what it did."""

    root: Path
    train_root: Path
    val_root: Path | None
    train_csv: Path
    val_csv: Path | None
    written: int
    skipped: int

    @classmethod
    def at(cls, root: Path, has_val: bool, written: int, skipped: int) -> SynthesizedDataset:
        """The folders and CSVs of a dataset written to ``root`` (``val`` ones only when ``has_val``)."""
        val_root, val_csv = (root / "val", root / "val.csv") if has_val else (None, None)
        return cls(root, root / "train", val_root, root / "train.csv", val_csv, written, skipped)


def _split(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split of clean images (each image goes to one split, with all its degradations)."""
    if val_fraction <= 0 or len(names) < 2:
        return names, []
    n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    order = np.random.default_rng(seed).permutation(len(names))
    val = {names[i] for i in order[:n_val]}
    return [n for n in names if n not in val], [n for n in names if n in val]


def _limit_size(img: np.ndarray, max_size: int | None) -> np.ndarray:
    h, w = img.shape[:2]
    if max_size is None or max(h, w) <= max_size:
        return img
    scale = max_size / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    pil = Image.fromarray((img * 255.0).round().astype(np.uint8)).resize(size, Image.LANCZOS)
    return np.asarray(pil, dtype=np.float32) / 255.0


def pair_seed(seed: int, degradation: str, name: str) -> np.random.SeedSequence:
    """The seed of one synthesized pair: stable across reruns, orders and subsets."""
    return np.random.SeedSequence([seed, zlib.crc32(degradation.encode()), zlib.crc32(name.encode())])


def make_paired_dataset(
    source: str | os.PathLike,
    root: str | os.PathLike,
    degradations: Sequence[str] = DEFAULT_DEGRADATIONS,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    captions: Mapping[str, str] | None = None,
    default_caption: str = "a photo",
    max_size: int | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    generators: Mapping[str, DegradationFn] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> SynthesizedDataset:
    """Synthesize a paired dataset from a folder of clean images.

    Every clean image becomes the GT of one pair per degradation, split into train and val by clean image
    (no image is in both). Writes ``<root>/{train,val}/<degradation>/{LQ,GT}/<stem>.png``, the DA-CLIP
    caption CSVs of the LQ images ``<root>/{train,val}.csv`` and ``<root>/dataset.json`` (what was built).

    Args:
        source: folder of clean images (any format :func:`data.io.read_image` reads); ``root``: the output.
        degradations: types to synthesize; each needs a generator.
        val_fraction: share of clean images held out for validation (at least one when positive and
            there are two images or more; 0 = no val split).
        seed: seeds the split and, per (degradation, image), the generator.
        captions: clean caption per image stem (:func:`data.captions.read_caption_table`); the others get
            ``default_caption``, useless to DA-CLIP's content loss: replace it (``scripts/make_captions.py``).
        max_size: downscale images whose longer side exceeds this (Lanczos).
        params: keyword parameters per degradation name, passed to its generator.
        generators: name -> generator (default :data:`data.degradations.DEGRADATIONS`; your own adds types).
        overwrite: replace a different dataset (or a non-empty folder not made here) in ``root``, else an
            error. ``progress``: a progress bar (tqdm).

    Reruns skip finished pairs (an interrupted run resumes) and keep a finished dataset's CSVs (they may
    hold BLIP captions by now).
    """
    source, root = Path(source), Path(root)
    degradations, generators, params = _synthesis_plan(degradations, generators, params, val_fraction)
    images = _clean_images(source, root, max_size)
    captions = _captions_of(images, captions, source)
    splits = dict(zip(_SPLITS, _split(sorted(images), val_fraction, seed)))
    identity = {
        "kind": "make_paired_dataset",
        "source": str(source.resolve()),
        "images": sorted(images),
        "degradations": list(degradations),
        "val_fraction": val_fraction,
        "seed": seed,
        "max_size": max_size,
        "params": params,
    }
    already_complete = claim_output_root(root, MANIFEST_NAME, identity, _OUTPUTS, overwrite=overwrite)
    jobs = [(name, images[name], root / split) for split, group in splits.items() for name in group]
    make_lq = functools.partial(_generate_lq, generators, params, seed, images)
    written, skipped = write_pairs(jobs, degradations, make_lq, max_size, progress)
    _write_caption_csvs(root, splits, degradations, captions, default_caption, keep=already_complete)
    finish_output_root(root, MANIFEST_NAME, identity)
    return SynthesizedDataset.at(root, bool(splits["val"]), written, skipped)


def _synthesis_plan(
    degradations: Sequence[str],
    generators: Mapping[str, DegradationFn] | None,
    params: Mapping[str, Mapping[str, Any]] | None,
    val_fraction: float,
) -> tuple[tuple[str, ...], dict[str, DegradationFn], dict[str, dict[str, Any]]]:
    """``(degradations, generators, params)`` as plain tuples and dicts, checked: every degradation has a
    generator, every parameter is one of its generator's, and ``val_fraction`` is in [0, 1)."""
    generators = dict(DEGRADATIONS if generators is None else generators)
    params = {k: dict(v) for k, v in (params or {}).items()}
    degradations = tuple(degradations)
    _check_generators(degradations, generators, params)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return degradations, generators, params


def _check_generators(
    degradations: tuple[str, ...], generators: Mapping[str, DegradationFn], params: Mapping[str, Mapping]
) -> None:
    """ValueError unless every degradation has a generator and every parameter names one of its own."""
    if not degradations:
        raise ValueError("no degradations chosen")
    unknown = [d for d in degradations if d not in generators]
    if unknown:
        raise ValueError(f"no generator for degradation(s) {unknown}; known: {sorted(generators)}")
    extra = sorted(set(params) - set(degradations))
    if extra:
        raise ValueError(f"parameters given for degradation(s) {extra} that are not being synthesized")
    for name, settings in params.items():
        valid = parameter_names(generators[name])
        wrong = [] if valid is None else sorted(set(settings) - set(valid))
        if wrong:
            raise ValueError(f"unknown parameter(s) {wrong} for {name!r}; valid: {valid}")


def check_output_folder(source: Path, root: Path, max_size: int | None) -> None:
    """ValueError when ``max_size`` is too small or the output folder ``root`` contains ``source``."""
    if max_size is not None and max_size < 8:
        raise ValueError(f"max_size must be at least 8, got {max_size}")
    if source.resolve() == root.resolve() or root.resolve() in source.resolve().parents:
        raise ValueError(f"output folder {root} must not contain the source folder {source}")


def _clean_images(source: Path, root: Path, max_size: int | None) -> dict[str, Path]:
    """The clean images of the folder ``source`` by stem, after checking where they go."""
    check_output_folder(source, root, max_size)
    images = _by_stem(source)  # sorted, unique stems; FileNotFoundError if missing
    if not images:
        raise ValueError(f"no images in {source}")
    return images


def _captions_of(
    images: Mapping[str, Path], captions: Mapping[str, str] | None, source: Path
) -> dict[str, str]:
    """The given clean captions, checked to name images of ``source`` only."""
    captions = dict(captions or {})
    unmatched = sorted(set(captions) - set(images))
    if unmatched:
        raise ValueError(f"captions given for images not in {source}: {unmatched[:_SHOWN]}")
    return captions


def _generate_lq(
    generators: Mapping[str, DegradationFn],
    params: Mapping[str, Mapping[str, Any]],
    seed: int,
    images: Mapping[str, Path],
    clean: np.ndarray,
    degradation: str,
    name: str,
) -> np.ndarray:
    """The LQ image of one pair: its generator, seeded per (degradation, image) by :func:`pair_seed`."""
    rng = np.random.default_rng(pair_seed(seed, degradation, name))
    lq = generators[degradation](clean, rng, **params.get(degradation, {}))
    if lq.shape != clean.shape:
        raise ValueError(f"generator of {degradation!r} changed the image size for {images[name]}")
    return lq


#: Makes the LQ image of one pair: ``(clean image, label, image stem) -> LQ image``.
PairMaker = Callable[[np.ndarray, str, str], np.ndarray]


def write_pairs(
    jobs: Sequence[tuple[str, Path, Path]],
    labels: Sequence[str],
    make_lq: PairMaker,
    max_size: int | None,
    progress: bool,
) -> tuple[int, int]:
    """Write ``<folder>/<label>/{GT,LQ}/<stem>.png`` for every job ``(stem, clean image, folder)`` and label.

    Returns ``(written, skipped)``. A pair whose two files exist is skipped, so an interrupted run resumes;
    a clean image is read (and downscaled to ``max_size``) only when one of its pairs is missing.
    """
    bar = None
    if progress:
        from tqdm import tqdm  # optional at import time: the library must not need it

        bar = tqdm(total=len(jobs) * len(labels), desc="pairs", unit="pair")
    written = skipped = 0
    for stem, image_path, folder in jobs:
        clean = None  # read lazily: a fully finished image costs nothing on rerun
        for label in labels:
            lq_path, gt_path = folder / label / "LQ" / f"{stem}.png", folder / label / "GT" / f"{stem}.png"
            if lq_path.is_file() and gt_path.is_file():
                skipped += 1
            else:
                if clean is None:
                    clean = _limit_size(read_image(image_path), max_size)
                lq = make_lq(clean, label, stem)
                write_image(gt_path, clean)
                write_image(lq_path, lq)  # last: its presence marks the pair finished
                written += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return written, skipped


def _write_caption_csvs(
    root: Path,
    splits: Mapping[str, Sequence[str]],
    degradations: Sequence[str],
    captions: Mapping[str, str],
    default_caption: str,
    *,
    keep: bool,
) -> None:
    """``<root>/<split>.csv``: one caption row per LQ image; with ``keep`` an existing CSV is left alone
    (a finished dataset's CSVs may hold BLIP captions by now, from ``make_captions``)."""
    for split, names in splits.items():
        rows = [
            CaptionRow(
                str(root / split / degradation / "LQ" / f"{name}.png"),
                captions.get(name, default_caption),
                degradation,
            )
            for name in names
            for degradation in degradations
        ]
        csv_path = root / f"{split}.csv"
        if rows and (not keep or not csv_path.is_file()):
            write_caption_csv(csv_path, rows)
