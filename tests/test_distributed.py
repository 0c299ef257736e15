"""The collective that keeps ranks in step when a loss is NaN on one of them (both stages use it)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from daclip.engine.distributed import finite_on_all_ranks


def _rank(rank: int, world: int, folder: str, nan_on: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        answers = []
        for step in range(3):  # a NaN on one rank at step 1 only
            loss = torch.tensor(float("nan") if (rank == nan_on and step == 1) else 1.0 + rank)
            answers.append(finite_on_all_ranks(loss))
        Path(folder, f"rank{rank}.txt").write_text(" ".join(str(a) for a in answers))
    finally:
        dist.destroy_process_group()


def test_a_nan_on_one_rank_makes_every_rank_skip_that_step(tmp_path):
    world = 2
    mp.spawn(_rank, args=(world, str(tmp_path), 1), nprocs=world, join=True)
    answers = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(world)]
    # Every rank sees the same verdicts: steps 0 and 2 update, step 1 (NaN on rank 1 only) is skipped
    # on rank 0 too, so the replicas never diverge and no rank waits in a collective the other skipped.
    assert answers == [["True", "False", "True"]] * world


def test_outside_torch_distributed_it_is_the_local_check():
    assert finite_on_all_ranks(torch.tensor(2.0)) is True
    assert finite_on_all_ranks(torch.tensor(float("inf"))) is False
