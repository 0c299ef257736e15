"""A web page to restore one's own photos (``scripts/app.py``): upload, see the degradation, restore, download.

:func:`build_app` lays out the Gradio page around a :class:`~irsde.inference.pipeline.RestorationPipeline`
and wires its events to :class:`PageEvents`, whose methods a test calls without a browser; the work is
done by :class:`AppRestorer` and plain functions that need no Gradio: reading and checking an upload
(:func:`load_upload`), the pixel limit without tiling (:func:`check_size`, the limit
``scripts/restore.py`` tiles at), the readable message of any failure (:func:`error_message`) and
finding the newest demo checkpoint (:func:`find_demo_checkpoint`). :func:`launch_app` serves the page.

Requests that use the model run one at a time: every event that touches it shares one Gradio
concurrency group of limit 1 (later requests wait in Gradio's queue and see their position), and
:class:`AppRestorer` also holds a lock around the model, so that direct callers cannot race either.

Bad input never stops the server: an unreadable or corrupt file, an unsupported format, an image over
the pixel limit without tiling, or a restoration with NaN/Inf values is reported in the page (a status
line and a warning pop-up) and the page stays usable. A restoration that is nearly constant or clipped
against a normal input carries a warning in its status line.
"""

from __future__ import annotations

import errno
import math
import os
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from daclip.engine.errors import UserError
from data import CLEAN
from data.io import IMAGE_EXTENSIONS, ImageReadError, image_to_tensor, read_image, write_image
from data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_transform
from irsde.diffusion.samplers import GRIDS, HIGHER_ORDER_SAMPLERS, SAMPLERS, check_sampler_options
from irsde.inference.pipeline import RestorationPipeline
from irsde.inference.restore import (
    DEFAULT_MAX_PIXELS,
    HOLE_FILL_NOTE,
    NonFiniteOutputError,
    gate_note,
    holes_filled,
    network_calls,
    output_warning,
    pipeline_settings,
    unchanged_share,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "TILE_CHOICES",
    "AppInputError",
    "AppRestorer",
    "KEEP",
    "PageEvents",
    "build_app",
    "check_size",
    "check_upload_name",
    "error_message",
    "find_demo_checkpoint",
    "header_size",
    "launch_app",
    "load_upload",
    "missing_checkpoint_message",
    "parse_tile",
]

#: The tile sizes offered in the page ("off": the whole image in one network call).
TILE_CHOICES: tuple[str, ...] = ("off", "128", "256", "512")
#: Where the demo (``scripts/demo.py``, :func:`irsde.apps.demo.run_demo`) leaves its restorer, under the
#: experiments folder: ``demo[_N]/universal-ir[_N]/checkpoints/latest.pt``.
DEMO_CHECKPOINT_GLOB = "demo*/universal-ir*/checkpoints/latest.pt"
#: Height of the input and output images in the page, in CSS pixels.
IMAGE_HEIGHT = 384


class AppInputError(ValueError):
    """An upload or a setting the page cannot restore; the message is meant for the page's user."""


# ----------------------------------------------------------------------------- plain functions


def find_demo_checkpoint(experiments: str | os.PathLike = "experiments") -> Path | None:
    """The newest (last written) demo restorer under ``experiments``, or None when there is none."""
    root = Path(experiments)
    if not root.is_dir():
        return None
    found = [p for p in root.glob(DEMO_CHECKPOINT_GLOB) if p.is_file()]
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime_ns, str(p)))


def missing_checkpoint_message(experiments: str | os.PathLike = "experiments") -> str:
    """One line for a start without ``--checkpoint`` and without a demo run."""
    return (
        f"no checkpoint given and no demo run found ({Path(experiments) / DEMO_CHECKPOINT_GLOB}): "
        "run `python scripts/demo.py` first, or pass --checkpoint (with --daclip for the released "
        "universal-ir.pth)"
    )


