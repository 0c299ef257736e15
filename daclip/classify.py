"""Degradation classification: top-k predictions, per-class accuracy and confusion matrices.

The paper compares zero-shot degradation classification by plain CLIP (its image
embedding against the embedded degradation names) with DA-CLIP (its degradation
embedding against the same names). :func:`evaluate_classification` computes both
confusion matrices on a labelled set (a paired ``<root>/<degradation>/LQ`` folder or
a caption CSV); :class:`ClassificationReport` formats them side by side and
:func:`save_confusion_png` draws one with PIL (no matplotlib dependency).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import DataLoader, Dataset

from daclip.inference import FrozenDaCLIP
from daclip.model import DaCLIP
from daclip.utils.distributed import get_world_size, is_distributed
from daclip.utils.experiment import autocast
from daclip.zero_shot import ZeroShotClassifier
from data.captions import read_caption_csv
from data.io import is_image_file, list_images, read_image
from data.paired import find_pairs
from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_transform

__all__ = [
    "Method",
    "METHOD_TITLES",
    "LabelledImages",
    "labelled_images",
    "confusion_matrices",
    "ClassificationReport",
    "evaluate_classification",
    "classify_paths",
    "save_confusion_png",
]

Method = Literal["clip", "daclip"]
Precision = Literal["fp32", "bf16"]
METHOD_TITLES: dict[str, str] = {"clip": "CLIP", "daclip": "DA-CLIP"}


class LabelledImages(Dataset):
    """Images with a degradation label, after the CLIP transform: items ``{image, degradation_index, path}``."""

    def __init__(
        self,
        items: Sequence[tuple[str, int]],
        image_size: int = 224,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
    ) -> None:
        self.items = list(items)
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int | str]:
        path, label = self.items[index]
        image = clip_transform(read_image(path), self.image_size, self.mean, self.std)  # (3, S, S)
        return {"image": image, "degradation_index": label, "path": path}


def labelled_images(
    source: str | os.PathLike,
    degradations: Sequence[str],
    image_size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> LabelledImages:
    """A labelled set from a caption CSV (file) or a paired root ``<root>/<degradation>/LQ`` (folder).

    In a paired root, degradations without a folder are skipped (a test set need not hold every type).
    """
    source = Path(source)
    names = tuple(degradations)
    if source.is_file():
        rows = read_caption_csv(source, names)
        items = [(row.filepath, names.index(row.degradation)) for row in rows]
    elif source.is_dir():
        items = []
        for index, name in enumerate(names):
            if not (source / name).is_dir():
                continue
            items += [(str(pair.lq_path), index) for pair in find_pairs(source, name)]
        if not items:
            raise ValueError(f"no <degradation>/LQ images in {source} for the degradations {list(names)}")
    else:
        raise FileNotFoundError(f"labelled set not found (a caption CSV or a paired root): {source}")
    if not items:
        raise ValueError(f"{source}: no labelled images")
    return LabelledImages(items, image_size, mean, std)


@torch.no_grad()
def confusion_matrices(
    model: DaCLIP,
    loader: DataLoader,
    classifier: ZeroShotClassifier,
    device: torch.device,
    methods: Sequence[Method] = ("clip", "daclip"),
    precision: Precision = "fp32",
) -> dict[str, torch.Tensor]:
    """``(K, K)`` int64 confusion matrices (rows: true class, columns: predicted), one per method.

    Under ``torch.distributed`` the matrices are summed over ranks (give each rank its own shard).
    """
    num_classes = len(classifier.names)
    matrices = {m: torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device) for m in methods}
    was_training = model.training
    model.eval()
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S)
        labels = batch["degradation_index"].to(device)  # (B,)
        with autocast(device, precision):
            embeddings = {}
            if "daclip" in methods:
                embeddings["daclip"] = model.encode_image(images, control=True)[1]  # degra_emb (B, E)
            if "clip" in methods:
                embeddings["clip"] = model.encode_image(images, control=False)  # (B, E)
        for method, emb in embeddings.items():
            predicted = classifier.predict(emb.float())  # (B,)
            flat = labels * num_classes + predicted
            matrices[method] += torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)
    model.train(was_training)
    if is_distributed() and get_world_size() > 1:
        import torch.distributed as dist

        for matrix in matrices.values():
            dist.all_reduce(matrix, op=dist.ReduceOp.SUM)
    return {m: v.cpu() for m, v in matrices.items()}


@dataclass
class ClassificationReport:
    """Confusion matrices of several methods over the same classes."""

    names: tuple[str, ...]
    confusion: dict[str, torch.Tensor] = field(default_factory=dict)

    def accuracy(self, method: str) -> float:
        """Overall accuracy (correct / total)."""
        matrix = self.confusion[method].double()
        total = float(matrix.sum())
        return float(matrix.diagonal().sum()) / total if total else float("nan")

    def per_class_accuracy(self, method: str) -> list[float]:
        """Recall of each class (NaN for a class with no samples)."""
        matrix = self.confusion[method].double()
        support = matrix.sum(dim=1)
        return [float(c) / float(s) if s else float("nan") for c, s in zip(matrix.diagonal(), support)]

    def support(self) -> list[int]:
        """Number of samples of each class."""
        first = next(iter(self.confusion.values()))
        return [int(v) for v in first.sum(dim=1)]

    def format_table(self) -> str:
        """Per-class accuracy of every method side by side, plus the overall accuracy."""
        methods = list(self.confusion)
        width = max(len("overall"), *(len(n) for n in self.names))
        header = f"{'degradation':<{width}}  {'images':>6}  " + "  ".join(
            f"{METHOD_TITLES.get(m, m):>8}" for m in methods
        )
        lines = [header, "-" * len(header)]
        per_class = {m: self.per_class_accuracy(m) for m in methods}
        for i, (name, count) in enumerate(zip(self.names, self.support())):
            cells = "  ".join(f"{_percent(per_class[m][i]):>8}" for m in methods)
            lines.append(f"{name:<{width}}  {count:>6}  {cells}")
        lines.append("-" * len(header))
        cells = "  ".join(f"{_percent(self.accuracy(m)):>8}" for m in methods)
        lines.append(f"{'overall':<{width}}  {sum(self.support()):>6}  {cells}")
        return "\n".join(lines)

    def format_confusion(self, method: str) -> str:
        """The confusion matrix of ``method`` as a text table (rows: true, columns: predicted)."""
        matrix = self.confusion[method]
        short = [n[:8] for n in self.names]
        width = max(len(n) for n in self.names)
        lines = [f"{METHOD_TITLES.get(method, method)} (rows: true, columns: predicted)"]
        lines.append(" " * width + "  " + " ".join(f"{s:>8}" for s in short))
        for name, row in zip(self.names, matrix.tolist()):
            lines.append(f"{name:<{width}}  " + " ".join(f"{v:>8d}" for v in row))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """Plain data (JSON-ready)."""
        return {
            "names": list(self.names),
            "support": self.support(),
            "methods": {
                m: {
                    "accuracy": self.accuracy(m),
                    "per_class_accuracy": dict(zip(self.names, self.per_class_accuracy(m))),
                    "confusion": self.confusion[m].tolist(),
                }
                for m in self.confusion
            },
        }


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{100.0 * value:.2f}"


def evaluate_classification(
    daclip: FrozenDaCLIP,
    dataset: Dataset,
    degradations: Sequence[str],
    batch_size: int = 32,
    num_workers: int = 0,
    methods: Sequence[Method] = ("clip", "daclip"),
) -> ClassificationReport:
    """Plain CLIP and DA-CLIP zero-shot classification of a labelled set (see :func:`labelled_images`)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    classifier = daclip.classifier(degradations)
    matrices = confusion_matrices(daclip.model, loader, classifier, daclip.device, methods)
    return ClassificationReport(tuple(degradations), matrices)


