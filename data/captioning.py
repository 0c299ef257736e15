"""BLIP captions of GT images, written as the DA-CLIP caption CSV of the LQ images.

DA-CLIP's content loss pairs each LQ image with a caption of its *clean* (GT)
image; the authors made them with BLIP (``Salesforce/blip-image-captioning-large``).
This module:

* finds the model without ever hanging offline (:func:`resolve_blip`): a local
  folder, or a Hub id already in the Hugging Face cache, loads with
  ``local_files_only``; a Hub id that is not cached fails at once when downloads
  are disabled (``HF_HUB_OFFLINE=1``) and after a few seconds' reachability
  probe (:func:`data.net.reachable`) otherwise, with a message saying how to
  get the model;
* captions each distinct GT image once (GT files are identified by content, so
  the ten copies of a photo that ``make_dataset`` writes cost one caption);
* is resumable: captions go to a cache file (``<csv folder>/.captions_cache/``)
  after every batch, and a rerun only captions images not in the cache; the CSV
  itself is written atomically at the end, replacing e.g. the placeholder CSV of
  ``scripts/make_dataset.py``.

``transformers`` is an optional dependency (``pip install .[captions]``); it is
imported only when a model is loaded.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from data import DEFAULT_DEGRADATIONS
from data.captions import CaptionRow, write_caption_csv
from data.io import read_image
from data.net import reachable
from data.paired import ImagePair, find_pairs

__all__ = [
    "DEFAULT_BLIP",
    "Captioner",
    "BlipCaptioner",
    "resolve_blip",
    "CaptioningResult",
    "caption_paired_dataset",
]

DEFAULT_BLIP = "Salesforce/blip-image-captioning-large"
_FALLBACK_CAPTION = "a photo"


class Captioner(Protocol):
    """Anything that captions a batch of RGB images."""

    def __call__(self, images: Sequence[Image.Image]) -> list[str]: ...


def _hub_reachable(timeout: float) -> bool:
    """Whether the Hugging Face endpoint (``HF_ENDPOINT``) accepts a connection within ``timeout`` seconds."""
    return reachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co", timeout)


def _offline_env() -> bool:
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_blip(
    model: str = DEFAULT_BLIP,
    *,
    local_files_only: bool = False,
    cache_dir: str | os.PathLike | None = None,
    probe_timeout: float = 3.0,
) -> tuple[str, bool]:
    """Decide where a BLIP model loads from, failing fast when it cannot be had.

    Returns:
        ``(name_or_path, local_files_only)`` to pass to ``from_pretrained``.

    Raises:
        FileNotFoundError: a local folder that is missing or not a saved model,
            or a Hub model that is not cached while downloads are disabled
            (``local_files_only``, ``HF_HUB_OFFLINE``) or the Hub is unreachable.
    """
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a saved Hugging Face model (no config.json)")
        return str(path), True
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise FileNotFoundError(f"BLIP model folder not found: {model}")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        raise ImportError("BLIP captioning needs transformers: pip install 'transformers>=4.36'") from None
    cached = try_to_load_from_cache(model, "config.json", cache_dir=cache_dir)
    if isinstance(cached, str):
        return model, True
    how = (
        f"download it where you are online (huggingface-cli download {model}) and copy the Hugging Face cache, "
        "or pass the folder of a saved model"
    )
    if local_files_only or _offline_env():
        raise FileNotFoundError(
            f"BLIP model {model!r} is not in the Hugging Face cache and downloads are off; {how}"
        )
    if not _hub_reachable(probe_timeout):
        raise FileNotFoundError(
            f"BLIP model {model!r} is not cached and the Hugging Face Hub is unreachable; {how}"
        )
    return model, False


class BlipCaptioner:
    """Unconditional BLIP captioning of image batches (``generate`` with at most ``max_new_tokens``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor,
        *,
        device: str | torch.device = "cpu",
        max_new_tokens: int = 32,
    ):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_BLIP,
        *,
        device: str | torch.device = "cpu",
        local_files_only: bool = False,
        cache_dir: str | os.PathLike | None = None,
        max_new_tokens: int = 32,
    ) -> BlipCaptioner:
        """Load a BLIP captioning model and its processor (see :func:`resolve_blip` for where from)."""
        source, offline = resolve_blip(model, local_files_only=local_files_only, cache_dir=cache_dir)
        try:
            from transformers import BlipForConditionalGeneration, BlipProcessor
        except ImportError:
            raise ImportError(
                "BLIP captioning needs transformers: pip install 'transformers>=4.36'"
            ) from None
        try:
            processor = BlipProcessor.from_pretrained(source, local_files_only=offline, cache_dir=cache_dir)
            network = BlipForConditionalGeneration.from_pretrained(
                source, local_files_only=offline, cache_dir=cache_dir
            )
        except OSError as err:  # e.g. a partial cache or a folder without weights
            raise FileNotFoundError(f"cannot load BLIP model {model!r}: {str(err).splitlines()[0]}") from None
        return cls(network, processor, device=device, max_new_tokens=max_new_tokens)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> list[str]:
        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device)
        tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)  # (B, L)
        return [text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]


