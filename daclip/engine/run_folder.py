"""Run folders: where a run lives, how a rerun or a resume finds its folder, and what it records there.

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

import dataclasses
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from daclip.engine.config import ConfigError, save_config, spec

__all__ = [
    "RUN_SUBDIRS",
    "ExperimentConfig",
    "create_run_dir",
    "run_dir_of_checkpoint",
    "find_resume_checkpoint",
    "plan_resume",
    "open_run_dir",
    "git_revision",
    "write_run_info",
    "setup_logger",
]

RUN_SUBDIRS = ("checkpoints", "tensorboard")


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
