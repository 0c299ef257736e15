"""Degradation classification: top-k predictions, per-class accuracy and confusion matrices.

The paper compares zero-shot degradation classification by plain CLIP (its image
embedding against the embedded degradation names) with DA-CLIP (its degradation
embedding against the same names). :func:`evaluate_classification` computes both
confusion matrices on a labelled set (a paired ``<root>/<degradation>/LQ`` folder or
a caption CSV); :class:`ClassificationReport` formats them side by side and
:func:`save_confusion_png` draws one with PIL (no matplotlib dependency).

Images with several degradations (a mixed set from ``scripts/make_dataset.py --mixed``, folders
named ``hazy+rainy``): :func:`evaluate_multilabel` keeps each image's per-type probabilities (the
same softmax over the types) and calls a type present when its probability reaches a threshold or
it is among the image's top ``k`` types, ``k`` being the number of true types
(:func:`daclip.zero_shot.multilabel_predictions`, the rule restoring photos uses too);
:class:`MultiLabelMetrics` gives per-type precision, recall and F1 and the exact-set accuracy.
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

from daclip.engine.distributed import get_world_size, is_distributed
from daclip.engine.runtime import autocast
from daclip.inference import FrozenDaCLIP
from daclip.model import DaCLIP
from daclip.zero_shot import DEFAULT_THRESHOLD, ZeroShotClassifier, multilabel_predictions, view_probabilities
from data.captions import read_caption_csv
from data.degradations import COMBINATION_SEPARATOR
from data.io import is_image_file, list_images, read_image
from data.paired import find_pairs
from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_transform, grid_views

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
    "MultiLabelImages",
    "mixed_labelled_images",
    "MultiLabelMetrics",
    "multilabel_metrics",
    "multilabel_probabilities",
    "MultiLabelReport",
    "evaluate_multilabel",
    "classify_paths_multilabel",
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
        views: int = 1,
    ) -> None:
        self.items = list(items)
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.views = int(views)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int | str]:
        path, label = self.items[index]
        image = clip_inputs(read_image(path), self.image_size, self.mean, self.std, self.views)
        return {"image": image, "degradation_index": label, "path": path}


def clip_inputs(
    image: np.ndarray,
    size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    views: int = 1,
) -> torch.Tensor:
    """A classifier's input of one ``(H, W, 3)`` image: ``(3, S, S)`` (the paper's whole-image resize) or,
    for a DA-CLIP trained on native crops (``views`` n > 1), ``(n², 3, S, S)`` native crops."""
    if views > 1:
        return grid_views(image, size, views, mean, std)
    return clip_transform(image, size, mean, std)


def labelled_images(
    source: str | os.PathLike,
    degradations: Sequence[str],
    image_size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    views: int = 1,
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
    return LabelledImages(items, image_size, mean, std, views)


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
    embedders = {
        "daclip": lambda x: model.controller(x)[0],  # degra_emb (B, E): the controller alone
        "clip": lambda x: model.encode_image(x, control=False),  # (B, E)
    }
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S) or (B, V, 3, S, S) views
        labels = batch["degradation_index"].to(device)  # (B,)
        for method in methods:
            with autocast(device, precision):
                probs = view_probabilities(embedders[method], classifier, images)  # (B, K)
            predicted = probs.argmax(dim=-1)  # (B,)
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
    paths = _expand_inputs(inputs)
    classifier = daclip.classifier(degradations)
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = torch.stack(
            [
                clip_inputs(read_image(p), daclip.image_size, daclip.mean, daclip.std, daclip.views)
                for p in chunk
            ]
        )  # (b, 3, S, S), or (b, V, 3, S, S) views
        probs = view_probabilities(daclip.encode_degradation, classifier, images)  # (b, K)
        results += [(str(p), top_names(probs_row, classifier.names, k)) for p, probs_row in zip(chunk, probs)]
    return results


def top_names(probs: torch.Tensor, names: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most likely ``(name, probability)`` of one ``(K,)`` probability row, best first."""
    values, indices = probs.topk(min(k, len(names)))
    return [(names[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]


def _expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files, folders expanded to the images directly inside them."""
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
    return paths


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


# ----------------------------------------------------------------------------- several degradations per image


class MultiLabelImages(Dataset):
    """Images with a set of degradations: items ``{image, labels (K,) float multi-hot, path}``."""

    def __init__(
        self,
        items: Sequence[tuple[str, Sequence[int]]],
        num_classes: int,
        image_size: int = 224,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
    ) -> None:
        self.items = [(path, tuple(labels)) for path, labels in items]
        self.num_classes = num_classes
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        path, labels = self.items[index]
        multi_hot = torch.zeros(self.num_classes, dtype=torch.float32)
        multi_hot[list(labels)] = 1.0
        image = clip_transform(read_image(path), self.image_size, self.mean, self.std)  # (3, S, S)
        return {"image": image, "labels": multi_hot, "path": path}


def mixed_labelled_images(
    root: str | os.PathLike,
    degradations: Sequence[str],
    image_size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> MultiLabelImages:
    """The LQ images of a mixed set ``<root>/<a+b>/LQ`` (as ``make_dataset.py --mixed`` writes), labelled
    with the types of their folder name; folders naming a type outside ``degradations`` are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"mixed set not found (a folder of <type+type>/LQ folders): {root}")
    names = tuple(degradations)
    items: list[tuple[str, tuple[int, ...]]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        parts = folder.name.split(COMBINATION_SEPARATOR)
        if not all(part in names for part in parts) or not (folder / "LQ").is_dir():
            continue
        labels = tuple(sorted(names.index(part) for part in set(parts)))
        items += [(str(pair.lq_path), labels) for pair in find_pairs(root, folder.name)]
    if not items:
        raise ValueError(f"no <type+type>/LQ images in {root} for the degradations {list(names)}")
    return MultiLabelImages(items, len(names), image_size, mean, std)


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


@dataclass
class MultiLabelMetrics:
    """Per-type precision, recall and F1 (NaN when undefined), and set-level scores, of one method."""

    names: tuple[str, ...]
    true_positives: list[int]
    false_positives: list[int]
    false_negatives: list[int]
    exact_matches: int
    images: int

    def precision(self) -> list[float]:
        return [_ratio(tp, tp + fp) for tp, fp in zip(self.true_positives, self.false_positives)]

    def recall(self) -> list[float]:
        return [_ratio(tp, tp + fn) for tp, fn in zip(self.true_positives, self.false_negatives)]

    def f1(self) -> list[float]:
        return [
            _ratio(2 * tp, 2 * tp + fp + fn)
            for tp, fp, fn in zip(self.true_positives, self.false_positives, self.false_negatives)
        ]

    def support(self) -> list[int]:
        """Images in which each type is truly present."""
        return [tp + fn for tp, fn in zip(self.true_positives, self.false_negatives)]

    def exact_accuracy(self) -> float:
        """Share of images whose predicted set equals the true set."""
        return _ratio(self.exact_matches, self.images)

    def micro(self) -> tuple[float, float, float]:
        """Precision, recall and F1 over all (image, type) decisions."""
        tp, fp, fn = sum(self.true_positives), sum(self.false_positives), sum(self.false_negatives)
        return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)

    def macro_f1(self) -> float:
        """Mean F1 over the types that are present or predicted somewhere."""
        values = [v for v in self.f1() if v == v]
        return float(np.mean(values)) if values else float("nan")

    def format_table(self, title: str = "") -> str:
        width = max(len("micro average"), *(len(n) for n in self.names))
        header = f"{'degradation':<{width}}  {'images':>6}  {'precision':>9}  {'recall':>7}  {'F1':>7}"
        lines = ([title] if title else []) + [header, "-" * len(header)]
        rows = zip(self.names, self.support(), self.precision(), self.recall(), self.f1())
        for name, count, p, r, f in rows:
            lines.append(f"{name:<{width}}  {count:>6}  {_percent(p):>9}  {_percent(r):>7}  {_percent(f):>7}")
        lines.append("-" * len(header))
        p, r, f = self.micro()
        lines.append(
            f"{'micro average':<{width}}  {self.images:>6}  {_percent(p):>9}  {_percent(r):>7}  {_percent(f):>7}"
        )
        lines.append(
            f"macro F1 {_percent(self.macro_f1())}, exact-set accuracy {_percent(self.exact_accuracy())}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        p, r, f = self.micro()
        return {
            "per_type": {
                name: {"precision": pi, "recall": ri, "f1": fi, "support": si}
                for name, pi, ri, fi, si in zip(
                    self.names, self.precision(), self.recall(), self.f1(), self.support()
                )
            },
            "micro": {"precision": p, "recall": r, "f1": f},
            "macro_f1": self.macro_f1(),
            "exact_accuracy": self.exact_accuracy(),
            "images": self.images,
        }


def multilabel_metrics(
    predicted: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, names: Sequence[str]
) -> MultiLabelMetrics:
    """Scores of ``(N, K)`` boolean predictions against ``(N, K)`` multi-hot labels."""
    pred = np.asarray(predicted).astype(bool)
    true = np.asarray(labels).astype(bool)
    if pred.shape != true.shape or pred.ndim != 2 or pred.shape[1] != len(names):
        raise ValueError(
            f"predictions {pred.shape} and labels {true.shape} must both be (N, {len(names)}) for {list(names)}"
        )
    return MultiLabelMetrics(
        names=tuple(names),
        true_positives=[int(v) for v in (pred & true).sum(axis=0)],
        false_positives=[int(v) for v in (pred & ~true).sum(axis=0)],
        false_negatives=[int(v) for v in (~pred & true).sum(axis=0)],
        exact_matches=int((pred == true).all(axis=1).sum()),
        images=len(pred),
    )


@torch.no_grad()
def multilabel_probabilities(
    model: DaCLIP,
    loader: DataLoader,
    classifier: ZeroShotClassifier,
    device: torch.device,
    methods: Sequence[Method] = ("clip", "daclip"),
) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str]]:
    """Per-type probabilities ``(N, K)`` of every method, the ``(N, K)`` labels and the paths (one process)."""
    probs: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    labels, paths = [], []
    was_training = model.training
    model.eval()
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S)
        if "daclip" in methods:
            probs["daclip"].append(classifier(model.encode_image(images, control=True)[1].float()).cpu())
        if "clip" in methods:
            probs["clip"].append(classifier(model.encode_image(images, control=False).float()).cpu())
        labels.append(batch["labels"].cpu())
        paths += list(batch["path"])
    model.train(was_training)
    return {m: torch.cat(v) for m, v in probs.items()}, torch.cat(labels) > 0.5, paths


