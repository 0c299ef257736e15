"""The released DA-CLIP checkpoint format (``daclip_ViT-B-32.pt``) and its mapping to :class:`DaCLIP`.

The official model registers modules as ``clip`` (the open_clip model), ``visual``
(the *same* vision tower registered a second time) and ``visual_control`` (the
controller, whose transformer is wrapped in a ``ControlTransformer``), plus its
own ``logit_scale``. Its state dict therefore holds (ViT-B-32: 631 keys)::

    logit_scale                                         -> logit_scale
    clip.<k>                                            -> clip.<k>            (pip open_clip keys)
    visual.<k>                                          -> dropped (duplicate of clip.visual.<k>)
    visual_control.transformer.transformer.<k>          -> controller.tower.transformer.<k>
    visual_control.transformer.zero_modules.<i>.<p>     -> controller.zero_linears.<i>.<p>
    visual_control.<k>                                  -> controller.tower.<k>

A file may be the bare state dict or ``{"state_dict": ..., "epoch": ...}``, with or
without a ``module.`` prefix on every key. Anything else fails with a message that
names the offending keys.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from daclip.engine.checkpoint import strip_prefix

__all__ = [
    "is_official_state_dict",
    "official_state_dict_from_checkpoint",
    "convert_official_state_dict",
    "to_official_state_dict",
    "load_state_dict_strict",
]

_CONTROL_BLOCKS = "visual_control.transformer.transformer."
_CONTROL_ZERO = "visual_control.transformer.zero_modules."
_SHOWN = 6  # keys listed in an error message


def _listing(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def official_state_dict_from_checkpoint(obj: Mapping[str, object], source: str = "checkpoint") -> dict:
    """The official state dict inside a loaded file: bare, or under ``"state_dict"``; ``module.`` stripped."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict, got {type(obj).__name__}")
    inner = obj.get("state_dict", obj)
    if not isinstance(inner, Mapping):
        raise ValueError(f"{source}: 'state_dict' is a {type(inner).__name__}, not a dict of tensors")
    tensors = {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(inner):
        odd = [k for k in inner if k not in tensors]
        raise ValueError(f"{source}: non-tensor entries in the state dict: {_listing(odd)}")
    return strip_prefix(tensors, "module.")


def is_official_state_dict(state_dict: Mapping[str, object]) -> bool:
    """Whether ``state_dict`` (``module.`` already stripped) looks like the released DA-CLIP format."""
    return any(k.startswith("visual_control.") for k in state_dict) and any(
        k.startswith("clip.") for k in state_dict
    )


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """Map official DA-CLIP keys to :class:`daclip.model.DaCLIP` keys (see the module docstring).

    Raises:
        ValueError: a key outside the official layout, or a ``visual.*`` duplicate that has
            no ``clip.visual.*`` twin or differs from it.
    """
    state_dict = strip_prefix(dict(state_dict), "module.")
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    duplicates: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == "logit_scale":
            out["logit_scale"] = value.reshape(())
        elif key.startswith("clip."):
            out[key] = value
        elif key.startswith("visual."):
            duplicates[key] = value
        elif key.startswith(_CONTROL_BLOCKS):
            out["controller.tower.transformer." + key[len(_CONTROL_BLOCKS) :]] = value
        elif key.startswith(_CONTROL_ZERO):
            out["controller.zero_linears." + key[len(_CONTROL_ZERO) :]] = value
        elif key.startswith("visual_control.transformer."):
            unexpected.append(key)  # the ControlTransformer holds only `transformer` and `zero_modules`
        elif key.startswith("visual_control."):
            out["controller.tower." + key[len("visual_control.") :]] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"{source}: keys outside the DA-CLIP checkpoint format: {_listing(unexpected)}")
    # `visual.*` is the same module as `clip.visual.*` registered twice; check it really is a duplicate.
    orphans, differing = [], []
    for key, value in duplicates.items():
        twin = out.get("clip." + key)
        if twin is None:
            orphans.append(key)
        elif not (value.is_meta or twin.is_meta) and (
            value.shape != twin.shape or not torch.equal(value, twin)
        ):
            differing.append(key)
    if orphans:
        raise ValueError(f"{source}: 'visual.*' keys without a 'clip.visual.*' twin: {_listing(orphans)}")
    if differing:
        raise ValueError(
            f"{source}: 'visual.*' keys differ from their 'clip.visual.*' twins: {_listing(differing)}"
        )
    return out


def to_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`convert_official_state_dict` for a full :class:`DaCLIP` state dict.

    Lets a model trained here be used with the official code (key order follows the official model:
    ``logit_scale``, ``clip.*``, ``visual.*``, ``visual_control.*``).
    """
    out: dict[str, torch.Tensor] = {}
    if "logit_scale" in state_dict:
        out["logit_scale"] = state_dict["logit_scale"]
    for key, value in state_dict.items():
        if key.startswith("clip."):
            out[key] = value
    for key, value in state_dict.items():
        if key.startswith("clip.visual."):
            out[key[len("clip.") :]] = value
    for key, value in state_dict.items():
        if key.startswith("controller.tower.transformer."):
            out[_CONTROL_BLOCKS + key[len("controller.tower.transformer.") :]] = value
        elif key.startswith("controller.zero_linears."):
            out[_CONTROL_ZERO + key[len("controller.zero_linears.") :]] = value
        elif key.startswith("controller.tower."):
            out["visual_control." + key[len("controller.tower.") :]] = value
    return out


def load_state_dict_strict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """``model.load_state_dict(strict=True)`` with one-line errors naming missing/unexpected/misshapen keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_listing(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_listing(unexpected)})")
        raise ValueError(f"{source}: weights do not match the model: " + "; ".join(parts))
    misshapen = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if misshapen:
        raise ValueError(
            f"{source}: weight shapes do not match the model (file vs model): {_listing(misshapen)}; "
            "is the CLIP model name right (e.g. ViT-B-32 vs ViT-L-14)?"
        )
    model.load_state_dict(dict(state_dict), strict=True)
