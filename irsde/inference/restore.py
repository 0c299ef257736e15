"""Restoring a user's own images (``scripts/restore.py``): any size, folders, batching, tiles.

Images of equal size are batched together; every image is padded inside the restorer to its
downsampling factor and cropped back, and with ``tile`` set the network sees bounded tiles
(:class:`irsde.inference.tiling.TiledModel`), so memory does not grow with the image. The predicted
degradation (DA-CLIP zero-shot, top-3 with probabilities) is printed and saved to
``predictions.csv``; ``predictions.json`` holds every type's probability and the predicted *set* of
degradations (multi-label: a type is present when its probability reaches the threshold, and the most
probable type always is, as :func:`daclip.classify.multilabel_predictions` decides), whose names also
fill the CSV's ``degradations`` column (``hazy+rainy``). Both files are merged with those of earlier
runs into the same folder and written atomically. At the end (also when some images failed) contact
sheets show every restored image of the inputs beside its input (:func:`write_contact_sheets`).
Inputs are never overwritten.

Outputs are PNGs named after the inputs (``photo.jpg`` -> ``photo.png``); when several inputs share a
name stem (``photo.jpg`` and ``photo.png``), each of them keeps its extension in the name
(``photo_jpg.png``, ``photo_png.png``), so no image is skipped or overwritten. An output path with an
image extension restores a single input into exactly that file.

An image that cannot be read is reported and skipped; the others are restored, and the run ends with
a :class:`RestoreError` naming it. A restored image with non-finite values (NaN weights, a diverged
sampler) is an error naming the image: nothing is written for it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from daclip.classify import DEFAULT_THRESHOLD, multilabel_predictions
from data import CLEAN
from data.io import IMAGE_EXTENSIONS, ImageReadError, atomic_open, read_image, write_image
from irsde.inference.pipeline import RestorationPipeline
from irsde.inference.tiling import tile_starts

__all__ = [
    "NonFiniteOutputError",
    "ProgressReporter",
    "RestoreError",
    "network_calls",
    "output_targets",
    "restore_images",
    "same_size_batches",
    "is_contact_sheet_name",
    "write_contact_sheets",
]

PREDICTIONS_NAME = "predictions.csv"
#: What the predictions say of an image whose most likely class is ``clean``.
NO_DEGRADATION = "no degradation found"
PREDICTIONS_JSON_NAME = "predictions.json"
CONTACT_SHEET_NAME = "contact_sheet.png"
#: Height in pixels of a contact-sheet row (input and output scaled to it).
CONTACT_SHEET_HEIGHT = 192
#: Rows per contact sheet; more images give ``contact_sheet_1.png``, ``contact_sheet_2.png``, ...
CONTACT_SHEET_ROWS = 20
_PREDICTION_FIELDS = ["input", "output", "degradation", "probability", "top3", "degradations"]


class RestoreError(ValueError):
    """Some images could not be restored (the others were); the message names the first one."""

    def __init__(self, message: str, failures: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)  # (input path, reason)


class NonFiniteOutputError(ValueError):
    """The restored image holds NaN or Inf values: the model or the sampling diverged."""


def same_size_batches(dataset: Any, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive items of ``dataset`` grouped into batches of at most ``batch_size`` equal-size images."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    batch: list[dict[str, Any]] = []
    for index in range(len(dataset)):
        item = dataset[index]
        if batch and (len(batch) == batch_size or batch[0]["lq"].shape != item["lq"].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def output_targets(inputs: Sequence[str | os.PathLike], output: str | os.PathLike) -> tuple[list[Path], bool]:
    """The output file of every input, and whether ``output`` names a single file.

    ``output`` is a folder, unless it has an image extension and is not an existing folder: then it
    is the output file of a single input (more inputs are an error). In a folder, outputs are
    ``<stem>.png``; inputs whose stems clash (compared case-insensitively, as file systems on macOS and
    Windows do) get ``<stem>_<ext>.png`` instead. Fails before any work on a name that still clashes,
    on an output that is one of the inputs, and on an output folder that is the input folder.
    """
    output = Path(output)
    paths = [Path(p) for p in inputs]
    resolved_inputs = {p.resolve() for p in paths}
    if _is_image_name(output) and not output.is_dir():
        if len(paths) != 1:
            raise ValueError(
                f"output {output} names one image file, but there are {len(paths)} input images: "
                "give an output folder"
            )
        if output.resolve() in resolved_inputs:
            raise ValueError(
                f"output {output} is the input image: choose another name (inputs are never overwritten)"
            )
        return [output], True
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} exists and is not a folder (nor an image name for a single input)")
    if output.resolve() in {p.parent for p in resolved_inputs}:
        raise ValueError(
            f"output folder {output} is the input folder: choose another (inputs are never overwritten)"
        )
    stems: dict[str, int] = {}
    for path in paths:
        stems[path.stem.casefold()] = stems.get(path.stem.casefold(), 0) + 1
    targets = []
    for path in paths:
        clash = stems[path.stem.casefold()] > 1
        name = f"{path.stem}_{path.suffix.lstrip('.')}.png" if clash else f"{path.stem}.png"
        targets.append(output / name)
    seen: dict[str, Path] = {}
    for path, target in zip(paths, targets):
        other = seen.setdefault(target.name.casefold(), path)
        if other != path:
            raise ValueError(
                f"inputs {other} and {path} would both be restored to {target}: rename one of them"
            )
        if target.resolve() in resolved_inputs:
            raise ValueError(f"refusing to overwrite input image {target}: choose another output folder")
    return targets, False


# ----------------------------------------------------------------------------- progress


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressReporter:
    """Progress within an image, at a bounded rate, readable in a terminal and in a log file.

    On a terminal one status line is rewritten in place at most every ``tty_interval`` seconds;
    otherwise (output redirected to a file or a pipe) a full line is written at most every
    ``interval`` seconds, so a log of an hour-long restore stays short. Progress counts network
    evaluations (one per sampler step, or one per batch of tiles with tiling).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float = 10.0,
        tty_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.interval = tty_interval if self.tty else interval
        self.clock = clock
        self.label = ""
        self.total = 0
        self.steps = 0
        self.done = 0
        self._start = self._last = 0.0

    def start(self, label: str, total: int, steps: int) -> None:
        """A new image (or batch): ``total`` network calls over ``steps`` sampler steps."""
        self.label, self.total, self.steps, self.done = label, max(int(total), 1), max(int(steps), 1), 0
        self._start = self._last = self.clock()

    def _line(self) -> str:
        elapsed = self.clock() - self._start
        fraction = min(self.done / self.total, 1.0)
        per_step = self.total / self.steps
        step = min(int(self.done / per_step) + 1, self.steps)  # the step under way
        text = f"{self.label}: {fraction:4.0%} (step {step}/{self.steps}"
        if per_step > 1:
            text += f", network call {self.done}/{self.total}"
        text += f"), {_duration(elapsed)} elapsed"
        if 0 < fraction < 1:
            text += f", about {_duration(elapsed * (1 - fraction) / fraction)} left"
        return text

    def _write(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, done: int | None = None) -> None:
        """One more network call finished (or ``done`` in total); writes a line if one is due."""
        self.done = self.done + 1 if done is None else int(done)
        now = self.clock()
        if now - self._last >= self.interval and self.done < self.total:
            self._last = now
            self._write(self._line())

    def finish(self) -> None:
        """The image is done: a last line on a terminal (elsewhere the caller logs the result)."""
        self.done = self.total
        if self.tty:
            self._write(self._line(), final=True)


