"""Make a paired training set (and its caption CSVs) from a folder of clean images, or the demo set.

Examples::

    # Every clean image x every degradation, 10% of the images held out for validation.
    python scripts/make_dataset.py --source photos/ --out datasets/mine
    python scripts/make_dataset.py --source photos/ --out datasets/mine \\
        --degradations noisy,hazy,wild --param noisy.sigma=[5,25] --captions photos/captions.tsv

    # The demo dataset (all ten types, photos shipped with scikit-image), in seconds.
    python scripts/make_dataset.py --demo --out demo_data

    # A fixed test set of mixed degradations: CDD-11's eleven sets, or your own.
    python scripts/make_dataset.py --mixed --source photos/ --out datasets/mixed_test
    python scripts/make_dataset.py --mixed --source demo_data/val_clean.csv --out demo_mixed   # a CSV
    python scripts/make_dataset.py --mixed --source photos/ --out datasets/mixed_test \\
        --combinations low-light+hazy,hazy+rainy

Writes ``<out>/{train,val}/<degradation>/{LQ,GT}/<name>.png`` and
``<out>/{train,val}.csv`` (DA-CLIP caption CSVs of the LQ images). Without
``--captions`` (a TSV ``<image name><TAB><caption>``), images get the generic
caption ``"a photo"``; run ``scripts/make_captions.py`` afterwards to replace the
captions with BLIP captions. Reruns skip finished pairs; a different dataset in
``--out`` is never overwritten without ``--overwrite``.

``--mixed`` writes every clean image under every combination, no split and no CSV:
``<out>/<combination>/{LQ,GT}/<name>.png``, where the folder is the combination's canonical
name (its types in the physical chain order, joined by ``+``: ``hazy+low-light``); read it with
``PairedDataset(out, [those names], mode="eval")``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

import yaml

from data import DEFAULT_DEGRADATIONS
from data.io import ImageReadError


def parse_params(items: list[str]) -> dict[str, dict[str, object]]:
    """``["noisy.sigma=[5, 25]", "jpeg-compressed.quality=30"]`` -> ``{"noisy": {"sigma": (5, 25)}, ...}``."""
    params: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        degradation, dot, name = key.strip().rpartition(".")
        if not sep or not dot or not degradation or not name:
            raise ValueError(f"--param {item!r}: expected <degradation>.<parameter>=<value>")
        value = yaml.safe_load(text)
        params.setdefault(degradation, {})[name] = tuple(value) if isinstance(value, list) else value
    return params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output dataset folder")
    parser.add_argument(
        "--source", type=Path, help="folder of clean images (--mixed: or a CSV with a filepath column)"
    )
    parser.add_argument(
        "--demo", action="store_true", help="build the demo dataset instead (needs scikit-image)"
    )
    parser.add_argument(
        "--degradations",
        default=",".join(DEFAULT_DEGRADATIONS),
        help="comma-separated types (default: the ten)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of clean images for validation"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--captions", type=Path, help="TSV of '<image name><TAB><clean caption>' lines")
    parser.add_argument("--max-size", type=int, help="downscale images whose longer side exceeds this")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="TYPE.NAME=VALUE",
        help="generator parameter (repeatable)",
    )
    parser.add_argument("--size", type=int, default=128, help="--demo: crop size")
    parser.add_argument("--n-train", type=int, default=33, help="--demo: training images per type")
    parser.add_argument("--n-val", type=int, default=4, help="--demo: validation images per type")
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="build a test set of mixed degradations from --source (CDD-11's eleven sets by default)",
    )
    parser.add_argument(
        "--combinations",
        help="--mixed: comma-separated sets of one to three types joined by '+' (e.g. low-light+hazy,hazy+rainy)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> str:
    """Build what ``args`` asks for; returns a one-line summary."""
    degradations = [d.strip() for d in args.degradations.split(",") if d.strip()]
    if args.demo and args.mixed:
        raise ValueError("--demo and --mixed build different datasets: give one of them")
    if args.combinations is not None and not args.mixed:
        raise ValueError("--combinations needs --mixed")
    if args.demo:
        from data.demo import build_demo_dataset

        paths = build_demo_dataset(
            args.out,
            n_train=args.n_train,
            n_val=args.n_val,
            size=args.size,
            seed=args.seed,
            degradations=degradations,
            overwrite=args.overwrite,
        )
        return f"demo dataset ready in {paths.root} (captions: {paths.train_csv}, {paths.val_csv})"
    if args.source is None:
        raise ValueError("give --source <folder of clean images> or --demo")
    if args.mixed:
        from data.degradations import CDD11_COMBINATIONS, parse_combination
        from data.synthetic import MAX_TYPES, make_mixed_dataset

        combinations = (
            [parse_combination(c) for c in args.combinations.split(",") if c.strip()]
            if args.combinations is not None
            else CDD11_COMBINATIONS
        )
        for combination in combinations:
            if len(combination) > MAX_TYPES:  # what the README promises, and what training draws
                raise ValueError(
                    f"--combinations: {'+'.join(combination)} has {len(combination)} types; a combination "
                    f"has one to {MAX_TYPES}"
                )
        mixed = make_mixed_dataset(
            args.source,
            args.out,
            combinations,
            seed=args.seed,
            max_size=args.max_size,
            params=parse_params(args.param),
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        return (
            f"{mixed.written} pairs written, {mixed.skipped} already there, in {mixed.root}: "
            f"{', '.join(mixed.combinations)}"
        )
    from data.captions import read_caption_table
    from data.paired import make_paired_dataset

    result = make_paired_dataset(
        args.source,
        args.out,
        degradations,
        val_fraction=args.val_fraction,
        seed=args.seed,
        captions=read_caption_table(args.captions) if args.captions else None,
        max_size=args.max_size,
        params=parse_params(args.param),
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return f"{result.written} pairs written, {result.skipped} already there, in {result.root}"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; user errors print one line to stderr and return 2."""
    args = build_parser().parse_args(argv)
    try:
        print(run(args))
    except (ValueError, FileNotFoundError, ImageReadError, ImportError, yaml.YAMLError) as err:
        print(f"error: {err}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
