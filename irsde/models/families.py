"""The restorer families stage 2 trains and inference loads: one config section per family.

The ``model:`` section of a stage-2 config names its family; each family has one dataclass that
describes the network (stored in every checkpoint and rebuilt from it) and one module built from it:

    model:
      family: irsde    # the paper's conditional U-Net under the IR-SDE (UNetConfig; the default)
      ...
    model:
      family: nafnet   # NAFNet (+ DA-CLIP): one network evaluation per image (NAFNetConfig)
      ...

An ``irsde`` restorer is sampled (``irsde.diffusion.samplers``); a ``nafnet`` restorer is a one-pass
regression network: ``restored = net(lq, degra_emb, content_emb)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from daclip.engine.config import from_dict
from irsde.models.nafnet import NAFNet, NAFNetConfig
from irsde.models.unet import ConditionalUNet, UNetConfig

__all__ = [
    "FAMILIES",
    "ModelConfig",
    "build_model",
    "daclip_kwargs",
    "family_of",
    "is_one_pass",
    "model_config_from_mapping",
    "uses_daclip",
]

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


def family_of(model: ModelConfig | nn.Module) -> str:
    """The family of a model section or a restorer network (a network without one: the U-Net)."""
    return getattr(getattr(model, "config", model), "family", "irsde")


def is_one_pass(model: ModelConfig | nn.Module) -> bool:
    """Whether the restorer is a one-pass network (no diffusion sampling)."""
    return family_of(model) != "irsde"


def uses_daclip(model: ModelConfig | nn.Module) -> bool:
    """Whether a model section or a restorer network is conditioned on DA-CLIP embeddings."""
    return bool(getattr(model, "use_degra_context", False) or getattr(model, "use_image_context", False))


def daclip_kwargs(
    model: ModelConfig | nn.Module, content_emb: Tensor, degra_emb: Tensor
) -> dict[str, Tensor]:
    """The restorer's keyword arguments from DA-CLIP's ``(B, D)`` embeddings: those its switches take."""
    kwargs: dict[str, Tensor] = {}
    if getattr(model, "use_degra_context", False):
        kwargs["degra_emb"] = degra_emb.float()
    if getattr(model, "use_image_context", False):
        kwargs["content_emb"] = content_emb.float()
    return kwargs


def model_config_from_mapping(data: Mapping[str, Any]) -> ModelConfig:
    """The model section saved in a checkpoint (``family`` absent: a U-Net, as before families existed)."""
    family = data.get("family", "irsde")
    if family not in FAMILIES:
        raise ValueError(f"model.family: {family!r} is not one of {', '.join(map(repr, FAMILIES))}")
    if family == "irsde":
        return UNetConfig.from_mapping(data)
    return from_dict(NAFNetConfig, data)
