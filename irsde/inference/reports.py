"""What ``scripts/restore.py`` writes beside the restored images: predictions and contact sheets.

``predictions.csv`` holds, per restored image, the top-3 predicted degradations and the predicted set
(``hazy+rainy``); ``predictions.json`` every type's probability and that set (multi-label: a type is
present when its probability reaches the threshold, and the most probable type always is, as
:func:`daclip.classify.multilabel_predictions` decides). Both are merged with the rows of earlier runs
into the same folder, and every row says which run (``run``: its start time) and which settings
(``settings``: checkpoint, sampler, steps, tiles, seed) made its image, so a folder restored twice
with different settings stays readable. Contact sheets show every restored image beside its input.
Every file here is written atomically.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data.io import atomic_open, read_image

__all__ = [
    "CONTACT_SHEET_HEIGHT",
    "CONTACT_SHEET_NAME",
    "CONTACT_SHEET_ROWS",
    "PREDICTIONS_JSON_NAME",
    "PREDICTIONS_NAME",
    "is_contact_sheet_name",
    "read_json_predictions",
    "write_contact_sheets",
    "write_json_predictions",
    "write_predictions",
]

PREDICTIONS_NAME = "predictions.csv"
PREDICTIONS_JSON_NAME = "predictions.json"
CONTACT_SHEET_NAME = "contact_sheet.png"
#: Height in pixels of a contact-sheet row (input and output scaled to it).
CONTACT_SHEET_HEIGHT = 192
#: Rows per contact sheet; more images give ``contact_sheet_1.png``, ``contact_sheet_2.png``, ...
CONTACT_SHEET_ROWS = 20
_PREDICTION_FIELDS = [
    "input",
    "output",
    "degradation",
    "probability",
    "top3",
    "degradations",
    "unchanged",
    "run",
    "settings",
]


# ----------------------------------------------------------------------------- predictions.csv / .json


def _csv_row(record: dict[str, Any]) -> dict[str, str]:
    name, prob = record["top3"][0]
    return {
        "input": record["input"],
        "output": record["output"],
        "degradation": name,
        "probability": f"{prob:.4f}",
        "top3": "; ".join(f"{n} {p:.3f}" for n, p in record["top3"]),
        # an image DA-CLIP finds nothing wrong with says so ("clean" ranks first; no type is present)
        "degradations": "+".join(record.get("degradations", [name]))
        or ("no degradation found" if record.get("clean") else ""),
        # the share of pixels given back exactly as they came (--keep-clean, the min_change gate)
        "unchanged": f"{record['unchanged']:.4f}" if "unchanged" in record else "",
        "run": record.get("run", ""),
        "settings": record.get("settings", ""),
    }


def write_predictions(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Merge ``records`` into ``path`` (rows of outputs restored earlier are kept, with the run and
    settings that made them), atomically."""
    rows: dict[str, dict[str, str]] = {}
    if path.is_file():
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    if row.get("output"):
                        rows[row["output"]] = {k: row.get(k) or "" for k in _PREDICTION_FIELDS}
        except (OSError, UnicodeDecodeError, csv.Error):
            rows = {}  # unreadable: rewritten from this run's records
    for record in records:
        rows[record["output"]] = _csv_row(record)
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=_PREDICTION_FIELDS)
        writer.writeheader()
        writer.writerows(rows[key] for key in sorted(rows))


def read_json_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """The per-image entries of an earlier ``predictions.json``, by output path ({} when unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(e["output"]): e for e in data["images"] if isinstance(e, dict) and e.get("output")}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return {}


def write_json_predictions(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Merge ``records`` into ``predictions.json`` (entries of outputs restored earlier are kept), atomically.

    Layout: ``{"rule": ..., "images": [{"input", "output", "degradations" (the predicted set, most
    probable first; empty when ``clean``), "clean" (DA-CLIP's most probable entry is "clean": no
    degradation found), "threshold", "probabilities" ({type: probability}, summing to 1), "unchanged"
    (the share of pixels given back exactly as they came), "holes_filled" (given back as it came with its
    white holes filled: the hole fill), "run", "settings"}, ...]}`` sorted by output
    path.
    """
    entries = read_json_predictions(path) if path.is_file() else {}
    for r in records:
        entries[r["output"]] = {
            "input": r["input"],
            "output": r["output"],
            "degradations": list(r["degradations"]),
            "clean": bool(r.get("clean", False)),
            "threshold": r["threshold"],
            "probabilities": dict(r["probabilities"]),
            "unchanged": r.get("unchanged"),
            "holes_filled": bool(r.get("holes_filled", False)),
            "run": r.get("run", ""),
            "settings": r.get("settings", ""),
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


def _draw_sheet(rows: Sequence[tuple[str | os.PathLike, str | os.PathLike, str]], height: int) -> Image.Image:
    """One sheet: a row of input | output (each ``height`` pixels high) per ``(input, output, label)``."""
    font = _font(max(10, height // 14))
    pairs = [(_thumbnail(Path(i), height), _thumbnail(Path(o), height), label) for i, o, label in rows]
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
    return sheet


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
    written = []
    for number, name in enumerate(names):
        sheet = _draw_sheet(rows[number * rows_per_sheet : (number + 1) * rows_per_sheet], height)
        path = folder / name
        with atomic_open(path, "wb") as handle:
            sheet.save(handle, format="PNG")
        written.append(path)
    # Only once the new sheets are written: a failure above leaves the earlier run's sheets in place.
    for stale in folder.glob("contact_sheet*.png"):
        if is_contact_sheet_name(stale.name) and stale.name not in names and stale.is_file():
            stale.unlink()
    return written
