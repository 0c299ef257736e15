"""The DA-CLIP caption CSV and the dataset that serves it to stage-1 training.

File format (the official one, readable by ``pandas.read_csv(path, sep="\\t")``)::

    filepath<TAB>title
    /data/train/noisy/LQ/0001.png<TAB>a cat sitting on a sofa: noisy

* tab-separated, standard CSV quoting (a caption containing a tab, a quote or a
  newline is quoted);
* a header row with at least the columns ``filepath`` (the **LQ** image) and
  ``title``; other columns (e.g. a pandas index) are allowed and ignored;
* ``title = f"{clean caption}: {degradation}"``. The official code splits on
  every ``": "``, which breaks captions that contain one; we split on the
  **last** ``": "`` (degradation names never contain one, this module refuses to
  write such a name);
* a relative ``filepath`` is relative to the folder holding the CSV; relative or
  absolute, it must lie inside that folder (``../`` may not climb out of it) unless
  the reader allows paths outside (``allow_outside_root``, the configs'
  ``data.allow_outside_root``), and it must name an image file (by extension).

Errors in a CSV are reported at load time with the CSV path and the row number
(the header is row 1, as a spreadsheet shows it), so a bad row stops a run at
start-up rather than once training has reached it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from data import DEFAULT_DEGRADATIONS
from data.io import atomic_open, is_image_file, read_image
from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_transform, grid_views

__all__ = [
    "TITLE_SEPARATOR",
    "CaptionRow",
    "parse_title",
    "make_title",
    "read_caption_csv",
    "write_caption_csv",
    "CaptionDataset",
    "read_caption_table",
]

#: Separator between the clean caption and the degradation name in a title.
TITLE_SEPARATOR = ": "
_HEADER = ("filepath", "title")


@dataclass(frozen=True)
class CaptionRow:
    """One line of a caption CSV: an LQ image, the clean caption of its GT, its degradation."""

    filepath: str
    caption: str
    degradation: str


def parse_title(title: str) -> tuple[str, str]:
    """Split ``"<caption>: <degradation>"`` on the **last** ``": "`` into ``(caption, degradation)``.

    Raises:
        ValueError: no ``": "`` in the title, or an empty caption or degradation.
    """
    caption, sep, degradation = title.rpartition(TITLE_SEPARATOR)
    if not sep:
        raise ValueError(f"title {title!r} has no {TITLE_SEPARATOR!r} between caption and degradation")
    caption, degradation = caption.strip(), degradation.strip()
    if not caption:
        raise ValueError(f"title {title!r} has an empty caption")
    if not degradation:
        raise ValueError(f"title {title!r} has an empty degradation name")
    return caption, degradation


def make_title(caption: str, degradation: str) -> str:
    """The inverse of :func:`parse_title`; refuses input that would not parse back."""
    caption, degradation = caption.strip(), degradation.strip()
    if not caption:
        raise ValueError(f"empty caption for degradation {degradation!r}")
    if not degradation or TITLE_SEPARATOR in degradation:
        raise ValueError(f"invalid degradation name {degradation!r} (empty or contains {TITLE_SEPARATOR!r})")
    return f"{caption}{TITLE_SEPARATOR}{degradation}"


def _inside(image: Path, folders: Sequence[Path]) -> bool:
    return any(image == folder or folder in image.parents for folder in folders)


def _row_image(filepath: str, csv_path: Path, where: str, allow_outside_root: bool) -> Path:
    """The image of a row: relative to the CSV's folder, lexically normalised, refused outside it.

    Normalised by text (``a/../b`` -> ``b``), not by following links: a dataset folder may hold
    symbolic links to where the images are stored.
    """
    folders = [Path(os.path.normpath(csv_path.absolute().parent)), csv_path.resolve().parent]
    image = Path(filepath)
    if not image.is_absolute():
        image = folders[1] / image
    image = Path(os.path.normpath(image))
    if not allow_outside_root and not _inside(image, folders):
        raise ValueError(
            f"{where}: {filepath} is outside the CSV's folder {folders[1]} (set data.allow_outside_root: "
            "true to read images elsewhere)"
        )
    if not is_image_file(image):
        raise ValueError(f"{where}: {filepath} is not an image file (unknown extension)")
    return image


def _read_rows(path: Path) -> Iterable[tuple[str, list[str], list[str]]]:
    """``(where, header, record)`` of every non-blank row of a caption CSV, its header checked."""
    with io.StringIO(_read_utf8(path, csv_rows=True), newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header with columns 'filepath' and 'title'")
        header = [name.strip() for name in header]
        missing = [name for name in _HEADER if name not in header]
        if missing:
            raise ValueError(
                f"{path}: header {header} lacks column(s) {missing} (expected tab-separated 'filepath', 'title')"
            )
        for row_number, record in enumerate(reader, start=2):
            if record and any(field.strip() for field in record):  # blank lines are skipped
                yield f"{path}: row {row_number}", header, record


def read_caption_csv(
    path: str | os.PathLike,
    degradations: Sequence[str] | None = None,
    *,
    check_files: bool = True,
    allow_outside_root: bool = False,
) -> list[CaptionRow]:
    """Read and validate a DA-CLIP caption CSV.

    Args:
        path: the tab-separated CSV.
        degradations: if given, every row's degradation must be one of these.
        check_files: check that every image file exists (on by default; the
            check is what makes a typo fail now rather than hours into training).
        allow_outside_root: accept images outside the CSV's folder (relative
            paths climbing out with ``..``, or absolute paths elsewhere).

    Returns:
        The rows, with ``filepath`` absolute (relative paths resolved against the
        CSV's folder).

    Raises:
        FileNotFoundError: the CSV does not exist.
        ValueError: bad header, a malformed title, an empty caption, an unknown
            degradation, an image outside the CSV's folder, not an image, or missing,
            naming the CSV and the row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption CSV not found: {path}")
    allowed = None if degradations is None else tuple(degradations)
    rows: list[CaptionRow] = []
    for where, header, record in _read_rows(path):
        path_col, title_col = header.index("filepath"), header.index("title")
        if len(record) <= max(path_col, title_col):
            raise ValueError(f"{where}: expected {len(header)} tab-separated fields, got {len(record)}")
        filepath, title = record[path_col].strip(), record[title_col]
        if not filepath:
            raise ValueError(f"{where}: empty filepath")
        try:
            caption, degradation = parse_title(title)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if allowed is not None and degradation not in allowed:
            raise ValueError(f"{where}: degradation {degradation!r} is not one of {list(allowed)}")
        image = _row_image(filepath, path, where, allow_outside_root)
        if check_files and not image.is_file():
            raise ValueError(f"{where}: image file not found: {image}")
        rows.append(CaptionRow(str(image), caption, degradation))
    return rows


def _read_utf8(path: Path, *, csv_rows: bool = False) -> str:
    """The text of ``path`` as UTF-8 (a leading byte-order mark, as Windows tools write, is dropped).

    Raises:
        ValueError: the file is not UTF-8, naming the file and the row (``csv_rows``: tab-separated
            records, header = row 1) or line where the first undecodable byte is.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        before = data[: err.start].decode("utf-8-sig")
        if csv_rows:
            records = sum(1 for _ in csv.reader(io.StringIO(before, newline=""), delimiter="\t"))
            starts_a_row = not before or before.endswith(("\n", "\r"))
            where = f"row {records + 1 if starts_a_row else records}"
        else:
            where = f"line {before.count(chr(10)) + 1}"
        raise ValueError(
            f"{path}: {where}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8"
        ) from None


def _relative_if_inside(image: Path, folder: Path) -> str:
    """``image`` relative to ``folder`` when it lies inside it, else absolute (robust to moving the CSV)."""
    try:
        return image.relative_to(folder).as_posix()
    except ValueError:
        return str(image)


def write_caption_csv(
    path: str | os.PathLike,
    rows: Iterable[CaptionRow],
    *,
    relative_to: str | os.PathLike | None = None,
    append: bool = False,
) -> None:
    """Write rows as a DA-CLIP caption CSV (``filepath<TAB>title``).

    Args:
        path: the CSV to write; parent folders are created.
        rows: the rows. A relative ``filepath`` in a row is taken relative to
            ``relative_to`` (default: the current working directory).
        relative_to: see ``rows``.
        append: add to an existing CSV (written with this function's header)
            instead of replacing it; a missing file is created with a header.
            Used by resumable captioning. Without ``append`` the file is written
            to a temporary name and renamed, so a crash never leaves half a CSV.

    Image paths inside the CSV's folder are stored relative to it (the dataset can
    be moved as a whole); others are stored absolute.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    csv_dir = path.resolve().parent
    source_dir = Path(relative_to).resolve() if relative_to is not None else Path.cwd()

    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    for row in rows:
        image = Path(row.filepath)
        if not image.is_absolute():
            image = source_dir / image
        writer.writerow(
            [_relative_if_inside(image.resolve(), csv_dir), make_title(row.caption, row.degradation)]
        )
    body = buffer.getvalue()

    if append and path.exists() and path.stat().st_size > 0:
        text = _read_utf8(path, csv_rows=True)
        header = next(csv.reader(io.StringIO(text, newline=""), delimiter="\t"), [])
        if tuple(h.strip() for h in header) != _HEADER:
            raise ValueError(f"{path}: cannot append, header is {header}, expected {list(_HEADER)}")
        with open(path, "a", newline="", encoding="utf-8") as handle:
            if not text.endswith("\n"):
                handle.write("\n")
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        return

    content = "\t".join(_HEADER) + "\n" + body
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        handle.write(content)


def read_caption_table(path: str | os.PathLike) -> dict[str, str]:
    """Read user-provided clean captions: ``<image name><TAB><caption>`` per line.

    The image name may be a file name or its stem (matched by stem). Blank lines
    and lines starting with ``#`` are skipped; a first line ``image<TAB>caption``
    is taken as a header. Returns ``{stem: caption}``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line without a tab, an empty caption or a repeated name,
            naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption table not found: {path}")
    table: dict[str, str] = {}
    with io.StringIO(_read_utf8(path), newline=None) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n\r")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, caption = line.partition("\t")
            if number == 1 and (name.strip().lower(), caption.strip().lower()) == ("image", "caption"):
                continue
            if not sep or not caption.strip():
                raise ValueError(
                    f"{path}: line {number}: expected '<image name><TAB><caption>', got {line!r}"
                )
            stem = Path(name.strip()).stem
            if stem in table:
                raise ValueError(f"{path}: line {number}: image {name.strip()!r} listed twice")
            table[stem] = caption.strip()
    return table


class CaptionDataset(Dataset):
    """Stage-1 (DA-CLIP) training data: LQ images with their clean caption and degradation.

    Each item is a dict:

    * ``image``: ``(3, S, S)`` the LQ image after the exact DA-CLIP CLIP transform (with ``views``
      n > 1: ``(n², 3, S, S)``, an n x n grid of native-resolution crops, :func:`data.transforms.grid_views`);
    * ``caption``: the clean caption (of the GT image);
    * ``degradation``: the degradation name, ``degradation_index``: its index in
      :attr:`degradations`;
    * ``path``: the LQ image path.

    Tokenisation is left to the model side (it owns the tokenizer); the default
    collate batches ``caption`` and ``degradation`` as lists of strings.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        degradations: Sequence[str] = DEFAULT_DEGRADATIONS,
        image_size: int = 224,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        views: int = 1,
        *,
        allow_outside_root: bool = False,
    ) -> None:
        self.views = int(views)
        self.degradations: tuple[str, ...] = tuple(degradations)
        if not self.degradations:
            raise ValueError("CaptionDataset needs at least one degradation name")
        if len(set(self.degradations)) != len(self.degradations):
            raise ValueError(f"duplicate degradation names in {list(self.degradations)}")
        self.csv_path = Path(csv_path)
        self.rows: list[CaptionRow] = read_caption_csv(
            csv_path, self.degradations, allow_outside_root=allow_outside_root
        )
        if not self.rows:
            raise ValueError(f"{csv_path}: no rows")
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self._index = {name: i for i, name in enumerate(self.degradations)}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str | int]:
        row = self.rows[index]
        lq = read_image(row.filepath)  # (H, W, 3)
        if self.views > 1:  # a classifier's test-time views: (views², 3, S, S) native crops
            image = grid_views(lq, self.image_size, self.views, self.mean, self.std)
        else:
            image = clip_transform(lq, self.image_size, self.mean, self.std)  # (3, S, S)
        return {
            "image": image,
            "caption": row.caption,
            "degradation": row.degradation,
            "degradation_index": self._index[row.degradation],
            "path": row.filepath,
        }