def parse_tile(choice: str | int | None) -> int | None:
    """The tile size of a page setting: None for ``off`` (or empty), else a positive integer."""
    if choice is None or (isinstance(choice, str) and choice.strip().lower() in ("", "off", "none")):
        return None
    try:
        tile = int(choice)
    except (TypeError, ValueError):
        raise AppInputError(f"tile size must be 'off' or a number of pixels, got {choice!r}") from None
    if tile < 16:
        raise AppInputError(f"tile size must be at least 16 pixels, got {tile}")
    return tile


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def check_size(width: int, height: int, tile: int | None, max_pixels: int) -> None:
    """AppInputError when a ``width`` x ``height`` image is over ``max_pixels`` and not tiled."""
    if tile is None and width * height > max_pixels:
        side = int(math.isqrt(max_pixels))
        raise AppInputError(
            f"the image is {width}x{height} ({_megapixels(width * height)}), more than the "
            f"{_megapixels(max_pixels)} (about {side}x{side}) this server restores in one piece: "
            "choose a tile size"
        )


def _display_name(path: str | os.PathLike) -> str:
    return Path(path).name


def check_upload_name(path: str | os.PathLike | None) -> Path:
    """The upload's path; AppInputError when there is none or its extension is not an image format."""
    if path is None or str(path) == "":
        raise AppInputError("upload an image first")
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        kinds = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
        what = f"'{path.suffix}'" if path.suffix else "a file without extension"
        raise AppInputError(f"{path.name}: unsupported format ({what}); upload one of: {kinds}")
    return path


def load_upload(path: str | os.PathLike | None) -> np.ndarray:
    """The uploaded image as RGB float32 ``(H, W, 3)`` in [0, 1], or AppInputError saying what is wrong.

    Messages name the file by its name only (an upload lives in a server-side cache folder).
    """
    path = check_upload_name(path)
    try:
        image = read_image(path)
    except ImageReadError as err:
        raise AppInputError(str(err).replace(str(path), path.name)) from None
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise AppInputError(f"{path.name}: the image is empty")
    return image


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(width, height)`` from an image file's header (no pixels decoded); None when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - reading the file then gives the readable error
        return None


