"""Run folders, logging, seeding, precision and the scripts' error handling.

A run lives in ``<root>/<name>/`` with ``config.yaml`` (the resolved config),
``command.txt`` (command line and git revision), ``train.log``,
``checkpoints/`` and ``tensorboard/`` (``samples/`` is made by whoever writes samples).
An existing run folder is never overwritten: a new run with a taken name gets
``<name>_1``, ``<name>_2``, ...

Resuming (:func:`plan_resume`, the one rule both stages use): ``resume=auto`` takes the
newest ``checkpoints/latest.pt`` among ``<root>/<name>/`` and ``<root>/<name>_N/``; an
explicit ``resume=<checkpoint>`` continues in the run folder that checkpoint belongs to
(``<run>/checkpoints/x.pt`` -> ``<run>``), or in a new folder when it belongs to none;
never in some other run's folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .config import ConfigError, save_config, spec

__all__ = [
    "ExperimentConfig",
    "seed_everything",
    "create_run_dir",
    "run_dir_of_checkpoint",
    "find_resume_checkpoint",
    "plan_resume",
    "open_run_dir",
    "NonFiniteLossError",
    "NonFiniteGuard",
    "write_run_info",
    "git_revision",
    "setup_logger",
    "autocast",
    "progress_bar",
    "UserError",
    "USER_ERRORS",
    "run_main",
    "int_at_least",
]

Precision = Literal["fp32", "bf16"]
RUN_SUBDIRS = ("checkpoints", "tensorboard")


class UserError(Exception):
    """A mistake on the user's side (bad input, missing weights) reported in one line."""


@dataclasses.dataclass
class ExperimentConfig:
    """The ``experiment:`` section every stage shares."""

    name: str = spec("run", help="run folder name under root")
    root: str = spec("experiments", help="folder holding run folders")
    seed: int = spec(0, minimum=0)
    device: str = spec("auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    resume: str = spec(
        "",
        help="'' starts a new run; 'auto' resumes the newest <root>/<name>[_N]/checkpoints/latest.pt "
        "if any; or a checkpoint path (the run continues in the run folder it belongs to)",
    )

    def validate(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"experiment.device: {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        if self.resume and self.resume != "auto" and not Path(self.resume).is_file():
            raise ConfigError(f"experiment.resume: checkpoint not found: {self.resume}")


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices); each rank gets ``seed + rank``."""
    seed = int(seed) + int(rank)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def create_run_dir(
    root: str | os.PathLike, name: str, *, resume: bool = False, subdirs: Sequence[str] = RUN_SUBDIRS
) -> Path:
    """Create (or, with ``resume``, reuse) the run folder ``root/name`` with its ``subdirs``.

    Without ``resume`` an existing folder is left untouched and the first free
    ``name_1``, ``name_2``, ... is used instead.
    """
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"experiment.name: {name!r} is not a valid folder name")
    base = Path(root) / name
    run_dir = base
    if resume:
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        base.parent.mkdir(parents=True, exist_ok=True)
        index = 0
        while True:  # mkdir without exist_ok claims the name, even against a concurrent start
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                index += 1
                run_dir = base.with_name(f"{name}_{index}")
    for sub in subdirs:
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return run_dir


def run_dir_of_checkpoint(path: str | os.PathLike) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.pt`` with ``<run>/config.yaml``), or None."""
    path = Path(path).expanduser().absolute()
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent
    return None


def find_resume_checkpoint(root: str | os.PathLike, name: str) -> Path | None:
    """The newest (last written) ``checkpoints/latest.pt`` among ``root/name`` and ``root/name_N``."""
    root = Path(root)
    if not root.is_dir():
        return None
    pattern = re.compile(re.escape(name) + r"(_[0-9]+)?")
    candidates = [
        folder / "checkpoints" / "latest.pt"
        for folder in root.iterdir()
        if pattern.fullmatch(folder.name) and (folder / "checkpoints" / "latest.pt").is_file()
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name))


def plan_resume(experiment: ExperimentConfig) -> tuple[Path | None, Path | None]:
    """``(checkpoint to resume from, existing run folder to continue in)`` for ``experiment.resume``.

    Either may be None: no checkpoint (a new run; also ``auto`` with nothing to resume), or a
    checkpoint outside any run folder (the run continues in a new folder, see :func:`open_run_dir`).
    """
    if not experiment.resume:
        return None, None
    if experiment.resume == "auto":
        checkpoint = find_resume_checkpoint(experiment.root, experiment.name)
    else:
        checkpoint = Path(experiment.resume)
    if checkpoint is None:
        return None, None
    return checkpoint, run_dir_of_checkpoint(checkpoint)


