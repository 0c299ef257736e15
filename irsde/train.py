"""Stage 2: train the IR-SDE conditional U-Net on a frozen DA-CLIP (``scripts/train_ir.py``).

The loop is one plain function over a config dataclass (:class:`IRTrainConfig`). Each step: embed
the LQ patches with the frozen DA-CLIP (no grad), draw ``t`` uniformly on 1..T and the forward
noise, predict the noise with the U-Net, and minimise the paper's maximum-likelihood loss (L1
between the reverse-SDE step mean and the optimal posterior mean). AdamW, cosine decay to a floor,
EMA of the weights, optional gradient clipping and bf16 autocast, torchrun data parallel,
periodic validation with a sampler, TensorBoard, and exact resume.

Exact resume: the data order is a per-epoch permutation fixed by (seed, epoch), the dataset's
augmentation randomness is keyed by the sample's position in that order, and the timestep/noise
generator state is checkpointed; a run stopped after N steps and resumed therefore follows the
same loss sequence as an uninterrupted one (on CPU, bit for bit).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from daclip.utils.checkpoint import (
    file_fingerprint,
    get_rng_state,
    load_checkpoint,
    prune_checkpoints,
    require_format,
    save_checkpoint,
    set_rng_state,
)
from daclip.utils.config import ConfigError, spec, to_dict
from daclip.utils.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
    main_rank_call,
)
from daclip.utils.experiment import (
    ExperimentConfig,
    NonFiniteGuard,
    UserError,
    autocast,
    open_run_dir,
    plan_resume,
    progress_bar,
    seed_everything,
    setup_logger,
    write_run_info,
)
from daclip.utils.optim import cosine_warmup_lambda
from daclip.utils.preflight import check_image_pairs
from data import DEFAULT_DEGRADATIONS

from .losses import build_loss
from .metrics import psnr
from .pipeline import IR_CHECKPOINT_FORMAT as CHECKPOINT_FORMAT
from .pipeline import Embedder, RestorationPipeline
from .samplers import make_timesteps
from .sde import IRSDE
from .unet import ConditionalUNet

__all__ = [
    "CHECKPOINT_FORMAT",
    "DaclipSection",
    "UNetSection",
    "SDESection",
    "IRDataSection",
    "IRTrainSection",
    "IRTrainConfig",
    "build_embedder",
    "train",
]


# ----------------------------------------------------------------------------- config


@dataclass
class DaclipSection:
    """The frozen DA-CLIP: our stage-1 checkpoint or the released ``daclip_ViT-B-32.pt``."""

    checkpoint: str = spec("", must_exist=True, help="'' = no DA-CLIP (plain IR-SDE baseline)")
    clip_model: str = spec("ViT-B-32", help="open_clip architecture of a released checkpoint")
    model_config: str = spec("", must_exist=True, help="open_clip JSON for a custom architecture")


@dataclass
class UNetSection:
    in_nc: int = spec(3, minimum=1)
    out_nc: int = spec(3, minimum=1)
    nf: int = spec(64, minimum=1)
    ch_mult: list[int] = spec(default_factory=lambda: [1, 2, 4, 8], minimum=1)
    context_dim: int = spec(512, minimum=1)
    use_degra_context: bool = True
    use_image_context: bool = True
    grad_checkpointing: bool = False
    prediction: Literal["noise", "x0", "residual"] = spec(
        "noise",
        help="what the U-Net outputs: noise (the paper, released weights), x0, or residual = x0 - LQ "
        "(starts as the identity; trains well in few steps)",
    )


@dataclass
class SDESection:
    max_sigma: float = spec(50.0, minimum=0.0, exclusive_minimum=True, help="in 0..255 units")
    T: int = spec(100, minimum=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    eps: float = spec(0.005, minimum=0.0, exclusive_minimum=True, maximum=1.0)


@dataclass
class IRDataSection:
    train_root: str = spec("", must_exist=True, help="<root>/<degradation>/{LQ,GT}/")
    val_root: str = spec("", must_exist=True)
    degradations: list[str] = field(default_factory=lambda: list(DEFAULT_DEGRADATIONS))
    patch_size: int = spec(256, minimum=16)
    small_images: Literal["pad", "reject"] = "pad"
    clip_input: Literal["patch", "image"] = spec(
        "patch",
        help="DA-CLIP's training input: the crop (official) or the whole LQ image (as at test time)",
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
        "auto", help="auto = ml (the paper's) for model.prediction=noise, x0 (L1 on x0) otherwise"
    )
    loss_kind: Literal["l1", "l2"] = "l1"
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
        help="train only at the timesteps an N-step sampler visits (irsde.samplers.make_timesteps); "
        "None = uniform on 1..T (the paper)",
    )
    val_sampler: Literal["posterior", "sde", "ode", "mr", "mr-sde"] = "posterior"
    val_steps: int | None = spec(None, minimum=1, help="sampling steps for validation (None = T)")

    def validate(self) -> None:
        if self.lr_min > self.lr:
            raise ConfigError(f"train.lr_min: {self.lr_min} must not exceed train.lr ({self.lr})")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas: each beta must be in [0, 1), got {list(self.betas)}")


@dataclass
class IRTrainConfig:
    """Everything ``scripts/train_ir.py`` reads from ``configs/universal_ir.yml``."""

    experiment: ExperimentConfig = field(default_factory=lambda: ExperimentConfig(name="universal-ir"))
    daclip: DaclipSection = field(default_factory=DaclipSection)
    model: UNetSection = field(default_factory=UNetSection)
    sde: SDESection = field(default_factory=SDESection)
    data: IRDataSection = field(default_factory=IRDataSection)
    train: IRTrainSection = field(default_factory=IRTrainSection)

    def validate(self) -> None:
        uses_context = self.model.use_degra_context or self.model.use_image_context
        if uses_context and not self.daclip.checkpoint:
            raise ConfigError(
                "daclip.checkpoint: required when model.use_degra_context or model.use_image_context is on "
                "(set both to false for the plain IR-SDE baseline)"
            )
        if self.train.timestep_grid is not None and self.train.timestep_grid > self.sde.T:
            raise ConfigError(f"train.timestep_grid: {self.train.timestep_grid} exceeds sde.T ({self.sde.T})")
        if self.train.val_steps is not None and self.train.val_steps > self.sde.T:
            raise ConfigError(f"train.val_steps: {self.train.val_steps} exceeds sde.T ({self.sde.T})")


# ----------------------------------------------------------------------------- pieces


def build_embedder(section: DaclipSection, device: torch.device) -> Embedder | None:
    """The frozen DA-CLIP named by ``section`` (None for the plain IR-SDE baseline)."""
    if not section.checkpoint:
        return None
    from daclip.inference import load_frozen_daclip

    return load_frozen_daclip(
        section.checkpoint,
        clip_model=section.clip_model,
        model_config=section.model_config or None,
        device=device,
    )


def build_unet(section: UNetSection) -> ConditionalUNet:
    return ConditionalUNet(
        in_nc=section.in_nc,
        out_nc=section.out_nc,
        nf=section.nf,
        ch_mult=tuple(section.ch_mult),
        context_dim=section.context_dim,
        use_degra_context=section.use_degra_context,
        use_image_context=section.use_image_context,
        use_checkpoint=section.grad_checkpointing,
        prediction=section.prediction,
    )


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


# ----------------------------------------------------------------------------- the loop


_RESUME_KEYS = ("model", "ema", "optimizer", "scheduler", "step", "rng", "generator")


def _check_resumable(state: Any, path: Path, daclip_record: dict[str, Any] | None) -> str | None:
    """One-line errors for a checkpoint that cannot resume stage 2; returns a warning for another DA-CLIP."""
    require_format(state, path, CHECKPOINT_FORMAT, "a stage-2 (restoration) training checkpoint")
    missing = [key for key in _RESUME_KEYS if key not in state]
    if missing:
        raise UserError(
            f"{path} holds restoration weights without the training state {missing} needed to resume"
        )
    recorded = state.get("daclip")
    if daclip_record and isinstance(recorded, dict) and recorded.get("sha256") != daclip_record["sha256"]:
        return (
            f"daclip.checkpoint {daclip_record['path']} is not the DA-CLIP {path} was trained with "
            f"({recorded.get('path')}, sha256 {str(recorded.get('sha256'))[:12]}...)"
        )
    return None


def train(cfg: IRTrainConfig, argv: Sequence[str] | None = None) -> Path:
    """Run stage-2 training as configured; returns the run folder."""
    from data.paired import PairedDataset  # datasets are only needed when training

    if not cfg.data.train_root:
        raise ConfigError("data.train_root: required (a folder <root>/<degradation>/{LQ,GT}/)")
    dist_info: DistInfo = init_distributed(cfg.experiment.device)
    device = dist_info.device
    # The run folder is written only after everything that can fail on the user's inputs has run.
    resume_from, resume_dir = plan_resume(cfg.experiment)
    seed_everything(cfg.experiment.seed, dist_info.rank)

    embedder = build_embedder(cfg.daclip, device)
    # The DA-CLIP weights, recorded in every checkpoint by absolute path and content (sha256).
    daclip_record = (
        file_fingerprint(cfg.daclip.checkpoint) if cfg.daclip.checkpoint and dist_info.is_main else None
    )
    clip_kwargs: dict[str, Any] = {}
    if embedder is not None:
        clip_kwargs = dict(clip_size=int(embedder.image_size), clip_mean=embedder.mean, clip_std=embedder.std)
    train_set = PairedDataset(
        cfg.data.train_root,
        cfg.data.degradations,
        mode="train",
        patch_size=cfg.data.patch_size,
        small_images=cfg.data.small_images,
        clip_input=cfg.data.clip_input,
        **clip_kwargs,
    )
    val_set = None
    if cfg.data.val_root and cfg.train.val_every:
        val_set = PairedDataset(cfg.data.val_root, cfg.data.degradations, mode="eval", **clip_kwargs)
        # Headers only (cheap): an unreadable or mismatched validation pair fails now, not at step val_every.
        check_image_pairs(
            (
                (val_set.pairs[i].lq_path, val_set.pairs[i].gt_path)
                for group in val_set.eval_indices(cfg.data.val_images_per_degradation).values()
                for i in group
            ),
            f"validation set {cfg.data.val_root}",
        )

    sde = IRSDE(cfg.sde.max_sigma, cfg.sde.T, cfg.sde.schedule, cfg.sde.eps).to(device)
    unet = build_unet(cfg.model).to(device)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    model: nn.Module = unet
    if dist_info.distributed:
        model = nn.parallel.DistributedDataParallel(
            unet, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = build_loss(cfg.train.loss, sde, cfg.train.loss_kind, cfg.model.prediction)
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        cosine_warmup_lambda(cfg.train.total_steps, cfg.train.warmup_steps, cfg.train.lr_min / cfg.train.lr),
    )
    generator = torch.Generator(device=device).manual_seed(cfg.experiment.seed * 1000 + dist_info.rank)
    train_grid = None
    if cfg.train.timestep_grid is not None:
        train_grid = make_timesteps(sde.T, cfg.train.timestep_grid).to(device)

    step = 0
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location=device)
        resume_warning = _check_resumable(state, resume_from, daclip_record)
        try:
            unet.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
        except RuntimeError as err:  # another architecture: one line, not the full key listing
            detail = " ".join(str(err).split())[:300]
            raise UserError(
                f"{resume_from} does not fit the U-Net of this config (model.*): {detail}"
            ) from None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        set_rng_state(state["rng"])
        generator.set_state(state["generator"][dist_info.rank % len(state["generator"])].to("cpu"))

    sampler = EpochSampler(
        len(train_set), cfg.train.batch_size, dist_info.rank, dist_info.world_size, cfg.experiment.seed
    )
    if sampler.batches_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} x {dist_info.world_size} GPU(s) exceeds the "
            f"{len(train_set)} training pairs"
        )
    loader = DataLoader(
        KeyedDataset(train_set, cfg.experiment.seed),
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=False,
    )

    run_dir = main_rank_call(open_run_dir, cfg.experiment, resume_dir, is_main=dist_info.is_main)
    if dist_info.distributed:
        holder = [str(run_dir) if run_dir else ""]
        torch.distributed.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])
    assert run_dir is not None
    logger = setup_logger(run_dir, dist_info.is_main, name="irsde")
    if dist_info.is_main:
        write_run_info(run_dir, cfg, argv)
        logger.info("run folder: %s", run_dir)
    if resume_from is not None:
        logger.info("resumed from %s at step %d", resume_from, step)
        if resume_warning:
            logger.warning(resume_warning)
    elif cfg.experiment.resume == "auto":
        logger.info("nothing to resume for %r: a new run", cfg.experiment.name)

    writer = None
    if dist_info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
    val_indices = []
    if val_set is not None:
        val_indices = [
            i for group in val_set.eval_indices(cfg.data.val_images_per_degradation).values() for i in group
        ]
    progress = None
    if dist_info.is_main:
        progress = progress_bar(total=cfg.train.total_steps, initial=step, desc="train")

    def checkpoint(tag: str) -> None:
        """Save on the main rank (called on every rank: the generator states are gathered first)."""
        generators = [generator.get_state()]
        if dist_info.distributed:  # every rank's generator, so a resume continues each stream
            generators = [torch.empty(0)] * dist_info.world_size
            torch.distributed.all_gather_object(generators, generator.get_state().cpu())

        def save() -> None:
            state = {
                "format": CHECKPOINT_FORMAT,
                "model": unet.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "rng": get_rng_state(),
                "generator": generators,
                "config": to_dict(cfg),
                "daclip": daclip_record,  # absolute path + sha256 of the DA-CLIP weights (None: no DA-CLIP)
            }
            save_checkpoint(run_dir / "checkpoints" / f"{tag}.pt", state)  # refuses NaN/Inf weights
            prune_checkpoints(run_dir / "checkpoints", "step_", cfg.train.keep_last)
            save_checkpoint(run_dir / "checkpoints" / "latest.pt", state)

        main_rank_call(save, is_main=dist_info.is_main)  # a failed save stops every rank

    unet.train()
    loss_window: list[float] = []
    nonfinite = NonFiniteGuard(cfg.train.max_nonfinite_steps)
    started, start_step = time.time(), step  # steps/s counts this process's steps only
    while step < cfg.train.total_steps:
        epoch, skip = divmod(step, sampler.batches_per_epoch)
        sampler.epoch, sampler.skip_batches = epoch, skip
        for batch in loader:
            batch = _to_device(batch, device)
            lq, gt = batch["lq"], batch["gt"]  # (B, 3, P, P) each
            context: dict[str, Tensor] = {}
            if embedder is not None:
                with torch.no_grad(), autocast(device, cfg.train.precision):
                    content_emb, degra_emb = embedder(batch["lq_clip"])  # (B, D) each
                if cfg.model.use_degra_context:
                    context["degra_emb"] = degra_emb.float()
                if cfg.model.use_image_context:
                    context["content_emb"] = content_emb.float()
            if train_grid is None:  # uniform on 1..T (the paper)
                t = torch.randint(1, sde.T + 1, (lq.shape[0],), device=device, generator=generator)  # (B,)
            else:  # the timesteps the configured few-step sampler evaluates
                pick = torch.randint(0, len(train_grid), (lq.shape[0],), device=device, generator=generator)
                t = train_grid[pick]  # (B,)
            noise = torch.randn(gt.shape, device=device, generator=generator, dtype=gt.dtype)
            xt = sde.add_noise(gt, lq, t, noise)  # x_t ~ marginal, Eq. (5) of IR-SDE
            with autocast(device, cfg.train.precision):
                model_output = model(xt, lq, t, **context)  # of the model.prediction kind
            loss = loss_fn(model_output.float(), xt, gt, lq, t, noise=noise)
            optimizer.zero_grad(set_to_none=True)
            loss_value = all_reduce_mean(loss.detach()).item()  # the same on every rank
            finite = nonfinite.check(loss_value, step + 1)  # raises past train.max_nonfinite_steps
            if finite:
                loss.backward()
                if cfg.train.grad_clip > 0:
                    nn.utils.clip_grad_norm_(unet.parameters(), cfg.train.grad_clip)
                optimizer.step()
            else:
                logger.warning("step %d: the loss is %s; update skipped", step + 1, loss_value)
            scheduler.step()
            step += 1
            if step % cfg.train.ema_every == 0:
                update_ema(ema, unet, cfg.train.ema_decay)

            if finite:
                loss_window.append(loss_value)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if writer is not None:
                writer.add_scalar("train/loss", loss_value, step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            if step % cfg.train.log_every == 0 or step == cfg.train.total_steps:
                rate = (step - start_step) / max(1e-9, time.time() - started)
                logger.info(
                    "step %d  loss %.5f  lr %.3g  (%.2f steps/s)",
                    step,
                    sum(loss_window) / len(loss_window) if loss_window else float("nan"),
                    scheduler.get_last_lr()[0],
                    rate,
                )
                loss_window.clear()
            if step % cfg.train.save_every == 0 or step == cfg.train.total_steps:
                checkpoint(f"step_{step:07d}")  # before validating: a validation failure loses nothing
            if val_indices and cfg.train.val_every and step % cfg.train.val_every == 0 and dist_info.is_main:
                pipeline = RestorationPipeline(
                    ema, sde, embedder, sampler=cfg.train.val_sampler, num_steps=cfg.train.val_steps
                )
                metrics, rows = validate(pipeline, val_set, val_indices, cfg.experiment.seed)
                for name, value in metrics.items():
                    writer.add_scalar(f"val_psnr/{name}", value, step)
                writer.add_image("val/lq_output_gt", _image_grid(rows), step)
                logger.info("step %d  validation PSNR %.2f dB", step, metrics.get("average", float("nan")))
            if step >= cfg.train.total_steps:
                break
        barrier()
    if progress is not None:
        progress.close()
    if writer is not None:
        writer.close()
    cleanup_distributed()
    return run_dir


def loss_history(run_dir: str | os.PathLike) -> list[tuple[int, float]]:
    """The per-step training loss of a run, read back from its TensorBoard events (for tests and plots)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    acc.Reload()
    return [(event.step, event.value) for event in acc.Scalars("train/loss")]
