"""Cheap start-up checks of what a run will read or write later (image headers, output folders).

Validation runs thousands of steps into training; an unreadable or mismatched validation image
found only then would end a long run. These checks open each file's header with Pillow (which
reads the size without decoding the pixels), so a whole validation set is checked in moments.
Likewise an output folder that cannot be written (read-only, immutable, under a file) is found
before any model is loaded (:func:`check_writable`), not when the first result is saved.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from daclip.engine.errors import UserError
from data.io import ImageReadError

__all__ = ["image_size", "check_images", "check_image_pairs", "check_writable"]

_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that transpose the image
_EXIF_ORIENTATION = 0x0112


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`data.io.read_image` returns it, from its header.

    Raises:
        ImageReadError: missing, not an image, or a header Pillow cannot read.
    """
    if not os.path.isfile(path):
        raise ImageReadError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            width, height = img.size
            # EXIF sits in the header of JPEG/TIFF/WebP; PNG may keep it after the pixels (not read here).
            if img.format != "PNG" and img.getexif().get(_EXIF_ORIENTATION) in _SWAPS_AXES:
                width, height = height, width
    except Image.UnidentifiedImageError:
        raise ImageReadError(f"not an image or unknown format: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from None
    return width, height


def check_images(paths: Iterable[str | os.PathLike], what: str = "image") -> int:
    """Check that every file in ``paths`` has a readable image header; returns how many were checked."""
    count = 0
    for path in paths:
        try:
            image_size(path)
        except ImageReadError as err:
            raise ImageReadError(f"{what}: {err}") from None
        count += 1
    return count


def check_image_pairs(
    pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]], what: str = "image pair"
) -> int:
    """Check that each ``(LQ, GT)`` pair is readable and of equal size; returns how many were checked.

    Raises:
        ImageReadError: an unreadable file (named, with ``what``).
        ValueError: a pair whose sizes differ (both files and sizes named).
    """
    count = 0
    for lq_path, gt_path in pairs:
        try:
            lq_size, gt_size = image_size(lq_path), image_size(gt_path)
        except ImageReadError as err:
            raise ImageReadError(f"{what}: {err}") from None
        if lq_size != gt_size:
            raise ValueError(
                f"{what}: LQ and GT sizes differ: {lq_path} is {lq_size[0]}x{lq_size[1]}, "
                f"{gt_path} is {gt_size[0]}x{gt_size[1]} (width x height)"
            )
        count += 1
    return count


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent (the folders between are made later)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, option: str, *, what: str = "output folder") -> None:
    """Raise a one-line :class:`UserError` naming ``path`` and ``option`` unless files can be made in ``path``.

    ``path`` is a folder that may not exist yet (it is made later, with its parents). The check
    creates and deletes a temporary file in it, or in its nearest existing parent: permission bits
    alone would not do, since root may write anywhere they allow yet not on a read-only file
    system or into an immutable (``chattr +i``) folder.
    """
    folder = _existing_ancestor(Path(path))
    prefix = f"cannot write to the {what} {path} ({option})"
    if not folder.is_dir():
        raise UserError(f"{prefix}: {folder} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{prefix}: {err.strerror or err}") from None