def network_calls(pipeline: RestorationPipeline, batch: int, height: int, width: int) -> tuple[int, int]:
    """(network calls, sampler steps) for one batch, to put progress within an image in numbers."""
    steps = pipeline.nfe  # sampler steps (one for a one-pass restorer), x8 with the self-ensemble
    tile = pipeline.tile
    if tile is None or (height <= tile and width <= tile):
        return steps, steps
    tiles = len(tile_starts(height, tile, pipeline.tile_overlap)) * len(
        tile_starts(width, tile, pipeline.tile_overlap)
    )
    return steps * math.ceil(batch * tiles / pipeline.tile_batch_size), steps


@contextmanager
def _count_network_calls(module: torch.nn.Module, callback: Callable[[], None]) -> Iterator[None]:
    handle = module.register_forward_hook(lambda *_: callback())
    try:
        yield
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- predictions.csv


def _probabilities(
    pipeline: Any, lq: torch.Tensor, lq_clip: torch.Tensor | None, names: Sequence[str]
) -> torch.Tensor:
    """``(B, K)`` class probabilities of a batch, from the DA-CLIP's own test input (a grid of native
    crops for a DA-CLIP trained on them, else the restorer's ``lq_clip``)."""
    embedder = pipeline.embedder
    if int(getattr(embedder, "views", 1)) > 1:
        return embedder.classify_images(lq, list(names))
    return embedder.classify(lq_clip.to(pipeline.device), list(names))


