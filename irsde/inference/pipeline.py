"""Restoring images: a restorer (+ its IR-SDE sampler) + (optionally) the frozen DA-CLIP, loaded from files.

:class:`RestorationPipeline` is what validation, ``scripts/test.py``, ``scripts/restore.py``,
``scripts/benchmark.py``, the demo and the web app call; :meth:`RestorationPipeline.from_checkpoint`
loads any checkpoint of ours (every family of :mod:`irsde.models.families`), the released
``universal-ir.pth``, or a model folder (:meth:`RestorationPipeline.from_pretrained`, written by
``scripts/export.py``: JSON and safetensors, nothing unpickled). It embeds the LQ image once with DA-CLIP (the embeddings are global per image),
then runs the reverse process of an IR-SDE restorer, or the one pass of a one-pass restorer (NAFNet);
with ``tile`` set, every network call runs on overlapping tiles (:class:`irsde.inference.tiling.TiledModel`)
while the sampler steps the whole image, so memory stays bounded on large images and the noise stays
consistent across tiles. Nothing here imports a training module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from daclip.engine.checkpoint import file_fingerprint, load_checkpoint
from daclip.engine.distributed import resolve_device
from daclip.engine.errors import UserError
from daclip.engine.folder import is_model_folder
from daclip.inference import DaCLIPSection, build_embedder
from daclip.zero_shot import DEFAULT_THRESHOLD, multilabel_predictions
from data import CLEAN, DEFAULT_DEGRADATIONS
from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_transform_batch
from irsde.diffusion.samplers import GridName, SamplerName, check_sampler_options, sample
from irsde.diffusion.sde import IRSDE, PredictionType
from irsde.inference.gate import check_min_change, keep_small_changes
from irsde.inference.holes import HOLE_CHECK_SIDE, HOLE_DEGRADATION, fill_holes, has_hole_region, hole_mask
from irsde.inference.tiling import TiledModel
from irsde.models.convert import load_official_unet
from irsde.models.families import (
    build_model,
    daclip_kwargs,
    is_one_pass,
    model_config_from_mapping,
    uses_daclip,
)

#: Marks our stage-2 checkpoints (written by :func:`irsde.training.stage.train`).
IR_CHECKPOINT_FORMAT = "daclip-uir/irsde-v1"

__all__ = [
    "IR_CHECKPOINT_FORMAT",
    "Embedder",
    "RestorationPipeline",
    "LoadedRestorer",
    "load_restoration_checkpoint",
    "PAPER_SDE",
    "default_clamp_x0",
]

#: The IR-SDE the released ``universal-ir.pth`` was trained with.
PAPER_SDE: dict[str, Any] = dict(max_sigma=50.0, T=100, schedule="cosine", eps=0.005)


def default_clamp_x0(prediction: PredictionType) -> bool:
    """Clamp x̂_0 by default for the data predictions; not for ``noise`` (the released model's numerics)."""
    return IRSDE.check_prediction(prediction) != "noise"


#: DA-CLIP's input at test time (see :attr:`RestorationPipeline.clip_input`).
ClipInput = Literal["image", "views"]


class Embedder(Protocol):
    """A frozen DA-CLIP image encoder as the U-Net consumes it."""

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, clip_images: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, S, S)`` CLIP inputs -> (content_emb, degra_emb), both ``(B, D)``, unnormalised."""
        ...


class RestorationPipeline:
    """Restore LQ batches with a trained restorer.

    Args:
        model: the restorer (put in eval mode here): an IR-SDE U-Net, or a one-pass network such as
            NAFNet (``sde`` None).
        sde: the IR-SDE the U-Net was trained with; None for a one-pass restorer (then the sampler
            settings are unused and each image costs one network evaluation).
        embedder: frozen DA-CLIP; required when the U-Net uses a context.
        sampler, num_steps: reverse-process sampler name and its number of network evaluations (None: T).
        clamp_x0: clamp x̂_0 to [0, 1] inside every sampler step; None takes the default of the U-Net's
            parametrisation (``unet.prediction``): off for ``noise`` (the paper's numerics), on for the data
            predictions.
        order: order of the ``mr`` and ``mr-sde`` solvers (1 or 2; None: 2).
        grid: timestep spacing for fewer than T steps, ``uniform`` or ``logsnr`` (see
            :func:`irsde.diffusion.samplers.make_timesteps`).
        tile, tile_overlap, tile_batch_size: tiled network calls for large images (None: whole image).
        self_ensemble: average the restorations of the image's eight flips/transposes (each undone);
            8x the network evaluations, less variance in the output.
        min_change: give back the input's pixels wherever the restorer changes a 64-px window by less than
            this RMS, in grey levels of 255 (:func:`irsde.inference.gate.keep_small_changes`; 0 = off).
        hole_fill: give back each image in which DA-CLIP finds ``uncompleted`` (:meth:`finds_holes`) and that
            has white holes as it came, the holes filled from the pixels around them
            (:mod:`irsde.inference.holes`; before the ``min_change`` gate).
    """

    def __init__(
        self,
        model: nn.Module,
        sde: IRSDE | None,
        embedder: Embedder | None = None,
        *,
        sampler: SamplerName = "posterior",
        num_steps: int | None = None,
        clamp_x0: bool | None = None,
        order: int | None = None,
        grid: GridName = "uniform",
        tile: int | None = None,
        tile_overlap: int = 64,
        tile_batch_size: int = 4,
        self_ensemble: bool = False,
        min_change: float = 0.0,
        hole_fill: bool = False,
        clip_input: ClipInput = "image",
    ) -> None:
        if uses_daclip(model) and embedder is None:
            raise ValueError("this restorer is conditioned on DA-CLIP embeddings: give a DA-CLIP checkpoint")
        if clip_input not in ("image", "views"):
            raise ValueError(f"clip_input must be 'image' or 'views', got {clip_input!r}")
        if clip_input == "views" and int(getattr(embedder, "views", 1)) < 2:
            raise UserError(
                "this restorer is conditioned on DA-CLIP's grid of native crops (data.clip_input: views), "
                "but the DA-CLIP given was not trained on native crops"
            )
        self.one_pass = sde is None
        if not self.one_pass:
            check_sampler_options(sampler, order, grid)
        self.model = model.eval()
        self.sde = sde
        self.embedder = embedder
        self.sampler = sampler
        self.num_steps = num_steps
        # A one-pass restorer outputs the restored image itself (x0).
        prediction = "x0" if self.one_pass else getattr(model, "prediction", "noise")
        self.prediction: PredictionType = IRSDE.check_prediction(prediction)
        self.clamp_x0 = default_clamp_x0(self.prediction) if clamp_x0 is None else bool(clamp_x0)
        self.order = order
        self.grid: GridName = grid
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.tile_batch_size = tile_batch_size
        self.self_ensemble = bool(self_ensemble)
        self.min_change = check_min_change(min_change)
        if hole_fill and getattr(embedder, "classify", None) is None:
            raise ValueError(
                "hole_fill needs a DA-CLIP that classifies (it fills where DA-CLIP answers uncompleted)"
            )
        self.hole_fill = bool(hole_fill)
        #: DA-CLIP's input: the whole image resized (``image``, the paper) or its grid of native crops,
        #: the embeddings averaged over them (``views``, a restorer trained with data.clip_input: views).
        self.clip_input: ClipInput = clip_input
        #: What :meth:`from_checkpoint` loaded (None for a pipeline built from modules).
        self.loaded: LoadedRestorer | None = None
        #: The classifier vocabulary: the degradations the model was trained on, when recorded (plus
        #: ``clean`` when the DA-CLIP learned it).
        self.degradations: tuple[str, ...] = tuple(DEFAULT_DEGRADATIONS)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        daclip: str | os.PathLike = "",
        clip_model: str = "ViT-B-32",
        model_config: str = "",
        device: str | torch.device = "auto",
        use_ema: bool = True,
        sampler: SamplerName | None = None,
        num_steps: int | None = None,
        daclip_option: str = "--daclip",
        **options: Any,
    ) -> RestorationPipeline:
        """The pipeline of a restoration checkpoint (ours or the released ``universal-ir.pth``), on ``device``.

        The DA-CLIP is the one the checkpoint records (checked by content), or ``daclip`` when given
        (a released U-Net records none: then it is required); ``clip_model`` / ``model_config`` describe
        a released DA-CLIP file. ``sampler`` None takes the checkpoint's validation setting
        (:meth:`LoadedRestorer.default_sampling`), and ``num_steps`` None its steps; ``clamp_x0`` None (or
        not given) the clamping it was validated with (``train.val_clamp_x0``), else the parametrisation's;
        ``self_ensemble`` None (or not given) whether it was validated with the self-ensemble
        (``train.val_self_ensemble``), ``min_change`` None (or not given) the gate it was validated with
        (``train.val_min_change``), ``hole_fill`` None (or not given) whether it was validated with the
        hole fill (``train.val_hole_fill``). ``options`` are the other keyword arguments of the constructor
        (``order``, ``grid``, ``tile``, ...).
        ``daclip_option`` is how the caller's user sets ``daclip`` (named in error messages). A folder is
        loaded by :meth:`from_pretrained` (``use_ema`` does not apply: a folder holds the EMA weights).
        """
        if is_model_folder(path):
            return cls.from_pretrained(
                path,
                daclip=daclip,
                clip_model=clip_model,
                model_config=model_config,
                device=device,
                sampler=sampler,
                num_steps=num_steps,
                **options,
            )
        device = resolve_device(device) if isinstance(device, str) else device
        loaded = load_restoration_checkpoint(path, use_ema=use_ema, map_location="cpu")
        if sampler is None:
            sampler, recorded_steps = loaded.default_sampling()
            num_steps = recorded_steps if num_steps is None else num_steps
        if options.get("clamp_x0") is None:
            options["clamp_x0"] = loaded.default_clamp_x0()  # as validated in training, if recorded
        if options.get("self_ensemble") is None:
            options["self_ensemble"] = loaded.default_self_ensemble()
        if options.get("min_change") is None:
            options["min_change"] = loaded.default_min_change()
        if options.get("hole_fill") is None:
            options["hole_fill"] = loaded.default_hole_fill()
        weights = loaded.daclip_weights(daclip, option=daclip_option) or ""
        if loaded.needs_daclip and not weights:
            raise UserError(f"{path} is conditioned on DA-CLIP: give its weights ({daclip_option})")
        embedder = build_embedder(DaCLIPSection(weights, clip_model, model_config), device)
        options.setdefault("clip_input", loaded.clip_input())
        pipeline = cls(
            loaded.model.to(device),
            loaded.sde.to(device) if loaded.sde is not None else None,
            embedder,
            sampler=sampler,
            num_steps=num_steps,
            **options,
        )
        pipeline.loaded = loaded
        pipeline.degradations = classifier_vocabulary(loaded.degradations(), embedder)
        return pipeline

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        *,
        daclip: str | os.PathLike = "",
        clip_model: str = "ViT-B-32",
        model_config: str = "",
        device: str | torch.device = "auto",
        sampler: SamplerName | None = None,
        num_steps: int | None = None,
        **options: Any,
    ) -> RestorationPipeline:
        """The pipeline of a model folder (``scripts/export.py``), read from JSON and safetensors only.

        ``sampler`` None takes the folder's default sampling (sampler and steps); ``order``, ``grid``,
        ``clamp_x0``, ``self_ensemble``, ``min_change`` and ``hole_fill`` given as None (or not given) take the folder's too. ``daclip`` replaces the folder's
        DA-CLIP with other weights (``clip_model`` / ``model_config`` describe a released file). ``options``
        are the other keyword arguments of the constructor (``tile``, ...).
        """
        from irsde.inference.pretrained import load_pretrained

        device = resolve_device(device) if isinstance(device, str) else device
        loaded = load_pretrained(folder, with_daclip=not daclip)
        defaults = loaded.config.sampling
        if sampler is None:
            sampler, num_steps = defaults.sampler, defaults.num_steps if num_steps is None else num_steps
        for key in ("order", "grid", "clamp_x0", "self_ensemble", "min_change", "hole_fill"):
            if options.get(key) is None:
                options[key] = getattr(defaults, key)
        options.setdefault("clip_input", loaded.config.clip_input)
        embedder = loaded.daclip
        if daclip:
            embedder = build_embedder(DaCLIPSection(str(daclip), clip_model, model_config), device)
        pipeline = cls(
            loaded.model.to(device),
            loaded.sde.to(device) if loaded.sde is not None else None,
            embedder.to(device) if embedder is not None else None,
            sampler=sampler,
            num_steps=num_steps,
            **options,
        )
        training_config = loaded.config.source.get("training_config")
        pipeline.loaded = LoadedRestorer(
            loaded.model, loaded.sde, training_config, None, "pretrained", path=str(folder)
        )
        pipeline.degradations = classifier_vocabulary(
            loaded.config.degradations or DEFAULT_DEGRADATIONS, embedder
        )
        return pipeline

    @property
    def nfe(self) -> int:
        """Network evaluations per image (one per sampler step, one for a one-pass restorer; x8 with
        the self-ensemble)."""
        steps = 1 if self.sde is None else int(self.num_steps or self.sde.T)
        return steps * (8 if self.self_ensemble else 1)

    @torch.no_grad()
    def classify(
        self, lq: Tensor, lq_clip: Tensor | None = None, top_k: int = 3
    ) -> list[list[tuple[str, float]]]:
        """DA-CLIP's zero-shot degradation prediction per image: the ``top_k`` (name, probability) pairs.

        Empty lists when the pipeline has no DA-CLIP (a plain baseline).
        """
        probs = self.class_probabilities(lq, lq_clip)  # (B, K)
        if probs is None:
            return [[] for _ in range(lq.shape[0])]
        top = torch.topk(probs, k=min(top_k, probs.shape[1]), dim=1)
        return [
            [(self.degradations[j], float(p)) for p, j in zip(values, indices)]
            for values, indices in zip(top.values.tolist(), top.indices.tolist())
        ]

    @torch.no_grad()
    def class_probabilities(self, lq: Tensor, lq_clip: Tensor | None = None) -> Tensor | None:
        """``(B, K)`` probabilities over :attr:`degradations` (None without DA-CLIP). A DA-CLIP trained on
        native crops classifies from its own grid of them (``lq``); otherwise from ``lq_clip``."""
        if getattr(self.embedder, "classify", None) is None:
            return None
        names = list(self.degradations)
        if int(getattr(self.embedder, "views", 1)) > 1:
            return self.embedder.classify_images(lq, names)
        if lq_clip is None:
            lq_clip = self.clip_inputs(lq.to(self.device))
        return self.embedder.classify(lq_clip.to(self.device), names)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def clip_inputs(self, lq: Tensor) -> Tensor:
        """The exact DA-CLIP transform of an LQ batch (B, 3, H, W) in [0, 1]: ``(B, 3, S, S)``, or its grid
        of native crops ``(B, V, 3, S, S)`` for a restorer conditioned on them (:attr:`clip_input`)."""
        if self.embedder is None:
            raise ValueError("no DA-CLIP embedder in this pipeline")
        if self.clip_input == "views":
            return self.embedder.grid_views(lq)
        size = int(getattr(self.embedder, "image_size", 224))
        mean = getattr(self.embedder, "mean", OPENAI_CLIP_MEAN)
        std = getattr(self.embedder, "std", OPENAI_CLIP_STD)
        return clip_transform_batch(lq, size, mean=mean, std=std)

    @torch.no_grad()
    def embed(self, lq: Tensor, lq_clip: Tensor | None = None) -> dict[str, Tensor]:
        """The U-Net keyword arguments (``degra_emb``, ``content_emb``) for this batch.

        A restorer conditioned on DA-CLIP's views computes them from ``lq`` (``lq_clip``, the resized whole
        image datasets give, is not its input).
        """
        if self.embedder is None:
            return {}
        if lq_clip is None or self.clip_input == "views":
            lq_clip = self.clip_inputs(lq)
        content_emb, degra_emb = self.embedder(lq_clip.to(self.device))  # (B, D) each
        return daclip_kwargs(self.model, content_emb, degra_emb)

    def model_fn(self, context: Mapping[str, Tensor]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """``(x_t, mu, t) -> network output`` with the embeddings bound (and tiled if configured).

        A one-pass restorer ignores ``x_t`` and ``t``: its output is the restoration of ``mu``.
        """

        def call(x: Tensor, mu: Tensor, t: Tensor, **kwargs: Tensor) -> Tensor:
            if self.one_pass:
                return self.model(mu, **kwargs)
            return self.model(x, mu, t, **kwargs)

        if self.tile is not None:
            tiled = TiledModel(call, self.tile, self.tile_overlap, self.tile_batch_size)
            return lambda x, mu, t: tiled(x, mu, t, **context)
        return lambda x, mu, t: call(x, mu, t, **context)

    @torch.no_grad()
    def __call__(
        self,
        lq: Tensor,
        lq_clip: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Restore ``lq`` (B, 3, H, W) in [0, 1]; returns the restored batch clamped to [0, 1]."""
        lq = lq.to(self.device)
        context = self.embed(lq, lq_clip)
        model_fn = self.model_fn(context)

        def restore(mu: Tensor) -> Tensor:
            if self.one_pass:
                return model_fn(mu, mu, torch.zeros(mu.shape[0], device=mu.device))
            return sample(
                model_fn,
                mu,
                self.sde,
                self.sampler,
                self.num_steps,
                generator=generator,
                progress=progress,
                prediction=self.prediction,
                clamp_x0=self.clamp_x0,
                order=self.order,
                grid=self.grid,
            )

        if not self.self_ensemble:
            return self._gate(lq, self._fill(lq, restore(lq).clamp(0.0, 1.0)))
        # Geometric self-ensemble: restore the eight flips/transposes of the image (one DA-CLIP embedding,
        # of the image as given), undo each and average. 8x the network evaluations.
        total = torch.zeros_like(lq)
        for transpose in (False, True):
            for dims in ((), (-1,), (-2,), (-2, -1)):
                view = lq.transpose(-2, -1) if transpose else lq
                out = restore(view.flip(dims) if dims else view)
                out = out.flip(dims) if dims else out
                total += out.transpose(-2, -1) if transpose else out
        return self._gate(lq, self._fill(lq, (total / 8).clamp(0.0, 1.0)))

    def _fill(self, lq: Tensor, restored: Tensor) -> Tensor:
        """``restored``, with each image in which DA-CLIP finds ``uncompleted`` and that has holes given back as
        in ``lq`` with its holes filled (``hole_fill``)."""
        if not self.hole_fill:
            return restored
        return fill_holes(lq, restored, self.holes_to_fill(lq))

    @torch.no_grad()
    def holes_to_fill(self, lq: Tensor) -> Tensor:
        """``(B,)`` True for each image of ``lq`` (B, 3, H, W) that has a region of white holes
        (:func:`irsde.inference.holes.has_hole_region`) and in
        which DA-CLIP finds ``uncompleted`` (:meth:`finds_holes`), as it is or, when larger, downscaled to a
        shorter side of :data:`HOLE_CHECK_SIDE` (the generator draws holes in fractions of the shorter side,
        so a large photo's holes are wider than a view and look like a bright flat field there)."""
        if HOLE_DEGRADATION not in self.degradations:
            raise ValueError(
                f"hole_fill fills where DA-CLIP answers {HOLE_DEGRADATION!r}, which is not among this "
                f"restorer's degradations {list(self.degradations)}"
            )
        lq = lq.to(self.device)
        has_holes = has_hole_region(hole_mask(lq)).cpu()  # (B,)
        found = torch.zeros_like(has_holes)
        if not bool(has_holes.any()):
            return found
        probs = self.class_probabilities(lq[has_holes])
        assert probs is not None  # checked in __init__
        found[has_holes] = self.finds_holes(probs)
        height, width = lq.shape[-2:]
        missed = has_holes & ~found
        if bool(missed.any()) and min(height, width) > HOLE_CHECK_SIDE:
            scale = HOLE_CHECK_SIDE / min(height, width)
            size = (max(round(height * scale), 1), max(round(width * scale), 1))
            small = F.interpolate(lq[missed], size=size, mode="area")
            small_probs = self.class_probabilities(small)
            assert small_probs is not None
            found[missed] = self.finds_holes(small_probs)
        return found

    def finds_holes(self, probs: Tensor) -> Tensor:
        """``(B,)`` True where DA-CLIP's ``(B, K)`` probabilities over :attr:`degradations` find ``uncompleted``
        present, by the rule of ``restore.py``'s predictions: the most probable type, or any type at
        :data:`daclip.zero_shot.DEFAULT_THRESHOLD` or more, unless ``clean`` ranks first."""
        names = list(self.degradations)
        present = torch.from_numpy(multilabel_predictions(probs.detach().float().cpu(), DEFAULT_THRESHOLD))
        found = present[:, names.index(HOLE_DEGRADATION)]
        if CLEAN in names:
            found &= probs.detach().cpu().argmax(dim=1) != names.index(CLEAN)
        return found

    def _gate(self, lq: Tensor, restored: Tensor) -> Tensor:
        """``restored`` with the windows it barely changes given back as in ``lq`` (``min_change``)."""
        if self.min_change == 0.0:
            return restored
        kept = keep_small_changes(
            lq.detach().float().cpu().numpy(), restored.detach().float().cpu().numpy(), self.min_change
        )
        return torch.from_numpy(kept).to(device=restored.device, dtype=restored.dtype)


def classifier_vocabulary(degradations: Sequence[str], embedder: Embedder | None) -> tuple[str, ...]:
    """The classifier's names: the restorer's degradations, plus ``clean`` when its DA-CLIP learned it (it can
    then say "no degradation"). ``restore.py`` and ``scripts/test.py``'s accuracy column both ask over these."""
    names = tuple(degradations)
    return (*names, CLEAN) if CLEAN in getattr(embedder, "vocabulary", ()) and CLEAN not in names else names


@dataclass
class LoadedRestorer:
    """What :func:`load_restoration_checkpoint` rebuilds from a file."""

    model: nn.Module  # the restorer network (a ConditionalUNet, a NAFNet, ...), in eval mode
    sde: IRSDE | None  # the IR-SDE of a U-Net; None for a one-pass restorer
    config: dict[str, Any] | None  # the training config of our checkpoints; None for released weights
    daclip_checkpoint: str | None  # the DA-CLIP weights the restorer was trained with, if recorded
    source: str  # "ours" or "official"
    daclip_sha256: str | None = None  # their content fingerprint (checkpoints written since it is recorded)
    path: str = ""  # the file this was loaded from
    step: int | None = None  # the training step the weights are from (our checkpoints)

    @property
    def needs_daclip(self) -> bool:
        """Whether the network is conditioned on DA-CLIP embeddings."""
        return uses_daclip(self.model)

    def degradations(self) -> tuple[str, ...]:
        """The degradation names the model was trained on (our checkpoints), else the paper's ten."""
        names = self._section("data").get("degradations")
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            return tuple(names)
        return tuple(DEFAULT_DEGRADATIONS)

    def default_sampling(self) -> tuple[str, int | None]:
        """``(sampler, num_steps)`` this model was validated with in training (our checkpoints), else the
        paper's posterior sampler at T (released weights, or a config without validation settings).
        A one-pass restorer has no sampler: ``("one-pass", 1)``."""
        if self.sde is None:
            return "one-pass", 1
        train = self._section("train")
        sampler = train.get("val_sampler")
        if not isinstance(sampler, str):
            return "posterior", None
        steps = train.get("val_steps")
        return sampler, steps if isinstance(steps, int) else None

    def default_clamp_x0(self) -> bool | None:
        """Whether this model was validated with x̂_0 clamped (``train.val_clamp_x0``, our checkpoints); None
        when not recorded (then the parametrisation's default applies)."""
        clamp = self._section("train").get("val_clamp_x0")
        return clamp if isinstance(clamp, bool) else None

    def default_self_ensemble(self) -> bool:
        """Whether this model was validated with the 8-flip self-ensemble (``train.val_self_ensemble``, our
        checkpoints); False when not recorded (released weights)."""
        return self._section("train").get("val_self_ensemble") is True

    def default_min_change(self) -> float:
        """The ``min_change`` gate this model was validated with (``train.val_min_change``, our checkpoints),
        in grey levels; 0 (off) when not recorded (released weights)."""
        value = self._section("train").get("val_min_change")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

    def default_hole_fill(self) -> bool:
        """Whether this model was validated with the hole fill (``train.val_hole_fill``; False if not recorded)."""
        return bool(self._section("train").get("val_hole_fill", False))

    def clip_input(self) -> ClipInput:
        """DA-CLIP's input at test time: ``views`` for a restorer trained with data.clip_input: views (the
        embeddings averaged over the DA-CLIP's grid of native crops), else ``image`` (the paper)."""
        return "views" if self._section("data").get("clip_input") == "views" else "image"

    def _section(self, name: str) -> Mapping[str, Any]:
        """The recorded training config's section ``name`` ({} for released weights or when absent)."""
        section = self.config.get(name) if isinstance(self.config, Mapping) else None
        return section if isinstance(section, Mapping) else {}

    def daclip_weights(self, override: str | os.PathLike = "", *, option: str = "--daclip") -> str | None:
        """The DA-CLIP weights to embed with: ``override`` if given, else the recorded file, checked.

        The recorded file must exist and (when a fingerprint is recorded) hold the same bytes as at
        training time; otherwise one line names ``option``, the setting that points at the right file.
        Returns None when nothing is recorded (released weights, or a U-Net trained without DA-CLIP).
        """
        if override:
            return str(override)
        if not self.daclip_checkpoint:
            return None
        recorded = self.daclip_checkpoint
        if not os.path.isfile(recorded):
            raise UserError(
                f"{self.path or 'this checkpoint'} was trained with the DA-CLIP weights {recorded}, which do "
                f"not exist here; point {option} at that file"
            )
        if self.daclip_sha256 and file_fingerprint(recorded)["sha256"] != self.daclip_sha256:
            raise UserError(
                f"{recorded} is not the DA-CLIP {self.path or 'this checkpoint'} was trained with (its "
                f"content changed: sha256 differs from the recorded {self.daclip_sha256[:12]}...); point "
                f"{option} at the original file"
            )
        return recorded


