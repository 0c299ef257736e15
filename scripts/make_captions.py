"""Caption the GT images of a paired dataset with BLIP and write the DA-CLIP caption CSV of its LQ images.

Examples::

    python scripts/make_captions.py --root datasets/mine/train --out datasets/mine/train.csv
    python scripts/make_captions.py --root datasets/mine/val --out datasets/mine/val.csv \\
        --model /models/blip-image-captioning-large --device cuda --batch-size 32

Needs ``transformers`` (``pip install .[captions]``). ``--model`` is a Hugging
Face id (default: the model the DA-CLIP authors used) or a local folder saved
with ``save_pretrained``. Offline, a model that is not in the Hugging Face cache
fails within seconds with a message saying how to get it. Interrupted runs
resume: captions are cached next to the CSV after every batch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.engine.cli import run_main
from data import DEFAULT_DEGRADATIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", required=True, type=Path, help="paired dataset folder <root>/<type>/{LQ,GT}"
    )
    parser.add_argument("--out", required=True, type=Path, help="caption CSV to write")
    parser.add_argument(
        "--degradations",
        default=",".join(DEFAULT_DEGRADATIONS),
        help="comma-separated types (default: the ten)",
    )
    parser.add_argument(
        "--model", default=None, help="BLIP Hugging Face id or local folder (default: BLIP large)"
    )
    parser.add_argument("--local-files-only", action="store_true", help="never download")
    parser.add_argument(
        "--cache-dir", type=Path, help="Hugging Face cache folder (default: the standard one)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="longest caption in tokens")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; user errors print one line to stderr and return 2."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        from daclip.engine.distributed import resolve_device
        from data.captioning import DEFAULT_BLIP, BlipCaptioner, caption_paired_dataset

        model = args.model or DEFAULT_BLIP
        device = resolve_device(args.device, option="--device")  # one line for cuda without a GPU

        def load() -> BlipCaptioner:
            return BlipCaptioner.from_pretrained(
                model,
                device=device,
                local_files_only=args.local_files_only,
                cache_dir=args.cache_dir,
                max_new_tokens=args.max_new_tokens,
            )

        degradations = [d.strip() for d in args.degradations.split(",") if d.strip()]
        result = caption_paired_dataset(
            args.root,
            args.out,
            load,
            degradations,
            model_name=model,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
        print(
            f"{result.rows} rows written to {result.csv_path} ({result.unique_images} distinct GT images, "
            f"{result.captioned} captioned now, {result.empty} empty captions replaced)"
        )
        return 0

    return run_main(run, extra_errors=(ImportError,))


if __name__ == "__main__":
    sys.exit(main())
