#!/usr/bin/env python
"""Evaluate a restoration model per degradation: PSNR/SSIM (RGB and Y), LPIPS, FID, accuracy, speed.

    python scripts/test.py -c configs/test.yml [key.sub=value ...]

Works with our stage-2 checkpoints and with the released pair:
    python scripts/test.py -c configs/test.yml model.checkpoint=pretrained/universal-ir.pth \\
        model.daclip_checkpoint=pretrained/daclip_ViT-B-32.pt data.root=datasets/universal/val

Results (Markdown table, CSV, JSON) and restored images go to <output_root>/<name>/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.utils.config import add_config_arguments, config_from_args  # noqa: E402
from daclip.utils.experiment import run_main  # noqa: E402
from irsde.evaluate import TestConfig, evaluate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, default="configs/test.yml")
    args = parser.parse_args(argv)
    return run_main(lambda: evaluate(config_from_args(TestConfig, args)) and None)


if __name__ == "__main__":
    sys.exit(main())
