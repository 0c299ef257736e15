"""Stage 1: train the DA-CLIP controller (``python scripts/train_daclip.py -c configs/daclip.yml``).

Only the controller and DA-CLIP's logit scale train; all of CLIP is frozen. Each
step embeds the batch's clean captions with the frozen text tower (no grad); the
degradation names are embedded once. The loss is :class:`daclip.loss.DaCLIPLoss`
over the global batch of all ranks; the controller's gradients are summed over ranks
and the logit scale's (already global) averaged (:func:`sync_gradients`), which gives
exactly the single-process gradient of the global-batch loss. AdamW (no weight decay
on gains, biases, embeddings and the logit scale), linear warmup then cosine decay per
step, the logit scale clamped to ``[0, ln 100]`` after every step (as open_clip does).

Run folder ``experiments/<name>/``: ``config.yaml``, ``command.txt``, ``train.log``,
``tensorboard/`` (losses, lr, logit scale, validation accuracy) and
``checkpoints/``: ``latest.pt`` every epoch (written before that epoch's validation),
``epoch_<n>.pt`` every ``save_every_epochs`` (the last ``keep_last`` of them kept), and at
the end ``daclip_final.pt`` holding the full model (frozen
CLIP included), which :func:`daclip.inference.load_frozen_daclip` and stage 2 read
from the file alone. Training checkpoints hold the trained weights only, plus the
CLIP description (name, architecture, pretrained source); when the CLIP is randomly
initialised (``pretrained: ""``) its weights are stored too, since nothing else can
rebuild them.

Data (``data.source``): ``csv`` reads LQ images and their titles from ``data.train_csv``; ``synthetic``
degrades the clean photos of ``data.clean_root`` on the fly (:class:`data.synthetic.SyntheticCaptionDataset`,
``data.synthesis`` = :class:`data.synthetic.SynthesisConfig`; no file is written). A synthetic sample is a
pure function of (run seed, epoch, index): item ``i`` of epoch ``e`` is drawn with ``draw_key = e * n + i``
(:class:`EpochKeySampler`, :class:`EpochKeyedCaptions`), so it is the same in any worker and after a
resume, differs between ranks, and every epoch gives a photo new degradations. The degradation loss then
contrasts with every combination text a sample can get (``"hazy, rainy"``, embedded once), indexed by the
sample's ``degradation_index``; validation still classifies over the single names of
``data.degradations`` (``data.val_csv``), and ``data.val_clean_root`` adds a multi-label validation
(per-type F1, :mod:`daclip.classify`) on a fixed set of synthetic mixtures.

A NaN/Inf loss skips its update; more than ``train.max_nonfinite_steps`` of them in a row
stop training with one line naming the step, and weights that are not finite are never
written. Resuming follows :func:`daclip.engine.run_folder.plan_resume` (the rule stage 2 uses).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from daclip.classify import (
    DEFAULT_THRESHOLD,
    METHOD_TITLES,
    MultiLabelReport,
    confusion_matrices,
    multilabel_probabilities,
)
from daclip.engine.checkpoint import require_format, save_checkpoint
from daclip.engine.config import ConfigError, spec, to_dict
from daclip.engine.distributed import (
    DistInfo,
    barrier,
    finite_on_all_ranks,
    get_world_size,
    is_distributed,
    main_rank_call,
)
from daclip.engine.errors import UserError
from daclip.engine.lifecycle import RunContext, Stage, StepResult, run_training
from daclip.engine.optim import cosine_warmup_lambda
from daclip.engine.preflight import check_images
from daclip.engine.run_folder import ExperimentConfig
from daclip.engine.runtime import autocast, seed_everything
from daclip.loss import DaCLIPLoss, DaCLIPLossOutput, DegradationLoss
from daclip.model import DaCLIP, init_patch_embedding_dct
from daclip.pretrained import CHECKPOINT_FORMAT, ClipSource, build_daclip, make_tokenizer
from daclip.zero_shot import ZeroShotClassifier, clean_weight_for_rate, encode_names
from data import CLEAN, DEFAULT_DEGRADATIONS
from data.captions import CaptionDataset
from data.synthetic import SynthesisConfig, SyntheticCaptionDataset
from data.transforms import check_photo_augmentations

__all__ = [
    "ModelSection",
    "DataSection",
    "TrainSection",
    "DaCLIPTrainConfig",
    "CaptionCollate",
    "EpochKeySampler",
    "EpochKeyedCaptions",
    "param_groups",
    "cosine_warmup_lambda",
    "sync_gradients",
    "train_step",
    "make_checkpoint",
    "DaCLIPStage",
    "train_daclip",
]

LOGIT_SCALE_MAX = math.log(100.0)


# ----------------------------------------------------------------------------- config


@dataclass
class ModelSection:
    """Which CLIP DA-CLIP controls."""

    clip_model: str = spec("ViT-B-32", help="open_clip ViT name (ViT-B-32 in the paper, ViT-L-14, ...)")
    pretrained: str = spec(
        "laion2b_s34b_b79k", help="open_clip tag, a local weights file, or '' for random initialisation"
    )
    model_config: str = spec(
        "",
        must_exist=True,
        help="optional open_clip JSON (file stem = clip_model), e.g. configs/open_clip/*.json",
    )
    patch_init: Literal["copy", "dct"] = spec(
        "copy",
        help="the trained image tower's patch embedding at the start: as built (the paper: the controller "
        "is a copy of CLIP's), or a DCT frequency basis (for a randomly initialised CLIP, e.g. the CPU demo's)",
    )

    def validate(self) -> None:
        if self.model_config and Path(self.model_config).stem != self.clip_model:
            raise ConfigError(
                f"model.model_config: {self.model_config} registers '{Path(self.model_config).stem}', "
                f"but model.clip_model is '{self.clip_model}'"
            )


@dataclass
class DataSection:
    """Where stage-1 samples come from: caption CSVs (``filepath<TAB>title``, see :mod:`data.captions`)
    or, with ``source: synthetic``, clean photos degraded on the fly (:mod:`data.synthetic`)."""

    source: Literal["csv", "synthetic"] = spec(
        "csv", help="csv: train_csv's LQ images; synthetic: clean_root's photos degraded on the fly"
    )
    train_csv: str = spec("", must_exist=True, help="training caption CSV (source: csv)")
    val_csv: str = spec("", must_exist=True, help="validation caption CSV ('' = no validation)")
    allow_outside_root: bool = spec(
        False, help="accept CSV rows whose image lies outside the CSV's folder (../ or absolute elsewhere)"
    )
    degradations: list[str] = field(default_factory=lambda: list(DEFAULT_DEGRADATIONS))
    num_workers: int = spec(4, minimum=0)
    clean_root: str = spec(
        "",
        must_exist=True,
        help="source: synthetic: a folder of clean photos (recursive) or a CSV with 'filepath' and an "
        "optional 'title' column holding the clean caption",
    )
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    samples_per_epoch: int = spec(0, minimum=0, help="synthetic samples per epoch; 0 = one per clean photo")
    max_size: int = spec(
        0,
        minimum=0,
        help="downscale clean photos whose longer side exceeds this before degrading (0 = never); about "
        "twice the CLIP input size keeps samples cheap",
    )
    missing_caption: Literal["empty", "stem"] = spec(
        "stem", help="caption of a clean photo without one: its file stem, or '' (empty)"
    )
    image_cache_mb: float = spec(
        0.0,
        minimum=0.0,
        help="source: synthetic: keep decoded clean photos in memory, up to this many MiB per data "
        "process (0 = off; a small set is then decoded once; samples do not change)",
    )
    val_clean_root: str = spec(
        "",
        must_exist=True,
        help="clean photos for a synthetic multi-label validation (per-type F1); '' = none",
    )
    val_samples: int = spec(100, minimum=1, help="synthetic validation samples drawn from val_clean_root")
    clean_fraction: float = spec(
        0.0,
        minimum=0.0,
        maximum=0.9,
        help="source: synthetic: share of samples left clean, labelled 'clean', a vocabulary entry after "
        "the degradations (0 = the paper: every sample degraded, ten names)",
    )
    clean_calibration: float = spec(
        0.05,
        minimum=0.0,
        maximum=0.5,
        help="with clean_fraction > 0: calibrate the 'clean' answer at the end so that this share of "
        "freshly degraded training samples is called clean (recorded in the checkpoint; 0 = no calibration)",
    )
    calibration_samples: int = spec(
        256, minimum=16, help="fresh training samples the clean calibration draws"
    )
    clip_view: Literal["resize", "crop"] = spec(
        "resize",
        help="CLIP input in training: the whole image resized (the paper) or, source: synthetic, a random "
        "native-resolution crop with flips (pixel-level degradations survive)",
    )
    crops_per_sample: int = spec(
        1,
        minimum=1,
        maximum=8,
        help="clip_view: crop: native crops taken from each synthesised sample (a batch of B samples "
        "trains on B x n crops; synthesis, the costly part on CPU, is shared by the n)",
    )
    visible_psnr: float = spec(
        0.0,
        minimum=0.0,
        help="with clip_view: crop and clean_fraction > 0: a degraded crop within this PSNR (dB) of the "
        "same crop of the clean photo is labelled clean (the degradation does not show there); 0 = off",
    )
    photo_augment: list[str] = spec(
        default_factory=list,
        help="source: synthetic: before degrading each clean photo, turn it by a random multiple of 90 "
        "degrees ('rotate'), permute its colour channels ('channels'), scale its saturation by 0.5-1.5 "
        "('saturation') ([] = none, the paper)",
    )
    test_views: int = spec(
        3,
        minimum=1,
        maximum=8,
        help="clip_view: crop: the classifier averages an n x n grid of native crops at test time "
        "(recorded in the checkpoint)",
    )

    def vocabulary(self) -> tuple[str, ...]:
        """The classifier's names: the degradations, then ``clean`` when clean samples are drawn."""
        return (*self.degradations, CLEAN) if self.clean_fraction > 0 else tuple(self.degradations)

    def validate(self) -> None:
        if CLEAN in self.degradations:
            raise ConfigError(f"data.degradations: '{CLEAN}' is not a degradation (use data.clean_fraction)")
        if not self.degradations:
            raise ConfigError("data.degradations: needs at least one degradation name")
        duplicates = sorted({d for d in self.degradations if self.degradations.count(d) > 1})
        if duplicates:
            raise ConfigError(f"data.degradations: duplicate names {duplicates}")
        if self.source == "csv":
            if not self.train_csv:
                raise ConfigError("data.train_csv: required (a tab-separated caption CSV)")
            if self.clean_fraction > 0:
                raise ConfigError("data.clean_fraction: needs data.source: synthetic (clean photos to draw)")
            if self.clip_view != "resize":
                raise ConfigError("data.clip_view: 'crop' needs data.source: synthetic")
            if self.crops_per_sample != 1:
                raise ConfigError("data.crops_per_sample: needs data.source: synthetic and clip_view: crop")
            if self.photo_augment:
                raise ConfigError("data.photo_augment: needs data.source: synthetic (clean photos to turn)")
            return
        check_photo_augmentations(
            self.photo_augment, "data.photo_augment"
        )  # the loader makes it a ConfigError
        if self.crops_per_sample != 1 and self.clip_view != "crop":
            raise ConfigError("data.crops_per_sample: needs data.clip_view: crop")
        if self.visible_psnr > 0 and (self.clip_view != "crop" or self.clean_fraction <= 0):
            raise ConfigError("data.visible_psnr: needs data.clip_view: crop and data.clean_fraction > 0")
        if not self.clean_root:
            raise ConfigError(
                "data.clean_root: required with data.source: synthetic (a folder or CSV of clean photos)"
            )
        if self.max_size and self.max_size < 8:
            raise ConfigError(f"data.max_size: must be 0 or at least 8, got {self.max_size}")
        unknown = [t for t in self.synthesis.types if t not in self.degradations]
        if unknown:
            raise ConfigError(
                f"data.synthesis.types: {unknown} not in data.degradations {self.degradations} "
                "(the names validation classifies over)"
            )


