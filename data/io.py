"""Image reading and writing.

Images live in memory as ``float32`` NumPy arrays of shape ``(H, W, 3)``, RGB,
values in ``[0, 1]``; tensors as ``(3, H, W)``. :func:`read_image` accepts any
format Pillow reads (grayscale, RGBA, palette, 16-bit, CMYK; EXIF orientation is
applied) and fails with :class:`ImageReadError` naming the file.

:func:`atomic_open` is the project's one atomic file writer (temporary file, optional fsync,
rename): images, caption CSVs, dataset manifests and checkpoints are all written through it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "original_error_message",
    "is_image_file",
    "list_images",
    "read_image",
    "write_image",
    "atomic_open",
    "image_to_tensor",
    "tensor_to_image",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


#: The text PyTorch puts in place of an exception's message when it re-raises it from a DataLoader
#: worker (``torch._utils.ExceptionWrapper.reraise``): "Caught <Type> in DataLoader worker process 0.",
#: then "Original Traceback (most recent call last):" and the worker's formatted traceback.
_RERAISED = re.compile(r"\ACaught (?P<type>\w+) in .*?\.\nOriginal Traceback", re.S)


def original_error_message(message: str) -> str:
    """The original message of an exception that PyTorch re-raised from a DataLoader worker.

    PyTorch rebuilds such an exception as ``type(text)``, where ``text`` starts with "Caught
    <Type> in DataLoader worker process N." and holds the worker's traceback; the original message
    is the first line of the traceback's last "<module.Type>: message" line. Any other message is
    returned unchanged.
    """
    match = _RERAISED.match(message)
    if match is None:
        return message
    name = re.escape(match.group("type"))
    found = re.findall(rf"^(?:[A-Za-z_][\w.]*\.)?{name}: (.*)$", message, re.M)
    return found[-1] if found else message


class ImageReadError(OSError):
    """An image file is missing, unreadable, truncated or of an unknown format.

    The message always names the file, also when the error happened in a DataLoader worker:
    PyTorch re-raises it in the main process as ``ImageReadError(<worker traceback text>)``, and the
    constructor recovers the original one-line message from that text.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (original_error_message(args[0]),)
        super().__init__(*args)


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a known image extension (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_image_file(p)
    )


def _to_float_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img).astype(np.float32) / 65535.0
    elif mode == "I":  # 32-bit integer; PNG 16-bit grayscale often opens like this
        arr = np.asarray(img).astype(np.float32)
        arr = arr / (65535.0 if arr.max(initial=0) > 255 else 255.0)
    elif mode == "F":
        arr = np.asarray(img).astype(np.float32)
        if arr.max(initial=0) > 1.0:
            arr = arr / 255.0
    else:
        if mode in ("P", "PA"):
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA"):
            # Composite on black: the alpha channel is not part of the image content, and the colour
            # under a transparent pixel is arbitrary (often white, or left over), so it must not show.
            rgba = np.asarray(img.convert("RGBA")).astype(np.float32) / 255.0  # (H, W, 4)
            arr = rgba[:, :, :3] * rgba[:, :, 3:]
        else:
            arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB")).astype(np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB float32 ``(H, W, 3)`` in ``[0, 1]``, EXIF orientation applied."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_float_rgb(img)
    except UnidentifiedImageError:
        raise ImageReadError(f"not an image or unknown format: {path}") from None
    except Image.DecompressionBombError as err:
        # Not an OSError: Pillow refuses images of more than 2 * MAX_IMAGE_PIXELS pixels outright.
        raise ImageReadError(
            f"cannot read image {path}: {err} (refused by Pillow's limit PIL.Image.MAX_IMAGE_PIXELS)"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from None


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` float array -> ``(3, H, W)`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` tensor (any device/dtype) -> ``(H, W, 3)`` float32 array, clipped to ``[0, 1]``."""
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(tensor.shape)}")
    return tensor.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def write_image(path: str | os.PathLike, img: np.ndarray | torch.Tensor) -> Path:
    """Write an RGB image (array ``(H, W, 3)`` or tensor ``(3, H, W)`` in ``[0, 1]``) as 8-bit.

    The format follows the extension (PNG recommended). The file is written to a
    temporary name and renamed, so an interrupted write never leaves a truncated
    image under the final name. Parent folders are created.
    """
    path = Path(path)
    if isinstance(img, torch.Tensor):
        img = tensor_to_image(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image to write to {path}, got shape {img.shape}")
    data = (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image extension for {path}")
    with atomic_open(path, "wb") as handle:
        Image.fromarray(data).save(handle, format=fmt)
    return path


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", *, fsync: bool = False, **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a fresh temporary file next to ``path`` for writing; on success rename it to ``path``.

    The one atomic writer of the project (images, CSVs, dataset manifests and, through
    :func:`daclip.engine.checkpoint.save_checkpoint`, checkpoints). An interrupted or failed write
    never leaves a truncated file under the final name, nor touches a file already there, and the
    temporary file is removed. The file gets the normal mode of a new file (``0o666`` less the
    umask; ``tempfile.mkstemp`` would give ``0o600``). ``mode`` is ``"wb"`` or ``"w"`` (then
    ``kwargs`` such as ``encoding`` and ``newline`` go to :func:`open`). With ``fsync`` the data
    is flushed to disk before the rename, so the new file survives a power loss too.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as handle:  # "x": mode 0o666 & ~umask
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # keep the original error
            tmp.unlink(missing_ok=True)
        raise
