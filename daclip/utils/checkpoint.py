"""Checkpoint I/O: atomic writes, safe loads, state-dict unwrapping, RNG states.

Checkpoints are plain dicts of tensors, numbers, strings, lists and dicts, so they
load with ``torch.load(..., weights_only=True)``: a checkpoint downloaded from the
internet cannot run code. Writes go to a temporary file that is renamed into
place, so a crash never leaves a truncated checkpoint under the final name.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "unwrap_state_dict",
    "strip_prefix",
    "get_rng_state",
    "set_rng_state",
]


def save_checkpoint(path: str | os.PathLike, obj: Mapping[str, Any]) -> Path:
    """Atomically write ``obj`` with ``torch.save`` (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(dict(obj), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"checkpoint {path} holds objects other than tensors and plain data and was not loaded "
            f"(weights_only=True): {first}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path} is corrupt or truncated: {first}") from None


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Remove ``prefix`` from every key when *all* keys carry it (as DDP-saved weights do)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


#: Wrapper keys under which trainers store weights (ours, BasicSR's ``params``/``params_ema``, ...).
STATE_DICT_KEYS = ("state_dict", "params_ema", "params", "model", "net")


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def unwrap_state_dict(
    obj: Any, keys: Sequence[str] = STATE_DICT_KEYS, what: str = "state dict"
) -> dict[str, torch.Tensor]:
    """The bare state dict inside a checkpoint: unwraps (nested) wrappers under ``keys``, strips ``module.``.

    Raises:
        ValueError: ``obj`` holds no dict of tensors (the message names ``what`` was expected).
    """
    for _ in range(4):
        if not isinstance(obj, Mapping) or _is_state_dict(obj):
            break
        inner = next((obj[k] for k in keys if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not _is_state_dict(obj):
        found = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"not a {what}: expected a dict of tensors, or one under {list(keys)}; found {found}"
        )
    return strip_prefix(obj)


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as weights_only-loadable data."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
        "python_version": random.getstate()[0],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states saved by :func:`get_rng_state` (missing entries are left alone)."""
    if "python" in state:
        values = list(state["python"])
        random.setstate((state.get("python_version", 3), tuple(int(v) for v in values[:-1]), values[-1]))
    if "numpy" in state:
        np_state = state["numpy"]
        keys = np_state["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (
                "MT19937",
                keys,
                int(np_state["pos"]),
                int(np_state["has_gauss"]),
                float(np_state["cached_gaussian"]),
            )
        )
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