@dataclass
class TrainSection:
    """Optimisation settings (the paper's by default)."""

    epochs: int = spec(50, minimum=1)
    batch_size: int = spec(784, minimum=1, help="per GPU")
    lr: float = spec(3e-5, minimum=0.0, exclusive_minimum=True)
    weight_decay: float = spec(0.05, minimum=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = spec(1e-6, minimum=0.0, exclusive_minimum=True)
    warmup_steps: int = spec(100, minimum=0)
    precision: Literal["fp32", "bf16"] = "bf16"
    grad_checkpointing: bool = False
    degradation_loss: DegradationLoss = spec("clip", help="clip (the paper's) or class_aware")
    content_loss_weight: float = spec(
        1.0, minimum=0.0, help="weight of the content (caption) loss in the total (1 = the paper)"
    )
    logit_scale_init: float = spec(
        0.0,
        minimum=0.0,
        maximum=100.0,
        help="start DA-CLIP's temperature here (0 = CLIP's own; a random tiny CLIP's names are close "
        "together, a high start separates them from the first step)",
    )
    num_threads: int = spec(
        0,
        minimum=0,
        help="torch CPU threads while stage 1 trains (0 = torch's default); 1 suits a tiny model on a small "
        "CPU whose other core runs the data worker (restored when training ends)",
    )
    image_tower: Literal["controller", "clip"] = spec(
        "controller",
        help="what trains: the controller (DA-CLIP) or, for the comparison, the plain CLIP image tower with "
        "the same losses and data (its one embedding is both content and degradation embedding)",
    )
    log_every: int = spec(10, minimum=1, help="steps between logged scalars")
    save_every_epochs: int = spec(1, minimum=1, help="epochs between numbered checkpoints")
    keep_last: int = spec(0, minimum=0, help="numbered checkpoints kept (the newest); 0 = all")
    max_nonfinite_steps: int = spec(
        0, minimum=0, help="NaN/Inf losses skipped in a row before training stops (0 = stop at the first)"
    )

    def validate(self) -> None:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas: each beta must be in [0, 1), got {list(self.betas)}")


@dataclass
class DaCLIPTrainConfig:
    """Everything ``scripts/train_daclip.py`` reads from ``configs/daclip.yml``."""

    experiment: ExperimentConfig = field(default_factory=lambda: ExperimentConfig(name="daclip"))
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)


# ----------------------------------------------------------------------------- pieces


class CaptionCollate:
    """Batch :class:`data.captions.CaptionDataset` (or :class:`data.synthetic.SyntheticCaptionDataset`)
    items and tokenise the captions.

    ``degradation_index`` indexes the loss's vocabulary (the degradation names, or every combination
    text of a synthetic set). Synthetic items also carry ``degradations`` (lists of different lengths,
    kept as a list of lists) and ``multi_hot`` ``(K,)`` (stacked); other keys are dropped.
    """

    def __init__(self, tokenizer: Callable[[Sequence[str]], torch.Tensor]) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        # Several crops of one sample ((n, 3, S, S), data.crops_per_sample) are rows of their own with
        # that sample's labels (or, with data.visible_psnr, labels of their own: crop_degradation_index): the
        # batch then has B x n rows.
        images = [item["image"] if item["image"].ndim == 4 else item["image"][None] for item in items]
        labels = [
            item["crop_degradation_index"].tolist()
            if "crop_degradation_index" in item
            else [item["degradation_index"]] * len(crops)
            for item, crops in zip(items, images)
        ]
        items = [item for item, crops in zip(items, images) for _ in range(len(crops))]
        batch = {
            "image": torch.cat(images),  # (B, 3, S, S)
            "caption_tokens": self.tokenizer([item["caption"] for item in items]),  # (B, context_length)
            "degradation_index": torch.tensor([index for row in labels for index in row], dtype=torch.long),
            "path": [item["path"] for item in items],
        }
        if items and "degradations" in items[0]:
            batch["degradations"] = [list(item["degradations"]) for item in items]
        if items and "multi_hot" in items[0]:
            batch["multi_hot"] = torch.stack([item["multi_hot"] for item in items])  # (B, K)
        return batch


