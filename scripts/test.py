#!/usr/bin/env python
"""Evaluate a restoration model per degradation: PSNR/SSIM (RGB and Y), LPIPS, FID, accuracy, speed.

    python scripts/test.py -c configs/test.yml [key.sub=value ...]

Works with our stage-2 checkpoints and with the released pair:
    python scripts/test.py -c configs/test.yml model.checkpoint=pretrained/universal-ir.pth \\
        model.daclip_checkpoint=pretrained/daclip_ViT-B-32.pt data.root=datasets/universal/val

Results (Markdown table, CSV, JSON) and restored images go to <output_root>/<name>/. Without
sampling.sampler (configs/test.yml leaves it null) it samples as the checkpoint was validated in
training (train.val_sampler / val_steps; the paper's posterior sampler at T for the released weights),
and says which sampler it took and why.

The quality-speed table of one model over several samplers (the first one is the reference):
    python scripts/test.py -c configs/test.yml --samplers posterior,posterior:10,mr:5,mr:10,mr:20
writes one evaluation per NAME[:NFE[:ORDER[:GRID]]] spec plus samplers.md / samplers.json to <output_root>/<name>/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.engine.cli import run_main  # noqa: E402
from daclip.engine.config import (  # noqa: E402
    ConfigError,  # noqa: E402
    add_config_arguments,
    config_from_args,
)
from irsde.diffusion.samplers import SamplerSpec  # noqa: E402
from irsde.evaluation.evaluate import TestConfig, evaluate, sweep_samplers  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, default="configs/test.yml")
    parser.add_argument(
        "--samplers",
        default="",
        help="comma-separated NAME[:NFE[:ORDER[:GRID]]] specs, e.g. posterior,posterior:10,mr:5,mr:10 "
        "(evaluates each and writes the quality-speed table samplers.md; the first is the reference)",
    )
    args = parser.parse_args(argv)
    specs = [part.strip() for part in args.samplers.split(",") if part.strip()]

    def run() -> None:
        cfg = config_from_args(TestConfig, args)
        if specs:
            try:
                parsed = [SamplerSpec.parse(part) for part in specs]
            except ValueError as err:
                raise ConfigError(f"--samplers: {err}") from None
            sweep_samplers(cfg, parsed)
        else:
            evaluate(cfg)

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
