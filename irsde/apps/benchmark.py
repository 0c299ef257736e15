"""Throughput and memory measurements for a stage-2 config (``scripts/benchmark.py``).

Training: images per second and peak memory of the training step itself
(:meth:`irsde.training.stage.IRStage.train_step`: forward, loss, backward, clipping, AdamW, scheduler, EMA)
on a random batch of the configured batch and patch size. Restoration: seconds
per image for the whole reverse process at a given size and number of steps. Samplers
(:func:`benchmark_samplers`): the same restoration timed for several sampler × NFE × grid settings
on one model in one run, one JSON row each, so that runs on different devices can be put side by
side. DA-CLIP is timed when the config names its weights; otherwise random embeddings stand in
(reported as such). Every restoration timing excludes one warm-up run.
"""

from __future__ import annotations

import gc
import platform
import resource
import time
from collections.abc import Sequence
from typing import Any

import torch

from daclip.engine.config import to_dict
from daclip.engine.distributed import DistInfo
from daclip.engine.lifecycle import RunContext
from daclip.inference import build_embedder
from irsde.diffusion.samplers import SAMPLERS, SamplerSpec, check_sampler_options, make_timesteps
from irsde.diffusion.sde import IRSDE
from irsde.inference.pipeline import LoadedRestorer, RestorationPipeline
from irsde.models.families import build_model, is_one_pass
from irsde.training.stage import IRStage, IRTrainConfig

__all__ = [
    "SamplerSpec",
    "benchmark_restoration",
    "benchmark_samplers",
    "benchmark_training",
    "device_description",
    "run_benchmark",
]

#: An image size: one int (square) or (height, width).
Size = int | Sequence[int]


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or None."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak(device: torch.device) -> str:
    """Start a new peak-memory measurement; returns what :func:`_peak_memory_mib` will measure.

    CUDA: the allocator's peak, reset. CPU: the process's peak resident set size, which Linux resets
    to the current size on writing ``5`` to ``/proc/self/clear_refs``; without that (another OS) the
    process's lifetime peak is all there is, which includes whatever ran before (e.g. training).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "CUDA max_memory_allocated since the reset"
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        if _proc_status_kib("VmHWM") is not None:
            return "peak RSS of the process since the reset (Linux VmHWM)"
    except OSError:
        pass
    return "peak RSS of the process over its lifetime (could not reset it here)"


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _proc_status_kib("VmHWM")  # reset by _reset_peak
    if hwm is not None:
        return hwm / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


class _RandomEmbedder:
    """Stands in for DA-CLIP when no weights are configured: fixed random embeddings."""

    image_size, mean, std = 224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def __init__(self, dim: int, device: torch.device) -> None:
        self.dim, self.device = dim, device

    def __call__(self, clip_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = clip_images.shape[0]
        return torch.randn(batch, self.dim, device=self.device), torch.randn(
            batch, self.dim, device=self.device
        )


def benchmark_training(
    cfg: IRTrainConfig, device: torch.device, steps: int = 20, warmup: int = 3
) -> dict[str, Any]:
    """Images/s and peak memory of ``steps`` training steps after ``warmup`` untimed ones.

    Each step is :meth:`irsde.training.stage.IRStage.train_step`, the step training runs (DA-CLIP embedding,
    loss, backward, clipping, AdamW, scheduler, EMA), on one random batch of the configured size.
    """
    torch.manual_seed(0)
    stage = IRStage(cfg)
    run = RunContext(cfg, cfg.experiment, DistInfo(0, 0, 1, device, True, False))
    embedder = build_embedder(cfg.daclip, device) or _RandomEmbedder(cfg.model.context_dim, device)
    stage.build(run, embedder)
    stage.net.train()
    batch, size = cfg.train.batch_size, cfg.data.patch_size
    gt = torch.rand(batch, 3, size, size, device=device)
    lq = (gt + 0.1 * torch.randn_like(gt)).clamp(0, 1)
    clip = torch.randn(batch, 3, embedder.image_size, embedder.image_size, device=device)
    inputs = {"lq": lq, "gt": gt, "lq_clip": clip}
    count = iter(range(1, 1 + warmup + steps))

    def one_step() -> None:
        stage.train_step(inputs, next(count))

    for _ in range(warmup):
        one_step()
    _sync(device)
    memory_kind = _reset_peak(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_second": batch * steps / seconds,
        "seconds_per_step": seconds / steps,
        "peak_memory_mib": _peak_memory_mib(device),
        "peak_memory_kind": memory_kind,
        "batch_size": batch,
        "patch_size": size,
        "steps_timed": steps,
        "parameters": sum(p.numel() for p in stage.net.parameters()),
        "daclip": "timed" if cfg.daclip.checkpoint else "random embeddings (DA-CLIP not timed)",
    }


def _height_width(size: Size) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return hw  # type: ignore[return-value]


def _restoration_inputs(
    cfg: IRTrainConfig, device: torch.device, size: Size
) -> tuple[torch.nn.Module, IRSDE, Any, torch.Tensor, torch.Tensor]:
    """(restorer, IR-SDE, embedder, LQ batch of one image, CLIP input): the same for every timed restore."""
    height, width = _height_width(size)
    torch.manual_seed(0)
    unet = build_model(cfg.model).to(device).eval()
    sde = IRSDE(cfg.sde.max_sigma, cfg.sde.T, cfg.sde.schedule, cfg.sde.eps).to(device)
    embedder = build_embedder(cfg.daclip, device) or _RandomEmbedder(cfg.model.context_dim, device)
    lq = torch.rand(1, 3, height, width, device=device)
    clip = torch.randn(1, 3, embedder.image_size, embedder.image_size, device=device)
    return unet, sde, embedder, lq, clip


def _seconds_per_image(
    pipeline: RestorationPipeline, lq: torch.Tensor, clip: torch.Tensor, device: torch.device, repeats: int
) -> float:
    """Mean seconds of ``repeats`` restorations of ``lq`` (batch 1), after one untimed warm-up run."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    generator = torch.Generator(device=device).manual_seed(0)
    pipeline(lq, clip, generator=generator)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        pipeline(lq, clip, generator=generator)
    _sync(device)
    return (time.perf_counter() - start) / repeats