class EpochKeySampler(Sampler[int]):
    """A :class:`DistributedSampler` whose index ``i`` in epoch ``e`` comes out as the key ``e * n + i``.

    The epoch travels inside the key (not in dataset state), so DataLoader workers, persistent or not,
    need no notice of a new epoch; :class:`EpochKeyedCaptions` turns the key back into ``(i, key)``.
    """

    def __init__(self, sampler: DistributedSampler, size: int) -> None:
        self.sampler, self.size, self.epoch = sampler, size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.size
        return (base + int(i) for i in self.sampler)


class EpochKeyedCaptions(Dataset):
    """A synthetic dataset read through :class:`EpochKeySampler` keys: key ``k = e * n + i`` is sample
    ``i % n`` drawn with ``draw_key = k``, i.e. ``get_item(i, seed=(run_seed, e * n + i))``.

    A sample is then a pure function of (run seed, epoch, index): the same in any worker and after a
    resume, different on every rank (the ranks hold disjoint indices of an epoch), and new in every
    epoch (the same photo gets other degradations). A plain index ``i < n`` is epoch 0.
    """

    def __init__(self, dataset: SyntheticCaptionDataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int) -> dict[str, Any]:
        return self.dataset.get_item(key % len(self.dataset), seed=(self.seed, key))


class _MultiLabelView(Dataset):
    """Synthetic validation samples as :func:`daclip.classify.multilabel_probabilities` reads them."""

    def __init__(self, dataset: SyntheticCaptionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]  # draw key = index: a fixed set
        return {"image": item["image"], "labels": item["multi_hot"], "path": item["path"]}


def _configure_training(model: DaCLIP, train: TrainSection) -> None:
    """Apply ``train.logit_scale_init`` and choose what trains (``train.image_tower``)."""
    if train.logit_scale_init > 0:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(train.logit_scale_init))
    if train.image_tower == "clip":  # the plain-CLIP comparison: its image tower trains, no controller
        for param in model.controller.parameters():
            param.requires_grad_(False)
        for param in model.clip.visual.parameters():
            param.requires_grad_(True)


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Gains and biases (1-D), the class/positional embeddings and the logit scale are not decayed.
    return param.ndim < 2 or "embedding" in name or "logit_scale" in name


def param_groups(model: DaCLIP, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups over the trainable parameters: decayed matrices, undecayed rest."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if _no_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def sync_gradients(sharded: Iterable[nn.Parameter], replicated: Iterable[nn.Parameter] = ()) -> None:
    """All-reduce gradients after a backward of the global-batch loss (one flat all-reduce).

    ``sharded``: parameters that reach the loss only through this rank's features (the
    controller); each rank holds the part of the gradient flowing through its own shard, and
    the **sum** over ranks is the exact global gradient. ``replicated``: parameters used
    directly by the global loss (the logit scale); every rank already holds the full gradient,
    so they are **averaged** (keeping the ranks' copies identical). See :mod:`daclip.loss`.
    """
    if not is_distributed() or get_world_size() == 1:
        return
    world = get_world_size()
    sharded = [p for p in sharded if p.requires_grad]
    replicated = [p for p in replicated if p.requires_grad]
    params = sharded + replicated
    for p in params:
        if p.grad is None:  # every rank must contribute the same flat layout
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in sharded] + [p.grad.reshape(-1) / world for p in replicated])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        numel = p.numel()
        p.grad.copy_(flat[offset : offset + numel].view_as(p.grad))
        offset += numel


def train_step(
    model: DaCLIP,
    batch: dict[str, Any],
    criterion: DaCLIPLoss,
    name_features: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
    image_tower: Literal["controller", "clip"] = "controller",
) -> DaCLIPLossOutput:
    """One optimisation step on a collated batch (see :class:`CaptionCollate`); returns the losses.

    Caption features come from the frozen text tower without gradient; gradients are summed over
    ranks; the logit scale is clamped to ``[0, ln 100]`` after the update. A NaN/Inf loss (on any
    rank) makes no update (the scheduler still steps); the caller decides whether to go on.
    """
    device = model.logit_scale.device
    images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S)
    labels = batch["degradation_index"].to(device)  # (B,)
    with autocast(device, precision):
        if getattr(criterion, "content_weight", 1.0) == 0.0 and image_tower == "controller":
            # No content term: only the controller's degradation embedding enters the loss, so the
            # frozen tower and the captions are not run (about half the step); the same gradients.
            degra_emb, _ = model.controller(images)  # (B, E)
            losses = criterion.degradation_only(degra_emb.float(), name_features, labels, model.logit_scale)
        else:
            with torch.no_grad():
                caption_features = model.encode_text(batch["caption_tokens"].to(device))  # (B, E)
            if image_tower == "clip":  # the plain-CLIP comparison: one embedding serves both losses
                content_emb = degra_emb = model.encode_image(images, control=False)  # (B, E)
            else:
                content_emb, degra_emb = model(images)  # (B, E) each
            losses = criterion(
                content_emb.float(),
                degra_emb.float(),
                caption_features.float(),
                name_features,
                labels,
                model.logit_scale,
            )
    optimizer.zero_grad(set_to_none=True)
    total = losses.total.detach()
    if finite_on_all_ranks(total):  # every rank takes (or skips) the step together
        losses.total.backward()
        sharded = [p for name, p in model.named_parameters() if name != "logit_scale"]
        sync_gradients(sharded, [model.logit_scale])  # sync_gradients skips the frozen ones
        optimizer.step()
    else:  # skipped: report it as non-finite on every rank, whatever this rank's own value
        total = torch.full_like(total, float("nan")) if torch.isfinite(total) else total
    if scheduler is not None:
        scheduler.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)
    content = None if losses.content is None else losses.content.detach()
    return DaCLIPLossOutput(total, content, losses.degradation.detach())


