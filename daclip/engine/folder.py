"""A self-contained model folder: ``config.json`` and safetensors weights, with one-line errors naming the file.

``scripts/export.py`` writes one folder per trained restorer (the schema of its ``config.json`` is
:class:`irsde.inference.pretrained.PretrainedConfig`)::

    my_restorer/
      config.json            what the weights are: family, network, SDE, sampler, vocabulary, DA-CLIP
      restorer.safetensors   the restorer's (EMA) weights
      daclip.safetensors     the DA-CLIP (frozen CLIP + controller), when the restorer is conditioned on it
      README.md              the model card
      onnx/                  with ``--onnx``: the graphs onnxruntime runs

A safetensors file is a JSON header (names, dtypes, shapes, offsets) followed by raw tensor bytes, so
reading a folder unpickles nothing. This module imports torch only inside the weight functions: the
numpy/onnxruntime runner (:mod:`irsde.export.runtime`) reads ``config.json`` through it without PyTorch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daclip.engine.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor, nn

_SHOWN = 3  # offending keys an error message names

__all__ = [
    "CONFIG_NAME",
    "FOLDER_FORMAT",
    "FOLDER_VERSION",
    "is_model_folder",
    "load_into",
    "load_weights",
    "read_folder_config",
    "save_weights",
    "write_text_file",
]

FOLDER_FORMAT = "daclip-uir/pretrained"
#: The newest folder layout this code reads and the one it writes; a newer folder is refused by name.
FOLDER_VERSION = 1
CONFIG_NAME = "config.json"


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder (the scripts take a folder wherever they take a checkpoint file)."""
    return Path(path).is_dir()


def read_folder_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a model folder, after checking its format and version.

    Raises:
        UserError: the file is missing, is not JSON, is not a model folder's config, or was written by
            a newer version of this project; the message names the file.
    """
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{path}: missing ({folder} is not a model folder written by scripts/export.py)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON ({err.msg}, line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot be read ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FOLDER_FORMAT:
        raise UserError(f"{path}: format {data.get('format')!r} is not {FOLDER_FORMAT!r}")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > FOLDER_VERSION:
        raise UserError(
            f"{path}: format_version {version} is newer than this daclip-uir reads ({FOLDER_VERSION}); "
            "upgrade daclip-uir"
        )
    return data


def write_text_file(path: str | os.PathLike, text: str) -> None:
    """Write a text file of a folder (``config.json``, the model card) through the one atomic writer."""
    from data.io import atomic_open  # data.io imports torch; the runner only reads

    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def save_weights(
    path: str | os.PathLike, state_dict: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a state dict as safetensors (CPU, contiguous, each tensor its own storage), atomically."""
    from safetensors.torch import save

    from data.io import atomic_open  # imports torch: only when writing

    storages: set[int] = set()
    tensors = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.untyped_storage().data_ptr() in storages:
            tensor = tensor.clone()  # safetensors refuses tensors that share memory (tied or viewed weights)
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    with atomic_open(path, "wb", fsync=True) as handle:
        handle.write(save(tensors, metadata=dict(metadata) if metadata else None))


def load_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a safetensors file, on the CPU; nothing is unpickled.

    Raises:
        UserError: the file is missing or is not a complete safetensors file (one line naming it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing (the model folder is incomplete; export it again)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a complete safetensors file ({first})") from None


def load_into(module: nn.Module, state_dict: Mapping[str, Tensor], path: str | os.PathLike) -> None:
    """Load ``state_dict`` into ``module`` exactly (every key, every shape), or one line naming ``path``.

    Raises:
        UserError: missing or unexpected keys, or shapes that differ from the module's.
    """
    expected = module.state_dict()
    problems = [
        (what, keys)
        for what, keys in (
            ("missing", [k for k in expected if k not in state_dict]),
            ("unexpected", [k for k in state_dict if k not in expected]),
            (
                "shape mismatches (file vs network)",
                [
                    f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
                    for k, v in expected.items()
                    if k in state_dict and state_dict[k].shape != v.shape
                ],
            ),
        )
        if keys
    ]
    if problems:
        listed = "; ".join(
            f"{len(keys)} {what}: {', '.join(keys[:_SHOWN])}{' ...' if len(keys) > _SHOWN else ''}"
            for what, keys in problems
        )
        raise UserError(f"{path}: the weights do not fit the network its config.json describes ({listed})")
    module.load_state_dict(dict(state_dict), strict=True)
