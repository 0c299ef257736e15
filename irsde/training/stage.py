"""Stage 2: train the IR-SDE conditional U-Net on a frozen DA-CLIP (``scripts/train_ir.py``).

The config is :class:`IRTrainConfig`; :class:`IRStage` supplies what stage 2 adds to the run
lifecycle both stages share (:func:`daclip.engine.lifecycle.run_training`: setup, resume, run folder,
logging every ``log_every`` steps, atomic checkpoints, cleanup). Each step: embed the LQ patches with
the frozen DA-CLIP (no grad), draw ``t`` uniformly on 1..T and the forward noise, run the U-Net, and
minimise the configured loss (the paper's maximum-likelihood loss for noise prediction: L1 between
the reverse-SDE step mean and the optimal posterior mean; L1 on x̂_0 for the data predictions).
AdamW, cosine decay to a floor, EMA of the weights, optional gradient clipping and bf16 autocast,
torchrun data parallel, periodic validation with a sampler, TensorBoard, and exact resume.

Exact resume: the data order is a per-epoch permutation fixed by (seed, epoch), the dataset's
augmentation randomness is keyed by the sample's position in that order, and the timestep/noise
generator state is checkpointed; a run stopped after N steps and resumed therefore follows the
same loss sequence as an uninterrupted one (on CPU, bit for bit).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from daclip.engine.checkpoint import file_fingerprint, require_format
from daclip.engine.config import ConfigError, spec
from daclip.engine.distributed import finite_on_all_ranks
from daclip.engine.errors import UserError
from daclip.engine.lifecycle import RunContext, Stage, StepResult, run_training
from daclip.engine.optim import cosine_warmup_lambda
from daclip.engine.preflight import check_image_pairs
from daclip.engine.run_folder import ExperimentConfig
from daclip.engine.runtime import autocast
from daclip.inference import DaCLIPSection, build_embedder
from data import DEFAULT_DEGRADATIONS
from data.synthetic import SynthesisConfig, synthetic_collate
from irsde.diffusion.samplers import make_timesteps
from irsde.diffusion.sde import IRSDE, SDEConfig
from irsde.evaluation.metrics import psnr
from irsde.inference.pipeline import IR_CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from irsde.inference.pipeline import RestorationPipeline
from irsde.models.families import ModelConfig, build_model, daclip_kwargs, is_one_pass, uses_daclip
from irsde.models.unet import UNetConfig
from irsde.training.losses import PixelLoss, build_loss, default_loss

__all__ = [
    "CHECKPOINT_FORMAT",
    "DaCLIPSection",
    "IRStage",
    "IRDataSection",
    "IRTrainSection",
    "IRTrainConfig",
    "train",
]


# ----------------------------------------------------------------------------- config


@dataclass
class IRDataSection:
    """Training pairs: written ones (``source: paired``, a folder per degradation) or clean photos
    degraded on the fly (``source: synthetic``, :mod:`data.synthetic`: one to three degradations per
    sample, drawn from the run seed and the sample's position in the run; nothing is written)."""

    source: Literal["paired", "synthetic"] = spec(
        "paired", help="paired: train_root's LQ/GT pairs; synthetic: clean_root's photos degraded on the fly"
    )
    train_root: str = spec("", must_exist=True, help="<root>/<degradation>/{LQ,GT}/ (source: paired)")
    clean_root: str = spec(
        "",
        must_exist=True,
        help="source: synthetic: a folder of clean photos (recursive) or a CSV (filepath)",
    )
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    samples_per_epoch: int = spec(
        0, minimum=0, help="source: synthetic: samples per epoch (0 = one per photo)"
    )
    degrade_at: Literal["image", "patch"] = spec(
        "image", help="source: synthetic: degrade the whole photo then crop (image), or only the crop (patch)"
    )
    max_size: int = spec(
        0, minimum=0, help="source: synthetic: downscale longer photo sides to this (0 = off)"
    )
    image_cache_mb: float = spec(
        0.0,
        minimum=0.0,
        help="source: synthetic: keep decoded clean photos in memory, up to this many MiB per data "
        "process (0 = off; a small set is then decoded once; samples do not change)",
    )
    val_root: str = spec("", must_exist=True)
    degradations: list[str] = field(default_factory=lambda: list(DEFAULT_DEGRADATIONS))
    patch_size: int = spec(256, minimum=16)
    small_images: Literal["pad", "reject"] = "pad"
    clip_input: Literal["patch", "image", "views"] = spec(
        "patch",
        help="DA-CLIP's input: the training crop (official), the whole LQ image (as at test time), or "
        "views: the embeddings averaged over the DA-CLIP's own grid of native crops of the whole LQ "
        "image, in training and at test time (for a DA-CLIP trained on native crops, e.g. the demo's)",
    )
    clean_fraction: float = spec(
        0.0,
        minimum=0.0,
        maximum=0.99,
        help="share of training samples that are clean identity pairs (LQ = GT, DA-CLIP sees the clean "
        "image): the restorer learns to leave clean input alone (0 = the paper: every sample degraded)",
    )
    clean_dark: float = spec(
        0.0,
        minimum=0.0,
        maximum=1.0,
        help="share of the clean pairs shown as a dark, noise-free exposure (a night scene is not low "
        "light: without it a restorer brightens every dark photo)",
    )
    num_workers: int = spec(4, minimum=0)
    val_images_per_degradation: int = spec(2, minimum=0, help="validation subset size (0 = all)")


@dataclass
class IRTrainSection:
    batch_size: int = spec(16, minimum=1, help="per GPU")
    total_steps: int = spec(700_000, minimum=1)
    lr: float = spec(2e-4, minimum=0.0, exclusive_minimum=True)
    lr_min: float = spec(1e-6, minimum=0.0)
    warmup_steps: int = spec(0, minimum=0)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = spec(0.0, minimum=0.0)
    loss: Literal["auto", "ml", "noise", "x0"] = spec(
        "auto",
        help="auto = ml (the paper's) for model.prediction=noise, x0 (L1 on x0) otherwise; a one-pass "
        "restorer (model.family: nafnet) always compares its output with the GT (loss_kind)",
    )
    loss_kind: Literal["l1", "l2", "psnr"] = spec(
        "l1",
        help="the error: l1, l2, or psnr, 10*log10(MSE + psnr_eps) per sample (NAFNet's PSNR loss; for the "
        "IR-SDE with the x0 loss)",
    )
    psnr_eps: float = spec(
        1e-8,
        minimum=1e-12,
        help="the epsilon of the psnr loss: 1e-8 is NAFNet's; 1e-3 caps the weight of nearly exact samples "
        "(clean pairs), which otherwise dominate the loss",
    )
    context_shuffle: float = spec(
        0.0,
        minimum=0.0,
        maximum=1.0,
        help="share of training samples conditioned on another batch sample's DA-CLIP embeddings: the "
        "restorer learns to check the image instead of trusting a wrong answer (0 = the paper)",
    )
    clean_context_shuffle: float = spec(
        0.0,
        minimum=0.0,
        maximum=1.0,
        help="share of the clean identity pairs (data.clean_fraction) conditioned on a degraded batch "
        "sample's DA-CLIP embeddings: the restorer learns to leave a clean image alone when DA-CLIP "
        "names a degradation it does not have (0 = off)",
    )
    ema_decay: float = spec(0.995, minimum=0.0, maximum=1.0)
    ema_every: int = spec(10, minimum=1)
    grad_clip: float = spec(0.0, minimum=0.0, help="max gradient norm; 0 = off")
    precision: Literal["fp32", "bf16"] = "fp32"
    log_every: int = spec(100, minimum=1)
    val_every: int = spec(5000, minimum=0, help="0 = no validation")
    save_every: int = spec(5000, minimum=1)
    keep_last: int = spec(0, minimum=0, help="step checkpoints kept (the newest); 0 = all")
    max_nonfinite_steps: int = spec(
        0, minimum=0, help="NaN/Inf losses skipped in a row before training stops (0 = stop at the first)"
    )
    timestep_grid: int | None = spec(
        None,
        minimum=1,
        help="train only at the timesteps an N-step sampler visits (irsde.diffusion.samplers.make_timesteps); "
        "None = uniform on 1..T (the paper)",
    )
    val_sampler: Literal["posterior", "sde", "ode", "mr", "mr-sde"] = "posterior"
    val_steps: int | None = spec(None, minimum=1, help="sampling steps for validation (None = T)")
    val_clamp_x0: bool | None = spec(
        None,
        help="clamp x0 to [0, 1] in every validation sampler step; None = the parametrisation's "
        "default (off for noise, the paper's numerics; on otherwise). Recorded: checkpoints sample "
        "with it by default",
    )
    val_self_ensemble: bool = spec(
        False,
        help="validate with the geometric self-ensemble (the restorations of the 8 flips/transposes "
        "averaged, 8x the network evaluations). Recorded: checkpoints restore with it by default",
    )
    val_min_change: float = spec(
        0.0,
        minimum=0.0,
        help="validate with the min_change gate: the input's pixels are given back wherever the restorer "
        "changes a 64-px window by less than this RMS, in grey levels (irsde.inference.gate; 0 = off). "
        "Recorded: checkpoints restore with it by default",
    )
    val_hole_fill: bool = spec(
        False,
        help="validate with the hole fill: each image DA-CLIP calls uncompleted is given back as it came, its "
        "white holes filled from the pixels around them (irsde.inference.holes). Recorded: checkpoints "
        "restore with it by default",
    )

    def validate(self) -> None:
        if self.lr_min > self.lr:
            raise ConfigError(f"train.lr_min: {self.lr_min} must not exceed train.lr ({self.lr})")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas: each beta must be in [0, 1), got {list(self.betas)}")


@dataclass
class IRTrainConfig:
    """Everything ``scripts/train_ir.py`` reads from ``configs/universal_ir.yml``."""

    experiment: ExperimentConfig = field(default_factory=lambda: ExperimentConfig(name="universal-ir"))
    daclip: DaCLIPSection = field(default_factory=DaCLIPSection)
    model: ModelConfig = field(default_factory=UNetConfig)  # the family's section (irsde.models.families)
    sde: SDEConfig = field(default_factory=SDEConfig)
    data: IRDataSection = field(default_factory=IRDataSection)
    train: IRTrainSection = field(default_factory=IRTrainSection)

    def _ir_loss(self) -> str:
        """The IR-SDE loss ``train.loss`` names (``auto`` resolved from ``model.prediction``)."""
        return default_loss(self.model.prediction) if self.train.loss == "auto" else self.train.loss

    def validate(self) -> None:
        if is_one_pass(self.model):
            if self.train.loss != "auto":
                raise ConfigError(
                    f"train.loss: {self.train.loss!r} is an IR-SDE loss; a one-pass restorer "
                    f"(model.family: {self.model.family}) trains with auto (its pixel loss, train.loss_kind)"
                )
        elif self.train.loss_kind == "psnr" and self._ir_loss() != "x0":
            raise ConfigError(
                f"train.loss_kind: psnr takes the x0 loss (train.loss: x0, or auto with model.prediction "
                f"residual or x0), not {self._ir_loss()!r}"
            )
        if uses_daclip(self.model) and not self.daclip.checkpoint:
            raise ConfigError(
                "daclip.checkpoint: required when model.use_degra_context or model.use_image_context is on "
                "(set both to false for the plain IR-SDE baseline)"
            )
        if self.data.degrade_at == "patch" and self.data.clip_input != "patch":
            raise ConfigError(
                f"data.clip_input: {self.data.clip_input} shows DA-CLIP the whole degraded image, but "
                "data.degrade_at: patch degrades only the crop (use clip_input: patch, or degrade_at: image)"
            )
        for key in ("context_shuffle", "clean_context_shuffle"):
            if getattr(self.train, key) > 0 and not uses_daclip(self.model):
                raise ConfigError(
                    f"train.{key}: needs a DA-CLIP-conditioned restorer (model.use_degra_context or "
                    "model.use_image_context)"
                )
        if self.train.clean_context_shuffle > 0 and self.data.clean_fraction <= 0:
            raise ConfigError("train.clean_context_shuffle: needs clean pairs (data.clean_fraction > 0)")
        if self.train.timestep_grid is not None and self.train.timestep_grid > self.sde.T:
            raise ConfigError(f"train.timestep_grid: {self.train.timestep_grid} exceeds sde.T ({self.sde.T})")
        if self.train.val_steps is not None and self.train.val_steps > self.sde.T:
            raise ConfigError(f"train.val_steps: {self.train.val_steps} exceeds sde.T ({self.sde.T})")


# ----------------------------------------------------------------------------- pieces


def shuffle_contexts(
    content_emb: Tensor, degra_emb: Tensor, share: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Each sample, with probability ``share``, takes the embeddings of another sample of the batch
    (never its own): a DA-CLIP answer that does not fit the image, as on photos DA-CLIP misreads."""
    batch = degra_emb.shape[0]
    if share <= 0 or batch < 2:
        return content_emb, degra_emb
    device = generator.device
    swap = torch.rand(batch, generator=generator, device=device) < share  # (B,)
    offset = torch.randint(1, batch, (batch,), generator=generator, device=device)  # (B,) in 1..B-1
    own = torch.arange(batch, device=device)
    source = torch.where(swap, (own + offset) % batch, own).to(degra_emb.device)
    return content_emb[source], degra_emb[source]


def mismatch_clean_contexts(
    content_emb: Tensor, degra_emb: Tensor, clean: Tensor, share: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Each clean sample (``clean``, ``(B,)`` bool), with probability ``share``, takes the embeddings of a
    degraded sample of the batch drawn at random: DA-CLIP naming a degradation the image does not have,
    as it does on clean photos it misreads. Nothing changes in a batch without both kinds."""
    batch = degra_emb.shape[0]
    degraded = (~clean).nonzero().flatten()  # (n,)
    if share <= 0 or len(degraded) == 0 or not clean.any():
        return content_emb, degra_emb
    device = generator.device
    swap = clean.to(device) & (torch.rand(batch, generator=generator, device=device) < share)  # (B,)
    donor = degraded.to(device)[torch.randint(0, len(degraded), (batch,), generator=generator, device=device)]
    source = torch.where(swap, donor, torch.arange(batch, device=device)).to(degra_emb.device)
    return content_emb[source], degra_emb[source]


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` over parameters; buffers are copied."""
    for ema_p, p in zip(ema.parameters(), model.parameters()):
        ema_p.lerp_(p.detach(), 1.0 - decay)
    for ema_b, b in zip(ema.buffers(), model.buffers()):
        ema_b.copy_(b)


class EpochSampler(Sampler[int]):
    """A per-epoch permutation fixed by (seed, epoch), sharded over ranks, resumable mid-epoch.

    Yields ``(dataset_index, draw_key)`` pairs packed into one int, ``draw_key * n + index``, where
    ``draw_key`` (the sample's global position in the run) seeds that sample's augmentation; see
    :class:`KeyedDataset`.
    """

    def __init__(self, size: int, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.size, self.batch_size, self.rank, self.world_size, self.seed = (
            size,
            batch_size,
            rank,
            world_size,
            seed,
        )
        self.epoch = 0
        self.skip_batches = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        per_step = self.batch_size * self.world_size
        for batch in range(self.skip_batches, self.batches_per_epoch):
            for slot in range(self.batch_size):
                position = batch * per_step + self.rank * self.batch_size + slot
                draw_key = self.epoch * self.size + position
                yield draw_key * self.size + order[position]


class KeyedDataset(torch.utils.data.Dataset):
    """Unpacks :class:`EpochSampler` indices and reseeds the dataset's augmentation per sample."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, packed: int) -> dict[str, Any]:
        draw_key, index = divmod(packed, len(self.dataset))
        return self.dataset.get_item(index, seed=(self.seed, draw_key))


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(
    pipeline: RestorationPipeline, dataset: Any, indices: Sequence[int], seed: int
) -> tuple[dict[str, float], list[Tensor]]:
    """Mean PSNR per degradation (and overall) on ``indices``; returns one (LQ, output, GT) grid row per image."""
    generator = torch.Generator(device=pipeline.device).manual_seed(seed)
    per_degradation: dict[str, list[float]] = {}
    rows = []
    for index in indices:
        item = dataset[index]
        lq, gt = item["lq"][None], item["gt"][None]
        out = pipeline(lq, item["lq_clip"][None], generator=generator).cpu()
        value = psnr(out, gt).item()
        per_degradation.setdefault(item["degradation"], []).append(value)
        rows.append(torch.cat([lq[0], out[0], gt[0]], dim=2))  # (3, H, 3W)
    means = {name: sum(v) / len(v) for name, v in per_degradation.items()}
    if means:
        means["average"] = sum(means.values()) / len(means)
    return means, rows


def _image_grid(rows: list[Tensor]) -> Tensor:
    width = max(r.shape[2] for r in rows)
    padded = [torch.nn.functional.pad(r, (0, width - r.shape[2])) for r in rows]
    return torch.cat(padded, dim=1).clamp(0, 1)  # (3, sum H, max 3W)


# ----------------------------------------------------------------------------- the stage


_RESUME_KEYS = ("model", "ema", "optimizer", "scheduler", "step", "rng", "generator")
#: How messages name a restorer family (``model.family``).
_FAMILY_NAMES = {"irsde": "an IR-SDE U-Net", "nafnet": "a NAFNet"}


class IRStage(Stage):
    """Stage 2 for :func:`daclip.engine.lifecycle.run_training`: the restorer, its loss, its validation."""

    logger_name = "irsde"
    checkpoint_format = CHECKPOINT_FORMAT
    checkpoint_prefix = "step_"

    def __init__(self, cfg: IRTrainConfig) -> None:
        super().__init__(cfg)
        self.total_steps = cfg.train.total_steps
        #: The DA-CLIP embeddings of the training pairs whose DA-CLIP input never changes (see setup).
        self.embedding_cache: dict[str, tuple[Tensor, Tensor]] | None = None

    # -- setup: everything that can fail on the user's inputs, before the run folder exists

    def setup(self, run: RunContext) -> None:
        cfg, device, info = self.cfg, run.device, run.info
        if cfg.data.source == "paired" and not cfg.data.train_root:
            raise ConfigError("data.train_root: required (a folder <root>/<degradation>/{LQ,GT}/)")
        if cfg.data.source == "synthetic" and not cfg.data.clean_root:
            raise ConfigError("data.clean_root: required with data.source: synthetic (clean photos)")
        self.run = run
        self.embedder = build_embedder(cfg.daclip, device)
        if cfg.data.clip_input == "views" and int(getattr(self.embedder, "views", 1)) < 2:
            raise ConfigError(
                "data.clip_input: views needs a DA-CLIP trained on native crops (its checkpoint's test "
                "views >= 2; daclip.checkpoint names none, or one that classifies the resized image)"
            )
        # The DA-CLIP weights, recorded in every checkpoint by absolute path and content (sha256).
        self.daclip_record = (
            file_fingerprint(cfg.daclip.checkpoint) if cfg.daclip.checkpoint and info.is_main else None
        )
        self.train_set, self.val_set, self.val_indices = self._datasets()
        # A written pair's whole-image DA-CLIP input never changes (a clean pair's neither, unless shown
        # at a random dark exposure): its embeddings are computed once. The official patch input is not.
        data = cfg.data
        cacheable = data.source == "paired" and data.clip_input in ("image", "views") and data.clean_dark == 0
        self.embedding_cache = {} if self.embedder is not None and cacheable else None
        self.build(run, self.embedder)
        train = cfg.train
        self.sampler = EpochSampler(
            len(self.train_set), train.batch_size, info.rank, info.world_size, cfg.experiment.seed
        )
        if self.sampler.batches_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size: {train.batch_size} x {info.world_size} GPU(s) exceeds the "
                f"{len(self.train_set)} training pairs"
            )
        self.loader = DataLoader(
            KeyedDataset(self.train_set, cfg.experiment.seed),
            batch_size=train.batch_size,
            sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
            # Synthetic items list their 1-3 degradations (lists of different lengths).
            collate_fn=synthetic_collate if cfg.data.source == "synthetic" else None,
        )

    def build(self, run: RunContext, embedder: Any) -> None:
        """The model, its EMA, loss, optimiser, scheduler and noise generator on ``run.device``, no data.

        What :meth:`setup` builds after the datasets; ``scripts/benchmark.py`` times :meth:`train_step`
        on it, so the benchmark measures what training runs (EMA, clipping, scheduler included).
        """
        cfg, device, info = self.cfg, run.device, run.info
        self.run, self.embedder = run, embedder
        self.sde = IRSDE(cfg.sde.max_sigma, cfg.sde.T, cfg.sde.schedule, cfg.sde.eps).to(device)
        self.one_pass = is_one_pass(cfg.model)
        self.net = build_model(cfg.model).to(device)  # the restorer network, of any family
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.model: nn.Module = self.net
        if info.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None
            )
        if self.one_pass:
            self.loss_fn: nn.Module = PixelLoss(cfg.train.loss_kind, cfg.train.psnr_eps)
        else:
            self.loss_fn = build_loss(
                cfg.train.loss, self.sde, cfg.train.loss_kind, cfg.model.prediction, cfg.train.psnr_eps
            )
        train = cfg.train
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=train.lr, betas=train.betas, weight_decay=train.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            cosine_warmup_lambda(train.total_steps, train.warmup_steps, train.lr_min / train.lr),
        )
        # Timesteps and forward noise: one generator per rank, checkpointed (see rank_state).
        self.generator = torch.Generator(device=device).manual_seed(cfg.experiment.seed * 1000 + info.rank)
        self.train_grid = None
        if train.timestep_grid is not None:
            self.train_grid = make_timesteps(self.sde.T, train.timestep_grid).to(device)

    @property
    def clip_views(self) -> int:
        """The grid side of the DA-CLIP's views when stage 2 is conditioned on them (0: one input)."""
        return int(self.embedder.views) if self.cfg.data.clip_input == "views" else 0

    def _datasets(self) -> tuple[Any, Any, list[int]]:
        """Training pairs, and the validation pairs (headers checked now) with the subset validated."""
        from data.paired import PairedDataset  # datasets are only needed when training
        from data.synthetic import SyntheticPairedDataset

        cfg = self.cfg
        clip_kwargs: dict[str, Any] = {}
        if self.embedder is not None:
            embedder = self.embedder
            clip_kwargs = dict(
                clip_size=int(embedder.image_size), clip_mean=embedder.mean, clip_std=embedder.std
            )
        train_clip = dict(clip_input=cfg.data.clip_input, clip_views=self.clip_views)
        if cfg.data.source == "synthetic":
            train_set: Any = SyntheticPairedDataset(
                cfg.data.clean_root,
                cfg.data.synthesis,
                patch_size=cfg.data.patch_size,
                small_images=cfg.data.small_images,
                degrade_at=cfg.data.degrade_at,
                max_size=cfg.data.max_size or None,
                length=cfg.data.samples_per_epoch or None,
                seed=cfg.experiment.seed,
                clean_fraction=cfg.data.clean_fraction,
                clean_dark=cfg.data.clean_dark,
                cache_mb=cfg.data.image_cache_mb,
                **train_clip,
                **clip_kwargs,
            )
        else:
            train_set = PairedDataset(
                cfg.data.train_root,
                cfg.data.degradations,
                mode="train",
                patch_size=cfg.data.patch_size,
                small_images=cfg.data.small_images,
                clean_fraction=cfg.data.clean_fraction,
                clean_dark=cfg.data.clean_dark,
                **train_clip,
                **clip_kwargs,
            )
        if not (cfg.data.val_root and cfg.train.val_every):
            return train_set, None, []
        val_set = PairedDataset(cfg.data.val_root, cfg.data.degradations, mode="eval", **clip_kwargs)
        groups = val_set.eval_indices(cfg.data.val_images_per_degradation).values()
        indices = [i for group in groups for i in group]
        # Headers only (cheap): an unreadable or mismatched validation pair fails now, not at step val_every.
        pairs = ((val_set.pairs[i].lq_path, val_set.pairs[i].gt_path) for i in indices)
        check_image_pairs(pairs, f"validation set {cfg.data.val_root}")
        return train_set, val_set, indices

    # -- checkpoints

    def load_state_dict(self, state: Any, path: Path) -> None:
        require_format(state, path, CHECKPOINT_FORMAT, "a stage-2 (restoration) training checkpoint")
        missing = [key for key in _RESUME_KEYS if key not in state]
        if missing:
            raise UserError(
                f"{path} holds restoration weights without the training state {missing} needed to resume"
            )
        self._check_family(state, path)
        self._check_daclip(state, path)
        try:
            self.net.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
        except RuntimeError as err:  # another architecture: one line, not the full key listing
            detail = " ".join(str(err).split())[:300]
            raise UserError(
                f"{path} does not fit the model of this config "
                f"({_FAMILY_NAMES.get(self.cfg.model.family, 'model.*')}, model.*): {detail}"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def _check_family(self, state: Any, path: Path) -> None:
        """A checkpoint of another restorer family is one line naming both, not a key listing."""
        saved = state.get("config", {}).get("model", {}) if isinstance(state.get("config"), dict) else {}
        family, wanted = saved.get("family", "irsde"), self.cfg.model.family
        if family != wanted:
            raise UserError(
                f"{path} is {_FAMILY_NAMES.get(family, repr(family))} checkpoint; the config is "
                f"{_FAMILY_NAMES.get(wanted, wanted)} (model.family: {wanted})"
            )

    def _check_daclip(self, state: Any, path: Path) -> None:
        """Resume with the DA-CLIP the run was trained with, or (``daclip.allow_changed``) record both."""
        recorded, current = state.get("daclip"), self.daclip_record
        if not (current and isinstance(recorded, dict) and recorded.get("sha256") != current["sha256"]):
            return
        what = (
            f"daclip.checkpoint {current['path']} is not the DA-CLIP {path} was trained with "
            f"({recorded.get('path')}, sha256 {str(recorded.get('sha256'))[:12]}...)"
        )
        if not self.cfg.daclip.allow_changed:
            raise UserError(f"{what}: point daclip.checkpoint at that file, or set daclip.allow_changed=true")
        self.run.notes.append(f"{what}; continuing with it (daclip.allow_changed), both are recorded")
        earlier = {k: recorded.get(k) for k in ("path", "size", "sha256")}
        earlier["until_step"] = int(state.get("step", 0))
        self.daclip_record = {**current, "earlier": [*recorded.get("earlier", []), earlier]}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            # Absolute path + sha256 of the DA-CLIP weights (None: no DA-CLIP); "earlier": those a resume
            # with daclip.allow_changed replaced, each with the step it was used until.
            "daclip": self.daclip_record,
        }

    def rank_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state().cpu()}

    def load_rank_state(self, states: Any, rank: int) -> None:
        saved = states.get("generator")
        if saved:
            self.generator.set_state(saved[rank % len(saved)].to("cpu"))

    def checkpoint_tag(self, step: int) -> str | None:
        due = step % self.cfg.train.save_every == 0 or step == self.total_steps
        return f"step_{step:07d}" if due else None

    # -- the step

    def batches(self, start_step: int) -> Iterator[dict[str, Any]]:
        step = start_step
        while True:
            self.sampler.epoch, self.sampler.skip_batches = divmod(step, self.sampler.batches_per_epoch)
            for batch in self.loader:
                yield batch
                step += 1

    def _context(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The U-Net's DA-CLIP keyword arguments for this batch (the frozen DA-CLIP, no grad)."""
        if self.embedder is None:
            return {}
        if self.embedding_cache is not None:
            content_emb, degra_emb = self._cached_embeddings(batch)
        else:
            content_emb, degra_emb = self._embed(batch["lq_clip"])  # (B, D) each
        if self.cfg.train.clean_context_shuffle > 0:  # identity pairs carry degradation_index -1
            clean = torch.as_tensor(batch["degradation_index"]) < 0  # (B,)
            content_emb, degra_emb = mismatch_clean_contexts(
                content_emb, degra_emb, clean, self.cfg.train.clean_context_shuffle, self.generator
            )
        content_emb, degra_emb = shuffle_contexts(
            content_emb, degra_emb, self.cfg.train.context_shuffle, self.generator
        )
        return daclip_kwargs(self.cfg.model, content_emb, degra_emb)

    def _embed(self, lq_clip: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad(), autocast(self.run.device, self.cfg.train.precision):
            return self.embedder(lq_clip)

    def _cached_embeddings(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The embeddings of written pairs whose DA-CLIP input is the whole (unaugmented) LQ image: the
        same for every draw of a pair, so each is computed once (a grid of views costs a DA-CLIP pass
        per view)."""
        cache = self.embedding_cache
        keys = [f"{name}|{path}" for name, path in zip(batch["degradation"], batch["lq_path"])]
        missing = [i for i, key in enumerate(keys) if key not in cache]
        if missing:
            content_emb, degra_emb = self._embed(batch["lq_clip"][missing])
            for row, i in enumerate(missing):
                cache[keys[i]] = (content_emb[row], degra_emb[row])
        return tuple(torch.stack([cache[key][part] for key in keys]) for part in (0, 1))  # type: ignore[return-value]

    def train_step(self, batch: dict[str, Any], step: int) -> StepResult:
        cfg, device = self.cfg, self.run.device
        batch = _to_device(batch, device)
        lq, gt = batch["lq"], batch["gt"]  # (B, 3, P, P) each
        context = self._context(batch)
        if self.one_pass:  # the restored image in one network evaluation, compared with the GT
            with autocast(device, cfg.train.precision):
                restored = self.model(lq, **context)
            return self._update(self.loss_fn(restored.float(), gt), step)
        if self.train_grid is None:  # uniform on 1..T (the paper)
            t = torch.randint(1, self.sde.T + 1, (lq.shape[0],), device=device, generator=self.generator)
        else:  # the timesteps the configured few-step sampler evaluates
            pick = torch.randint(
                0, len(self.train_grid), (lq.shape[0],), device=device, generator=self.generator
            )
            t = self.train_grid[pick]  # (B,)
        noise = torch.randn(gt.shape, device=device, generator=self.generator, dtype=gt.dtype)
        xt = self.sde.add_noise(gt, lq, t, noise)  # x_t ~ the marginal (IR-SDE paper eq. 4)
        with autocast(device, cfg.train.precision):
            model_output = self.model(xt, lq, t, **context)  # of the model.prediction kind
        return self._update(self.loss_fn(model_output.float(), xt, gt, lq, t, noise=noise), step)

    def _update(self, loss: Tensor, step: int) -> StepResult:
        """Backward, clipping, AdamW, scheduler and EMA; the update is skipped (on every rank) for a
        non-finite loss."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        finite = finite_on_all_ranks(loss)
        if finite:
            loss.backward()
            if cfg.train.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.net.parameters(), cfg.train.grad_clip)
            self.optimizer.step()
        self.scheduler.step()
        if step % cfg.train.ema_every == 0:
            update_ema(self.ema, self.net, cfg.train.ema_decay)
        return StepResult({"loss": loss.detach()}, finite)

    def log_scalars(self) -> dict[str, float]:
        return {"lr": self.scheduler.get_last_lr()[0]}

    # -- validation

    def validate(self, run: RunContext, step: int) -> None:
        val_every = self.cfg.train.val_every
        if not (self.val_indices and val_every and step % val_every == 0 and run.is_main):
            return
        pipeline = RestorationPipeline(
            self.ema,
            None if self.one_pass else self.sde,
            self.embedder,
            sampler=self.cfg.train.val_sampler,
            num_steps=self.cfg.train.val_steps,
            clamp_x0=self.cfg.train.val_clamp_x0,
            clip_input="views" if self.clip_views else "image",
            self_ensemble=self.cfg.train.val_self_ensemble,
            min_change=self.cfg.train.val_min_change,
            hole_fill=self.cfg.train.val_hole_fill,
        )
        metrics, rows = validate(pipeline, self.val_set, self.val_indices, self.cfg.experiment.seed)
        for name, value in metrics.items():
            run.scalar(f"val_psnr/{name}", value, step)
        if run.writer is not None:
            run.writer.add_image("val/lq_output_gt", _image_grid(rows), step)
        run.logger.info("step %d  validation PSNR %.2f dB", step, metrics.get("average", float("nan")))


def train(cfg: IRTrainConfig, argv: Sequence[str] | None = None, *, progress: bool = True) -> Path:
    """Run stage-2 training as configured; returns the run folder."""
    return run_training(IRStage(cfg), cfg, argv, progress=progress)


def loss_history(run_dir: str | os.PathLike) -> list[tuple[int, float]]:
    """The per-step training loss of a run, read back from its TensorBoard events (for tests and plots)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    acc.Reload()
    return [(event.step, event.value) for event in acc.Scalars("train/loss")]