def open_run_dir(experiment: ExperimentConfig, existing: Path | None) -> Path:
    """Continue in ``existing`` (from :func:`plan_resume`) or create a new run folder for ``experiment``."""
    if existing is not None:
        return create_run_dir(existing.parent, existing.name, resume=True)
    return create_run_dir(experiment.root, experiment.name)


class NonFiniteLossError(UserError):
    """The training loss was NaN or Inf for more consecutive steps than allowed."""


class NonFiniteGuard:
    """Counts consecutive non-finite losses; past ``max_skipped`` of them, training stops.

    ``check(loss, step)`` returns True for a finite loss (take the step) and False for a
    non-finite one that may be skipped (no update); otherwise it raises
    :class:`NonFiniteLossError` naming the step. ``option`` is the config key of ``max_skipped``.
    """

    def __init__(self, max_skipped: int = 0, option: str = "train.max_nonfinite_steps") -> None:
        self.max_skipped = int(max_skipped)
        self.option = option
        self.consecutive = 0
        self.skipped = 0

    def check(self, loss: float, step: int) -> bool:
        if math.isfinite(loss):
            self.consecutive = 0
            return True
        self.consecutive += 1
        if self.consecutive > self.max_skipped:
            run = f" ({self.consecutive} steps in a row)" if self.consecutive > 1 else ""
            raise NonFiniteLossError(
                f"step {step}: the training loss is {loss}{run}; training stopped and no checkpoint of "
                f"this step was written (lower train.lr, set train.grad_clip, or allow skipped steps with "
                f"{self.option}={self.max_skipped + 1})"
            )
        self.skipped += 1
        return False


def git_revision(cwd: str | os.PathLike | None = None) -> str:
    """The current git commit (with ``-dirty`` if the tree has changes), or ``unknown``."""
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_run_info(run_dir: str | os.PathLike, cfg: Any, argv: Sequence[str] | None = None) -> None:
    """Save the resolved config and the command line + git revision into the run folder."""
    run_dir = Path(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    argv = list(sys.argv if argv is None else argv)
    lines = [
        f"command: {shlex.join(argv)}",
        f"cwd: {os.getcwd()}",
        f"git: {git_revision()}",
        f"torch: {torch.__version__}",
    ]
    with open(run_dir / "command.txt", "a") as handle:
        handle.write("\n".join(lines) + "\n\n")


def setup_logger(
    run_dir: str | os.PathLike | None, is_main: bool = True, name: str = "daclip"
) -> logging.Logger:
    """A logger writing to the console and ``run_dir/train.log`` (main rank only; others stay quiet)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if run_dir is not None and is_main:
        file_handler = logging.FileHandler(Path(run_dir) / "train.log")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision = "fp32") -> Iterator[None]:
    """bf16 autocast on CUDA when asked for; a no-op otherwise (CPU runs in float32)."""
    if precision == "bf16" and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def _user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [UserError, ConfigError, FileNotFoundError, NotADirectoryError]
    try:  # data does not depend on daclip, but scripts use both
        from data.io import ImageReadError

        types.append(ImageReadError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


USER_ERRORS = _user_error_types()


def _close_progress_bars() -> None:
    """Close the tqdm bars an exception left open (a training loop stopped by a user error)."""
    module = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(module, "tqdm", None), "_instances", None) or ()):
        with contextlib.suppress(Exception):
            bar.close()


def run_main(
    main_fn: Callable[..., int | None], *args: Any, extra_errors: tuple[type[BaseException], ...] = ()
) -> int:
    """Run ``main_fn(*args)``; a user mistake ends with one line on stderr and exit code 2.

    ``ValueError`` counts as a user mistake too (datasets and loaders raise it for
    bad files and keys), but a ``KeyboardInterrupt`` or a genuine bug still shows
    its traceback.
    """
    try:
        code = main_fn(*args)
    except USER_ERRORS + (ValueError,) + extra_errors as err:
        _close_progress_bars()  # a bar the error left open would share the error's line
        from data.io import original_error_message  # the message of an error from a DataLoader worker

        text = original_error_message(str(err)).strip()
        message = text.splitlines()[0] if text else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return int(code or 0)


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm bar whose refresh rate is bounded: every 0.5 s on a terminal, every 30 s otherwise.

    Logs redirected to a file (CI, nohup, clusters) then grow by a line per 30 s, not per step.
    Call ``set_postfix(..., refresh=False)`` on it so a postfix update does not force a redraw.
    """
    from tqdm import tqdm  # lazily: the library must import without tqdm

    stream = kwargs.pop("file", sys.stderr)
    tty = bool(getattr(stream, "isatty", lambda: False)())
    kwargs.setdefault("mininterval", 0.5 if tty else 30.0)
    kwargs.setdefault("dynamic_ncols", tty)
    return tqdm(iterable, file=stream, **kwargs)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type for the scripts: an integer >= ``low`` (anything else is argparse's usage error)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse
