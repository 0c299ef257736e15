"""Stage 1: train DA-CLIP (the controller of a frozen open_clip model) on a caption CSV.

    python scripts/train_daclip.py -c configs/daclip.yml [key.sub=value ...]
    python scripts/train_daclip.py -c configs/daclip_tiny.yml          # CPU demo, minutes
    scripts/dist_train.sh 4 scripts/train_daclip.py -c configs/daclip.yml   # 4 GPUs (torchrun)

Resume with ``experiment.resume=auto`` (the run's latest checkpoint) or a checkpoint path.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.engine.cli import run_main  # noqa: E402
from daclip.engine.config import add_config_arguments, config_from_args  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``-c CONFIG [overrides]``, train, print the run folder; user errors exit with code 2."""
    parser = argparse.ArgumentParser(description="Train DA-CLIP (stage 1).")
    add_config_arguments(parser, default="configs/daclip.yml")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)
    command = list(sys.argv) if argv is None else ["scripts/train_daclip.py", *argv]

    def run() -> int:
        from daclip.train import DaCLIPTrainConfig, train_daclip

        cfg = config_from_args(DaCLIPTrainConfig, args)
        run_dir = train_daclip(cfg, command, progress=not args.no_progress)
        print(f"run folder: {run_dir}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