def make_checkpoint(
    model: DaCLIP,
    source: ClipSource,
    cfg: DaCLIPTrainConfig | None = None,
    *,
    full: bool = False,
    **state: Any,
) -> dict[str, Any]:
    """A checkpoint dict this project's :func:`daclip.pretrained.load_daclip` reads.

    ``full`` stores the frozen CLIP weights too (forced when the CLIP has no pretrained source, or when
    its image tower was trained: ``train.image_tower: clip``).
    """
    tower_trained = cfg is not None and cfg.train.image_tower == "clip"
    full = full or not source.pretrained or tower_trained
    weights = model.state_dict() if full else model.trainable_state_dict()
    out: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "model": {k: v.detach().cpu() for k, v in weights.items()},
        "clip": source.to_dict(),
    }
    if cfg is not None:
        out["config"] = to_dict(cfg)
    out.update(state)
    return out


def _make_loader(
    dataset, batch_size: int, info: DistInfo, seed: int, workers: int, collate, *, epoch_keys: bool = False
) -> DataLoader:
    # The sampler's order depends only on (seed, epoch), so a resumed run sees the same batches.
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=True
    )
    if epoch_keys:  # synthetic samples: the epoch goes into each index (see EpochKeyedCaptions)
        sampler = EpochKeySampler(sampler, len(dataset))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
        pin_memory=info.device.type == "cuda",
        persistent_workers=workers > 0,
    )


def _train_set(cfg: DaCLIPTrainConfig, data_kwargs: dict[str, Any]) -> Dataset:
    """The training set: the caption CSV, or clean photos degraded on the fly (epoch-keyed draws)."""
    data = cfg.data
    if data.source == "csv":
        return CaptionDataset(data.train_csv, **data_kwargs, allow_outside_root=data.allow_outside_root)
    synthetic = SyntheticCaptionDataset(
        data.clean_root,
        data.synthesis,
        image_size=data_kwargs["image_size"],
        mean=data_kwargs["mean"],
        std=data_kwargs["std"],
        max_size=data.max_size or None,
        length=data.samples_per_epoch or None,
        seed=cfg.experiment.seed,
        missing_caption=data.missing_caption,
        clean_fraction=data.clean_fraction,
        clip_view=data.clip_view,
        crops_per_sample=data.crops_per_sample,
        visible_psnr=data.visible_psnr,
        cache_mb=data.image_cache_mb,
        photo_augment=data.photo_augment,
    )
    return EpochKeyedCaptions(synthetic, cfg.experiment.seed)


def _data_loaders(
    cfg: DaCLIPTrainConfig, source: ClipSource, tokenizer: Callable, info: DistInfo
) -> tuple[DataLoader, DataLoader | None]:
    """Training loader (sharded, drop-last) and validation loader (exact shards), checking sizes."""
    train = cfg.train
    data_kwargs = dict(
        degradations=tuple(cfg.data.degradations),
        image_size=source.image_size,
        mean=source.mean,
        std=source.std,
    )
    train_set = _train_set(cfg, data_kwargs)
    if cfg.data.source == "csv":
        what = f"rows of {cfg.data.train_csv}"
    else:
        what = f"samples per epoch from {cfg.data.clean_root} (raise data.samples_per_epoch)"
    global_batch = train.batch_size * info.world_size
    if global_batch < 2:
        raise ConfigError("train.batch_size: the contrastive loss needs a global batch of at least 2")
    if len(train_set) < global_batch:
        raise ConfigError(
            f"train.batch_size: a global batch of {global_batch} ({train.batch_size} x {info.world_size} "
            f"processes) exceeds the {len(train_set)} {what}"
        )
    collate = CaptionCollate(tokenizer)
    loader = _make_loader(
        train_set,
        train.batch_size,
        info,
        cfg.experiment.seed,
        cfg.data.num_workers,
        collate,
        epoch_keys=cfg.data.source == "synthetic",
    )
    val_loader = None
    if cfg.data.val_csv:
        val_set = CaptionDataset(
            cfg.data.val_csv,
            **data_kwargs,
            allow_outside_root=cfg.data.allow_outside_root,
            views=source.views,
        )
        # Headers only (cheap): an unreadable validation image fails now, not after an epoch.
        check_images((row.filepath for row in val_set.rows), f"validation set {cfg.data.val_csv}")
        val_loader = _validation_loader(val_set, train.batch_size, info, cfg.data.num_workers)
    return loader, val_loader


def _multilabel_loader(cfg: DaCLIPTrainConfig, source: ClipSource) -> DataLoader | None:
    """The fixed synthetic mixtures of ``data.val_clean_root`` (every rank evaluates all of them)."""
    data = cfg.data
    if data.source != "synthetic" or not data.val_clean_root:
        return None
    dataset = SyntheticCaptionDataset(
        data.val_clean_root,
        data.synthesis,
        image_size=source.image_size,
        mean=source.mean,
        std=source.std,
        max_size=data.max_size or None,
        length=data.val_samples,
        seed=cfg.experiment.seed,
        missing_caption=data.missing_caption,
    )
    return DataLoader(_MultiLabelView(dataset), batch_size=cfg.train.batch_size, shuffle=False, num_workers=0)


