#!/usr/bin/env python
"""Share and deploy a trained restorer: one self-contained model folder, and ONNX graphs on request.

    python scripts/export.py --checkpoint experiments/universal-ir/checkpoints/latest.pt --out my_restorer/
    python scripts/export.py --checkpoint universal-ir.pth --daclip daclip_ViT-B-32.pt --out universal-ir/
    python scripts/export.py --checkpoint latest.pt --out my_restorer/ --onnx --results results/test/results.md

The folder holds config.json (family, network, IR-SDE, default sampler and steps, degradation vocabulary,
DA-CLIP architecture), restorer.safetensors (the EMA weights), daclip.safetensors and README.md (the model
card: training command, data, evaluation table, licence). Every script that takes a checkpoint takes the
folder (restore.py --checkpoint, test.py model.checkpoint=, app.py --checkpoint, classify.py -w), and
RestorationPipeline.from_pretrained loads it without unpickling anything.

--onnx (pip install -e ".[export]") adds onnx/restorer.onnx (a one-pass restorer: image in, image out; an
IR-SDE restorer: one network evaluation, the solver runs in numpy) and onnx/daclip.onnx, each checked
against PyTorch with onnxruntime; irsde.export.runtime.OnnxRestorer restores with them without PyTorch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.engine.cli import run_main  # noqa: E402
from daclip.inference import add_daclip_arguments  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", required=True, help="our stage-2 checkpoint, universal-ir.pth, or a model folder"
    )
    add_daclip_arguments(p)
    p.add_argument("--out", required=True, help="the model folder to write (new, or an empty folder)")
    p.add_argument("--onnx", action="store_true", help="also export the ONNX graphs (the [export] extra)")
    p.add_argument("--results", default="", help="scripts/test.py's results.md (or its folder) for the card")
    args = p.parse_args(argv)

    def body() -> None:
        from irsde.export.folder import export_folder

        export_folder(
            args.checkpoint,
            args.out,
            daclip=args.daclip,
            clip_model=args.clip_model,
            model_config=args.model_config,
            results=args.results,
            onnx=args.onnx,
        )

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