def load_restoration_checkpoint(
    path: str | os.PathLike, *, use_ema: bool = True, map_location: str | torch.device = "cpu"
) -> LoadedRestorer:
    """Rebuild the restorer (and the IR-SDE of a U-Net) from our stage-2 checkpoint or ``universal-ir.pth``.

    Our checkpoints carry their config (its ``model`` section: the family and its description, see
    :mod:`irsde.models.families`), so the model is rebuilt from the file alone (EMA weights by default). A
    released file is a bare U-Net state dict; its description is derived from the weights' shapes
    (:func:`irsde.models.convert.infer_unet_config`) and it gets the paper's IR-SDE.
    """
    obj = load_checkpoint(path, map_location=map_location)
    fmt = obj.get("format") if isinstance(obj, Mapping) else None
    if isinstance(fmt, str) and fmt.startswith("daclip-uir/daclip"):
        raise ValueError(f"{path} is a DA-CLIP (stage-1) checkpoint, not a restoration model")
    if fmt == IR_CHECKPOINT_FORMAT:
        cfg = obj["config"]
        try:
            model_config = model_config_from_mapping(cfg["model"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: its model section does not describe a restorer: {err}") from None
        model = build_model(model_config)
        weights = obj["ema"] if use_ema and obj.get("ema") is not None else obj["model"]
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False)
        except RuntimeError as err:  # torch lists every shape mismatch, one per line: report one line
            lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
            raise ValueError(
                f"{path}: weights do not fit the model in its config ({len(lines)} shape mismatch(es), "
                f"e.g. {lines[0] if lines else str(err).strip().splitlines()[0]})"
            ) from None
        if missing or unexpected:
            raise ValueError(
                f"{path}: weights do not fit the model in its config (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        sde = None if is_one_pass(model_config) else IRSDE(**cfg["sde"])
        # Since the fingerprint: {"path": absolute path, "sha256": ...}; before: the config's (relative) path.
        record = obj.get("daclip") if isinstance(obj.get("daclip"), Mapping) else {}
        daclip_ckpt = record.get("path") or (cfg.get("daclip") or {}).get("checkpoint") or None
        step = obj.get("step") if isinstance(obj.get("step"), int) else None
        return LoadedRestorer(
            model.eval(), sde, dict(cfg), daclip_ckpt, "ours", record.get("sha256"), str(path), step
        )
    unet = load_official_unet(obj)
    return LoadedRestorer(unet.eval(), IRSDE(**PAPER_SDE), None, None, "official", path=str(path))
