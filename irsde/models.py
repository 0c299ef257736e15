"""The restorer families stage 2 trains and inference loads: one config section per family.

The ``model:`` section of a stage-2 config names its family; each family has one dataclass that
describes the network (stored in every checkpoint and rebuilt from it) and one module built from it:

    model:
      family: irsde    # the paper's conditional U-Net under the IR-SDE (UNetConfig; the default)
      ...
    model:
      family: nafnet   # NAFNet (+ DA-CLIP): one network evaluation per image (NAFNetConfig)
      ...

An ``irsde`` restorer is sampled (``irsde.samplers``); a ``nafnet`` restorer is a one-pass
regression network: ``restored = net(lq, degra_emb, content_emb)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from daclip.utils.config import from_dict

from .nafnet import NAFNet, NAFNetConfig
from .unet import ConditionalUNet, UNetConfig

__all__ = ["FAMILIES", "ModelConfig", "build_model", "is_one_pass", "model_config_from_mapping"]

#: The config section of a stage-2 model, one dataclass per family (told apart by ``family``).
ModelConfig = UNetConfig | NAFNetConfig

#: family name -> (config dataclass, network class).
FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "irsde": (UNetConfig, ConditionalUNet),
    "nafnet": (NAFNetConfig, NAFNet),
}


def build_model(config: ModelConfig) -> nn.Module:
    """The (randomly initialised) network a model section describes."""
    _, network = FAMILIES[config.family]
    return network.from_config(config)  # type: ignore[attr-defined]


def is_one_pass(config: ModelConfig | nn.Module) -> bool:
    """Whether the restorer is a one-pass network (no diffusion sampling)."""
    family = getattr(getattr(config, "config", config), "family", "irsde")
    return family != "irsde"


def model_config_from_mapping(data: Mapping[str, Any]) -> ModelConfig:
    """The model section saved in a checkpoint (``family`` absent: a U-Net, as before families existed)."""
    family = data.get("family", "irsde")
    if family not in FAMILIES:
        raise ValueError(f"model.family: {family!r} is not one of {', '.join(map(repr, FAMILIES))}")
    if family == "irsde":
        return UNetConfig.from_mapping(data)
    return from_dict(NAFNetConfig, data)