def _validation_loader(dataset, batch_size: int, info: DistInfo, workers: int) -> DataLoader:
    shard = Subset(dataset, list(range(info.rank, len(dataset), info.world_size)))  # exact, no padding
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers)


# ----------------------------------------------------------------------------- the stage


def _same_size_groups(
    draws: Sequence[tuple[np.ndarray, ...]], batch: int
) -> Iterator[list[tuple[np.ndarray, ...]]]:
    """``draws`` in groups of at most ``batch`` whose first images share one shape (to stack them)."""
    by_shape: dict[tuple[int, ...], list[tuple[np.ndarray, ...]]] = {}
    for draw in draws:
        by_shape.setdefault(draw[0].shape, []).append(draw)
    for items in by_shape.values():
        for start in range(0, len(items), batch):
            yield items[start : start + batch]


class DaCLIPStage(Stage):
    """Stage 1 for :func:`daclip.engine.lifecycle.run_training`: the controller, its loss, its validation.

    Epochs are a stage-1 notion: a step count is ``epoch * steps_per_epoch + batch``, checkpoints
    (``latest.pt`` every epoch, ``epoch_<n>.pt`` every ``save_every_epochs``) and validation come at
    epoch ends, so a resumed run starts at an epoch boundary.
    """

    logger_name = "daclip.train"
    checkpoint_format = CHECKPOINT_FORMAT
    checkpoint_prefix = "epoch_"

    def __init__(self, cfg: DaCLIPTrainConfig) -> None:
        super().__init__(cfg)

    def setup(self, run: RunContext) -> None:
        cfg, info, device = self.cfg, run.info, run.device
        self.run = run
        self.threads_before = torch.get_num_threads()
        if cfg.train.num_threads:  # tiny models: thread hand-offs cost more than the maths they split
            torch.set_num_threads(cfg.train.num_threads)
        # Weights first (a missing download fails before any folder is written). The main rank
        # resolves (and, online, downloads) them; the others then read the cache. Every rank
        # builds with the same seed (a random CLIP must be the same everywhere), and rank 0's
        # weights are broadcast anyway; data order and any other randomness then use seed + rank.
        seed_everything(cfg.experiment.seed)
        if not info.is_main:
            barrier()
        model, self.source = build_daclip(
            cfg.model.clip_model, cfg.model.pretrained, cfg.model.model_config or None
        )
        if info.is_main:
            barrier()
        if cfg.model.patch_init == "dct":  # the tower that trains: the controller's, or plain CLIP's
            init_patch_embedding_dct(
                model.clip.visual if cfg.train.image_tower == "clip" else model.controller.tower
            )
        seed_everything(cfg.experiment.seed, info.rank)
        self.model = model.to(device)
        if info.distributed:
            for tensor in self.model.state_dict().values():
                dist.broadcast(tensor, src=0)
        self.model.set_grad_checkpointing(cfg.train.grad_checkpointing)
        _configure_training(self.model, cfg.train)
        views = cfg.data.test_views if cfg.data.clip_view == "crop" else 1
        self.source = replace(self.source, views=views, vocabulary=cfg.data.vocabulary())
        tokenizer = make_tokenizer(self.source)
        degradations = tuple(cfg.data.degradations)
        vocabulary = cfg.data.vocabulary()  # the degradations, then "clean" when it is learned
        # (K, E), frozen: the names are embedded once.
        self.name_features = encode_names(self.model.encode_text, tokenizer, vocabulary, device)
        self.classifier = ZeroShotClassifier(self.name_features, vocabulary).to(device)
        self.loader, self.val_loader = _data_loaders(cfg, self.source, tokenizer, info)
        # The loss's vocabulary, indexed by each sample's degradation_index: the names or, for synthetic
        # mixtures, every combination text a sample can get ("hazy, rainy"), embedded once.
        self.label_features = self.name_features
        self.multilabel_loader = None
        if cfg.data.source == "synthetic":
            synthetic = self.loader.dataset.dataset
            self.label_features = encode_names(
                self.model.encode_text, tokenizer, synthetic.degradation_texts, device
            )
            self.multilabel_loader = _multilabel_loader(cfg, self.source)
            types = synthetic.types  # a subset of data.degradations (DataSection.validate)
            rows = torch.tensor([degradations.index(t) for t in types], device=device)
            self.multilabel_classifier = ZeroShotClassifier(self.name_features[rows], types).to(device)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        train = cfg.train
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, train.weight_decay), lr=train.lr, betas=tuple(train.betas), eps=train.eps
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_warmup_lambda(self.total_steps, train.warmup_steps)
        )
        self.criterion = DaCLIPLoss(train.degradation_loss, content_weight=train.content_loss_weight)
        self.epoch_started = time.perf_counter()

    # -- checkpoints

    def load_state_dict(self, state: Any, path: Path) -> None:
        """Trained weights, optimizer and scheduler of a stage-1 training checkpoint (one-line errors)."""
        require_format(state, path, CHECKPOINT_FORMAT, "a stage-1 (DA-CLIP) training checkpoint")
        if "optimizer" not in state:
            raise UserError(
                f"{path} is a DA-CLIP model export without optimizer state, not a training checkpoint "
                "(resume from checkpoints/latest.pt or epoch_<n>.pt)"
            )
        missing = [k for k in self.model.trainable_state_dict() if k not in state["model"]]
        if missing:
            raise ValueError(f"{path}: checkpoint lacks trained weights {missing[:4]}")
        try:
            incompatible = self.model.load_state_dict(state["model"], strict=False)
        except RuntimeError as err:  # shape mismatch: a checkpoint of another architecture
            first = str(err).strip().splitlines()[-1].strip()
            raise ValueError(
                f"{path} does not fit model.clip_model={self.cfg.model.clip_model}: {first}"
            ) from None
        if incompatible.unexpected_keys:
            raise ValueError(f"{path}: weights that this model lacks: {incompatible.unexpected_keys[:4]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def state_dict(self) -> dict[str, Any]:
        return make_checkpoint(
            self.model,
            self.source,
            full=self.cfg.train.image_tower == "clip",
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            epoch=self._epoch_of(self.run_step),
        )

    def _epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def checkpoint_tag(self, step: int) -> str | None:
        self.run_step = step
        if step % self.steps_per_epoch:
            return None
        epoch = self._epoch_of(step)
        numbered = epoch % self.cfg.train.save_every_epochs == 0 or epoch == self.cfg.train.epochs
        return f"epoch_{epoch}" if numbered else ""

    # -- the step

    def batches(self, start_step: int) -> Iterator[dict[str, Any]]:
        for epoch in range(self._epoch_of(start_step), self.cfg.train.epochs):
            self.loader.sampler.set_epoch(epoch)
            self.model.train()
            self.epoch_started = time.perf_counter()
            yield from self.loader

    def train_step(self, batch: dict[str, Any], step: int) -> StepResult:
        losses = train_step(
            self.model,
            batch,
            self.criterion,
            self.label_features,
            self.optimizer,
            self.scheduler,
            self.cfg.train.precision,
            self.cfg.train.image_tower,
        )
        finite = bool(torch.isfinite(losses.total))  # train_step already agreed on it over ranks
        scalars = {"loss": losses.total, "content": losses.content, "degradation": losses.degradation}
        return StepResult(
            {k: v for k, v in scalars.items() if v is not None}, finite
        )  # content: maybe not run

    def log_scalars(self) -> dict[str, float]:
        return {
            "lr": self.optimizer.param_groups[0]["lr"],
            "logit_scale": self.model.logit_scale.exp().item(),
        }

    # -- validation and the final export

    def _accuracy(self, methods: Sequence[Literal["clip", "daclip"]]) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        if self.cfg.train.image_tower == "clip":  # the trained plain tower classifies (control off)
            methods = tuple(dict.fromkeys("clip" for _ in methods))
        matrices = confusion_matrices(
            self.model, self.val_loader, self.classifier, self.run.device, methods, self.cfg.train.precision
        )
        return {m: float(v.diagonal().sum()) / max(1, int(v.sum())) for m, v in matrices.items()}

    def _multilabel(self, run: RunContext, step: int, when: str) -> None:
        """Multi-label DA-CLIP classification of the fixed synthetic mixtures: per-type F1 in the log."""
        if self.multilabel_loader is None:
            return
        probs, labels, paths = multilabel_probabilities(
            self.model, self.multilabel_loader, self.multilabel_classifier, run.device, ("daclip",)
        )
        report = MultiLabelReport(
            self.multilabel_classifier.names,
            {"daclip": probs["daclip"].numpy()},
            labels.numpy(),
            paths,
            DEFAULT_THRESHOLD,
        )
        metrics = report.metrics("daclip")
        per_type = ", ".join(f"{n} {f:.3f}" for n, f in zip(metrics.names, metrics.f1()))
        run.logger.info(
            "%s: synthetic multi-label validation (%d images, threshold %g or top-k): macro F1 %.4f, "
            "exact-set accuracy %.4f; F1 per type: %s",
            when,
            metrics.images,
            DEFAULT_THRESHOLD,
            metrics.macro_f1(),
            metrics.exact_accuracy(),
            per_type,
        )
        run.scalar("val/multilabel_macro_f1", metrics.macro_f1(), step)
        run.scalar("val/multilabel_exact_accuracy", metrics.exact_accuracy(), step)
        for name, f1 in zip(metrics.names, metrics.f1()):
            if f1 == f1:  # NaN: the type is neither present nor predicted
                run.scalar(f"val/f1/{name}", f1, step)

    def on_start(self, run: RunContext) -> None:
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        run.logger.info(
            "DA-CLIP %s (pretrained %r): %d trainable / %d parameters; %d images, %d steps/epoch, global batch %d",
            self.source.clip_model,
            self.source.pretrained,
            trainable,
            sum(p.numel() for p in self.model.parameters()),
            len(self.loader.dataset),
            self.steps_per_epoch,
            self.cfg.train.batch_size * run.info.world_size,
        )
        if self.cfg.data.source == "synthetic":
            synthetic = self.loader.dataset.dataset
            stems = self.cfg.data.missing_caption == "stem"  # then a photo without caption has its stem
            uncaptioned = sum(i.caption in ("", i.path.stem if stems else "") for i in synthetic.images)
            run.logger.info(
                "synthetic degradations from %d clean photos (%s): %d types, %d combinations as loss labels",
                len(synthetic.images),
                self.cfg.data.clean_root,
                len(synthetic.types),
                len(synthetic.degradation_texts),
            )
            if uncaptioned:
                run.logger.warning(
                    "%d of %d clean photos have no caption (%s): the content loss then learns little; "
                    "give data.clean_root as a CSV with a 'title' column (scripts/make_captions.py)",
                    uncaptioned,
                    len(synthetic.images),
                    "their file stem is used" if self.cfg.data.missing_caption == "stem" else "empty",
                )
        if run.start_step == 0 and self.val_loader is not None:
            baseline = self._accuracy(("clip", "daclip"))
            run.logger.info(
                "validation before training: %s",
                ", ".join(f"{METHOD_TITLES[m]} {v:.4f}" for m, v in baseline.items()),
            )
            for method, value in baseline.items():
                run.scalar(f"val/{method}_accuracy", value, 0)
        if run.start_step == 0:
            self._multilabel(run, 0, "before training")

    def validate(self, run: RunContext, step: int) -> None:
        if step % self.steps_per_epoch:
            return
        epoch = self._epoch_of(step)
        accuracy = self._accuracy(("daclip",))
        for method, value in accuracy.items():
            title = METHOD_TITLES[method]
            run.logger.info("epoch %d: %s validation accuracy %.4f", epoch, title, value)
            run.scalar(f"val/{method}_accuracy", value, step)
        self._multilabel(run, step, f"epoch {epoch}")
        run.logger.info("epoch %d done in %.1f s", epoch, time.perf_counter() - self.epoch_started)

    #: The draw key of the clean calibration's samples (epochs key theirs from 0 upwards).
    CALIBRATION_KEY = 2**31 - 1

    @torch.no_grad()
    def _calibrate_clean(self, run: RunContext) -> None:
        """Record the ``clean`` odds factor (:func:`daclip.zero_shot.clean_weight_for_rate`) measured on
        fresh draws from the training photos (keys no epoch uses), classified as at test time."""
        data = self.cfg.data
        if data.source != "synthetic" or data.clean_fraction <= 0 or data.clean_calibration <= 0:
            return
        if self.cfg.train.image_tower != "controller":  # the plain-CLIP comparison: no degradation embedding
            return
        from daclip.inference import FrozenDaCLIP
        from data.synthetic import SyntheticCaptionDataset

        synthetic = self.loader.dataset.dataset
        assert isinstance(synthetic, SyntheticCaptionDataset)
        frozen = FrozenDaCLIP(copy.deepcopy(self.model).eval(), self.source)
        names = frozen.vocabulary
        clean_index = names.index(CLEAN)
        draws = [
            synthetic.degraded(i % len(synthetic), seed=[self.cfg.experiment.seed, self.CALIBRATION_KEY, i])
            for i in range(data.calibration_samples)
        ]  # (clean, degraded, types) each, drawn with a key no epoch uses
        degraded, clean = [], []
        for group in _same_size_groups(draws, batch=32):
            pixels = np.stack([lq for _, lq, _ in group] + [gt for gt, _, _ in group])  # (2b, H, W, 3)
            probs = frozen.classify_images(
                torch.from_numpy(pixels).permute(0, 3, 1, 2), names
            )  # uncalibrated
            degraded += [p for p, (_, _, types) in zip(probs[: len(group)], group) if types]
            clean += list(probs[len(group) :])
        if not degraded:
            return
        weight = clean_weight_for_rate(torch.stack(degraded), names, data.clean_calibration)
        self.source = replace(self.source, clean_weight=weight)
        # The training classifier (the same names) answers as the checkpoint will from now on.
        self.classifier.clean_weight = weight

        def called(rows: list[torch.Tensor]) -> float:  # the share of rows answered "clean"
            adjusted = self.classifier.adjust(torch.stack(rows).to(self.classifier.name_features.device))
            return float((adjusted.argmax(-1) == clean_index).float().mean())

        run.logger.info(
            "clean calibration on %d fresh training samples: weight %.3g; degraded called clean %.0f%%, "
            "their clean photos called clean %.0f%%",
            len(degraded), weight, 100 * called(degraded), 100 * called(clean),
        )  # fmt: skip
        for method, value in self._accuracy(("daclip",)).items():
            run.logger.info("%s validation accuracy, calibrated: %.4f", METHOD_TITLES[method], value)

    def on_finish(self, run: RunContext) -> None:
        """``daclip_final.pt``: the full model (frozen CLIP included), readable from the file alone."""
        assert run.run_dir is not None
        torch.set_num_threads(self.threads_before)  # train.num_threads was for training alongside the loader
        self._calibrate_clean(run)
        final = run.run_dir / "checkpoints" / "daclip_final.pt"
        epoch, step = self.cfg.train.epochs, self.total_steps
        main_rank_call(
            lambda: save_checkpoint(
                final, make_checkpoint(self.model, self.source, self.cfg, full=True, epoch=epoch, step=step)
            ),
            is_main=run.is_main,
        )
        run.logger.info("final model (frozen CLIP included): %s", final)
        torch.set_num_threads(self.threads_before)


def train_daclip(cfg: DaCLIPTrainConfig, argv: Sequence[str] | None = None, *, progress: bool = True) -> Path:
    """Train DA-CLIP as configured (single process or under torchrun); returns the run folder."""
    return run_training(DaCLIPStage(cfg), cfg, argv, progress=progress)
