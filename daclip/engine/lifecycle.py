"""The run lifecycle every training stage shares: ``run_training(stage, cfg, argv) -> run folder``.

A stage (:class:`Stage`: stage 1's DA-CLIP controller, stage 2's restorer of any family) supplies
only what differs between stages: its model, data and optimiser (:meth:`Stage.setup`), one
optimisation step on a batch (:meth:`Stage.train_step`), what its checkpoints hold, when it saves and
validates, and its validation. Everything else happens here, once, in this order:

1. **Setup**: join torchrun, resolve the device, plan the resume
   (:func:`daclip.engine.run_folder.plan_resume`), seed every rank, then ``stage.setup``. Everything
   that can fail on the user's inputs runs before any folder is written.
2. **Resume**: the checkpoint's format is the stage's, the stage restores its weights and optimiser
   (:meth:`Stage.load_state_dict`); the step, every rank's RNG state and the stage's per-rank state
   (:meth:`Stage.rank_state`, e.g. a noise generator) are restored here.
3. **Run folder**: opened on rank 0 (an existing one is never overwritten), ``config.yaml`` and
   ``command.txt`` written, ``train.log`` and TensorBoard opened.
4. **The step loop**: ``stage.train_step`` per batch. Losses are summed on the device and
   reduced over ranks, logged and written to TensorBoard every ``log_every`` steps only; the one host
   synchronisation per step left is the decision to skip a non-finite update
   (:class:`~daclip.engine.runtime.NonFiniteGuard`). When :meth:`Stage.checkpoint_tag` names a
   checkpoint it is written atomically (``<tag>.pt``, the oldest pruned, and ``latest.pt``) *before*
   validating, so a failed validation loses nothing.
5. **Cleanup** in ``finally``: the batch iterator (and its workers), the progress bar, TensorBoard,
   the process group.

Progress: on a terminal one tqdm bar (redrawn at most every 0.5 s); otherwise (a log file, CI, a
cluster) no bar at all: the ``log_every`` lines, with steps/s and the time left, are the progress, so a
10,000-step run's log is a few hundred lines.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from daclip.engine.checkpoint import (
    get_rng_state,
    load_checkpoint,
    numbered_checkpoints,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from daclip.engine.cli import progress_bar
from daclip.engine.config import to_dict
from daclip.engine.distributed import DistInfo, barrier, cleanup_distributed, init_distributed, main_rank_call
from daclip.engine.run_folder import ExperimentConfig, open_run_dir, plan_resume, setup_logger, write_run_info
from daclip.engine.runtime import NonFiniteGuard, seed_everything

__all__ = ["RunContext", "Stage", "StepResult", "format_duration", "run_training"]


@dataclass
class StepResult:
    """What one optimisation step reports.

    ``losses``: named 0-d tensors of this rank (detached; left on the device, they are summed there
    and reduced only when logged). ``finite``: whether the update was taken (the same on every rank).
    """

    losses: dict[str, torch.Tensor]
    finite: bool = True


@dataclass
class RunContext:
    """The shared state of a run, handed to the stage's hooks."""

    cfg: Any  # the stage's whole config dataclass (saved into the run folder and every checkpoint)
    experiment: ExperimentConfig
    info: DistInfo
    argv: Sequence[str] | None = None
    resume_from: Path | None = None
    run_dir: Path | None = None  # set once the run folder is open (step 3)
    logger: Any = None
    writer: Any = None  # TensorBoard SummaryWriter on the main rank, None elsewhere
    start_step: int = 0
    notes: list[str] = field(default_factory=list)  # warnings from setup/resume, logged once the log is open

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    def scalar(self, tag: str, value: float, step: int) -> None:
        """A TensorBoard scalar (main rank only)."""
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)


