"""Checkpoint I/O: atomic writes, safe loads, state-dict unwrapping, RNG states.

Checkpoints are plain dicts of tensors, numbers, strings, lists and dicts, so they
load with ``torch.load(..., weights_only=True)``: a checkpoint downloaded from the
internet cannot run code. Writes go through the project's one atomic writer,
:func:`data.io.atomic_open` (a temporary file, fsynced and renamed into place),
so a crash never leaves a truncated checkpoint under the final name; a
failed write (a full disk) is one :class:`CheckpointWriteError` naming the file
and the OS error, and weights that are not finite are never written
(:class:`NonFiniteWeightsError`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import random
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daclip.engine.errors import UserError
from data.io import atomic_open

__all__ = [
    "CheckpointWriteError",
    "NonFiniteWeightsError",
    "WEIGHT_KEYS",
    "save_checkpoint",
    "nonfinite_weights",
    "numbered_checkpoints",
    "prune_checkpoints",
    "load_checkpoint",
    "checkpoint_kind",
    "require_format",
    "file_fingerprint",
    "unwrap_state_dict",
    "strip_prefix",
    "get_rng_state",
    "set_rng_state",
]


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, permissions, ...); the message names the file."""


class NonFiniteWeightsError(UserError):
    """Weights holding NaN or Inf were about to be written; nothing was written."""


#: Entries of a checkpoint dict that hold weights (checked for NaN/Inf before every write).
WEIGHT_KEYS = ("model", "ema", "state_dict", "params", "params_ema")


def _weight_tensors(obj: Mapping[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    if _is_state_dict(obj):
        yield from obj.items()
        return
    for key in WEIGHT_KEYS:
        value = obj.get(key)
        if isinstance(value, Mapping):
            for name, tensor in value.items():
                if isinstance(tensor, torch.Tensor):
                    yield f"{key}[{name!r}]", tensor


def nonfinite_weights(obj: Mapping[str, Any]) -> list[str]:
    """Names of the weight tensors in ``obj`` (see :data:`WEIGHT_KEYS`) holding NaN or Inf."""
    return [
        name
        for name, tensor in _weight_tensors(obj)
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all())
    ]


def _os_error_text(err: BaseException, folder: Path) -> str:
    """The OS error behind a failed write: torch wraps it in a RuntimeError ("unexpected pos ...")."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    with contextlib.suppress(OSError):  # the cause was lost (torch's C++ writer): a full disk is likely
        if os.statvfs(folder).f_bavail == 0:
            return os.strerror(errno.ENOSPC)
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_io_failure(err: BaseException) -> bool:
    if isinstance(err, OSError) or isinstance(err.__context__, OSError):
        return True
    text = str(err)
    return any(marker in text for marker in ("unexpected pos", "write failed", "failed writing"))


def save_checkpoint(path: str | os.PathLike, obj: Mapping[str, Any], *, check_finite: bool = True) -> Path:
    """Atomically write ``obj`` with ``torch.save`` through :func:`data.io.atomic_open` (with fsync).

    The file gets the normal mode of a new file (``0o666`` less the umask). On any failure the
    temporary file is removed and a file already at ``path`` is left as it was.

    Raises:
        NonFiniteWeightsError: ``check_finite`` and a weight tensor holds NaN or Inf (nothing written).
        CheckpointWriteError: the file could not be written; the message names it and the OS error
            (e.g. "No space left on device").
    """
    path = Path(path)
    if check_finite:
        bad = nonfinite_weights(obj)
        if bad:
            more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
            raise NonFiniteWeightsError(
                f"not writing checkpoint {path}: {bad[0]}{more} hold NaN or Inf "
                "(the checkpoints already written are kept)"
            )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb", fsync=True) as handle:  # removes its temporary file on failure
            torch.save(dict(obj), handle)
    except (OSError, RuntimeError) as err:
        if not _is_io_failure(err):
            raise  # not an I/O failure: a bug, keep its traceback
        raise CheckpointWriteError(
            f"could not write checkpoint {path}: {_os_error_text(err, path.parent)} "
            "(any earlier checkpoint there is unchanged)"
        ) from None
    return path


def numbered_checkpoints(folder: str | os.PathLike, prefix: str) -> list[Path]:
    """The ``<prefix><N>.pt`` files in ``folder``, oldest (lowest N) first."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.pt")
    numbered = []
    for candidate in Path(folder).iterdir():
        match = pattern.fullmatch(candidate.name)
        if match and candidate.is_file():
            numbered.append((int(match.group(1)), candidate))
    return [path for _, path in sorted(numbered)]


def prune_checkpoints(folder: str | os.PathLike, prefix: str, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` highest-numbered ``<prefix><N>.pt`` files in ``folder``.

    ``keep_last = 0`` keeps everything. Other files (``latest.pt``, final exports) are never
    touched. Returns the deleted paths.
    """
    if keep_last <= 0:
        return []
    numbered = numbered_checkpoints(folder, prefix)
    removed = numbered[: max(0, len(numbered) - keep_last)]
    for old in removed:
        old.unlink(missing_ok=True)
    return removed


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


#: What our ``format`` strings say a checkpoint is (prefix match; the suffix is the version).
FORMAT_KINDS = (
    ("daclip-uir/daclip", "a DA-CLIP (stage-1) checkpoint"),
    ("daclip-uir/irsde", "a restoration (stage-2) checkpoint"),
)


def checkpoint_kind(obj: Any) -> str | None:
    """What a loaded checkpoint is, from its ``format`` key (None when it has none we know)."""
    fmt = obj.get("format") if isinstance(obj, Mapping) else None
    if not isinstance(fmt, str):
        return None
    for prefix, kind in FORMAT_KINDS:
        if fmt.startswith(prefix):
            return kind
    return f"a checkpoint of format {fmt!r}"


def require_format(obj: Any, path: str | os.PathLike, fmt: str, wanted: str) -> None:
    """Raise a one-line ``UserError`` unless ``obj`` carries ``format == fmt``.

    ``wanted`` describes what was expected, e.g. "a stage-2 training checkpoint": the message reads
    "<path> is a DA-CLIP (stage-1) checkpoint, not <wanted>".
    """
    found = obj.get("format") if isinstance(obj, Mapping) else None
    if found == fmt:
        return
    kind = checkpoint_kind(obj)
    if kind is None:
        raise UserError(f"{path} is not {wanted} (it carries no 'format' entry of this project)")
    raise UserError(f"{path} is {kind}, not {wanted}")


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path": <absolute path>, "size": bytes, "sha256": hex}`` of a file (read once, in chunks)."""
    path = Path(path).expanduser().resolve()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(path), "size": path.stat().st_size, "sha256": digest.hexdigest()}


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