@torch.no_grad()
def classify_paths(
    daclip: FrozenDaCLIP,
    inputs: Sequence[str | os.PathLike],
    degradations: Sequence[str],
    k: int = 3,
    batch_size: int = 16,
) -> list[tuple[str, list[tuple[str, float]]]]:
    """Top-``k`` degradations (name, probability) of each image; folders are expanded to their images."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += list_images(item)
        elif item.is_file():
            if not is_image_file(item):
                raise ValueError(f"not an image file (unknown extension): {item}")
            paths.append(item)
        else:
            raise FileNotFoundError(f"input image or folder not found: {item}")
    if not paths:
        raise ValueError(f"no images found in {[str(i) for i in inputs]}")
    classifier = daclip.classifier(degradations)
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = torch.stack(
            [clip_transform(read_image(p), daclip.image_size, daclip.mean, daclip.std) for p in chunk]
        )  # (b, 3, S, S)
        _, degra_emb = daclip.encode_image(images)
        results += [(str(p), top) for p, top in zip(chunk, classifier.topk(degra_emb, k))]
    return results


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single bitmap font
        return ImageFont.load_default()


def save_confusion_png(
    matrix: torch.Tensor | np.ndarray,
    names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    cell: int = 48,
) -> Path:
    """Draw a confusion matrix (rows: true, columns: predicted) as a PNG, row-normalised shading."""
    counts = np.asarray(matrix, dtype=np.int64)
    num = len(names)
    if counts.shape != (num, num):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {num} class names")
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    font, small = _font(14), _font(11)
    label_w = 8 + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(n, font=font)) for n in names)
    top = 40 + label_w  # room for the title and the rotated column labels
    width, height = label_w + num * cell + 16, top + num * cell + 40
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 8), title or "confusion matrix", fill="black", font=font)
    for j, name in enumerate(names):  # column labels, rotated
        label = Image.new("RGB", (label_w, cell), "white")
        ImageDraw.Draw(label).text((4, cell // 2 - 8), name, fill="black", font=font)
        label = label.rotate(90, expand=True)
        canvas.paste(label, (label_w + j * cell, 36))
    for i, name in enumerate(names):
        y = top + i * cell
        draw.text((4, y + cell // 2 - 8), name, fill="black", font=font)
        for j in range(num):
            x = label_w + j * cell
            shade = int(round(255 * (1.0 - rates[i, j])))
            fill = (shade, shade, 255)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fill, outline=(200, 200, 200))
            text = str(counts[i, j])
            colour = "white" if rates[i, j] > 0.5 else "black"
            draw.text((x + 4, y + cell // 2 - 6), text, fill=colour, font=small)
    draw.text((label_w, top + num * cell + 12), "rows: true   columns: predicted", fill="black", font=small)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
