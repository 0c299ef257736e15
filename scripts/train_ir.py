#!/usr/bin/env python
"""Stage 2: train the IR-SDE U-Net on a frozen DA-CLIP.

    python scripts/train_ir.py -c configs/universal_ir.yml [key.sub=value ...]
    torchrun --nproc_per_node=8 scripts/train_ir.py -c configs/universal_ir.yml

Resume an interrupted run with ``experiment.resume=auto`` (or a checkpoint path).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.engine.cli import run_main  # noqa: E402
from daclip.engine.config import add_config_arguments, config_from_args  # noqa: E402
from irsde.training.stage import IRTrainConfig, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, default="configs/universal_ir.yml")
    args = parser.parse_args(argv)

    def body() -> None:
        cfg = config_from_args(IRTrainConfig, args)
        run_dir = train(cfg, argv=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
        print(f"done: {run_dir}")

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