@dataclass
class MultiLabelReport:
    """Per-image probabilities of several methods on a mixed set, and their multi-label scores."""

    names: tuple[str, ...]
    probabilities: dict[str, np.ndarray]  # method -> (N, K)
    labels: np.ndarray  # (N, K) bool
    paths: list[str]
    threshold: float = DEFAULT_THRESHOLD

    def predictions(self, method: str) -> np.ndarray:
        """``(N, K)`` bool: threshold or top-k, k = the number of true types (see :func:`multilabel_predictions`)."""
        return multilabel_predictions(self.probabilities[method], self.threshold, self.labels.sum(axis=1))

    def metrics(self, method: str) -> MultiLabelMetrics:
        return multilabel_metrics(self.predictions(method), self.labels, self.names)

    def format_table(self) -> str:
        """Every method's per-type table."""
        return "\n\n".join(
            self.metrics(m).format_table(f"{METHOD_TITLES.get(m, m)} (threshold {self.threshold:g} or top-k)")
            for m in self.probabilities
        )

    def format_images(self, method: str) -> str:
        """One line per image: true set, predicted set and every type's probability."""
        predicted = self.predictions(method)
        lines = [f"{METHOD_TITLES.get(method, method)}: per image (true -> predicted: probabilities)"]
        for i, path in enumerate(self.paths):
            true = "+".join(n for n, t in zip(self.names, self.labels[i]) if t)
            guess = "+".join(n for n, t in zip(self.names, predicted[i]) if t)
            probs = ", ".join(
                f"{n} {100 * p:.1f}%" for n, p in zip(self.names, self.probabilities[method][i])
            )
            lines.append(f"{path}: {true} -> {guess}: {probs}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "names": list(self.names),
            "threshold": self.threshold,
            "methods": {
                m: {
                    **self.metrics(m).to_dict(),
                    "images": [
                        {
                            "path": path,
                            "true": [n for n, t in zip(self.names, self.labels[i]) if t],
                            "predicted": [n for n, t in zip(self.names, self.predictions(m)[i]) if t],
                            "probabilities": dict(zip(self.names, map(float, self.probabilities[m][i]))),
                        }
                        for i, path in enumerate(self.paths)
                    ],
                }
                for m in self.probabilities
            },
        }