class Stage:
    """What a training stage supplies; subclass it and fill in the hooks.

    Attributes set by the subclass: ``logger_name``, ``checkpoint_format`` (marks its checkpoints),
    ``checkpoint_prefix`` (numbered checkpoints, e.g. ``step_``; the oldest beyond ``keep_last`` are
    pruned), ``keep_last``, ``log_every``, ``max_nonfinite_steps`` and its config key
    ``nonfinite_option``; ``total_steps`` once :meth:`setup` has run.
    """

    logger_name: str = "train"
    checkpoint_format: str = ""
    checkpoint_prefix: str = "step_"
    keep_last: int = 0
    log_every: int = 100
    max_nonfinite_steps: int = 0
    nonfinite_option: str = "train.max_nonfinite_steps"
    total_steps: int = 0

    def __init__(self, cfg: Any) -> None:
        """Keep the config; the logging, pruning and non-finite settings every ``train:`` section has."""
        self.cfg = cfg
        train = getattr(cfg, "train", None)
        self.log_every = int(getattr(train, "log_every", self.log_every))
        self.keep_last = int(getattr(train, "keep_last", self.keep_last))
        self.max_nonfinite_steps = int(getattr(train, "max_nonfinite_steps", self.max_nonfinite_steps))

    def setup(self, run: RunContext) -> None:
        """Build model, data and optimiser on ``run.device``; fail here on bad inputs (no folder yet)."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, Any], path: Path) -> None:
        """Restore weights, optimiser, scheduler from a checkpoint of this stage's format (one-line errors)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds besides format, step, config and RNG states."""
        raise NotImplementedError

    def rank_state(self) -> dict[str, Any]:
        """Per-rank state to checkpoint (gathered from every rank into a list), e.g. a noise generator."""
        return {}

    def load_rank_state(self, states: Mapping[str, list[Any]], rank: int) -> None:
        """Restore what :meth:`rank_state` saved; ``states[key]`` lists one entry per rank that saved."""

    def batches(self, start_step: int) -> Iterator[Any]:
        """Training batches from step ``start_step`` on (as many as asked for; the loop stops pulling)."""
        raise NotImplementedError

    def train_step(self, batch: Any, step: int) -> StepResult:
        """One optimisation step (``step`` counts from 1); skip the update when the loss is not finite."""
        raise NotImplementedError

    def log_scalars(self) -> dict[str, float]:
        """Scalars logged with the losses (learning rate, ...)."""
        return {}

    def checkpoint_tag(self, step: int) -> str | None:
        """After ``step``: None = no checkpoint, ``""`` = ``latest.pt`` only, a name = ``<name>.pt`` too."""
        return None

    def validate(self, run: RunContext, step: int) -> None:
        """Validate after ``step`` if due (called on every rank); log and write scalars through ``run``."""

    def on_start(self, run: RunContext) -> None:
        """The run folder is open and the log too; the loop starts at ``run.start_step``."""

    def on_finish(self, run: RunContext) -> None:
        """The last step is done and checkpointed (called on every rank): final exports."""


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _gather(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` of every rank, in rank order (a list of one without torchrun)."""
    if not info.distributed:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def _broadcast_path(path: Path | None, info: DistInfo) -> Path:
    if not info.distributed:
        assert path is not None
        return path
    holder = [str(path) if path is not None else ""]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def _restore_rng(state: Any, info: DistInfo) -> None:
    """One saved RNG state (older checkpoints) is set on every rank; a list gives each rank its own,
    and a list from another world size leaves the fresh seeds."""
    if isinstance(state, list):
        state = state[info.rank] if len(state) == info.world_size else None
    if state:
        set_rng_state(state)


def _save(stage: Stage, run: RunContext, step: int, tag: str) -> None:
    """Write ``<tag>.pt`` (if named) and ``latest.pt`` on rank 0; called on every rank (RNG states are gathered)."""
    rng = _gather(get_rng_state(), run.info)
    per_rank = {key: _gather(value, run.info) for key, value in stage.rank_state().items()}
    assert run.run_dir is not None
    folder = run.run_dir / "checkpoints"

    def save() -> None:
        state = {
            "format": stage.checkpoint_format,
            **stage.state_dict(),
            "step": step,
            "rng": rng,
            **per_rank,
            "config": to_dict(run.cfg),
        }
        if tag:
            save_checkpoint(folder / f"{tag}.pt", state)  # refuses NaN/Inf weights
            prune_checkpoints(folder, stage.checkpoint_prefix, stage.keep_last)
        save_checkpoint(folder / "latest.pt", state)

    main_rank_call(save, is_main=run.is_main)  # a failed save on rank 0 stops every rank


def _open_run(stage: Stage, run: RunContext, resume_dir: Path | None) -> None:
    """Step 3: the run folder, its config and command, the log and TensorBoard."""
    run_dir = None
    if run.is_main:
        run_dir = open_run_dir(run.experiment, resume_dir)
        write_run_info(run_dir, run.cfg, run.argv)
    run.run_dir = _broadcast_path(run_dir, run.info)
    run.logger = setup_logger(run.run_dir, run.is_main, name=stage.logger_name)
    if run.is_main:
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(str(run.run_dir / "tensorboard"))
    log = run.logger
    log.info("run folder: %s", run.run_dir)
    if run.resume_from is not None:
        log.info("resumed from %s at step %d", run.resume_from, run.start_step)
    elif run.experiment.resume == "auto":
        log.info("nothing to resume for %r: a new run", run.experiment.name)
    if resume_dir is None and run.run_dir.name != run.experiment.name:
        log.info(
            "%s exists; this run writes to %s", Path(run.experiment.root) / run.experiment.name, run.run_dir
        )
    for note in run.notes:
        log.warning(note)


class _LossWindow:
    """Sums of the step losses since the last log line, kept on the device."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, losses: Mapping[str, torch.Tensor]) -> None:
        for key, value in losses.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def means(self, info: DistInfo) -> dict[str, float]:
        """Window means, averaged over ranks (one reduction, one host sync), then reset."""
        if not self.sums:
            return {}
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys]) / max(self.count, 1)
        if info.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values = values / info.world_size
        self.sums, self.count = {}, 0
        return dict(zip(keys, values.tolist()))


def _log_line(
    run: RunContext, stage: Stage, step: int, window: _LossWindow, started: float, start_step: int
) -> None:
    means = window.means(run.info)
    extras = stage.log_scalars()
    for key, value in {**means, **extras}.items():
        run.scalar(f"train/{key}", value, step)
    elapsed = time.perf_counter() - started
    rate = (step - start_step) / max(elapsed, 1e-9)
    left = (stage.total_steps - step) / rate if rate > 0 else math.inf
    parts = [f"{k} {v:.5f}" for k, v in means.items()] or ["no finite loss in this window"]
    parts += [f"{k} {v:.3g}" for k, v in extras.items()]
    eta = f", about {format_duration(left)} left" if math.isfinite(left) and step < stage.total_steps else ""
    run.logger.info("step %d/%d  %s  (%.2f steps/s%s)", step, stage.total_steps, "  ".join(parts), rate, eta)


def _loop(stage: Stage, run: RunContext, show_progress: bool) -> None:
    """Step 4: train from ``run.start_step`` to ``stage.total_steps``."""
    step = run.start_step
    guard = NonFiniteGuard(stage.max_nonfinite_steps, stage.nonfinite_option)
    window = _LossWindow()
    bar = None
    if show_progress and run.is_main and sys.stderr.isatty():
        bar = progress_bar(total=stage.total_steps, initial=step, desc=stage.logger_name)
    batches = stage.batches(step)
    started, start_step = time.perf_counter(), step  # steps/s counts this process's steps only
    try:
        while step < stage.total_steps:
            result = stage.train_step(next(batches), step + 1)
            step += 1
            if result.finite:
                window.add(result.losses)
                guard.check(0.0, step)
            else:
                value = next(iter(result.losses.values())).item() if result.losses else float("nan")
                value = value if not math.isfinite(value) else float("nan")
                guard.check(value, step)  # raises past max_nonfinite_steps
                run.logger.warning("step %d: the loss is %s; update skipped", step, value)
            if bar is not None:
                bar.update(1)
            if step % stage.log_every == 0 or step == stage.total_steps:
                _log_line(run, stage, step, window, started, start_step)
            tag = stage.checkpoint_tag(step)
            if tag is not None or step == stage.total_steps:
                _save(stage, run, step, tag or "")
            stage.validate(run, step)
    finally:
        close = getattr(batches, "close", None)
        if callable(close):
            close()  # a generator over a DataLoader: shuts its workers down
        if bar is not None:
            bar.close()


def _load_resume_state(stage: Stage, run: RunContext, checkpoint: Path) -> tuple[Any, Path]:
    """The checkpoint to resume from, loaded. With ``resume=auto`` an unreadable (truncated)
    ``latest.pt`` falls back to the newest intact numbered checkpoint beside it, with a notice."""
    try:
        return load_checkpoint(checkpoint, map_location=run.info.device), checkpoint
    except ValueError as err:
        if run.experiment.resume != "auto":
            raise
        reason = err
    for candidate in reversed(numbered_checkpoints(checkpoint.parent, stage.checkpoint_prefix)):
        try:
            state = load_checkpoint(candidate, map_location=run.info.device)
        except ValueError:
            continue
        run.notes.append(
            f"{checkpoint} is corrupt or truncated; resuming from {candidate}, the newest intact checkpoint"
        )
        return state, candidate
    raise ValueError(
        f"{reason}; no intact {stage.checkpoint_prefix}<N>.pt beside it either (experiment.resume= starts anew)"
    )


def run_training(stage: Stage, cfg: Any, argv: Sequence[str] | None = None, *, progress: bool = True) -> Path:
    """Run ``stage`` as configured by ``cfg`` (whose ``experiment`` section is shared); returns the run folder."""
    experiment: ExperimentConfig = cfg.experiment
    info = init_distributed(experiment.device)
    run = RunContext(cfg, experiment, info, argv)
    try:
        resume_from, resume_dir = plan_resume(experiment)
        run.resume_from = resume_from
        seed_everything(experiment.seed, info.rank)
        stage.setup(run)
        if resume_from is not None:
            state, resume_from = _load_resume_state(stage, run, resume_from)
            run.resume_from = resume_from
            stage.load_state_dict(state, resume_from)
            run.start_step = int(state["step"])
            _restore_rng(state.get("rng"), info)
            keys = stage.rank_state().keys()
            stage.load_rank_state({k: state[k] for k in keys if isinstance(state.get(k), list)}, info.rank)
        _open_run(stage, run, resume_dir)
        stage.on_start(run)
        _loop(stage, run, progress)
        stage.on_finish(run)
        barrier()
        assert run.run_dir is not None
        return run.run_dir
    finally:
        if run.writer is not None:
            run.writer.close()
        cleanup_distributed()