@dataclass(frozen=True)
class CaptioningResult:
    """What :func:`caption_paired_dataset` did."""

    csv_path: Path
    rows: int
    unique_images: int
    captioned: int  # images captioned in this run (the rest came from the cache)
    empty: int  # images for which the model produced an empty caption (given a fallback)


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _cache_path(csv_path: Path, model: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/")).strip("_") or "model"
    return csv_path.parent / ".captions_cache" / f"{slug}.tsv"


def _read_cache(path: Path) -> dict[str, str]:
    cache: dict[str, str] = {}
    if not path.is_file():
        return cache
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):  # a crash mid-line: drop the partial line
        text = text[: text.rfind("\n") + 1]
        path.write_text(text, encoding="utf-8")
    for record in csv.reader(text.splitlines(), delimiter="\t"):
        if len(record) == 2 and record[1].strip():
            cache[record[0]] = record[1]
    return cache


def _append_cache(path: Path, entries: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter="\t", lineterminator="\n").writerows(entries)
        handle.flush()
        os.fsync(handle.fileno())


def _clean(caption: str) -> str:
    return " ".join(caption.split())  # one line, single spaces


def caption_paired_dataset(
    root: str | os.PathLike,
    csv_path: str | os.PathLike,
    load_captioner: Callable[[], Captioner],
    degradations: Sequence[str] = DEFAULT_DEGRADATIONS,
    *,
    model_name: str = DEFAULT_BLIP,
    batch_size: int = 8,
    progress: bool = False,
) -> CaptioningResult:
    """Caption the GT images of ``<root>/<degradation>/{LQ,GT}`` and write the LQ caption CSV.

    Args:
        root: a paired dataset (one split).
        csv_path: the caption CSV to write (replaced atomically at the end).
        load_captioner: builds the captioner; called only if some image is not
            in the cache (a finished rerun needs no model and no network).
        degradations: the types to include (each needs its folder).
        model_name: names the resumption cache (captions of different models are kept apart).
        batch_size: images per model call.
        progress: show a progress bar (tqdm).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    root, csv_path = Path(root), Path(csv_path)
    pairs: list[ImagePair] = [pair for name in degradations for pair in find_pairs(root, name)]
    digests = [_digest(pair.gt_path) for pair in pairs]
    cache_file = _cache_path(csv_path, model_name)
    cache = _read_cache(cache_file)
    todo: dict[str, Path] = {}
    for pair, digest in zip(pairs, digests):
        if digest not in cache:
            todo.setdefault(digest, pair.gt_path)

    empty = 0
    if todo:
        captioner = load_captioner()
        items = list(todo.items())
        bar = None
        if progress:
            from tqdm import tqdm  # optional at import time: the library must not need it

            bar = tqdm(total=len(items), desc="captions", unit="image")
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            images = [
                Image.fromarray((read_image(path) * 255.0).round().astype(np.uint8)) for _, path in batch
            ]
            captions = captioner(images)
            if len(captions) != len(batch):
                raise RuntimeError(f"captioner returned {len(captions)} captions for {len(batch)} images")
            entries = []
            for (digest, _), caption in zip(batch, captions):
                caption = _clean(caption)
                if not caption:
                    empty += 1
                    caption = _FALLBACK_CAPTION
                cache[digest] = caption
                entries.append((digest, caption))
            _append_cache(cache_file, entries)  # after every batch: an interruption loses one batch at most
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()

    rows = [CaptionRow(str(pair.lq_path), cache[d], pair.degradation) for pair, d in zip(pairs, digests)]
    write_caption_csv(csv_path, rows)
    return CaptioningResult(csv_path, len(rows), len(set(digests)), len(todo), empty)
