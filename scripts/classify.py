"""Degradation classification with DA-CLIP (and plain CLIP, for the paper's comparison).

Top-3 degradations of images or folders:

    python scripts/classify.py -w daclip_ViT-B-32.pt photo.png more_photos/

Per-class accuracy and confusion matrices of CLIP and DA-CLIP on a labelled set (a paired
root ``<root>/<degradation>/LQ`` or a caption CSV), written to a new results folder:

    python scripts/classify.py -w daclip_ViT-B-32.pt --labelled datasets/universal/val

Several degradations per image: ``--multi-label`` prints, per image, the types whose probability
reaches ``--threshold`` (at least the most likely one) and every type's probability; with
``--labelled`` a mixed set (``scripts/make_dataset.py --mixed``: folders ``hazy+rainy``), it reports
per-type precision, recall and F1 and the exact-set accuracy of CLIP and DA-CLIP (a type counts as
predicted when its probability reaches the threshold or it is among the image's top k, k = its
number of true types):

    python scripts/classify.py -w daclip_ViT-B-32.pt --multi-label --labelled datasets/mixed_test

``-w`` takes the released file or a checkpoint of this project (for the released file,
``--clip-model`` names its architecture; ViT-B-32 by default).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.engine.cli import run_main  # noqa: E402
from data import CLEAN, DEFAULT_DEGRADATIONS  # noqa: E402

if TYPE_CHECKING:
    from daclip.inference import FrozenDaCLIP


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Classify degradations with DA-CLIP.")
    parser.add_argument("inputs", nargs="*", help="images or folders to classify (top-k per image)")
    parser.add_argument(
        "-w", "--weights", required=True, help="DA-CLIP checkpoint (ours, released) or a model folder"
    )
    parser.add_argument("--clip-model", default="ViT-B-32", help="architecture of a released checkpoint")
    parser.add_argument("--model-config", default=None, help="open_clip JSON for a custom architecture")
    parser.add_argument(
        "--degradations",
        default=None,
        help="comma-separated class names (default: the names the DA-CLIP was trained against, "
        f"'clean' included when it learned it; else {','.join(DEFAULT_DEGRADATIONS)})",
    )
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--labelled", help="paired root or caption CSV: report accuracy and confusion")
    parser.add_argument(
        "--multi-label",
        action="store_true",
        help="several degradations per image: per-type probabilities and a present set; with "
        "--labelled, a mixed set (folders 'hazy+rainy') and per-type precision/recall/F1",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="--multi-label: probability from which a type is present (default 0.3)",
    )
    parser.add_argument("--out", default="results/classification", help="results folder (never overwritten)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Classify images and/or evaluate a labelled set; user errors exit with code 2."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        from daclip.engine.distributed import resolve_device
        from daclip.inference import load_frozen_daclip

        names, threshold = _checked_options(args)
        daclip = load_frozen_daclip(
            args.weights, args.clip_model, args.model_config, resolve_device(args.device, option="--device")
        )
        names = names or list(daclip.vocabulary)
        if args.multi_label:  # several types at once: "clean" is no type to add to a set
            names = [n for n in names if n != CLEAN]
            if args.inputs:
                _print_multi_label(daclip, args, names, threshold)
            if args.labelled:
                _multi_label_report(daclip, args, names, threshold)
        else:
            if args.inputs:
                _print_top_k(daclip, args, names)
            if args.labelled:
                _confusion_report(daclip, args, names)
        return 0

    return run_main(run)


def _checked_options(args: argparse.Namespace) -> tuple[list[str], float]:
    """The class names and the multi-label threshold; ValueError (exit code 2) for an impossible request."""
    from daclip.zero_shot import DEFAULT_THRESHOLD

    if not args.inputs and not args.labelled:
        raise ValueError("nothing to do: give images/folders to classify and/or --labelled")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    if args.threshold is not None and not args.multi_label:
        raise ValueError("--threshold needs --multi-label")
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
    if args.degradations is None:
        return [], threshold  # the DA-CLIP's own vocabulary, once it is loaded
    names = [n.strip() for n in args.degradations.split(",") if n.strip()]
    if not names:
        raise ValueError("--degradations: no class names given")
    return names, threshold


def _print_top_k(daclip: FrozenDaCLIP, args: argparse.Namespace, names: list[str]) -> None:
    """One line per image: its ``--top-k`` degradations with their probabilities."""
    from daclip.classify import classify_paths

    results = classify_paths(daclip, args.inputs, names, k=args.top_k, batch_size=args.batch_size)
    for path, top in results:
        ranked = ", ".join(f"{name} {100 * prob:.1f}%" for name, prob in top)
        verdict = "no degradation found | " if top and top[0][0] == CLEAN else ""
        print(f"{path}: {verdict}{ranked}")


def _confusion_report(daclip: FrozenDaCLIP, args: argparse.Namespace, names: list[str]) -> None:
    """CLIP vs DA-CLIP on a labelled set: the table, the confusion matrices (text and PNG), the JSON."""
    from daclip.classify import METHOD_TITLES, evaluate_classification, labelled_images, save_confusion_png

    dataset = labelled_images(args.labelled, names, daclip.image_size, daclip.mean, daclip.std, daclip.views)
    report = evaluate_classification(daclip, dataset, names, batch_size=args.batch_size)
    folder = _report_folder(args)
    text = "\n\n".join([report.format_table(), *(report.format_confusion(m) for m in report.confusion)])
    (folder / "report.txt").write_text(text + "\n")
    payload = {"weights": str(args.weights), "labelled": str(args.labelled), **report.to_dict()}
    (folder / "report.json").write_text(json.dumps(payload, indent=2))
    for method, matrix in report.confusion.items():
        title = f"{METHOD_TITLES[method]}: accuracy {100 * report.accuracy(method):.2f}%"
        save_confusion_png(matrix, names, folder / f"confusion_{method}.png", title)
    print(report.format_table())
    print(f"report and confusion matrices: {folder}")


def _print_multi_label(
    daclip: FrozenDaCLIP, args: argparse.Namespace, names: list[str], threshold: float
) -> None:
    """One line per image: the types present (``+``-joined) and every type's probability."""
    from daclip.classify import classify_paths_multilabel

    results = classify_paths_multilabel(daclip, args.inputs, names, threshold, args.batch_size)
    for path, present, ranked in results:
        probs = ", ".join(f"{name} {100 * prob:.1f}%" for name, prob in ranked)
        print(f"{path}: {'+'.join(present)} | {probs}")


