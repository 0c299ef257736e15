#!/usr/bin/env python
"""Restore an image or a folder with a trained model and show the predicted degradation.

    python scripts/restore.py -i photo.jpg -o restored/ --checkpoint experiments/universal-ir/checkpoints/latest.pt
    python scripts/restore.py -i photos/ -o restored/ --checkpoint universal-ir.pth \\
        --daclip daclip_ViT-B-32.pt --tile 256 --steps 100
    python scripts/restore.py -i photos/ -o restored/ --checkpoint latest.pt \\
        --sampler mr-sde --steps 10 --grid logsnr

Large images: ``--tile`` runs the network on overlapping tiles (smoothly blended) so memory stays
bounded; an image over ``--max-pixels`` (default 2048x2048, the web app's limit) without ``--tile`` is
restored in tiles of 256 with a notice. Progress within each image goes to stderr (a line every 10 s
when it is not a terminal).

Outputs are PNGs named after the inputs (``photo_jpg.png`` and ``photo_png.png`` when two inputs share
a name), with the predictions in ``predictions.csv`` (top-3, and the ``degradations`` present, e.g.
``hazy+rainy``) and ``predictions.json`` (every type's probability and the predicted set: a type is
present when its probability is at least ``--threshold``, and the most probable one always is), each
row saying which run and settings made its image, and ``contact_sheet.png``: input | output per row,
labelled with the file name and the predicted degradations (``contact_sheet_1.png``, ... beyond 20
images; ``--no-contact-sheet`` skips it). Real photos need no ground truth. ``-o restored.png``
restores a single input into that file. Inputs are never overwritten; images already restored are
skipped (``--overwrite`` redoes them).

Nothing is lost and nothing is silent: the output location is checked for writing before the model
loads; an output, the predictions or a contact sheet that cannot be written is one line naming the
file (exit code 2), and what was written stays whole. An unreadable image is reported and skipped
(exit code 2 at the end); an output with NaN/Inf values is an error naming the image, never a black
PNG. A sampler or number of steps the checkpoint was never validated with, a nearly constant or
clipped output, and ``--degradations`` the model was not trained on are warnings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.engine.cli import float_at_least, int_at_least, run_main  # noqa: E402
from daclip.engine.distributed import resolve_device  # noqa: E402
from daclip.engine.errors import UserError  # noqa: E402
from daclip.inference import add_daclip_arguments  # noqa: E402
from daclip.zero_shot import DEFAULT_THRESHOLD  # noqa: E402
from data.paired import LQImageDataset  # noqa: E402
from irsde.diffusion.samplers import GRIDS, SAMPLERS, check_sampler_options  # noqa: E402
from irsde.inference.pipeline import RestorationPipeline  # noqa: E402
from irsde.inference.reports import CONTACT_SHEET_HEIGHT  # noqa: E402
from irsde.inference.restore import (  # noqa: E402
    AUTO_TILE,
    DEFAULT_MAX_PIXELS,
    check_outputs,
    peek_total_steps,
    restore_images,
    sampling_notice,
    skipped_entries,
    vocabulary_notice,
)


def _probability(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The options of ``scripts/restore.py``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "-i", "--input", required=True, help="image file or folder (its images, not its subfolders)"
    )
    p.add_argument(
        "-o", "--output", required=True, help="output folder, or a .png file name for a single input"
    )
    p.add_argument("--checkpoint", required=True, help="our checkpoint, universal-ir.pth or a folder")
    add_daclip_arguments(p)
    p.add_argument(
        "--sampler",
        default=None,
        choices=list(SAMPLERS),
        help="default: the sampler the checkpoint was validated with in training (posterior for released "
        "weights); another one is a warning",
    )
    p.add_argument(
        "--steps",
        type=int_at_least(1),
        default=None,
        help="network evaluations, at most the model's T (default: the checkpoint's validation setting "
        "with its sampler, else T)",
    )
    p.add_argument("--order", type=int, default=None, choices=[1, 2], help="mr / mr-sde order (default: 2)")
    p.add_argument(
        "--grid", default="uniform", choices=list(GRIDS), help="timestep spacing for fewer than T steps"
    )
    p.add_argument(
        "--tile", type=int_at_least(16), default=None, help="tile size for large images (e.g. 256)"
    )
    p.add_argument(
        "--overlap",
        type=int_at_least(0),
        default=None,
        help="tile overlap in pixels (default: tile / 4, at most 64)",
    )
    p.add_argument(
        "--max-pixels",
        type=int_at_least(0),
        default=DEFAULT_MAX_PIXELS,
        help=f"an image over this many pixels without --tile is restored in tiles of {AUTO_TILE}, with a notice "
        f"(default {DEFAULT_MAX_PIXELS} = 2048x2048, the web app's limit; 0 = never tile)",
    )
    p.add_argument("--batch-size", type=int_at_least(1), default=1, help="images (of equal size) per batch")
    p.add_argument(
        "--degradations",
        nargs="+",
        default=None,
        help="classifier vocabulary (default: the degradations the checkpoint was trained on)",
    )
    p.add_argument(
        "--threshold",
        type=_probability,
        default=DEFAULT_THRESHOLD,
        help="a degradation is present when its probability reaches this (the most probable one always is; "
        f"default {DEFAULT_THRESHOLD})",
    )
    p.add_argument(
        "--no-contact-sheet", action="store_true", help="write no contact_sheet.png (input | output)"
    )
    p.add_argument(
        "--sheet-height", type=int_at_least(8), default=CONTACT_SHEET_HEIGHT, help="contact sheet row height"
    )
    p.add_argument(
        "--self-ensemble",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the restorations of the 8 flips/transposes (8x the network evaluations); default: "
        "as the checkpoint was validated (train.val_self_ensemble; the demo's NAFNet uses it)",
    )
    p.add_argument(
        "--min-change",
        type=float_at_least(0.0),
        default=None,
        metavar="GREY_LEVELS",
        help="give back the input's pixels wherever the restorer changes a 64-px window by less than this "
        "RMS, in grey levels of 255 (0 = off); default: as the checkpoint was validated "
        "(train.val_min_change; the demo's restorers use 1)",
    )
    p.add_argument(
        "--hole-fill",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="give back each image DA-CLIP calls uncompleted as it came, its white holes filled from the pixels "
        "around them; default: as the checkpoint was validated (train.val_hole_fill; the demo's restorers use it)",
    )
    _add_run_options(p)
    return p


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """What to do with clean images, where to run, the seed, and whether to redo earlier outputs."""
    p.add_argument(
        "--keep-clean",
        action="store_true",
        help="an image DA-CLIP finds nothing wrong with ('clean' ranks first; models whose vocabulary has "
        "'clean') is written back unchanged; by default it is restored too (a restorer trained with clean "
        "pairs gives it back nearly unchanged)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--overwrite", action="store_true", help="redo images already restored in the output folder"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked together (usage errors exit with code 2 before anything is loaded)."""
    p = build_parser()
    args = p.parse_args(argv)
    try:
        # Without --sampler the checkpoint's sampler is checked by RestorationPipeline once it is loaded.
        check_sampler_options(args.sampler or "mr", args.order, args.grid)
    except ValueError as err:
        p.error(str(err))
    if args.tile is not None and args.overlap is None:
        args.overlap = min(64, args.tile // 4)
    elif args.tile is not None and args.overlap >= args.tile:
        p.error(f"argument --overlap: must be smaller than --tile ({args.tile}), got {args.overlap}")
    return args


def restore(args: argparse.Namespace) -> None:
    """Check the inputs and the output, load the model, restore (``main`` without the error handling)."""
    dataset = LQImageDataset(args.input)
    check_outputs(dataset.paths, args.output, contact_sheet=not args.no_contact_sheet, option="-o")
    total = peek_total_steps(args.checkpoint)
    if args.steps is not None and total is not None and args.steps > total:
        raise UserError(f"--steps {args.steps}: more than the {total} steps (T) of {args.checkpoint}")
    skipped = skipped_entries(args.input)
    if skipped:
        print(skipped)
    pipeline = RestorationPipeline.from_checkpoint(
        args.checkpoint,
        daclip=args.daclip,
        clip_model=args.clip_model,
        model_config=args.model_config,
        device=resolve_device(args.device, option="--device"),
        sampler=args.sampler,
        num_steps=args.steps,
        order=args.order,
        grid=args.grid,
        tile=args.tile,
        tile_overlap=args.overlap if args.overlap is not None else 64,
        self_ensemble=args.self_ensemble,
        min_change=args.min_change,
        hole_fill=args.hole_fill,
    )
    degradations = args.degradations or pipeline.degradations
    _announce(pipeline, args.sampler, args.steps, args.degradations)
    embedder = pipeline.embedder
    clip = {}
    if embedder is not None:
        clip = dict(clip_size=embedder.image_size, clip_mean=embedder.mean, clip_std=embedder.std)
    restore_images(
        pipeline,
        LQImageDataset(args.input, **clip),
        args.output,
        degradations=degradations,
        batch_size=args.batch_size,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=True,
        threshold=args.threshold,
        contact_sheet=not args.no_contact_sheet,
        sheet_height=args.sheet_height,
        max_pixels=args.max_pixels or None,
        keep_clean=args.keep_clean,
    )


def _announce(
    pipeline: RestorationPipeline, sampler: str | None, steps: int | None, degradations: list[str] | None
) -> None:
    """How the images will be restored, and the warnings about settings nobody validated."""
    if pipeline.one_pass:
        print(f"a one-pass restorer: {pipeline.nfe} network evaluation(s) per image")
    elif sampler is None:
        origin = (
            "the checkpoint's validation setting; --sampler / --steps to change"
            if steps is None
            else "the checkpoint's validation sampler, --steps as given"
        )
        print(f"sampler: {pipeline.sampler}, {pipeline.nfe} network evaluation(s) per image ({origin})")
    for notice in (sampling_notice(pipeline), vocabulary_notice(pipeline, degradations)):
        if notice:
            print(notice)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(restore, args)


if __name__ == "__main__":
    sys.exit(main())
