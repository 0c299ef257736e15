"""Loading the authors' released U-Net weights (``universal-ir.pth``) into :class:`ConditionalUNet`.

Our module tree keeps the official parameter names, so the key mapping is the identity once the
file's wrappers are removed: a ``{"state_dict" | "params" | "params_ema" | "model" | "net": ...}``
dict around the weights, and one ``module.`` prefix left by (Distributed)DataParallel.
Loading is strict: a missing key, an unexpected key or a shape mismatch is an error that names them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from daclip.engine.checkpoint import load_checkpoint
from daclip.engine.checkpoint import unwrap_state_dict as _unwrap
from irsde.models.unet import UNET_PRESETS, ConditionalUNet, UNetConfig

__all__ = [
    "convert_official_state_dict",
    "infer_unet_config",
    "load_official_unet",
    "unwrap_state_dict",
]

_SHOW = 5  # how many offending keys an error message lists


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """The bare U-Net state dict inside ``obj`` (see :func:`daclip.engine.checkpoint.unwrap_state_dict`)."""
    return _unwrap(obj, what="U-Net state dict")


def convert_official_state_dict(sd: Mapping[str, Any]) -> dict[str, Tensor]:
    """Official U-Net keys -> ours. The names are the same, so this only unwraps (see module doc)."""
    return unwrap_state_dict(sd)


def infer_unet_config(sd: Mapping[str, Tensor]) -> UNetConfig:
    """The :class:`UNetConfig` whose U-Net has the shapes of (converted) state dict ``sd``.

    Falls back to the released configuration for anything the keys do not reveal.

    Raises:
        ValueError: the shapes are inconsistent with any ConditionalUNet.
    """
    config = dataclasses.replace(UNET_PRESETS["universal-ir"])
    if "init_conv.weight" not in sd or "final_conv.weight" not in sd:
        return config  # not enough to go on; the strict load will name what is missing
    nf, in2 = sd["init_conv.weight"].shape[:2]
    levels = sorted(
        {int(k.split(".")[1]) for k in sd if k.startswith("downs.") and k.split(".")[1].isdigit()}
    )
    if levels != list(range(len(levels))) or not levels:
        raise ValueError(f"U-Net state dict: down levels {levels} are not 0..n-1")
    ch_mult = []
    for i in levels:
        key = f"downs.{i}.3.weight"
        if key not in sd:
            raise ValueError(f"U-Net state dict: missing {key}, cannot infer ch_mult")
        ch_mult.append(int(sd[key].shape[0]) // int(nf))
    use_degra = "prompt" in sd
    use_image = any(".transformer_blocks." in k for k in sd)
    context_dim = config.context_dim
    if use_degra and "text_mlp.0.weight" in sd:
        context_dim = int(sd["text_mlp.0.weight"].shape[1])
    elif use_image:
        key = next(k for k in sd if k.endswith("attn2.to_k.weight"))
        context_dim = int(sd[key].shape[1])
    with_attention = [i for i in levels if any(k.startswith(f"downs.{i}.2.") for k in sd)]
    attention_from = with_attention[0] if with_attention else len(levels)
    return dataclasses.replace(
        config,
        attention_from_level=attention_from,
        in_nc=int(in2) // 2,
        out_nc=int(sd["final_conv.weight"].shape[0]),
        nf=int(nf),
        ch_mult=ch_mult,
        context_dim=context_dim,
        use_degra_context=use_degra,
        use_image_context=use_image,
    )


def _name(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "the given state dict"


def _mismatch_message(name: str, model: ConditionalUNet, sd: Mapping[str, Tensor]) -> str | None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return None

    def listed(what: str, items: list[str]) -> str:
        more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
        return f"{len(items)} {what} [{', '.join(items[:_SHOW])}{more}]"

    parts = [
        listed(what, items)
        for what, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    return f"U-Net weights in {name} do not fit ConditionalUNet({model.config}): " + "; ".join(parts)


def load_official_unet(
    source: str | os.PathLike | Mapping[str, Tensor],
    *,
    config: UNetConfig | Mapping[str, Any] | None = None,
    map_location: Any = "cpu",
) -> ConditionalUNet:
    """Build a :class:`ConditionalUNet` and load official (or our) U-Net weights into it, strictly.

    Args:
        source: a ``.pth``/``.pt`` file (loaded with ``weights_only=True``) or an in-memory state dict,
            bare or wrapped (``{"state_dict": ...}``, ``"params"``, ``"model"``), with or without a
            ``module.`` prefix.
        config: the U-Net's :class:`UNetConfig` (or its dict); by default inferred from the weights'
            shapes (the released configuration for ``universal-ir.pth``).
        map_location: passed to ``torch.load``; a device (string or ``torch.device``) is also where
            the model is built.

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: the weights are not a U-Net state dict, or their keys/shapes do not fit the model.
    """
    name = _name(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"U-Net weights file not found: {path}")
        obj = load_checkpoint(path, map_location=map_location)  # weights_only; corrupt files named
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    else:
        obj = source
    try:
        sd = convert_official_state_dict(obj)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if config is None:
        cfg = infer_unet_config(sd)
    elif isinstance(config, UNetConfig):
        cfg = config
    else:
        try:
            cfg = UNetConfig(**config)
        except TypeError as err:  # an unknown or missing argument name
            raise ValueError(f"bad U-Net config {dict(config)}: {err}") from None
    try:
        device = (
            torch.device(map_location)
            if isinstance(map_location, (str, torch.device))
            else torch.device("cpu")
        )
    except RuntimeError:
        device = torch.device("cpu")

    # Build without random initialisation (meta), check, then allocate and fill every parameter.
    with torch.device("meta"):
        model = ConditionalUNet.from_config(cfg)
    message = _mismatch_message(name, model, sd)
    if message is not None:
        raise ValueError(message)
    # to_empty leaves buffers uninitialised; the U-Net has none, and every parameter is in `sd`.
    assert not any(True for _ in model.buffers()), (
        "ConditionalUNet gained buffers: revisit load_official_unet"
    )
    model = model.to_empty(device=device)
    model.load_state_dict(sd, strict=True)
    return model.eval()
