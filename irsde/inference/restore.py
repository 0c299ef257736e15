"""Restoring a user's own images (``scripts/restore.py``): any size, folders, batching, tiles.

Images of equal size are batched together; every image is padded inside the restorer to its
downsampling factor and cropped back, and with ``tile`` set the network sees bounded tiles
(:class:`irsde.inference.tiling.TiledModel`), so memory does not grow with the image. An image over
``max_pixels`` (:data:`DEFAULT_MAX_PIXELS`, the web app's limit) without tiles is restored in tiles of
:data:`AUTO_TILE` pixels, with a one-line notice. The predicted degradation (DA-CLIP zero-shot) is
printed and saved to ``predictions.csv`` / ``predictions.json`` (:mod:`irsde.inference.reports`),
merged with earlier runs' rows, each row saying which run and settings made its image; contact sheets
show every restored image beside its input. Inputs are never overwritten.

Outputs are PNGs named after the inputs (``photo.jpg`` -> ``photo.png``); when several inputs share a
name stem (``photo.jpg`` and ``photo.png``), each of them keeps its extension in the name
(``photo_jpg.png``, ``photo_png.png``), so no image is skipped or overwritten. An output path with a
lossless image extension restores a single input into exactly that file.

Nothing is lost and nothing is silent: the output folder is checked for writing before any model is
loaded (:func:`check_outputs`); an output that cannot be written (a full disk) is one
:class:`OutputWriteError` naming the file, the files already there stay whole (atomic writes), and the
predictions of the images written so far are kept. An image that cannot be read is reported and
skipped, and the run ends with a :class:`RestoreError` naming it. A restored image with non-finite
values is an error naming the image (nothing is written for it); one that is nearly constant or
clipped against a normal input is a warning naming it (:func:`output_warning`), as is sampling with
settings the checkpoint was never validated with (:func:`sampling_notice`). Each image's noise comes
from its own generator, seeded by the run seed and its pixels (:func:`image_seed`), so an image
restores the same in any batch.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor

from daclip.engine.errors import UserError
from daclip.engine.preflight import check_writable
from daclip.zero_shot import DEFAULT_THRESHOLD, multilabel_predictions
from data import CLEAN
from data.io import IMAGE_EXTENSIONS, ImageReadError, write_image
from irsde.diffusion.samplers import HIGHER_ORDER_SAMPLERS
from irsde.inference.pipeline import RestorationPipeline
from irsde.inference.reports import (
    CONTACT_SHEET_HEIGHT,
    PREDICTIONS_JSON_NAME,
    PREDICTIONS_NAME,
    is_contact_sheet_name,
    read_json_predictions,
    write_contact_sheets,
    write_json_predictions,
    write_predictions,
)
from irsde.inference.tiling import tile_starts

__all__ = [
    "AUTO_TILE",
    "DEFAULT_MAX_PIXELS",
    "HOLE_FILL_NOTE",
    "NonFiniteOutputError",
    "OutputPlan",
    "OutputWriteError",
    "ProgressReporter",
    "RestoreError",
    "check_outputs",
    "describe_settings",
    "gate_note",
    "holes_filled",
    "image_seed",
    "network_calls",
    "output_targets",
    "output_warning",
    "peek_total_steps",
    "pipeline_settings",
    "plan_outputs",
    "restore_images",
    "same_size_batches",
    "sampling_notice",
    "skipped_entries",
    "unchanged_share",
    "vocabulary_notice",
]

#: Largest image (in pixels) restored in one piece: 2048 x 2048. The web app refuses a larger one without
#: a tile size; :func:`restore_images` restores it in tiles of :data:`AUTO_TILE` pixels.
DEFAULT_MAX_PIXELS = 2048 * 2048
#: The tile size :func:`restore_images` picks for an image over its ``max_pixels`` when none is set: the
#: paper's training patch. Memory then stays bounded whatever the image size, and the progress line,
#: which counts network calls, moves every few tiles.
AUTO_TILE = 256
#: Output extensions refused: lossy formats would throw away part of the restoration.
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".webp")


class RestoreError(ValueError):
    """Some images could not be restored (the others were); the message names the first one."""

    def __init__(self, message: str, failures: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)  # (input path, reason)


class NonFiniteOutputError(ValueError):
    """The restored image holds NaN or Inf values: the model or the sampling diverged."""


class OutputWriteError(UserError):
    """An output file could not be written (a full disk, a read-only folder); the message names it."""


def _input_name(path: str | os.PathLike) -> str:
    return Path(path).name


def same_size_batches(dataset: Any, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive items of ``dataset`` grouped into batches of at most ``batch_size`` equal-size images."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    batch: list[dict[str, Any]] = []
    for index in range(len(dataset)):
        item = dataset[index]
        if batch and (len(batch) == batch_size or batch[0]["lq"].shape != item["lq"].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


# ----------------------------------------------------------------------------- planning the outputs


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _single_output(paths: Sequence[Path], output: Path, resolved_inputs: set[Path]) -> Path:
    """``output`` as the file of the one input; ValueError for several inputs, the input itself, a lossy format."""
    if len(paths) != 1:
        raise ValueError(
            f"output {output} names one image file, but there are {len(paths)} input images: "
            "give an output folder"
        )
    if output.resolve() in resolved_inputs:
        raise ValueError(
            f"output {output} is the input image: choose another name (inputs are never overwritten)"
        )
    if output.suffix.lower() in LOSSY_EXTENSIONS:
        raise ValueError(
            f"output {output}: {output.suffix} is a lossy format and would lose part of the restoration; "
            f"name the file .png (or another lossless format)"
        )
    return output


def output_targets(inputs: Sequence[str | os.PathLike], output: str | os.PathLike) -> tuple[list[Path], bool]:
    """The output file of every input, and whether ``output`` names a single file.

    ``output`` is a folder, unless it has an image extension and is not an existing folder: then it
    is the output file of a single input (more inputs, and a lossy format, are errors). In a folder,
    outputs are ``<stem>.png``; inputs whose stems clash (compared case-insensitively, as file systems
    on macOS and Windows do) get ``<stem>_<ext>.png`` instead. Fails before any work on a name that
    still clashes, on an output that is one of the inputs, and on an output folder that is the input
    folder.
    """
    output = Path(output)
    paths = [Path(p) for p in inputs]
    resolved_inputs = {p.resolve() for p in paths}
    if _is_image_name(output) and not output.is_dir():
        return [_single_output(paths, output, resolved_inputs)], True
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} exists and is not a folder (nor an image name for a single input)")
    if output.resolve() in {p.parent for p in resolved_inputs}:
        raise ValueError(
            f"output folder {output} is the input folder: choose another (inputs are never overwritten)"
        )
    stems: dict[str, int] = {}
    for path in paths:
        stems[path.stem.casefold()] = stems.get(path.stem.casefold(), 0) + 1
    targets = []
    for path in paths:
        clash = stems[path.stem.casefold()] > 1
        name = f"{path.stem}_{path.suffix.lstrip('.')}.png" if clash else f"{path.stem}.png"
        targets.append(output / name)
    seen: dict[str, Path] = {}
    for path, target in zip(paths, targets):
        other = seen.setdefault(target.name.casefold(), path)
        if other != path:
            raise ValueError(
                f"inputs {other} and {path} would both be restored to {target}: rename one of them"
            )
        if target.resolve() in resolved_inputs:
            raise ValueError(f"refusing to overwrite input image {target}: choose another output folder")
    return targets, False


@dataclass
class OutputPlan:
    """Where every input goes, decided before any image is read or any model loaded."""

    paths: list[Path]  # the inputs
    targets: list[Path]  # the output of each input
    single_file: bool  # the output names one image file (no predictions, no contact sheet)
    folder: Path  # where the outputs go
    pending: list[int] = field(default_factory=list)  # indices of the inputs to restore now

    @property
    def renamed(self) -> list[tuple[Path, Path]]:
        """Inputs whose output keeps their extension in its name (another input shares their stem)."""
        if self.single_file:
            return []
        return [(p, t) for p, t in zip(self.paths, self.targets) if t.stem != p.stem]


def plan_outputs(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    contact_sheet: bool = True,
) -> OutputPlan:
    """The :class:`OutputPlan` of ``inputs`` restored into ``output`` (see :func:`output_targets`).

    Images already restored there are not pending unless ``overwrite``. With ``contact_sheet`` an
    output named like a contact sheet is refused now, before any work (it would be overwritten).
    """
    paths = [Path(p) for p in inputs]
    targets, single_file = output_targets(paths, output)
    folder = targets[0].parent if single_file else Path(output)
    if contact_sheet and not single_file:
        for path, target in zip(paths, targets):
            if is_contact_sheet_name(target.name):
                raise ValueError(
                    f"input {path} would be restored to {target}, the contact sheet's name: rename it "
                    "or pass --no-contact-sheet"
                )
    pending = [i for i, t in enumerate(targets) if overwrite or not t.exists()]
    return OutputPlan(paths, targets, single_file, folder, pending)


def check_outputs(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    contact_sheet: bool = True,
    option: str = "-o",
) -> OutputPlan:
    """:func:`plan_outputs`, and the output folder writable (one line naming it and ``option`` if not).

    Called before the model is loaded, so that a read-only, immutable or mistyped output location
    costs nothing.
    """
    plan = plan_outputs(inputs, output, contact_sheet=contact_sheet)
    check_writable(plan.folder, option)
    return plan


def skipped_entries(folder: str | os.PathLike) -> str | None:
    """A one-line notice of what an input folder holds that is not restored (subfolders, broken links,
    files without an image extension), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    subfolders, broken, other = [], [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            subfolders.append(entry.name)
        elif entry.is_symlink() and not entry.exists():
            broken.append(entry.name)
        elif not _is_image_name(entry):
            other.append(entry.name)
    parts = [
        f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        for names, what in (
            (subfolders, "subfolder(s)"),
            (broken, "broken link(s)"),
            (other, "other file(s)"),
        )
        if names
    ]
    if not parts:
        return None
    return f"not restored from {folder}: {'; '.join(parts)} (only the images directly in the folder are read)"


# ----------------------------------------------------------------------------- progress


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressReporter:
    """Progress within an image, at a bounded rate, readable in a terminal and in a log file.

    On a terminal one status line is rewritten in place at most every ``tty_interval`` seconds;
    otherwise (output redirected to a file or a pipe) a full line is written at most every
    ``interval`` seconds, so a log of an hour-long restore stays short. Progress counts network
    evaluations (one per sampler step, or one per batch of tiles with tiling).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float = 10.0,
        tty_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.interval = tty_interval if self.tty else interval
        self.clock = clock
        self.label = ""
        self.total = 0
        self.steps = 0
        self.done = 0
        self._start = self._last = 0.0

    def start(self, label: str, total: int, steps: int) -> None:
        """A new image (or batch): ``total`` network calls over ``steps`` sampler steps."""
        self.label, self.total, self.steps, self.done = label, max(int(total), 1), max(int(steps), 1), 0
        self._start = self._last = self.clock()

    def _line(self) -> str:
        elapsed = self.clock() - self._start
        fraction = min(self.done / self.total, 1.0)
        per_step = self.total / self.steps
        step = min(int(self.done / per_step) + 1, self.steps)  # the step under way
        text = f"{self.label}: {fraction:4.0%} (step {step}/{self.steps}"
        if per_step > 1:
            text += f", network call {self.done}/{self.total}"
        text += f"), {_duration(elapsed)} elapsed"
        if 0 < fraction < 1:
            text += f", about {_duration(elapsed * (1 - fraction) / fraction)} left"
        return text

    def _write(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, done: int | None = None) -> None:
        """One more network call finished (or ``done`` in total); writes a line if one is due."""
        self.done = self.done + 1 if done is None else int(done)
        now = self.clock()
        if now - self._last >= self.interval and self.done < self.total:
            self._last = now
            self._write(self._line())

    def finish(self) -> None:
        """The image is done: a last line on a terminal (elsewhere the caller logs the result)."""
        self.done = self.total
        if self.tty:
            self._write(self._line(), final=True)


def network_calls(pipeline: RestorationPipeline, batch: int, height: int, width: int) -> tuple[int, int]:
    """(network calls, sampler steps) for one batch, to put progress within an image in numbers."""
    steps = pipeline.nfe  # sampler steps (one for a one-pass restorer), x8 with the self-ensemble
    tile = pipeline.tile
    if tile is None or (height <= tile and width <= tile):
        return steps, steps
    tiles = len(tile_starts(height, tile, pipeline.tile_overlap)) * len(
        tile_starts(width, tile, pipeline.tile_overlap)
    )
    return steps * math.ceil(batch * tiles / pipeline.tile_batch_size), steps


@contextmanager
def _count_network_calls(module: torch.nn.Module, callback: Callable[[], None]) -> Iterator[None]:
    handle = module.register_forward_hook(lambda *_: callback())
    try:
        yield
    finally:
        handle.remove()


def peek_total_steps(checkpoint: str | os.PathLike) -> int | None:
    """T of a restoration checkpoint (the most sampler steps it takes), read without building its model.

    The released ``universal-ir.pth`` has the paper's T; None for a one-pass restorer, or when the
    file cannot be read this way (then loading it reports why).
    """
    from irsde.inference.pipeline import IR_CHECKPOINT_FORMAT, PAPER_SDE

    try:  # mmap: the tensors are not read, so this costs little even for a large file
        obj = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the full load gives the readable error
        return None
    if not isinstance(obj, dict) or obj.get("format") != IR_CHECKPOINT_FORMAT:
        return int(PAPER_SDE["T"]) if isinstance(obj, dict) and "format" not in obj else None
    config = obj.get("config") or {}
    if (config.get("model") or {}).get("family", "irsde") != "irsde":
        return None
    total = (config.get("sde") or {}).get("T")
    return int(total) if isinstance(total, int) else None


# ----------------------------------------------------------------------------- settings and warnings


@contextmanager
def pipeline_settings(pipeline: RestorationPipeline, **settings: Any) -> Iterator[None]:
    """Set pipeline attributes (``tile``, ``sampler``, ...) for a block, then restore the previous values."""
    saved = {key: getattr(pipeline, key) for key in settings}
    for key, value in settings.items():
        setattr(pipeline, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(pipeline, key, value)


def describe_settings(pipeline: RestorationPipeline, seed: int) -> str:
    """What made an image, for its row in the predictions: checkpoint, sampler, steps, tiles, seed."""
    loaded = pipeline.loaded
    parts = [f"checkpoint={loaded.path}"] if loaded is not None and loaded.path else []
    if pipeline.one_pass:
        parts.append("one-pass")
    else:
        assert pipeline.sde is not None
        parts += [f"sampler={pipeline.sampler}", f"steps={pipeline.num_steps or pipeline.sde.T}"]
        if pipeline.sampler in HIGHER_ORDER_SAMPLERS:
            parts.append(f"order={pipeline.order or 2}")
        parts.append(f"grid={pipeline.grid}")
    parts.append(f"tile={pipeline.tile}" if pipeline.tile is not None else "tile=off")
    if pipeline.self_ensemble:
        parts.append("self-ensemble")
    if pipeline.min_change:
        parts.append(f"min-change={pipeline.min_change:g}")
    if pipeline.hole_fill:
        parts.append("hole-fill")
    parts.append(f"seed={seed}")
    return " ".join(parts)


def sampling_notice(pipeline: RestorationPipeline) -> str | None:
    """A one-line warning when the pipeline samples with a sampler or a number of steps its checkpoint
    was never validated with (None when it samples as validated, or holds no checkpoint's record).

    Our checkpoints record the validation sampler of their training (``train.val_sampler`` /
    ``val_steps``); the released weights were published with the paper's posterior sampler at T.
    Another sampler or NFE may work, or may give black or washed-out images without any NaN.
    """
    loaded = pipeline.loaded
    if loaded is None or pipeline.one_pass or pipeline.sde is None:
        return None
    total = int(pipeline.sde.T)
    validated, steps = loaded.default_sampling()
    current = int(pipeline.num_steps or total)
    if (pipeline.sampler, current) == (validated, steps or total):
        return None
    where = "in training" if loaded.source == "ours" else "(the paper's setting for these weights)"
    return (
        f"warning: {Path(loaded.path).name} was validated with {validated} at {steps or total} step(s) "
        f"{where}; {pipeline.sampler} at {current} step(s) was never checked on it: look at the outputs "
        "before trusting them"
    )


def vocabulary_notice(pipeline: RestorationPipeline, degradations: Sequence[str] | None) -> str | None:
    """A one-line warning when the classifier vocabulary names degradations the model was not trained on."""
    if not degradations or pipeline.embedder is None:
        return None
    unknown = [name for name in degradations if name not in pipeline.degradations]
    if not unknown:
        return None
    return (
        f"warning: --degradations {', '.join(unknown)}: not among the degradations this model was trained on "
        f"({', '.join(pipeline.degradations)}); their probabilities are DA-CLIP's guess on an unseen text"
    )


#: An output whose pixel values spread less than this (standard deviation, in [0, 1]) is "nearly constant".
CONSTANT_STD = 0.01
#: ... but only when the input's spread is at least this (a flat input may give a flat output).
NORMAL_INPUT_STD = 0.03
#: An output with at least this fraction of its values at 0 (or at 1) is "saturated" ...
SATURATED_FRACTION = 0.5
#: ... when at most this fraction of the input's values are at that same end (a dark input may have
#: much black and still must not come back white).
NORMAL_INPUT_SATURATED = 0.1


def _clipped_fractions(image: Tensor) -> tuple[float, float]:
    """Fractions of the values of an 8-bit image at 0 and at 255."""
    return float((image <= 0.5 / 255).float().mean()), float((image >= 254.5 / 255).float().mean())


def unchanged_share(lq: Tensor, restored: Tensor) -> float:
    """The share of a ``(3, H, W)`` image's pixels given back exactly as they came (all of an image kept by
    ``--keep-clean``; with the ``min_change`` gate, the windows the restorer barely changed)."""
    return float((restored == lq.to(restored.device)).all(dim=0).float().mean())


#: What a log or status line says of an image the hole fill gave back (:func:`holes_filled`).
HOLE_FILL_NOTE = "given back as it came with its white holes filled (hole_fill)"


def holes_filled(pipeline: RestorationPipeline, lq: Tensor) -> bool:
    """Whether ``pipeline``'s hole fill gives this ``(1, 3, H, W)`` image back with its holes filled
    (:meth:`RestorationPipeline.holes_to_fill`; asks DA-CLIP only when the image has a hole region)."""
    return pipeline.hole_fill and bool(pipeline.holes_to_fill(lq)[0])


def gate_note(min_change: float, unchanged: float) -> str:
    """What the ``min_change`` gate gave back of an image, for a log or status line ("" without the gate)."""
    if not min_change:
        return ""
    if unchanged == 1.0:
        return f"the restorer changed nothing by {min_change:g} grey level(s) or more: given back as it came"
    return f"{unchanged:.0%} of it given back as it came (changed by less than {min_change:g} grey level(s))"


def output_warning(name: str, lq: Tensor, restored: Tensor) -> str | None:
    """A one-line warning when the restoration of a normal input is nearly constant or mostly clipped
    to black or white (what an unsuitable sampler or step count gives without any NaN), else None.

    ``lq`` and ``restored`` are ``(3, H, W)`` in [0, 1]. Each end is judged on its own: a low-light
    input with a quarter of its values black that comes back mostly white is warned about.
    """
    lq, restored = lq.detach().float().cpu(), restored.detach().float().cpu()
    for end, clipped, input_clipped in zip(
        ("black", "white"), _clipped_fractions(restored), _clipped_fractions(lq)
    ):
        if clipped >= SATURATED_FRACTION and input_clipped <= NORMAL_INPUT_SATURATED:
            return (
                f"warning: {name}: {clipped:.0%} of the restored values are clipped to {end} (the "
                f"input's: {input_clipped:.0%}): the sampler or the number of steps may not suit this model"
            )
    spread, input_spread = float(restored.std()), float(lq.std())
    if spread < CONSTANT_STD and input_spread >= NORMAL_INPUT_STD:
        return (
            f"warning: {name}: the restored image is nearly constant (standard deviation {spread:.4f}, the "
            f"input's {input_spread:.3f}): the sampler or the number of steps may not suit this model"
        )
    return None


# ----------------------------------------------------------------------------- restoring


def _items(
    dataset: Any, plan: OutputPlan, failures: list[tuple[str, str]], log: Callable[[str], None]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, item)`` of every pending input; an unreadable one is reported, recorded and skipped."""
    for index in plan.pending:
        try:
            yield index, dataset[index]
        except ImageReadError as err:
            failures.append((str(plan.paths[index]), str(err)))
            log(f"error: {err} (skipped)")


def _batches(
    items: Iterator[tuple[int, dict[str, Any]]], batch_size: int
) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """Consecutive ``(index, item)`` pairs in batches of at most ``batch_size`` images of one size."""
    batch: list[tuple[int, dict[str, Any]]] = []
    for index, item in items:
        if batch and (len(batch) == batch_size or batch[0][1]["lq"].shape != item["lq"].shape):
            yield batch
            batch = []
        batch.append((index, item))
    if batch:
        yield batch


def image_seed(seed: int, image: Tensor) -> int:
    """A 63-bit seed from the run ``seed`` and an image's content (its float32 bytes)."""
    digest = hashlib.sha256(image.detach().float().cpu().contiguous().numpy().tobytes()).digest()
    return (int.from_bytes(digest[:8], "little") ^ (seed * 0x9E3779B97F4A7C15)) & (2**63 - 1)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


@dataclass
class _RestoreRun:
    """One call of :func:`restore_images`: its settings, and the records and failures so far."""

    pipeline: RestorationPipeline
    plan: OutputPlan
    degradations: Sequence[str] | None
    threshold: float
    seed: int
    max_pixels: int | None
    log: Callable[[str], None]
    reporter: ProgressReporter | None
    keep_clean: bool = False
    run_id: str = field(
        default_factory=lambda: datetime.now().astimezone().isoformat(timespec="milliseconds")
    )
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    done: int = 0

    def __post_init__(self) -> None:
        embedder = self.pipeline.embedder
        self.classify = getattr(embedder, "classify", None) if self.degradations else None
        self.done = len(self.plan.targets) - len(self.plan.pending)

    def _auto_tiles(self, names: str, height: int, width: int) -> dict[str, Any]:
        """The tile settings of an image over ``max_pixels`` restored without tiles ({} otherwise)."""
        pipeline = self.pipeline
        if pipeline.tile is not None or self.max_pixels is None or height * width <= self.max_pixels:
            return {}
        tile = AUTO_TILE
        self.log(
            f"{names}: {width}x{height} ({_megapixels(height * width)}) is over the "
            f"{_megapixels(self.max_pixels)} restored in one piece (--max-pixels): restoring it in tiles "
            f"of {tile} pixels (--tile to choose the size)"
        )
        return dict(tile=tile, tile_overlap=min(pipeline.tile_overlap, tile // 4))

    def _generators(self, lq: Tensor) -> list[torch.Generator]:
        """One noise generator per image, seeded by the run seed and the image's pixels: an image
        restores the same whatever its place in the batch, the batch size or the other inputs."""
        device = self.pipeline.device
        return [torch.Generator(device=device).manual_seed(image_seed(self.seed, image)) for image in lq]

    def _run_network(self, lq: Tensor, lq_clip: Tensor | None, names: str) -> Tensor:
        """The restored batch ``(B, 3, H, W)``, with progress within it when a reporter is set."""
        pipeline = self.pipeline
        generators = self._generators(lq)
        if self.reporter is None:
            return pipeline(lq, lq_clip, generator=generators)
        calls, steps = network_calls(pipeline, lq.shape[0], lq.shape[-2], lq.shape[-1])
        label = f"[{self.done + 1}/{len(self.plan.targets)}] {names} ({lq.shape[-1]}x{lq.shape[-2]})"
        self.reporter.start(label, calls, steps)
        with _count_network_calls(pipeline.model, self.reporter.update):
            restored = pipeline(lq, lq_clip, generator=generators)
        self.reporter.finish()
        return restored

    def _clean_mask(self, probs: Tensor | None, size: int) -> list[bool]:
        """Per image: whether DA-CLIP's most probable entry is :data:`data.CLEAN` ("no degradation")."""
        names = list(self.degradations or ())
        if probs is None or CLEAN not in names:
            return [False] * size
        return [names[int(j)] == CLEAN for j in probs.argmax(dim=1)]

    def restore_batch(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        """Classify, restore, check and write one batch; append its records. With ``keep_clean``, an
        image DA-CLIP finds nothing wrong with is written back as it came (the network skips it)."""
        lq = torch.stack([item["lq"] for _, item in batch])  # (B, 3, H, W)
        lq_clip = None
        if self.pipeline.embedder is not None:
            lq_clip = torch.stack([item["lq_clip"] for _, item in batch])  # (B, 3, S, S)
        probs = None
        if self.classify is not None:
            probs = _probabilities(self.pipeline, lq, lq_clip, self.degradations or ())  # (B, K)
        clean = self._clean_mask(probs, lq.shape[0])
        kept = [c and self.keep_clean for c in clean]
        restored = lq.clone()
        todo = [i for i, k in enumerate(kept) if not k]
        settings = describe_settings(self.pipeline, self.seed)
        if todo:
            names = ", ".join(_input_name(batch[i][1]["path"]) for i in todo)
            sub_clip = lq_clip[todo] if lq_clip is not None else None
            with pipeline_settings(self.pipeline, **self._auto_tiles(names, lq.shape[-2], lq.shape[-1])):
                restored[todo] = self._run_network(lq[todo], sub_clip, names).to(restored.device)
                settings = describe_settings(self.pipeline, self.seed)  # auto-tiles included
        for i, (index, item) in enumerate(batch):
            row = probs[i] if probs is not None else None  # (K,)
            _check_finite(item["path"], restored[i], row)
            warning = None if kept[i] else output_warning(_input_name(item["path"]), lq[i], restored[i])
            if warning:
                self.log(warning)
            self._write(index, restored[i])
            record = self._record(
                item,
                self.plan.targets[index],
                row,
                settings,
                kept=kept[i],
                unchanged=unchanged_share(lq[i], restored[i]),
                filled=not kept[i] and holes_filled(self.pipeline, lq[i : i + 1]),
            )
            self.records.append(record)
        self.done += len(batch)

    def _write(self, index: int, image: Tensor) -> None:
        target = self.plan.targets[index]
        try:
            write_image(target, image)
        except OSError as err:  # a full disk, a file size limit, a folder made read-only meanwhile
            raise OutputWriteError(
                f"could not write {target}: {err.strerror or err} ({len(self.records)} image(s) of this run "
                "written before it; files already there are unchanged)"
            ) from None

    def _record(
        self,
        item: dict[str, Any],
        target: Path,
        probs: Tensor | None,
        settings: str,
        *,
        kept: bool = False,
        unchanged: float = 0.0,
        filled: bool = False,
    ) -> dict[str, Any]:
        """The record of one written image (with its predictions when classified); logs its line."""
        record: dict[str, Any] = {"input": item["path"], "output": str(target), "run": self.run_id}
        record["settings"] = "kept as it came (--keep-clean)" if kept else settings
        record["unchanged"] = unchanged
        record["holes_filled"] = filled
        note = "" if kept else gate_note(self.pipeline.min_change, unchanged)
        if filled:
            note = HOLE_FILL_NOTE
        gate = f" ({note})" if note else ""
        if probs is None:
            self.log(f"{_input_name(item['path'])} -> {target}{gate}")
            return record
        names = list(self.degradations or ())
        values = probs.float().cpu().numpy()  # (K,)
        top = torch.topk(probs, k=min(3, probs.shape[0]))
        record["top3"] = [(names[j], float(p)) for p, j in zip(top.values, top.indices)]
        present = multilabel_predictions(values[None], self.threshold)[0]
        ranked = sorted(range(len(values)), key=lambda j: -values[j])
        record["probabilities"] = {names[j]: float(values[j]) for j in range(len(values))}
        name, prob = record["top3"][0]
        # "clean" is not a degradation: when it ranks first nothing is present, and it is never listed.
        found = [] if name == CLEAN else [names[j] for j in ranked if present[j] and names[j] != CLEAN]
        record["degradations"] = found
        record["clean"] = name == CLEAN
        record["threshold"] = self.threshold
        if name == CLEAN:
            verdict = f"no degradation found ({prob:.1%} clean{'; kept as it came' if kept else ''})"
        else:
            verdict = f"{name} ({prob:.1%}; present: {'+'.join(found)})"
        self.log(f"{_input_name(item['path'])}: {verdict} -> {target}{gate}")
        return record


def _probabilities(
    pipeline: RestorationPipeline, lq: Tensor, lq_clip: Tensor | None, names: Sequence[str]
) -> Tensor:
    """``(B, K)`` class probabilities of a batch, from the DA-CLIP's own test input (a grid of native
    crops for a DA-CLIP trained on them, else the restorer's ``lq_clip``)."""
    embedder = pipeline.embedder
    if int(getattr(embedder, "views", 1)) > 1:
        return embedder.classify_images(lq.to(pipeline.device), list(names))
    return embedder.classify(lq_clip.to(pipeline.device), list(names))


def _check_finite(path: str, restored: Tensor, probs: Tensor | None) -> None:
    """NonFiniteOutputError naming the image when its restoration or its probabilities hold NaN/Inf."""
    finite = bool(torch.isfinite(restored).all())
    if finite and (probs is None or bool(torch.isfinite(probs).all())):
        return
    what = "a restored image" if not finite else "degradation probabilities"
    raise NonFiniteOutputError(
        f"restoring {path} gave {what} with NaN or Inf values (the model weights or the sampling "
        "diverged); nothing was written for it"
    )


def _check_arguments(batch_size: Any, threshold: float, contact_sheet: bool, sheet_height: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be an integer >= 1, got {batch_size!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if contact_sheet and sheet_height < 8:
        raise ValueError(f"contact sheet height must be >= 8 pixels, got {sheet_height}")


def _prepare_folder(plan: OutputPlan, log: Callable[[str], None]) -> None:
    """Make the output folder; say which outputs are renamed and which images are skipped."""
    try:
        plan.folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputWriteError(
            f"could not create the output folder {plan.folder}: {err.strerror or err}"
        ) from None
    renamed = plan.renamed
    if renamed:
        log(
            f"{len(renamed)} inputs share a name with another input: their outputs keep the extension "
            f"(e.g. {renamed[0][0].name} -> {renamed[0][1].name})"
        )
    skipped = len(plan.targets) - len(plan.pending)
    if skipped:
        log(f"skipping {skipped} image(s) already restored in {plan.folder} (pass --overwrite to redo)")


def _input_paths(dataset: Any) -> list[Path]:
    if hasattr(dataset, "paths"):
        return [Path(p) for p in dataset.paths]
    return [Path(dataset[i]["path"]) for i in range(len(dataset))]


def restore_images(
    pipeline: RestorationPipeline,
    dataset: Any,
    output: str | os.PathLike,
    *,
    degradations: Sequence[str] | None = None,
    batch_size: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    progress: bool | ProgressReporter = False,
    threshold: float = DEFAULT_THRESHOLD,
    contact_sheet: bool = True,
    sheet_height: int = CONTACT_SHEET_HEIGHT,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    keep_clean: bool = False,
) -> list[dict[str, Any]]:
    """Restore every image of ``dataset`` into the folder (or, for one image, the file) ``output``.

    ``dataset`` items are dicts with ``lq``, ``lq_clip`` and ``path``; its ``paths`` attribute lists
    the inputs (as :class:`data.paired.LQImageDataset` does), so that outputs are planned before any
    image is read. ``progress``: True reports progress within each image on stderr, or pass a
    :class:`ProgressReporter`. An image over ``max_pixels`` is restored in tiles of :data:`AUTO_TILE`
    when the pipeline has no tile size (None: never). ``keep_clean``: an image whose most probable
    DA-CLIP entry is :data:`data.CLEAN` is written back unchanged (the default restores it too).

    Returns one record per restored image: ``input``, ``output``, ``run`` (this run's start time),
    ``settings`` (:func:`describe_settings`) and, when classified (a DA-CLIP and ``degradations``),
    ``top3``, ``probabilities`` (every type's) and ``degradations`` (probability >= ``threshold``,
    at least the most probable type). Into a folder it writes ``predictions.csv`` / ``.json`` (merged
    with earlier runs' rows) and contact sheets (unless ``contact_sheet`` is False), after an error too.

    Raises:
        ValueError: a bad ``batch_size`` or output (before any work).
        NonFiniteOutputError: a restored image is not finite (nothing is written for it).
        OutputWriteError: an output, the predictions or a contact sheet could not be written.
        RestoreError: at the end, when some images could not be read (the others are restored).
    """
    _check_arguments(batch_size, threshold, contact_sheet, sheet_height)
    plan = plan_outputs(_input_paths(dataset), output, overwrite=overwrite, contact_sheet=contact_sheet)
    _prepare_folder(plan, log)
    reporter = ProgressReporter() if progress is True else (progress or None)
    run = _RestoreRun(pipeline, plan, degradations, threshold, seed, max_pixels, log, reporter, keep_clean)
    sheet_rows = sheet_height if contact_sheet else None
    try:
        for batch in _batches(_items(dataset, plan, run.failures, log), batch_size):
            run.restore_batch(batch)
    except BaseException:
        _write_reports(run, sheet_rows, strict=False)  # the error in flight is the one to report
        raise
    _write_reports(run, sheet_rows, strict=True)
    if run.failures:
        _, reason = run.failures[0]
        more = f" (and {len(run.failures) - 1} more, listed above)" if len(run.failures) > 1 else ""
        raise RestoreError(
            f"{len(run.failures)} of {len(plan.targets)} images could not be restored: {reason}{more}",
            run.failures,
        )
    return run.records


def _write_reports(run: _RestoreRun, sheet_height: int | None, *, strict: bool) -> None:
    """The predictions of the images written, and the contact sheets (``sheet_height`` None: none).

    ``strict``: a file that cannot be written is an :class:`OutputWriteError`; otherwise (another
    error is already on its way) it is logged.
    """
    plan = run.plan
    if plan.single_file:
        return
    predicted = [r for r in run.records if "top3" in r]
    writers: list[tuple[Path, Callable[[], None]]] = []
    if predicted:
        writers.append(
            (
                plan.folder / PREDICTIONS_NAME,
                lambda: write_predictions(plan.folder / PREDICTIONS_NAME, predicted),
            )
        )
        json_path = plan.folder / PREDICTIONS_JSON_NAME
        writers.append((json_path, lambda: write_json_predictions(json_path, predicted)))
    # After an error that left the folder as it was (no image of this run written), the old contact
    # sheets still show it: redrawing them would only add a second error line on a full disk.
    if sheet_height is not None and (strict or run.records):
        writers.append((plan.folder / "contact_sheet.png", lambda: _contact_sheets(run, sheet_height)))
    for path, write in writers:
        try:
            write()
        except OSError as err:  # also ImageReadError: an earlier output that cannot be read back
            message = f"could not write {path}: {err.strerror or err}"
            if strict:
                raise OutputWriteError(message) from None
            run.log(f"error: {message}")


def _contact_sheets(run: _RestoreRun, height: int) -> None:
    """Contact sheets of every readable input whose output exists (restored now or by an earlier run),
    labelled with the file name and the predicted degradations of ``predictions.json``."""
    plan = run.plan
    predictions = read_json_predictions(plan.folder / PREDICTIONS_JSON_NAME)
    unreadable = {path for path, _ in run.failures}
    rows = []
    for path, target in zip(plan.paths, plan.targets):
        if str(path) in unreadable or not target.is_file() or not path.is_file():
            continue
        prediction = predictions.get(str(target), {})
        found = "+".join(prediction.get("degradations") or ()) or (
            "no degradation found" if prediction.get("clean") else ""
        )
        rows.append((path, target, f"{path.name}: {found}" if found else path.name))
    if not rows:
        return
    sheets = write_contact_sheets(plan.folder, rows, height=height)
    more = f" (and {len(sheets) - 1} more)" if len(sheets) > 1 else ""
    run.log(f"contact sheet of {len(rows)} image(s): {sheets[0]}{more}")
