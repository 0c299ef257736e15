"""Building open_clip models and DA-CLIP from names, tags, local files and checkpoints, offline-safe.

``pretrained`` is one of:

* ``""``: random initialisation (tests, demos);
* a local file (an open_clip state dict, ``.bin``/``.pt``/``.safetensors``);
* an open_clip tag such as ``laion2b_s34b_b79k``: taken from the Hugging Face
  cache if it is there; downloaded only when the hub answers a 3-second
  connection probe (:func:`data.net.reachable`). Offline, a missing tag fails at
  once with one line saying how to pass a local file (open_clip's own download
  would retry for ~50 s).

The CLIP architecture is an open_clip model config (``embed_dim``, ``vision_cfg``,
``text_cfg``): a built-in name (``ViT-B-32``, ``ViT-L-14``, ...) or a JSON file
registered with :func:`open_clip.add_model_config`. A :class:`ClipSource` records
everything needed to rebuild the model (the config itself, not just its name), so
a checkpoint can be loaded without the JSON file.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from daclip.convert import (
    convert_official_state_dict,
    is_official_state_dict,
    load_state_dict_strict,
    official_state_dict_from_checkpoint,
)
from daclip.engine.checkpoint import load_checkpoint
from daclip.engine.config import ConfigError, from_dict
from daclip.engine.errors import UserError
from daclip.engine.folder import CONFIG_NAME, is_model_folder, load_weights, read_folder_config
from daclip.model import DaCLIP, check_vision_tower
from data.net import reachable
from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

__all__ = [
    "WeightsUnavailableError",
    "ClipSource",
    "resolve_model_config",
    "resolve_pretrained",
    "build_clip",
    "build_daclip",
    "make_tokenizer",
    "load_daclip",
    "load_daclip_folder",
    "CHECKPOINT_FORMAT",
    "DACLIP_WEIGHTS",
]

#: Marks checkpoints written by this project (see :func:`daclip.train.make_checkpoint`).
CHECKPOINT_FORMAT = "daclip-uir/daclip-v1"
#: The DA-CLIP's weights in a model folder (:mod:`daclip.engine.folder`).
DACLIP_WEIGHTS = "daclip.safetensors"
_PROBE_TIMEOUT_S = 3.0  #: seconds the connection probe (:func:`data.net.reachable`) waits

Tokenizer = Callable[[Sequence[str]], torch.Tensor]


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights are neither local nor downloadable (a user-facing, one-line error)."""


