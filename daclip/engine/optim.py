"""Learning-rate schedules shared by both training stages."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["cosine_warmup_lambda"]


def cosine_warmup_lambda(total_steps: int, warmup_steps: int, floor: float = 0.0) -> Callable[[int], float]:
    """LR factor per step: linear warmup ``(s + 1) / warmup``, then cosine decay to ``floor`` at ``total_steps``.

    ``floor`` is the final factor (``lr_min / lr``); stage 1 decays to 0, stage 2 to its ``lr_min``.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
