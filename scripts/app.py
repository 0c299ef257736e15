#!/usr/bin/env python
"""A web page on this machine to restore one's own photos (needs the optional extra: pip install -e ".[app]").

    python scripts/app.py                                   # the newest demo restorer (scripts/demo.py)
    python scripts/app.py --checkpoint experiments/universal-ir/checkpoints/latest.pt
    python scripts/app.py --checkpoint universal-ir.pth --daclip daclip_ViT-B-32.pt --device cuda

Then open http://127.0.0.1:7860 (``--port``, ``--host``). Upload an image: the page shows the predicted
degradation(s) with probabilities; choose the sampler, steps, order, timestep grid and tiling; restore;
compare input and output side by side and download the result as PNG. Images over ``--max-pixels``
(default 2048x2048) need a tile size. Restorations run one at a time (others wait in the queue).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.engine.cli import int_at_least, run_main  # noqa: E402
from daclip.engine.errors import UserError  # noqa: E402
from daclip.inference import add_daclip_arguments  # noqa: E402
from irsde.apps.app import (  # noqa: E402
    DEFAULT_MAX_PIXELS,
    build_app,
    find_demo_checkpoint,
    launch_app,
    missing_checkpoint_message,
)
from irsde.inference.pipeline import RestorationPipeline  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint",
        default=None,
        help="our stage-2 checkpoint, universal-ir.pth or a model folder (default: the newest demo run under --experiments)",
    )
    add_daclip_arguments(p)
    p.add_argument(
        "--experiments", default="experiments", help="where to look for the demo run without --checkpoint"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: the whole network)")
    p.add_argument("--port", type=int_at_least(1), default=7860)
    p.add_argument(
        "--max-pixels",
        type=int_at_least(1),
        default=DEFAULT_MAX_PIXELS,
        help=f"largest image restored without tiling, in pixels (default {DEFAULT_MAX_PIXELS} = 2048x2048)",
    )
    args = p.parse_args(argv)
    if args.port > 65535:
        p.error(f"argument --port: must be <= 65535, got {args.port}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        checkpoint = args.checkpoint
        if checkpoint is None:
            found = find_demo_checkpoint(args.experiments)
            if found is None:
                raise UserError(missing_checkpoint_message(args.experiments))
            checkpoint = str(found)
            print(f"checkpoint: {checkpoint} (the newest demo run; --checkpoint to choose another)")
        elif not Path(checkpoint).exists():  # a file, or a model folder (scripts/export.py)
            raise UserError(f"checkpoint not found: {checkpoint}")
        if args.daclip and not Path(args.daclip).exists():
            raise UserError(f"DA-CLIP weights not found: {args.daclip}")
        try:
            import gradio  # noqa: F401
        except ImportError:
            raise UserError('the web app needs Gradio, an optional extra: pip install -e ".[app]"') from None
        pipeline = RestorationPipeline.from_checkpoint(
            checkpoint,
            daclip=args.daclip,
            clip_model=args.clip_model,
            model_config=args.model_config,
            device=args.device,
        )
        print(
            f"model on {pipeline.device}; default sampler {pipeline.sampler}, "
            f"{pipeline.num_steps or pipeline.sde.T} step(s)"
        )
        app = build_app(pipeline, max_pixels=args.max_pixels, description=f"Model: `{checkpoint}`")
        launch_app(app, args.host, args.port)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