@dataclass(frozen=True)
class ClipSource:
    """Everything needed to rebuild the frozen CLIP of a DA-CLIP model, as plain data."""

    clip_model: str
    model_config: dict[str, Any]
    pretrained: str = ""
    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    #: Test-time input of the degradation classifier: 1 = the whole image resized (the paper); n > 1 =
    #: the average over an n x n grid of native-resolution crops (a DA-CLIP trained on such crops).
    views: int = 1
    #: The names the degradation embedding was trained against (with ``clean`` when it learned one);
    #: empty = not recorded (the paper's ten).
    vocabulary: tuple[str, ...] = ()
    #: The calibrated odds factor of the ``clean`` answer (:meth:`ZeroShotClassifier.adjust`); 1 = none.
    clean_weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints (``weights_only``-loadable); the defaults of ``views`` and
        ``vocabulary`` are left out, so the paper's checkpoints keep their exact layout."""
        out: dict[str, Any] = {
            "clip_model": self.clip_model,
            "model_config": copy.deepcopy(self.model_config),
            "pretrained": self.pretrained,
            "image_size": int(self.image_size),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }
        if self.views != 1:
            out["views"] = int(self.views)
        if self.vocabulary:
            out["vocabulary"] = list(self.vocabulary)
        if self.clean_weight != 1.0:
            out["clean_weight"] = float(self.clean_weight)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClipSource:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                clip_model=str(data["clip_model"]),
                model_config=dict(data["model_config"]),
                pretrained=str(data.get("pretrained", "")),
                image_size=int(data.get("image_size", 224)),
                mean=tuple(float(v) for v in data.get("mean", OPENAI_CLIP_MEAN)),
                std=tuple(float(v) for v in data.get("std", OPENAI_CLIP_STD)),
                views=int(data.get("views", 1)),
                vocabulary=tuple(str(v) for v in data.get("vocabulary", ())),
                clean_weight=float(data.get("clean_weight", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed CLIP description in checkpoint: {err}") from None


# ----------------------------------------------------------------------------- configs and weights


def resolve_model_config(clip_model: str, model_config: str | os.PathLike | Mapping | None = None) -> dict:
    """The open_clip model config of ``clip_model``.

    Args:
        clip_model: an open_clip model name (``ViT-B-32``), or the stem of ``model_config``.
        model_config: optional JSON file (registered with :func:`open_clip.add_model_config`; its
            file stem must be ``clip_model``) or an already loaded config dict.
    """
    if isinstance(model_config, Mapping):
        cfg = copy.deepcopy(dict(model_config))
    else:
        if model_config:
            path = Path(model_config)
            if not path.is_file():
                raise FileNotFoundError(f"open_clip model config not found: {path}")
            if path.stem != clip_model:
                raise ValueError(
                    f"model config {path} registers the name '{path.stem}', but the CLIP model is '{clip_model}'"
                )
            try:
                json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: invalid JSON ({err.msg}, line {err.lineno})") from None
            open_clip.add_model_config(path)
        cfg = open_clip.get_model_config(clip_model)
        if cfg is None:
            vits = [name for name in open_clip.list_models() if name.startswith("ViT-")][:8]
            raise ValueError(f"unknown open_clip model '{clip_model}' (e.g. {', '.join(vits)}, ...)")
    cfg = cfg.get("model_cfg", cfg)
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"open_clip model config for '{clip_model}' lacks {missing}")
    return cfg


def _cached_tag_file(tag_cfg: Mapping[str, Any], cache_dir: str | None) -> str | None:
    """The weights of an open_clip tag if already on disk (Hugging Face cache or open_clip URL cache)."""
    if tag_cfg.get("file"):
        return str(tag_cfg["file"])
    hf_hub = tag_cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename == "open_clip_pytorch_model.bin":
            candidates.insert(0, "open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for name in candidates:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = tag_cfg.get("url", "")
    if url:
        target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if target.is_file():
            return str(target)
    return None


def _offline_message(clip_model: str, tag: str) -> str:
    return (
        f"pretrained weights '{tag}' for {clip_model} are not available (not in the local cache and the "
        "model hub cannot be reached); download them once on a machine with internet access "
        f"(open_clip.create_model('{clip_model}', pretrained='{tag}')) and copy the Hugging Face cache, "
        "or pass a local file: model.pretrained=/path/to/open_clip_pytorch_model.bin"
    )


def resolve_pretrained(clip_model: str, pretrained: str, cache_dir: str | None = None) -> Path | None:
    """Turn ``pretrained`` (``""``, a file or an open_clip tag) into a local file, or ``None``.

    Raises:
        FileNotFoundError: ``pretrained`` looks like a path but is not a file.
        WeightsUnavailableError: a tag that is not cached and cannot be downloaded now.
        ValueError: neither a file nor a known tag.
    """
    if not pretrained:
        return None
    path = Path(os.path.expanduser(pretrained))
    if path.is_file():
        return path
    tag_cfg = open_clip.get_pretrained_cfg(clip_model, pretrained)
    if not tag_cfg:
        if path.suffix or os.sep in pretrained:
            raise FileNotFoundError(f"pretrained weights file not found: {pretrained}")
        tags = open_clip.list_pretrained_tags_by_model(clip_model)
        raise ValueError(
            f"pretrained '{pretrained}' is neither a file nor an open_clip tag for {clip_model} "
            f"(tags: {', '.join(tags) if tags else 'none'})"
        )
    cached = _cached_tag_file(tag_cfg, cache_dir)
    if cached:
        return Path(cached)
    from huggingface_hub import constants as hf_constants

    offline = bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))
    url = hf_constants.ENDPOINT if tag_cfg.get("hf_hub") else tag_cfg.get("url", "")
    if offline or not url or not reachable(url, _PROBE_TIMEOUT_S):
        raise WeightsUnavailableError(_offline_message(clip_model, pretrained))
    try:
        return Path(open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir))
    except Exception as err:  # any download failure is the same user-facing problem
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsUnavailableError(f"{_offline_message(clip_model, pretrained)} [{first}]") from None


# ----------------------------------------------------------------------------- building


