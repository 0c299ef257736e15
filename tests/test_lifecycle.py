"""The run lifecycle both stages share (daclip.engine.lifecycle), driven by a toy stage.

The toy stage's loss at step ``s`` is ``s`` (a known sequence), so the logged window means can be
checked exactly; it has one parameter, an optimizer and a per-rank state, so checkpoints and resume
are exercised as the real stages use them.
"""

from __future__ import annotations

import dataclasses
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from daclip.engine.checkpoint import load_checkpoint
from daclip.engine.lifecycle import RunContext, Stage, StepResult, run_training
from daclip.engine.run_folder import ExperimentConfig
from daclip.engine.runtime import NonFiniteLossError


@dataclasses.dataclass
class ToyConfig:
    experiment: ExperimentConfig
    total_steps: int = 10_000


class ToyStage(Stage):
    logger_name = "toy"
    checkpoint_format = "daclip-uir/toy-v1"
    checkpoint_prefix = "step_"

    def __init__(self, cfg: ToyConfig, *, log_every: int = 100, save_every: int = 5000, nan_at=()) -> None:
        super().__init__(cfg)
        self.total_steps, self.log_every, self.save_every = cfg.total_steps, log_every, save_every
        self.nan_at = set(nan_at)
        self.closed = False
        self.seen: list[int] = []

    def setup(self, run: RunContext) -> None:
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.optimizer = torch.optim.SGD([self.weight], lr=1e-3)
        self.counter = torch.zeros(())  # a per-rank state: how many batches this rank drew

    def load_state_dict(self, state: Any, path: Path) -> None:
        self.weight.data.copy_(state["weight"])
        self.optimizer.load_state_dict(state["optimizer"])

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def rank_state(self) -> dict[str, Any]:
        return {"counter": self.counter.clone()}

    def load_rank_state(self, states: Any, rank: int) -> None:
        self.counter = states["counter"][rank].clone()

    def batches(self, start_step: int) -> Iterator[int]:
        try:
            step = start_step
            while True:
                step += 1
                yield step
        finally:
            self.closed = True

    def train_step(self, batch: int, step: int) -> StepResult:
        assert batch == step  # the batches continue where the run is
        self.seen.append(step)
        self.counter += 1
        loss = torch.tensor(float("nan") if step in self.nan_at else float(step))
        finite = step not in self.nan_at
        if finite:
            self.optimizer.zero_grad()
            (self.weight * 0 + loss * 1e-6).backward()
            self.optimizer.step()
        return StepResult({"loss": loss, "twice": 2 * loss}, finite)

    def checkpoint_tag(self, step: int) -> str | None:
        return f"step_{step:07d}" if step % self.save_every == 0 else None


def _cfg(tmp_path: Path, **experiment: Any) -> ToyConfig:
    total = experiment.pop("total_steps", 10_000)
    return ToyConfig(
        ExperimentConfig(name="toy", root=str(tmp_path / "runs"), device="cpu", **experiment), total
    )


def _logged(log: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in re.findall(r"step (\d+)/\d+  loss ([0-9.]+)", log)}


def test_a_10000_step_run_logs_window_means_every_log_every_steps_in_a_small_log(tmp_path, monkeypatch):
    stdout, stderr = io.StringIO(), io.StringIO()  # not terminals: no progress bar
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    stage = ToyStage(_cfg(tmp_path))
    run_dir = run_training(stage, stage.cfg, ["toy"])

    log = (run_dir / "train.log").read_text()
    assert len(log.encode()) < 1_000_000 and len(stdout.getvalue().encode()) < 1_000_000
    assert stderr.getvalue() == ""  # no bar, no per-step postfix
    logged = _logged(log)
    assert sorted(logged) == list(range(100, 10_001, 100))  # every log_every steps, not every step
    # The mean of the window since the last line: steps 101..200 -> 150.5.
    assert logged[100] == pytest.approx(50.5) and logged[200] == pytest.approx(150.5)
    assert "twice 301.00000" in log  # every named loss, same window
    assert stage.closed  # the batch iterator was closed (a DataLoader's workers shut down)
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["latest.pt", "step_0005000.pt", "step_0010000.pt"]
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert state["format"] == "daclip-uir/toy-v1" and state["step"] == 10_000
    assert isinstance(state["rng"], list) and state["counter"] == [torch.tensor(10_000.0)]


def test_resume_continues_the_step_count_and_the_per_rank_state(tmp_path):
    stage = ToyStage(_cfg(tmp_path, total_steps=300), save_every=100)
    first = run_training(stage, stage.cfg)
    (first / "checkpoints" / "latest.pt").unlink()
    resumed = ToyStage(_cfg(tmp_path, total_steps=300, resume=str(first / "checkpoints" / "step_0000200.pt")))
    resumed.save_every = 100
    again = run_training(resumed, resumed.cfg)
    assert again == first  # an explicit checkpoint continues in its own run folder
    assert resumed.seen == list(range(201, 301))
    assert load_checkpoint(again / "checkpoints" / "latest.pt")["counter"] == [torch.tensor(300.0)]
    assert "resumed from" in (again / "train.log").read_text()


def test_non_finite_steps_are_skipped_up_to_the_limit_then_stop_naming_the_step(tmp_path):
    stage = ToyStage(_cfg(tmp_path, total_steps=10), log_every=5, nan_at={3})
    stage.max_nonfinite_steps = 1
    run_dir = run_training(stage, stage.cfg)
    log = (run_dir / "train.log").read_text()
    assert "step 3: the loss is nan; update skipped" in log
    assert _logged(log)[5] == pytest.approx((1 + 2 + 4 + 5) / 4)  # the skipped step is not averaged

    stopping = ToyStage(_cfg(tmp_path, total_steps=10), nan_at={3, 4})
    stopping.max_nonfinite_steps = 1
    with pytest.raises(NonFiniteLossError, match="step 4: the training loss is nan"):
        run_training(stopping, stopping.cfg)
    assert stopping.closed and stopping.seen == [1, 2, 3, 4]