def evaluate_multilabel(
    daclip: FrozenDaCLIP,
    dataset: Dataset,
    degradations: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 32,
    num_workers: int = 0,
    methods: Sequence[Method] = ("clip", "daclip"),
) -> MultiLabelReport:
    """Plain CLIP and DA-CLIP multi-label zero-shot classification of a mixed set (see
    :func:`mixed_labelled_images`)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    classifier = daclip.classifier(degradations)
    probs, labels, paths = multilabel_probabilities(daclip.model, loader, classifier, daclip.device, methods)
    return MultiLabelReport(
        tuple(degradations), {m: p.numpy() for m, p in probs.items()}, labels.numpy(), paths, threshold
    )


@torch.no_grad()
def classify_paths_multilabel(
    daclip: FrozenDaCLIP,
    inputs: Sequence[str | os.PathLike],
    degradations: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 16,
) -> list[tuple[str, list[str], list[tuple[str, float]]]]:
    """Per image: the types present (probability >= ``threshold``, at least the best one) and every
    type's DA-CLIP probability, best first."""
    paths = _expand_inputs(inputs)
    classifier = daclip.classifier(degradations)
    names = tuple(degradations)
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = torch.stack(
            [clip_transform(read_image(p), daclip.image_size, daclip.mean, daclip.std) for p in chunk]
        )  # (b, 3, S, S)
        probs = classifier(daclip.encode_degradation(images)).cpu().numpy()  # (b, K)
        present = multilabel_predictions(probs, threshold)
        for path, row, mask in zip(chunk, probs, present):
            ranked = sorted(zip(names, map(float, row)), key=lambda item: -item[1])
            results.append((str(path), [n for n, m in zip(names, mask) if m], ranked))
    return results