def _instantiate_clip(cfg: Mapping[str, Any]) -> nn.Module:
    cfg = copy.deepcopy(dict(cfg))
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    for key in ("preprocess_cfg",):  # not a constructor argument
        cfg.pop(key, None)
    model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return model_class(**cfg)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _load_pretrained_weights(model: nn.Module, weights: Path, clip_model: str) -> None:
    """``open_clip.load_checkpoint`` with one-line errors: a corrupt file, or weights that do not fit.

    open_clip reads the file and fits it in one call, and a corrupt file fails with anything from
    ``EOFError`` to ``UnpicklingError`` or a bare ``ValueError``. Only when it fails is the file read
    again on its own, to tell a file that cannot be read from weights of another architecture.
    """
    try:
        open_clip.load_checkpoint(model, str(weights))
        return
    except Exception as err:  # noqa: BLE001 - classified below; a genuine bug is re-raised
        fit_error = err
    from open_clip.factory import load_state_dict as read_state_dict

    try:
        state_dict = read_state_dict(str(weights))
        if not isinstance(state_dict, Mapping) or not state_dict:
            raise ValueError(f"holds {type(state_dict).__name__}, not a state dict of tensors")
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"pretrained weights file {weights} is not a plain PyTorch weights file (refused by "
            f"torch.load(weights_only=True), or corrupt): {_first_line(err)}"
        ) from None
    except EOFError:
        raise ValueError(f"pretrained weights file {weights} is empty or truncated") from None
    except Exception as err:  # noqa: BLE001 - RuntimeError, ValueError, SafetensorError, ...
        raise ValueError(
            f"pretrained weights file {weights} is corrupt or not a weights file "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from None
    if isinstance(fit_error, (RuntimeError, KeyError, ValueError, TypeError, AttributeError)):
        # load_state_dict's message is "Error(s) in loading ...:" then one line per problem.
        detail = " ".join(line.strip() for line in str(fit_error).strip().splitlines()[:3])
        if len(detail) > 400:
            detail = detail[:400] + " ..."
        raise ValueError(
            f"pretrained weights {weights} do not fit {clip_model}: {detail or type(fit_error).__name__}"
        ) from None
    raise fit_error


def build_clip(
    clip_model: str,
    pretrained: str = "",
    model_config: str | os.PathLike | Mapping | None = None,
    device: str | torch.device | None = "cpu",
    cache_dir: str | None = None,
) -> tuple[nn.Module, ClipSource]:
    """An open_clip CLIP model (ViT image tower) and the :class:`ClipSource` that rebuilds it.

    ``device=None`` leaves the model where it was created (e.g. under ``with torch.device("meta")``).

    Raises:
        ValueError: unknown model, not a ViT, or weights that do not fit the model.
        FileNotFoundError / WeightsUnavailableError: see :func:`resolve_pretrained`.
    """
    cfg = resolve_model_config(clip_model, model_config)
    weights = resolve_pretrained(clip_model, pretrained, cache_dir)  # fail fast, before building
    model = _instantiate_clip(cfg)
    check_vision_tower(model.visual)
    if weights is not None:
        _load_pretrained_weights(model, weights, clip_model)
    tag_cfg = open_clip.get_pretrained_cfg(clip_model, pretrained) if pretrained else {}
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    source = ClipSource(
        clip_model=clip_model,
        model_config=cfg,
        pretrained=pretrained,
        image_size=int(image_size),
        mean=tuple(tag_cfg.get("mean", OPENAI_CLIP_MEAN)),
        std=tuple(tag_cfg.get("std", OPENAI_CLIP_STD)),
    )
    return (model if device is None else model.to(device)), source


def build_daclip(
    clip_model: str,
    pretrained: str = "",
    model_config: str | os.PathLike | Mapping | None = None,
    device: str | torch.device | None = "cpu",
    cache_dir: str | None = None,
) -> tuple[DaCLIP, ClipSource]:
    """A fresh DA-CLIP (controller copied from the tower, zero control) around :func:`build_clip`."""
    clip, source = build_clip(clip_model, pretrained, model_config, None, cache_dir)
    model = DaCLIP(clip)
    return (model if device is None else model.to(device)), source


def make_tokenizer(source: ClipSource) -> Tokenizer:
    """The open_clip tokenizer of the model: ``texts -> (B, context_length)`` token ids."""
    text_cfg = source.model_config.get("text_cfg", {})
    context_length = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_tokenizer_name") or "siglip" in source.clip_model.lower():
        return open_clip.get_tokenizer(source.clip_model, context_length=context_length)
    return open_clip.SimpleTokenizer(
        context_length=context_length, **(text_cfg.get("tokenizer_kwargs") or {})
    )


# ----------------------------------------------------------------------------- loading


def _is_our_checkpoint(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and isinstance(obj.get("clip"), Mapping)
        and isinstance(obj.get("model"), Mapping)
    )


def load_daclip(
    path: str | os.PathLike,
    clip_model: str = "ViT-B-32",
    model_config: str | os.PathLike | Mapping | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> tuple[DaCLIP, ClipSource]:
    """Load a DA-CLIP from this project's checkpoint or the released official file.

    Our checkpoints carry their CLIP description, so ``clip_model``/``model_config`` are
    ignored for them; a checkpoint that stores only the trained weights (controller and
    logit scale) rebuilds the frozen CLIP from its recorded ``pretrained`` source. For the
    official format (bare state dict or ``{"state_dict": ...}``, optional ``module.``)
    ``clip_model`` names the architecture (``ViT-B-32`` for ``daclip_ViT-B-32.pt``).
    Files are read with ``weights_only=True``; a model folder (``scripts/export.py``) is read by
    :func:`load_daclip_folder`.
    """
    if is_model_folder(path):
        model, source = load_daclip_folder(path, cache_dir=cache_dir)
        return model.to(device), source
    obj = load_checkpoint(path)
    source_name = str(path)
    if _is_our_checkpoint(obj):
        source = ClipSource.from_dict(obj["clip"])
        state_dict = dict(obj["model"])
        has_clip = any(k.startswith("clip.") for k in state_dict)
        clip, _ = build_clip(
            source.clip_model, "" if has_clip else source.pretrained, source.model_config, "cpu", cache_dir
        )
        model = DaCLIP(clip)
        if has_clip:
            load_state_dict_strict(model, state_dict, source_name)
        else:
            expected = model.trainable_state_dict()
            full = model.state_dict()
            full.update(state_dict)
            stray = [k for k in state_dict if k not in expected]
            if stray:
                raise ValueError(f"{source_name}: unexpected keys in the trained weights: {stray[:6]}")
            load_state_dict_strict(model, full, source_name)
        return model.to(device), source

    state_dict = official_state_dict_from_checkpoint(obj, source_name)
    if not is_official_state_dict(state_dict):
        raise ValueError(
            f"{source_name} is neither a DA-CLIP checkpoint of this project nor the released DA-CLIP format "
            "(expected 'clip.*' and 'visual_control.*' keys)"
        )
    clip, source = build_clip(clip_model, "", model_config, "cpu", cache_dir)
    model = DaCLIP(clip)
    load_state_dict_strict(model, convert_official_state_dict(state_dict, source_name), source_name)
    return model.to(device), source


def load_daclip_folder(folder: str | os.PathLike, cache_dir: str | None = None) -> tuple[DaCLIP, ClipSource]:
    """The DA-CLIP of a model folder: its ``daclip`` description in ``config.json`` and
    ``daclip.safetensors`` (frozen CLIP and controller), on the CPU; nothing is unpickled or downloaded.

    Raises:
        UserError: the folder holds no DA-CLIP, or a file is missing, malformed or does not fit
            (one line naming the file).
    """
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    section = read_folder_config(folder).get("daclip")
    if not section:
        raise UserError(
            f"{config_path}: this model folder holds no DA-CLIP (its restorer is not conditioned on one)"
        )
    try:
        source = from_dict(ClipSource, section)
    except ConfigError as err:
        raise UserError(f"{config_path}: section 'daclip': {err}") from None
    weights = load_weights(folder / DACLIP_WEIGHTS)
    try:
        clip, _ = build_clip(source.clip_model, "", source.model_config, "cpu", cache_dir)
    except (ValueError, TypeError) as err:
        raise UserError(f"{config_path}: section 'daclip' does not describe a CLIP model: {err}") from None
    model = DaCLIP(clip)
    try:
        load_state_dict_strict(model, weights, str(folder / DACLIP_WEIGHTS))
    except ValueError as err:
        raise UserError(str(err)) from None
    return model.eval(), source
