"""A trained restorer as a self-contained folder: :func:`save_pretrained` writes it, :func:`load_pretrained`
reads it back without unpickling anything.

The folder (layout and safe file I/O: :mod:`daclip.engine.folder`) holds ``config.json``, whose schema is
:class:`PretrainedConfig` (the network's family and description, the IR-SDE, the default sampler, the
degradation vocabulary, the DA-CLIP architecture), ``restorer.safetensors`` (the EMA weights),
``daclip.safetensors`` (the DA-CLIP, when the restorer is conditioned on it) and the model card
``README.md``. :meth:`irsde.inference.pipeline.RestorationPipeline.from_pretrained` restores with it;
``scripts/export.py`` writes it from a stage-2 checkpoint or the released ``universal-ir.pth``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torch import nn

from daclip.engine.config import ConfigError, from_dict, spec, to_dict
from daclip.engine.errors import UserError
from daclip.engine.folder import (
    CONFIG_NAME,
    FOLDER_FORMAT,
    FOLDER_VERSION,
    load_into,
    load_weights,
    read_folder_config,
    save_weights,
    write_text_file,
)
from daclip.pretrained import DACLIP_WEIGHTS, ClipSource
from irsde.diffusion.samplers import check_sampler_options
from irsde.diffusion.sde import IRSDE, SDEConfig
from irsde.models.families import ModelConfig, build_model, is_one_pass, uses_daclip
from irsde.models.unet import UNetConfig

if TYPE_CHECKING:
    from daclip.inference import FrozenDaCLIP

__all__ = [
    "MODEL_CARD",
    "ONNX_DIR",
    "RESTORER_WEIGHTS",
    "OnnxGraphs",
    "PretrainedConfig",
    "PretrainedRestorer",
    "SamplingDefaults",
    "describe_pipeline",
    "load_pretrained",
    "parse_config",
    "save_pretrained",
    "write_config",
]

RESTORER_WEIGHTS = "restorer.safetensors"
MODEL_CARD = "README.md"
ONNX_DIR = "onnx"


@dataclass
class SamplingDefaults:
    """How the restorer samples unless told otherwise: its validation setting in training, or the paper's
    posterior sampler at T for the released weights; ``one-pass`` for a one-pass restorer."""

    sampler: Literal["one-pass", "posterior", "sde", "ode", "mr", "mr-sde"] = "posterior"
    num_steps: int | None = spec(None, minimum=1, help="network evaluations; None = T")
    order: int | None = spec(None, minimum=1, maximum=2, help="mr / mr-sde order; None = 2")
    grid: Literal["uniform", "logsnr"] = "uniform"
    clamp_x0: bool = False
    self_ensemble: bool = spec(False, help="average the restorations of the 8 flips/transposes")
    min_change: float = spec(
        0.0, minimum=0.0, help="give back the input where a 64-px window changes by less (grey levels RMS)"
    )
    hole_fill: bool = spec(False, help="fill the white holes of images DA-CLIP calls uncompleted")


@dataclass
class OnnxGraphs:
    """The folder's ONNX graphs (``scripts/export.py --onnx``, paths relative to the folder).

    ``restorer``: for a one-pass restorer ``(lq, [degra_emb], [content_emb]) -> restored``; for an IR-SDE
    restorer one network evaluation ``(x_t, mu, t, [degra_emb], [content_emb]) -> output`` (the solver loop
    runs outside). ``daclip``: ``clip_images -> (content_emb, degra_emb)``. Height and width are dynamic;
    the padding to ``pad_multiple`` happens inside. ``max_abs_diff`` is onnxruntime's largest difference from
    PyTorch, measured at export at ``checked_sizes``.
    """

    opset: int = spec(18, minimum=1)
    restorer: str = ""
    daclip: str | None = None
    pad_multiple: int = spec(1, minimum=1)
    max_abs_diff: float = spec(0.0, minimum=0.0)
    checked_sizes: list[list[int]] = field(default_factory=list)


@dataclass
class PretrainedConfig:
    """What ``config.json`` of a model folder holds (``source`` is free-form provenance for the card)."""

    format: Literal["daclip-uir/pretrained"] = FOLDER_FORMAT
    format_version: int = spec(FOLDER_VERSION, minimum=1, maximum=FOLDER_VERSION)
    model: ModelConfig = field(default_factory=UNetConfig)
    sde: SDEConfig | None = None
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    degradations: list[str] = field(default_factory=list)
    daclip: ClipSource | None = None
    clip_input: Literal["image", "views"] = spec(
        "image",
        help="DA-CLIP's input: the whole image resized, or the embeddings averaged over its grid of "
        "native crops (a restorer trained with data.clip_input: views)",
    )
    source: dict[str, Any] = field(default_factory=dict)
    onnx: OnnxGraphs | None = None

    def validate(self) -> None:
        """Combinations the types cannot express: the SDE and sampler of the family, the DA-CLIP it needs."""
        one_pass = is_one_pass(self.model)
        if one_pass != (self.sde is None):
            needs = "no 'sde' section" if one_pass else "an 'sde' section"
            raise ConfigError(f"a {self.model.family} restorer needs {needs}")
        if one_pass != (self.sampling.sampler == "one-pass"):
            raise ConfigError(
                f"sampling.sampler: {self.sampling.sampler!r} does not fit a {self.model.family} restorer"
            )
        if not one_pass:
            check_sampler_options(self.sampling.sampler, self.sampling.order, self.sampling.grid)
            if self.sampling.num_steps is not None and self.sampling.num_steps > self.sde.T:
                raise ConfigError(
                    f"sampling.num_steps: {self.sampling.num_steps} exceeds sde.T ({self.sde.T})"
                )
        if uses_daclip(self.model) and self.daclip is None:
            raise ConfigError("daclip: required, the restorer is conditioned on DA-CLIP embeddings")
        if self.clip_input == "views" and (self.daclip is None or self.daclip.views < 2):
            raise ConfigError("clip_input: views needs a DA-CLIP trained on native crops (daclip.views >= 2)")


def parse_config(folder: str | os.PathLike) -> PretrainedConfig:
    """The typed ``config.json`` of ``folder``; any problem is one :class:`UserError` naming the file."""
    data = read_folder_config(folder)
    try:
        return from_dict(PretrainedConfig, data)
    except ConfigError as err:
        newer = " (written by a newer daclip-uir?)" if "unknown config key" in str(err) else ""
        raise UserError(f"{Path(folder) / CONFIG_NAME}: {err}{newer}") from None


@dataclass
class PretrainedRestorer:
    """What :func:`load_pretrained` rebuilds from a folder."""

    config: PretrainedConfig
    model: nn.Module  # in eval mode, on the CPU
    sde: IRSDE | None  # None for a one-pass restorer
    daclip: FrozenDaCLIP | None  # None when not loaded (or the restorer needs none)
    path: str


def load_pretrained(folder: str | os.PathLike, *, with_daclip: bool = True) -> PretrainedRestorer:
    """Rebuild the restorer (and its IR-SDE and DA-CLIP) of a model folder, from JSON and safetensors only.

    Raises:
        UserError: a missing or corrupt file, weights that do not fit the description, or a config key
            this version does not know; one line naming the file.
    """
    folder = Path(folder)
    config = parse_config(folder)
    weights_path = folder / RESTORER_WEIGHTS
    weights = load_weights(weights_path)
    try:
        model = build_model(config.model)
    except (ValueError, TypeError) as err:
        raise UserError(
            f"{folder / CONFIG_NAME}: section 'model' does not describe a network: {err}"
        ) from None
    load_into(model, weights, weights_path)
    sde = None if config.sde is None else IRSDE(**dataclasses.asdict(config.sde))
    daclip = None
    if with_daclip and config.daclip is not None:
        from daclip.inference import FrozenDaCLIP
        from daclip.pretrained import load_daclip_folder

        daclip = FrozenDaCLIP(*load_daclip_folder(folder))
    return PretrainedRestorer(config, model.eval(), sde, daclip, str(folder))


def describe_pipeline(pipeline: Any, source: dict[str, Any] | None = None) -> PretrainedConfig:
    """The :class:`PretrainedConfig` of a loaded pipeline (its network, SDE, sampler, vocabulary, DA-CLIP)."""
    model_config = getattr(pipeline.model, "config", None)
    if model_config is None:
        raise ValueError(
            f"{type(pipeline.model).__name__} has no .config: only registered families can be saved"
        )
    sde = pipeline.sde
    embedder = pipeline.embedder
    clip_source = getattr(embedder, "source", None)
    if embedder is not None and not isinstance(clip_source, ClipSource):
        raise ValueError("only a DA-CLIP embedder (daclip.inference.FrozenDaCLIP) can be saved in a folder")
    return PretrainedConfig(
        model=dataclasses.replace(model_config, **_inference_settings(model_config)),
        sde=None if sde is None else SDEConfig(sde.max_sigma_255, sde.T, sde.schedule, sde.eps),
        sampling=SamplingDefaults(
            sampler="one-pass" if pipeline.one_pass else pipeline.sampler,
            num_steps=pipeline.num_steps,
            order=pipeline.order,
            grid=pipeline.grid,
            clamp_x0=pipeline.clamp_x0,
            self_ensemble=pipeline.self_ensemble,
            min_change=pipeline.min_change,
            hole_fill=pipeline.hole_fill,
        ),
        degradations=list(pipeline.degradations),
        daclip=clip_source,
        clip_input=getattr(pipeline, "clip_input", "image"),
        source=dict(source or {}),
    )


def _inference_settings(model_config: ModelConfig) -> dict[str, Any]:
    """Training-only switches reset in a folder: a restorer loaded for inference never checkpoints."""
    return {"grad_checkpointing": False} if hasattr(model_config, "grad_checkpointing") else {}


def save_pretrained(
    pipeline: Any,  # a RestorationPipeline (not imported: the pipeline module imports this one)
    folder: str | os.PathLike,
    *,
    source: dict[str, Any] | None = None,
    model_card: str = "",
) -> PretrainedConfig:
    """Write ``pipeline`` (restorer weights as loaded, i.e. EMA; DA-CLIP; description) into ``folder``.

    ``folder`` must exist; the files are written atomically one by one (``scripts/export.py`` writes into a
    temporary folder and renames it, so a failed export leaves nothing under the final name).
    """
    folder = Path(folder)
    config = describe_pipeline(pipeline, source)
    save_weights(folder / RESTORER_WEIGHTS, pipeline.model.state_dict(), {"format": "pt"})
    if config.daclip is not None:
        save_weights(folder / DACLIP_WEIGHTS, pipeline.embedder.model.state_dict(), {"format": "pt"})
    write_config(folder, config)
    if model_card:
        write_text_file(folder / MODEL_CARD, model_card)
    return config


def write_config(folder: str | os.PathLike, config: PretrainedConfig) -> None:
    """Write ``config.json`` (pretty-printed, keys in schema order)."""
    import json

    write_text_file(Path(folder) / CONFIG_NAME, json.dumps(to_dict(config), indent=2) + "\n")