def _write_predictions(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Merge ``records`` into ``path`` (rows of outputs restored earlier are kept), atomically."""
    rows: dict[str, dict[str, str]] = {}
    if path.is_file():
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    if row.get("output"):
                        rows[row["output"]] = {k: row.get(k) or "" for k in _PREDICTION_FIELDS}
        except (OSError, UnicodeDecodeError, csv.Error):
            rows = {}  # unreadable: rewritten from this run's records
    for r in records:
        name, prob = r["top3"][0]
        rows[r["output"]] = {
            "input": r["input"],
            "output": r["output"],
            "degradation": name,
            "probability": f"{prob:.4f}",
            "top3": "; ".join(f"{n} {p:.3f}" for n, p in r["top3"]),
            "degradations": "+".join(r.get("degradations", [name])) or NO_DEGRADATION,
        }
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=_PREDICTION_FIELDS)
        writer.writeheader()
        writer.writerows(rows[key] for key in sorted(rows))


def _read_json_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """The per-image entries of an earlier ``predictions.json``, by output path ({} when unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(e["output"]): e for e in data["images"] if isinstance(e, dict) and e.get("output")}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return {}


def _write_json_predictions(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Merge ``records`` into ``predictions.json`` (entries of outputs restored earlier are kept), atomically.

    Layout: ``{"rule": ..., "images": [{"input", "output", "degradations" (the predicted set, most
    probable first), "threshold", "probabilities" ({type: probability}, summing to 1)}, ...]}``
    sorted by output path.
    """
    entries = _read_json_predictions(path) if path.is_file() else {}
    for r in records:
        entries[r["output"]] = {
            "input": r["input"],
            "output": r["output"],
            "degradations": list(r["degradations"]),
            "threshold": r["threshold"],
            "probabilities": dict(r["probabilities"]),
        }
    document = {
        "rule": "a degradation is present when its probability >= threshold; the most probable one always is",
        "images": [entries[key] for key in sorted(entries)],
    }
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")


# ----------------------------------------------------------------------------- contact sheets


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single bitmap font
        return ImageFont.load_default()


def _thumbnail(path: Path, height: int) -> Image.Image:
    """The image scaled to ``height`` rows (aspect kept; at most ``4 * height`` wide, then centred)."""
    array = np.asarray(read_image(path), dtype=np.float32)  # (H, W, 3) in [0, 1]
    image = Image.fromarray((np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    width = max(1, round(image.width * height / image.height))
    if width <= 4 * height:
        return image.resize((width, height), Image.Resampling.LANCZOS)
    scaled = image.resize((4 * height, max(1, round(image.height * 4 * height / image.width))))
    canvas = Image.new("RGB", (4 * height, height), (32, 32, 32))
    canvas.paste(scaled, (0, (height - scaled.height) // 2))
    return canvas


_SHEET_NAME = re.compile(r"contact_sheet(_[0-9]+)?\.png")


def is_contact_sheet_name(name: str) -> bool:
    """Whether a file name is one :func:`write_contact_sheets` writes (``contact_sheet[_<n>].png``)."""
    return _SHEET_NAME.fullmatch(name) is not None


def _sheet_names(count: int, rows: int) -> list[str]:
    sheets = max(1, math.ceil(count / rows))
    if sheets == 1:
        return [CONTACT_SHEET_NAME]
    stem = Path(CONTACT_SHEET_NAME).stem
    return [f"{stem}_{i}.png" for i in range(1, sheets + 1)]


def write_contact_sheets(
    folder: str | os.PathLike,
    rows: Sequence[tuple[str | os.PathLike, str | os.PathLike, str]],
    *,
    height: int = CONTACT_SHEET_HEIGHT,
    rows_per_sheet: int = CONTACT_SHEET_ROWS,
) -> list[Path]:
    """Draw ``(input, output, label)`` rows as contact sheets in ``folder``; returns the files written.

    A row is the input and the output side by side, each scaled to ``height`` pixels (aspect kept), with
    ``label`` (file name and predicted degradations) on a dark band over the input's top-left corner: a
    sheet is ``rows * height`` pixels tall and as wide as its widest row (input width + output width,
    scaled). Up to ``rows_per_sheet`` rows make ``contact_sheet.png``; more make ``contact_sheet_1.png``,
    ``contact_sheet_2.png``, ... (sheets of an earlier run that this one does not rewrite are removed).
    Each sheet is written atomically.
    """
    if height < 8 or rows_per_sheet < 1:
        raise ValueError(
            f"contact sheet: height must be >= 8 and rows >= 1, got {height} and {rows_per_sheet}"
        )
    folder = Path(folder)
    names = _sheet_names(len(rows), rows_per_sheet) if rows else []
    for stale in folder.glob("contact_sheet*.png"):
        if is_contact_sheet_name(stale.name) and stale.name not in names and stale.is_file():
            stale.unlink()
    font = _font(max(10, height // 14))
    written = []
    for number, name in enumerate(names):
        chunk = rows[number * rows_per_sheet : (number + 1) * rows_per_sheet]
        pairs = [(_thumbnail(Path(i), height), _thumbnail(Path(o), height), label) for i, o, label in chunk]
        width = max(a.width + b.width for a, b, _ in pairs)
        sheet = Image.new("RGB", (width, height * len(pairs)), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for row, (before, after, label) in enumerate(pairs):
            top = row * height
            sheet.paste(before, (0, top))
            sheet.paste(after, (before.width, top))
            box = draw.textbbox((4, top + 2), label, font=font)
            draw.rectangle([0, top, box[2] + 4, box[3] + 3], fill=(0, 0, 0))
            draw.text((4, top + 2), label, fill=(255, 255, 255), font=font)
            draw.line([(before.width, top), (before.width, top + height - 1)], fill=(255, 255, 255))
        path = folder / name
        with atomic_open(path, "wb") as handle:
            sheet.save(handle, format="PNG")
        written.append(path)
    return written


# ----------------------------------------------------------------------------- restoring


def restore_images(
    pipeline: RestorationPipeline,
    dataset: Any,
    output: str | os.PathLike,
    *,
    degradations: Sequence[str] | None = None,
    batch_size: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool | ProgressReporter = False,
    threshold: float = DEFAULT_THRESHOLD,
    contact_sheet: bool = True,
    sheet_height: int = CONTACT_SHEET_HEIGHT,
) -> list[dict[str, Any]]:
    """Restore every image of ``dataset`` into the folder (or, for one image, the file) ``output``.

    ``dataset`` items are dicts with ``lq``, ``lq_clip`` and ``path``; its ``paths`` attribute lists
    the inputs (as :class:`data.paired.LQImageDataset` does), so that outputs are named, and
    already restored images skipped, before any image is read. ``progress``: True reports progress
    within each image on stderr (:class:`ProgressReporter`), or pass a reporter.

    Returns one record per restored image: input path, output path, and (when the pipeline has a
    DA-CLIP and ``degradations`` are given) the top-3 predicted degradations with probabilities
    (``top3``), every type's probability (``probabilities``) and the predicted set (``degradations``:
    probability >= ``threshold``, at least the most probable type; most probable first).

    Into an output folder it writes ``predictions.csv`` and ``predictions.json`` (merged with earlier
    runs' rows) and, unless ``contact_sheet`` is False, contact sheets of every input whose output
    exists (rows ``sheet_height`` pixels high, see :func:`write_contact_sheets`); both also after
    an image failed.

    Raises:
        ValueError: a bad ``batch_size`` or output (before any work).
        NonFiniteOutputError: a restored image is not finite (nothing is written for it).
        RestoreError: at the end, when some images could not be read (the others are restored).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be an integer >= 1, got {batch_size!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if contact_sheet and sheet_height < 8:
        raise ValueError(f"contact sheet height must be >= 8 pixels, got {sheet_height}")
    if hasattr(dataset, "paths"):
        paths = [Path(p) for p in dataset.paths]
    else:
        paths = [Path(dataset[i]["path"]) for i in range(len(dataset))]
    targets, single_file = output_targets(paths, output)
    folder = targets[0].parent if single_file else Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    clashing = [(p, t) for p, t in zip(paths, targets) if not single_file and t.stem != p.stem]
    if clashing:
        log(
            f"{len(clashing)} inputs share a name with another input: their outputs keep the extension "
            f"(e.g. {clashing[0][0].name} -> {clashing[0][1].name})"
        )
    pending = [i for i, t in enumerate(targets) if overwrite or not t.exists()]
    if len(pending) < len(targets):
        log(
            f"skipping {len(targets) - len(pending)} image(s) already restored in {folder} "
            "(pass --overwrite to redo)"
        )

    reporter: ProgressReporter | None
    reporter = (
        progress if isinstance(progress, ProgressReporter) else (ProgressReporter() if progress else None)
    )
    classify = getattr(pipeline.embedder, "classify", None) if degradations else None
    generator = torch.Generator(device=pipeline.device).manual_seed(seed)
    records: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []

    def items() -> Iterator[tuple[int, dict[str, Any]]]:
        for index in pending:
            try:
                yield index, dataset[index]
            except ImageReadError as err:
                failures.append((str(paths[index]), str(err)))
                log(f"error: {err} (skipped)")

    def batches() -> Iterator[list[tuple[int, dict[str, Any]]]]:
        batch: list[tuple[int, dict[str, Any]]] = []
        for index, item in items():
            if batch and (len(batch) == batch_size or batch[0][1]["lq"].shape != item["lq"].shape):
                yield batch
                batch = []
            batch.append((index, item))
        if batch:
            yield batch

    done = len(targets) - len(pending)
    try:
        for batch in batches():
            lq = torch.stack([item["lq"] for _, item in batch])  # (B, 3, H, W)
            lq_clip = (
                torch.stack([item["lq_clip"] for _, item in batch]) if pipeline.embedder is not None else None
            )
            names = ", ".join(Path(item["path"]).name for _, item in batch)
            if reporter is not None:
                calls, steps = network_calls(pipeline, lq.shape[0], lq.shape[-2], lq.shape[-1])
                label = f"[{done + 1}/{len(targets)}] {names} ({lq.shape[-1]}x{lq.shape[-2]})"
                reporter.start(label, calls, steps)
                with _count_network_calls(pipeline.model, reporter.update):
                    restored = pipeline(lq, lq_clip, generator=generator)  # (B, 3, H, W)
                reporter.finish()
            else:
                restored = pipeline(lq, lq_clip, generator=generator)
            probs = _probabilities(pipeline, lq, lq_clip, degradations) if classify is not None else None
            for i, (index, item) in enumerate(batch):
                target = targets[index]
                finite = bool(torch.isfinite(restored[i]).all())
                if not finite or (probs is not None and not bool(torch.isfinite(probs[i]).all())):
                    what = "restored image" if not finite else "degradation probabilities"
                    raise NonFiniteOutputError(
                        f"restoring {item['path']} gave a {what} with NaN or Inf values (the model weights "
                        f"or the sampling diverged); nothing was written for it"
                    )
                write_image(target, restored[i])
                record: dict[str, Any] = {"input": item["path"], "output": str(target)}
                if probs is not None:
                    top = torch.topk(probs[i], k=min(3, probs.shape[1]))
                    record["top3"] = [(degradations[j], float(p)) for p, j in zip(top.values, top.indices)]
                    row = probs[i].float().cpu().numpy()  # (K,)
                    present = multilabel_predictions(row[None], threshold)[0]
                    ranked = sorted(range(len(row)), key=lambda j: -row[j])
                    record["probabilities"] = {degradations[j]: float(row[j]) for j in range(len(row))}
                    # "clean" is no degradation: first, it means none was found; otherwise it is left out.
                    found_clean = degradations[ranked[0]] == CLEAN
                    record["degradations"] = (
                        []
                        if found_clean
                        else [degradations[j] for j in ranked if present[j] and degradations[j] != CLEAN]
                    )
                    record["threshold"] = threshold
                    name, prob = record["top3"][0]
                    found = "+".join(record["degradations"]) or NO_DEGRADATION
                    log(f"{Path(item['path']).name}: {name} ({prob:.1%}; present: {found}) -> {target}")
                else:
                    log(f"{Path(item['path']).name} -> {target}")
                records.append(record)
            done += len(batch)
    finally:
        # Also after an error: the predictions of the images written so far are kept, and shown.
        predicted = [r for r in records if "top3" in r]
        if predicted and not single_file:
            _write_predictions(folder / PREDICTIONS_NAME, predicted)
            _write_json_predictions(folder / PREDICTIONS_JSON_NAME, predicted)
        if contact_sheet and not single_file:
            unreadable = {path for path, _ in failures}
            _contact_sheets(folder, paths, targets, unreadable, sheet_height, log)
    if failures:
        first, reason = failures[0]
        more = f" (and {len(failures) - 1} more, listed above)" if len(failures) > 1 else ""
        raise RestoreError(
            f"{len(failures)} of {len(targets)} images could not be restored: {reason}{more}", failures
        )
    return records


def _contact_sheets(
    folder: Path,
    paths: Sequence[Path],
    targets: Sequence[Path],
    unreadable: set[str],
    height: int,
    log: Callable[[str], None],
) -> None:
    """Contact sheets of every readable input whose output exists (restored now or by an earlier run),
    labelled with the file name and the predicted degradations of ``predictions.json``; a failure to
    draw them is logged, never raised."""
    clash = [t.name for t in targets if is_contact_sheet_name(t.name)]
    if clash:
        log(f"no contact sheet: a restored image is named {clash[0]} (rename that input)")
        return
    predictions = _read_json_predictions(folder / PREDICTIONS_JSON_NAME)
    rows = []
    for path, target in zip(paths, targets):
        if str(path) in unreadable or not target.is_file() or not path.is_file():
            continue
        found = predictions.get(str(target), {}).get("degradations")
        if found is not None and not found:  # classified, and nothing was found
            found = [NO_DEGRADATION]
        rows.append((path, target, f"{path.name}: {'+'.join(found)}" if found else path.name))
    if not rows:
        return
    try:
        sheets = write_contact_sheets(folder, rows, height=height)
    except (OSError, ValueError, ImageReadError) as err:  # the restored images are what matters
        log(f"error: contact sheet not written: {err}")
        return
    more = f" (and {len(sheets) - 1} more)" if len(sheets) > 1 else ""
    log(f"contact sheet of {len(rows)} image(s): {sheets[0]}{more}")
