#!/usr/bin/env python
"""The embedded demo: demo data, tiny DA-CLIP, tiny IR-SDE, evaluation, report — on CPU in minutes.

    python scripts/demo.py

Writes experiments/demo/report.md and experiments/demo/grid.png (a rerun uses experiments/demo_1,
...). The models are tiny and start from random weights: the demo shows the pipeline working, not
the paper's quality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.utils.experiment import run_main  # noqa: E402
from irsde.demo import run_demo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo_data", help="where the demo dataset is built (reused if present)")
    p.add_argument("--experiments", default="experiments", help="where the demo folder is created")
    p.add_argument("--daclip-epochs", type=int, default=20)
    p.add_argument("--ir-steps", type=int, default=600)
    args = p.parse_args(argv)
    return run_main(
        lambda: (
            run_demo(
                data_root=args.data,
                experiments_root=args.experiments,
                daclip_epochs=args.daclip_epochs,
                ir_steps=args.ir_steps,
            )
            and None
        )
    )


if __name__ == "__main__":
    sys.exit(main())
