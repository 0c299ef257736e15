"""Data-parallel setup for torchrun (one or several nodes) and the collectives the losses need.

Launch with ``torchrun --nproc_per_node=N script.py ...``: torchrun sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``, and :func:`init_distributed` joins the group
(NCCL on CUDA, Gloo on CPU). Without those variables everything runs as a single
process and the collectives below are identities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "resolve_device",
    "init_distributed",
    "cleanup_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "barrier",
    "all_gather_with_grad",
    "all_reduce_mean",
    "finite_on_all_ranks",
    "main_rank_call",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    is_main: bool
    distributed: bool


def resolve_device(
    name: str = "auto", local_rank: int = 0, *, option: str = "experiment.device"
) -> torch.device:
    """The one device resolver of every script and both trainers.

    ``auto`` -> CUDA (this process's GPU) if available, else CPU; ``cuda`` without a GPU, or a name
    torch does not know, is a one-line ``ValueError`` naming ``option`` (the setting the user gave).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{option}: '{name}' requested but no CUDA device is available")
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"{option}: {name!r} is not a device (auto, cpu, cuda or cuda:N)") from None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if launched by torchrun; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank)
    if world_size > 1 and not is_distributed():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    distributed = is_distributed()
    if distributed:
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, local_rank, world_size, torch_device, rank == 0, distributed)


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, in rank order.

    Other ranks' shards are constants; this rank's shard is ``x`` itself, so the
    gradient flows back through the local features only. Every rank computes the
    same global loss, so the *sum* over ranks of the local gradients is the
    gradient one process would get on the whole global batch; DDP's default
    averaging gives that divided by the world size (the open_clip
    ``gather_with_grad=False, local_loss=False`` scheme). Stage 1 therefore sums
    the controller's gradients itself (see :func:`daclip.train.sync_gradients`).
    """
    if not is_distributed():
        return x
    shards = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(shards, x.detach().contiguous())
    shards[get_rank()] = x
    return torch.cat(shards, dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a copy; ``x`` is unchanged)."""
    if not is_distributed():
        return x.clone()
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


def finite_on_all_ranks(loss: torch.Tensor) -> bool:
    """Whether ``loss`` is finite on every rank: all ranks then take, or skip, an update together."""
    finite = torch.isfinite(loss.detach()).float()
    if is_distributed():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def main_rank_call(fn, *args, is_main: bool, **kwargs):
    """Run ``fn`` on the main rank only; an exception there is raised on every rank.

    For work only rank 0 does (writing a checkpoint): without this, a failure on rank 0 (a full
    disk) would leave the other ranks waiting in the next collective. Must be called on every rank.
    Returns ``fn``'s result on the main rank and None elsewhere.
    """
    result, error = None, None
    if is_main:
        try:
            result = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
            error = err
    if is_distributed():
        holder = [None if error is None else (type(error), str(error))]
        dist.broadcast_object_list(holder, src=0)
        if error is None and holder[0] is not None:
            kind, message = holder[0]
            try:
                error = kind(message)
            except Exception:  # noqa: BLE001 - an exception type with another signature
                error = RuntimeError(message)
    if error is not None:
        raise error
    return result
