"""What a training step needs besides the model: seeding, precision, and the non-finite-loss rule."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from daclip.engine.errors import UserError

__all__ = ["Precision", "seed_everything", "autocast", "NonFiniteLossError", "NonFiniteGuard"]

Precision = Literal["fp32", "bf16"]


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices); each rank gets ``seed + rank``."""
    seed = int(seed) + int(rank)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision = "fp32") -> Iterator[None]:
    """bf16 autocast on CUDA when asked for; a no-op otherwise (CPU runs in float32)."""
    if precision == "bf16" and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


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