def benchmark_restoration(
    cfg: IRTrainConfig,
    device: torch.device,
    size: Size = 256,
    num_steps: int | None = None,
    sampler: str | None = None,
    tile: int | None = None,
    repeats: int = 2,
    order: int | None = None,
    grid: str = "uniform",
) -> dict[str, Any]:
    """Seconds per image (batch 1) for the whole reverse process at ``size`` (square, or (height, width)).

    ``sampler`` None samples as a checkpoint of ``cfg`` restores by default: with its validation sampler
    (``train.val_sampler``, and ``train.val_steps`` unless ``num_steps`` is given). The peak memory is the
    restoration's own: the measurement is reset before the model is built, so an earlier training
    benchmark in the same process does not count (see :func:`_reset_peak`).
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    memory_kind = _reset_peak(device)
    unet, sde, embedder, lq, clip = _restoration_inputs(cfg, device, size)
    one_pass = is_one_pass(cfg.model)
    source = "--sampler"
    if sampler is None:
        loaded = LoadedRestorer(unet, None if one_pass else sde, to_dict(cfg), None, "ours")
        sampler, recorded_steps = loaded.default_sampling()  # the rule restore.py and test.py follow
        num_steps = recorded_steps if num_steps is None else num_steps
        source = "the config's validation sampler: train.val_sampler / val_steps"
    pipeline = RestorationPipeline(
        unet,
        None if one_pass else sde,
        embedder,
        sampler=sampler,
        num_steps=num_steps,
        clamp_x0=None if one_pass else cfg.train.val_clamp_x0,
        order=order,
        grid=grid,
        tile=tile,  # type: ignore[arg-type]
        clip_input="views" if cfg.data.clip_input == "views" else "image",
    )
    seconds = _seconds_per_image(pipeline, lq, clip, device, repeats)
    return {
        "seconds_per_image": seconds,
        "peak_memory_mib": _peak_memory_mib(device),
        "peak_memory_kind": memory_kind,
        "size": size if isinstance(size, int) else list(size),
        "num_steps": 1 if one_pass else num_steps or sde.T,
        "sampler": "one-pass" if one_pass else sampler,
        "sampler_source": "a one-pass restorer" if one_pass else source,
        "grid": grid,
        "tile": tile,
    }


def benchmark_samplers(
    cfg: IRTrainConfig,
    device: torch.device,
    specs: Sequence[SamplerSpec | str],
    size: Size = 256,
    grids: Sequence[str] = ("uniform",),
    repeats: int = 2,
    tile: int | None = None,
) -> dict[str, Any]:
    """Seconds per image for every sampler spec × grid on one randomly initialised (or configured) model
    (a spec that names its grid, ``mr:10:2:logsnr``, is timed on that grid only).

    Every row restores the same LQ image with the same seed: one untimed warm-up run, then ``repeats``
    timed ones. Each row is self-contained ({sampler, order, nfe, grid, seconds_per_image, device, size,
    ...}), so rows of runs on different devices can be concatenated and compared. All specs are checked
    (names, orders, NFE within 1..T) before anything is timed.
    """
    specs, (height, width) = _checked_specs(cfg, specs, grids, size)
    inputs = _restoration_inputs(cfg, device, (height, width))
    device_name = device_description(device)
    rows = [
        _time_sampler(inputs, device, device_name, spec, grid, tile, repeats)
        for grid in grids
        for spec in specs
        if spec.grid in (None, grid)
    ]
    rows += [  # a spec's own grid that the run's grids do not list
        _time_sampler(inputs, device, device_name, spec, spec.grid, tile, repeats)
        for spec in specs
        if spec.grid is not None and spec.grid not in grids
    ]
    unet, sde = inputs[:2]
    return {
        "device": device_name,
        "torch": torch.__version__,
        "size": [height, width],
        "T": sde.T,
        "parameters": sum(p.numel() for p in unet.parameters()),
        "daclip": "timed" if cfg.daclip.checkpoint else "random embeddings (DA-CLIP not timed)",
        "rows": rows,
        "config": to_dict(cfg),
    }


def _checked_specs(
    cfg: IRTrainConfig, specs: Sequence[SamplerSpec | str], grids: Sequence[str], size: Size
) -> tuple[list[SamplerSpec], tuple[int, int]]:
    """The parsed specs, each checked against every grid and ``cfg.sde.T``, and the image's (height, width);
    ValueError naming the problem."""
    if is_one_pass(cfg.model):
        raise ValueError(
            f"model.family {cfg.model.family!r} is a one-pass restorer: it has no sampler to time "
            "(time its restoration without --samplers)"
        )
    parsed = [SamplerSpec.parse(s) if isinstance(s, str) else s for s in specs]
    if not parsed:
        raise ValueError(
            f"no sampler to time; give NAME[:NFE[:ORDER[:GRID]]] specs, NAME one of {', '.join(SAMPLERS)}"
        )
    height_width = _height_width(size)
    for spec in parsed:
        for grid in [spec.grid] if spec.grid else grids:
            check_sampler_options(spec.name, spec.order, grid)
        make_timesteps(cfg.sde.T, spec.nfe)  # NFE within 1..T
    return parsed, height_width


def _time_sampler(
    inputs: tuple[torch.nn.Module, IRSDE, Any, torch.Tensor, torch.Tensor],
    device: torch.device,
    device_name: str,
    spec: SamplerSpec,
    grid: str,
    tile: int | None,
    repeats: int,
) -> dict[str, Any]:
    """One row of :func:`benchmark_samplers`: seconds per image and peak memory of one sampler setting."""
    unet, sde, embedder, lq, clip = inputs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    memory_kind = _reset_peak(device)
    pipeline = RestorationPipeline(
        unet, sde, embedder, sampler=spec.name, num_steps=spec.nfe, order=spec.order, grid=grid, tile=tile
    )
    seconds = _seconds_per_image(pipeline, lq, clip, device, repeats)
    nfe = spec.nfe or sde.T
    return {
        "sampler": spec.name,
        "order": spec.effective_order,
        "nfe": nfe,
        "grid": grid,
        "seconds_per_image": seconds,
        "seconds_per_nfe": seconds / nfe,
        "device": device_name,
        "size": list(lq.shape[-2:]),
        "tile": tile,
        "prediction": pipeline.prediction,
        "clamp_x0": pipeline.clamp_x0,
        "runs_timed": repeats,
        "warmup_runs": 1,
        "peak_memory_mib": _peak_memory_mib(device),
        "peak_memory_kind": memory_kind,
        "torch": torch.__version__,
    }


def run_benchmark(cfg: IRTrainConfig, device: torch.device, **restore_kwargs: Any) -> dict[str, Any]:
    """Both measurements plus the device, torch version and settings, as one JSON-ready dict."""
    return {
        "device": device_description(device),
        "torch": torch.__version__,
        "precision": cfg.train.precision,
        "train": benchmark_training(cfg, device),
        "restore": benchmark_restoration(cfg, device, **restore_kwargs),
        "config": to_dict(cfg),
    }