def _multi_label_report(
    daclip: FrozenDaCLIP, args: argparse.Namespace, names: list[str], threshold: float
) -> None:
    """Per-type precision/recall/F1 and exact-set accuracy of CLIP and DA-CLIP on a mixed set."""
    from daclip.classify import evaluate_multilabel, mixed_labelled_images

    dataset = mixed_labelled_images(args.labelled, names, daclip.image_size, daclip.mean, daclip.std)
    report = evaluate_multilabel(daclip, dataset, names, threshold, batch_size=args.batch_size)
    folder = _report_folder(args)
    text = "\n\n".join([report.format_table(), *(report.format_images(m) for m in report.probabilities)])
    (folder / "report.txt").write_text(text + "\n")
    payload = {"weights": str(args.weights), "labelled": str(args.labelled), **report.to_dict()}
    (folder / "report.json").write_text(json.dumps(payload, indent=2))
    print(report.format_table())
    print(f"multi-label report: {folder}")


def _report_folder(args: argparse.Namespace) -> Path:
    """A new results folder named by ``--out`` (``--out``, ``--out_1``, ...: never overwritten)."""
    from daclip.engine.run_folder import create_run_dir

    out = Path(args.out)
    return create_run_dir(out.parent, out.name, subdirs=())


if __name__ == "__main__":
    sys.exit(main())