def error_message(err: BaseException) -> str:
    """A readable one-line message for a failure in the page (also for bugs: their type is named)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return "the GPU ran out of memory: choose a (smaller) tile size"
    if isinstance(err, (AppInputError, NonFiniteOutputError)):
        text = str(err)
    elif isinstance(err, (ValueError, OSError)):
        text = str(err) or type(err).__name__
    else:
        text = f"restoring failed ({type(err).__name__}: {err})"
    lines = text.strip().splitlines()
    return lines[0] if lines else type(err).__name__


def label_of(top: list[tuple[str, float]]) -> dict[str, float]:
    """``[(name, probability), ...]`` -> the ``{name: probability}`` a Gradio Label shows."""
    return {name: float(prob) for name, prob in top}


def to_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An ``(H, W, 3)`` array or ``(3, H, W)`` tensor in [0, 1] -> ``(H, W, 3)`` uint8."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


# ----------------------------------------------------------------------------- the model side


class AppRestorer:
    """What the page does with the model: classify an upload and restore it with chosen settings.

    One request at a time (a lock around the model). ``output_dir`` receives the restored PNGs, one
    fresh sub-folder per restoration (default: a new temporary folder).
    """

    def __init__(
        self,
        pipeline: RestorationPipeline,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        output_dir: str | os.PathLike | None = None,
    ) -> None:
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        self.pipeline = pipeline
        self.max_pixels = int(max_pixels)
        self.output_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="daclip-app-"))
        self.lock = threading.Lock()

    @property
    def total_steps(self) -> int:
        """T: the most sampler steps the model allows (1 for a one-pass restorer)."""
        return 1 if self.pipeline.one_pass else int(self.pipeline.sde.T)

    @property
    def default_steps(self) -> int:
        return 1 if self.pipeline.one_pass else int(self.pipeline.num_steps or self.pipeline.sde.T)

    def _clip_input(self, image: np.ndarray) -> torch.Tensor | None:
        """The DA-CLIP input of one image, as ``scripts/restore.py`` makes it; None without DA-CLIP."""
        embedder = self.pipeline.embedder
        if embedder is None:
            return None
        size = int(getattr(embedder, "image_size", 224))
        mean = getattr(embedder, "mean", OPENAI_CLIP_MEAN)
        std = getattr(embedder, "std", OPENAI_CLIP_STD)
        return clip_transform(image, size, mean, std)[None]  # (1, 3, S, S)

    def classify(self, image: np.ndarray) -> list[tuple[str, float]]:
        """The top-3 predicted degradations of one image (empty without DA-CLIP); AppInputError if NaN."""
        lq = image_to_tensor(image)[None]
        with self.lock:
            top = self.pipeline.classify(lq, self._clip_input(image), top_k=3)[0]
        if any(not math.isfinite(p) for _, p in top):
            raise NonFiniteOutputError(
                "the degradation probabilities are NaN or Inf (the model weights diverged)"
            )
        return top

    def analyse(self, path: str | os.PathLike | None) -> tuple[np.ndarray, list[tuple[str, float]], str]:
        """An upload: (its preview, uint8), its top-3 degradations and a status line."""
        image = load_upload(path)
        top = self.classify(image)
        height, width = image.shape[:2]
        status = f"{_display_name(path)}: {width}x{height}"
        if top and top[0][0] == CLEAN:
            status += f", no degradation found (clean, {top[0][1]:.0%})"
        elif top:
            status += f", looks {top[0][0]} ({top[0][1]:.0%})"
        if width * height > self.max_pixels:
            status += f"; over {_megapixels(self.max_pixels)}: choose a tile size before restoring"
        return to_uint8(image), top, status

    def restore(
        self,
        path: str | os.PathLike | None,
        *,
        sampler: str,
        steps: int,
        order: int | None = None,
        grid: str = "uniform",
        tile: str | int | None = None,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
        keep_clean: bool = False,
    ) -> dict[str, Any]:
        """Restore one upload with these settings (``keep_clean``: an image DA-CLIP finds nothing wrong
        with is given back unchanged, the network skipped).

        Returns ``input`` and ``output`` (uint8 arrays), ``png`` (the written file), ``top3`` and a
        ``status`` line (with a warning when the result is nearly constant or clipped against a normal
        input). ``progress(done, total)`` is called after every network evaluation.

        Raises:
            AppInputError: a bad upload or setting, or an image over the pixel limit without tiling.
            NonFiniteOutputError: the restoration or its probabilities have NaN/Inf (nothing is written).
        """
        tile_size = parse_tile(tile)
        image = self._checked_upload(path, tile_size)
        settings = self._settings(sampler, steps, order, grid, tile_size)
        restored, top, calls = self._run(image, settings, seed, progress, keep_clean)
        if not bool(torch.isfinite(restored).all()) or any(not math.isfinite(p) for _, p in top):
            raise NonFiniteOutputError(
                "the restored image or its degradation probabilities have NaN or Inf values (the model "
                "weights or the sampling diverged); try another sampler or fewer steps"
            )
        name = _display_name(path or "")
        folder = Path(tempfile.mkdtemp(prefix="restored-", dir=self._output_root()))
        png = write_image(folder / f"{Path(name).stem}_restored.png", restored)
        height, width = image.shape[:2]
        how = (
            "one pass"
            if self.pipeline.one_pass
            else f"{settings['sampler']}, {int(settings['num_steps'])} step(s)"
        )
        clean = bool(top) and top[0][0] == CLEAN
        if clean and calls == 0:
            status = f"no degradation found in {name} ({width}x{height}): given back unchanged (keep clean)"
        else:
            status = f"restored {name} ({width}x{height}) with {how}, {calls} network evaluation(s)"
            status += f", tiles of {tile_size}" if tile_size else ""
            status += "; no degradation found (clean ranks first)" if clean else ""
            lq = image_to_tensor(image)
            note = gate_note(self.pipeline.min_change, unchanged_share(lq, restored))
            if holes_filled(self.pipeline, lq[None]):
                note = HOLE_FILL_NOTE
            status += f"; {note}" if note else ""
            warning = output_warning(name, lq, restored)
            if warning:
                status += "; " + warning
        return {
            "input": to_uint8(image),
            "output": to_uint8(restored),
            "png": png,
            "top3": top,
            "status": status,
        }

    def _checked_upload(self, path: str | os.PathLike | None, tile: int | None) -> np.ndarray:
        """The upload's pixels, refused over the pixel limit without tiles (from its header first)."""
        path = check_upload_name(path)
        size = header_size(path)
        if size is not None:  # refused before its pixels are decoded
            check_size(*size, tile, self.max_pixels)
        image = load_upload(path)
        height, width = image.shape[:2]
        check_size(width, height, tile, self.max_pixels)  # the decoded size (EXIF rotation aside)
        return image

    def _run(
        self,
        image: np.ndarray,
        settings: dict[str, Any],
        seed: int,
        progress: Callable[[int, int], None] | None,
        keep_clean: bool = False,
    ) -> tuple[torch.Tensor, list[tuple[str, float]], int]:
        """(restored ``(3, H, W)``, top-3, network calls) of one image, the model held for this request only."""
        lq = image_to_tensor(image)[None]  # (1, 3, H, W)
        lq_clip = self._clip_input(image)
        pipeline = self.pipeline
        if keep_clean:
            with self.lock:
                top = pipeline.classify(lq, lq_clip, top_k=3)[0]
            if top and top[0][0] == CLEAN:
                return lq[0], top, 0
        with self.lock, pipeline_settings(pipeline, **settings):
            calls, _ = network_calls(pipeline, 1, lq.shape[-2], lq.shape[-1])
            done = [0]

            def count(*_: Any) -> None:
                done[0] += 1
                if progress is not None:
                    progress(min(done[0], calls), calls)

            handle = pipeline.model.register_forward_hook(count)
            try:
                if progress is not None:
                    progress(0, calls)
                generator = torch.Generator(device=pipeline.device).manual_seed(int(seed))
                restored = pipeline(lq, lq_clip, generator=generator)[0]  # (3, H, W)
                top = pipeline.classify(lq, lq_clip, top_k=3)[0]
            finally:
                handle.remove()
        return restored, top, calls

    def _output_root(self) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return self.output_dir

    def _settings(
        self, sampler: str, steps: int | float, order: int | str | None, grid: str, tile: int | None
    ) -> dict[str, Any]:
        """The pipeline attributes of one request, checked (a one-pass restorer takes only the tiles)."""
        if self.pipeline.one_pass:
            settings: dict[str, Any] = dict(tile=tile)
            if tile is not None:
                settings["tile_overlap"] = min(self.pipeline.tile_overlap, tile // 4)
            return settings
        try:
            steps = int(steps)
        except (TypeError, ValueError):
            raise AppInputError(f"steps must be a whole number, got {steps!r}") from None
        if not 1 <= steps <= self.total_steps:
            raise AppInputError(f"steps must be between 1 and {self.total_steps} (T), got {steps}")
        order = int(order) if order not in (None, "") and sampler in HIGHER_ORDER_SAMPLERS else None
        try:
            check_sampler_options(sampler, order, grid)
        except ValueError as err:
            raise AppInputError(str(err)) from None
        settings = dict(sampler=sampler, num_steps=steps, order=order, grid=grid, tile=tile)
        if tile is not None:
            settings["tile_overlap"] = min(self.pipeline.tile_overlap, tile // 4)
        return settings


# ----------------------------------------------------------------------------- the page's events


class _Keep:
    """The value of an event output that stays as it is (``gr.update()`` in the page)."""

    def __repr__(self) -> str:
        return "KEEP"


#: An event output left unchanged.
KEEP = _Keep()
#: The status line of an empty page.
START_STATUS = "Upload an image to start."


def _report(message: str) -> None:
    print(f"app: {message}", file=sys.stderr, flush=True)


class PageEvents:
    """What the page's events do, as plain methods that a test calls without a browser or a server.

    Each event returns the new values of the page's five outputs: input image, restored image,
    download, degradation label, status line (:data:`KEEP` leaves one unchanged). A failure never
    raises: it becomes an error status, a server log line and ``warn(message)`` (a pop-up in the page).
    """

    def __init__(self, restorer: AppRestorer, warn: Callable[[str], None] | None = None) -> None:
        self.restorer = restorer
        self.warn = warn or (lambda message: None)

    def failed(self, err: BaseException) -> str:
        """The status line of a failure (bugs also print their traceback on the server)."""
        message = error_message(err)
        if not isinstance(err, (AppInputError, NonFiniteOutputError, ValueError, OSError)):
            traceback.print_exc()
        _report(message)
        self.warn(message)
        return f"**Error:** {message}"

    def upload(self, path: str | None) -> tuple[Any, Any, Any, Any, str]:
        """A new upload: its preview, its predicted degradations and a status line."""
        try:
            preview, top, text = self.restorer.analyse(path)
        except Exception as err:  # noqa: BLE001 - reported in the page; the server keeps serving
            return None, None, None, None, self.failed(err)
        return preview, None, None, label_of(top) if top else None, text

    def clear(self) -> tuple[Any, Any, Any, Any, str]:
        """The upload was removed: an empty page."""
        return None, None, None, None, START_STATUS

    def order_enabled(self, sampler: str) -> bool:
        """Whether the order setting applies to ``sampler``."""
        return sampler in HIGHER_ORDER_SAMPLERS

    def restore(
        self,
        path: str | None,
        sampler: str,
        steps: float,
        order: str,
        grid: str,
        tile: str,
        seed: float | None,
        progress: Callable[[int, int], None] | None = None,
        keep_clean: bool = False,
    ) -> tuple[Any, Any, Any, Any, str]:
        """Restore the upload with the page's settings (a failure keeps the input and the label shown)."""
        try:
            result = self.restorer.restore(
                path,
                sampler=sampler,
                steps=steps,
                order=order,
                grid=grid,
                tile=tile,
                seed=int(seed or 0),
                progress=progress,
                keep_clean=bool(keep_clean),
            )
        except Exception as err:  # noqa: BLE001 - reported in the page; the server keeps serving
            return KEEP, None, None, KEEP, self.failed(err)
        top = label_of(result["top3"]) if result["top3"] else None
        return result["input"], result["output"], str(result["png"]), top, result["status"]


# ----------------------------------------------------------------------------- the page


def _intro(pipeline: RestorationPipeline, title: str, description: str, max_pixels: int) -> str:
    text = (
        f"# {title}\n"
        "Upload a photo: DA-CLIP says which degradation it sees, then "
        + ("the NAFNet restores it in one pass. " if pipeline.one_pass else "the IR-SDE restores it. ")
        + f"Degradations this model knows: {', '.join(pipeline.degradations)}. "
        f"Images over {_megapixels(max_pixels)} need a tile size."
    )
    return text + ("\n\n" + description if description else "")


def _controls(gr: Any, restorer: AppRestorer) -> dict[str, Any]:
    """The left column: upload, restore button, predicted label and the settings."""
    pipeline = restorer.pipeline
    sampling = not pipeline.one_pass  # a one-pass restorer has no sampler settings
    samplers = list(SAMPLERS)
    kinds = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    parts = dict(
        upload=gr.File(label=f"Image to restore ({kinds})", type="filepath", elem_id="upload"),
        button=gr.Button("Restore", variant="primary", elem_id="restore"),
        label=gr.Label(label="Predicted degradation", num_top_classes=3, elem_id="degradation"),
        sampler=gr.Radio(
            samplers,
            value=pipeline.sampler if sampling else samplers[0],
            label="Sampler",
            elem_id="sampler",
            visible=sampling,
        ),
        steps=gr.Slider(
            1,
            restorer.total_steps,
            value=restorer.default_steps,
            step=1,
            label=f"Steps (network evaluations, at most T = {restorer.total_steps})",
            elem_id="steps",
            visible=sampling,
        ),
    )
    with gr.Row():
        parts["order"] = gr.Radio(
            ["1", "2"],
            value=str(pipeline.order or 2),
            label="Order (mr, mr-sde)",
            interactive=pipeline.sampler in HIGHER_ORDER_SAMPLERS,
            elem_id="order",
            visible=sampling,
        )
        parts["grid"] = gr.Radio(
            list(GRIDS), value=pipeline.grid, label="Timestep grid", elem_id="grid", visible=sampling
        )
    parts["tile"] = gr.Radio(
        list(TILE_CHOICES),
        value="off" if pipeline.tile is None else str(pipeline.tile),
        label="Tiles (bounded memory for large images)",
        elem_id="tile",
    )
    parts["seed"] = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
    parts["keep_clean"] = gr.Checkbox(
        value=False,
        label="Give back a photo DA-CLIP finds nothing wrong with unchanged",
        elem_id="keep-clean",
        visible=CLEAN in tuple(pipeline.degradations or ()),
    )
    return parts


def _results(gr: Any) -> dict[str, Any]:
    """The right column: status line, input and restored image side by side, download."""
    parts = dict(status=gr.Markdown(START_STATUS, elem_id="status"))
    image = dict(type="numpy", format="png", interactive=False, height=IMAGE_HEIGHT)
    with gr.Row():
        parts["before"] = gr.Image(label="Input", elem_id="input-image", **image)
        parts["after"] = gr.Image(label="Restored", elem_id="output-image", **image)
    parts["download"] = gr.File(label="Download the restored image (PNG)", elem_id="download")
    return parts


def _wire(gr: Any, parts: dict[str, Any], events: PageEvents) -> None:
    """Connect the components to :class:`PageEvents`; events that use the model run one at a time."""

    def page(values: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(gr.update() if value is KEEP else value for value in values)

    def on_restore(
        path: str | None,
        sampler: str,
        steps: float,
        order: str,
        grid: str,
        tile: str,
        seed: float | None,
        keep_clean: bool,
        progress: Any = gr.Progress(),  # noqa: B008 - Gradio's way to ask for a progress bar
    ) -> tuple[Any, ...]:
        def report(done: int, total: int) -> None:
            progress((done, total), desc="restoring", unit="network evaluations")

        return page(events.restore(path, sampler, steps, order, grid, tile, seed, report, keep_clean))

    model = dict(concurrency_limit=1, concurrency_id="model")
    outputs = [parts[k] for k in ("before", "after", "download", "label", "status")]
    upload = parts["upload"]
    upload.upload(lambda path: page(events.upload(path)), inputs=upload, outputs=outputs, **model)
    upload.clear(lambda: page(events.clear()), inputs=None, outputs=outputs)
    parts["sampler"].change(
        lambda name: gr.update(interactive=events.order_enabled(name)),
        inputs=parts["sampler"],
        outputs=parts["order"],
    )
    keys = ("upload", "sampler", "steps", "order", "grid", "tile", "seed", "keep_clean")
    settings = [parts[k] for k in keys]
    parts["button"].click(on_restore, inputs=settings, outputs=outputs, **model)


def build_app(
    pipeline: RestorationPipeline,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    title: str = "DA-CLIP universal image restoration",
    description: str = "",
    output_dir: str | os.PathLike | None = None,
) -> Any:
    """The Gradio Blocks of the page, its queue set up (call ``.launch()`` on it). Needs ``gradio``."""
    import gradio as gr

    restorer = AppRestorer(pipeline, max_pixels=max_pixels, output_dir=output_dir)
    events = PageEvents(restorer, warn=gr.Warning)
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(_intro(pipeline, title, description, max_pixels))
        with gr.Row():
            with gr.Column(scale=1):
                controls = _controls(gr, restorer)
            with gr.Column(scale=2):
                results = _results(gr)
        _wire(gr, {**controls, **results}, events)
    demo.queue(default_concurrency_limit=1)
    return demo


def launch_app(app: Any, host: str, port: int) -> None:
    """Serve ``app`` (blocks); a port that cannot be served on is one line suggesting ``--port``."""
    try:
        app.launch(server_name=host, server_port=port, show_error=True)
    except OSError as err:
        text = str(err)
        if "empty port" in text or getattr(err, "errno", None) == errno.EADDRINUSE:
            reason = "the port is in use"
        else:  # Gradio's own advice names its environment variable and launch(); ours is the option
            reason = text.split(". You can specify")[0].strip() or type(err).__name__
        raise UserError(f"cannot serve on {host}:{port}: {reason}; choose another with --port") from None
