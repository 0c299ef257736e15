"""Restoring a user's own images (``scripts/restore.py``): any size, folders, batching, tiles.

Images of equal size are batched together; every image is padded inside the U-Net to its
downsampling factor and cropped back, and with ``tile`` set the network sees bounded tiles
(:class:`irsde.tiling.TiledModel`), so memory does not grow with the image. The predicted
degradation (DA-CLIP zero-shot, top-3 with probabilities) is printed and saved to
``predictions.csv``. Inputs are never overwritten.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from data.io import write_image

from .pipeline import RestorationPipeline

__all__ = ["restore_images", "same_size_batches"]


def same_size_batches(dataset: Any, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive items of ``dataset`` grouped into batches of at most ``batch_size`` equal-size images."""
    batch: list[dict[str, Any]] = []
    for index in range(len(dataset)):
        item = dataset[index]
        if batch and (len(batch) == batch_size or batch[0]["lq"].shape != item["lq"].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def restore_images(
    pipeline: RestorationPipeline,
    dataset: Any,
    out_dir: str | os.PathLike,
    *,
    degradations: Sequence[str] | None = None,
    batch_size: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Restore every image of ``dataset`` (items with ``lq``, ``lq_clip``, ``path``) into ``out_dir``.

    Returns one record per image: input path, output path, and (when the pipeline has a DA-CLIP and
    ``degradations`` are given) the top-3 predicted degradations with probabilities.
    """
    out_dir = Path(out_dir)
    inputs = {Path(p).resolve() for p in getattr(dataset, "paths", [])}
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() in {p.parent for p in inputs}:
        raise ValueError(
            f"output folder {out_dir} is the input folder: choose another (inputs are never overwritten)"
        )
    classify = getattr(pipeline.embedder, "classify", None) if degradations else None
    generator = torch.Generator(device=pipeline.device).manual_seed(seed)
    records: list[dict[str, Any]] = []
    batches: Any = same_size_batches(dataset, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="restore", total=None, dynamic_ncols=True)
    for batch in batches:
        targets = [out_dir / f"{Path(item['path']).stem}.png" for item in batch]
        if not overwrite and all(t.exists() for t in targets):
            log(f"skipping {len(targets)} image(s) already restored in {out_dir} (pass --overwrite to redo)")
            continue
        lq = torch.stack([item["lq"] for item in batch])  # (B, 3, H, W)
        lq_clip = torch.stack([item["lq_clip"] for item in batch]) if pipeline.embedder is not None else None
        restored = pipeline(lq, lq_clip, generator=generator)  # (B, 3, H, W)
        probs = classify(lq_clip.to(pipeline.device), list(degradations)) if classify is not None else None
        for i, (item, target) in enumerate(zip(batch, targets)):
            if target.resolve() in inputs:
                raise ValueError(f"refusing to overwrite input image {target}")
            write_image(target, restored[i])
            record: dict[str, Any] = {"input": item["path"], "output": str(target)}
            if probs is not None:
                top = torch.topk(probs[i], k=min(3, probs.shape[1]))
                record["top3"] = [(degradations[j], float(p)) for p, j in zip(top.values, top.indices)]
                name, prob = record["top3"][0]
                log(f"{Path(item['path']).name}: {name} ({prob:.1%}) -> {target}")
            else:
                log(f"{Path(item['path']).name} -> {target}")
            records.append(record)
    if records and "top3" in records[0]:
        with open(out_dir / "predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["input", "output", "degradation", "probability", "top3"])
            for r in records:
                top3 = "; ".join(f"{n} {p:.3f}" for n, p in r["top3"])
                writer.writerow([r["input"], r["output"], r["top3"][0][0], f"{r['top3'][0][1]:.4f}", top3])
    return records
