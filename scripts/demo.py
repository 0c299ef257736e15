#!/usr/bin/env python
"""The embedded demo: demo data, tiny DA-CLIP, tiny IR-SDE, evaluation, report — on CPU in minutes.

    python scripts/demo.py

Writes experiments/demo/report.md and experiments/demo/grid.png (a rerun uses experiments/demo_1,
...): per degradation, the restored output's PSNR/SSIM against the degraded input's.

    python scripts/demo.py --compare

also trains the same restorer without DA-CLIP (equal budget) and writes comparison.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.engine.cli import int_at_least, run_main  # noqa: E402
from irsde.apps.demo import DemoSettings, run_demo  # noqa: E402
from irsde.diffusion.samplers import SAMPLERS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    defaults = DemoSettings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo_data", help="where the demo dataset is built (reused if present)")
    p.add_argument("--experiments", default="experiments", help="where the demo folder is created")
    p.add_argument(
        "--daclip-epochs",
        type=int_at_least(1),
        default=defaults.daclip_epochs,
        help="stage-1 epochs (default: configs/daclip_demo.yml's); DA-CLIP's accuracy on photos it never sees "
        "grows with them: three times the default costs about 3 more minutes on 2 CPU cores (README, 'Stage 1 "
        "is compute-bound')",
    )
    p.add_argument("--ir-steps", type=int_at_least(1), default=defaults.ir_steps)
    p.add_argument("--sampler", default=defaults.sampler, choices=list(SAMPLERS))
    p.add_argument(
        "--steps", type=int_at_least(1), default=defaults.sampling_steps, help="network evaluations"
    )
    p.add_argument(
        "--compare",
        nargs="?",
        const="irsde",
        default=None,
        choices=["irsde", "all"],
        help="also train the restorer without DA-CLIP (irsde, the default), or also the three NAFNet rows "
        "of the paper's table (all), at equal budget; writes comparison.md",
    )
    p.add_argument(
        "--no-nafnet",
        action="store_true",
        help="skip the NAFNet + DA-CLIP restorer (trained after the IR-SDE one, about 1 min on 2 CPU cores)",
    )
    p.add_argument(
        "--clip-input",
        default=defaults.clip_input,
        choices=["image", "views"],
        help="the DA-CLIP input of the conditioned restorers (data.clip_input): the resized photo, or the "
        "mean embedding over DA-CLIP's grid of native crops (see the README)",
    )
    p.add_argument(
        "--ir-data",
        default=defaults.ir_data,
        choices=["synthetic", "paired"],
        help="the restorers' training pairs: degraded afresh at every draw from stage 1's clean crops "
        "(synthetic), or the written pairs of <data>/train (paired)",
    )
    args = p.parse_args(argv)
    settings = DemoSettings(
        daclip_epochs=args.daclip_epochs,
        ir_steps=args.ir_steps,
        sampler=args.sampler,
        sampling_steps=args.steps,
        nafnet=not args.no_nafnet,
        clip_input=args.clip_input,
        ir_data=args.ir_data,
    )
    return run_main(
        lambda: (
            run_demo(
                data_root=args.data,
                experiments_root=args.experiments,
                settings=settings,
                compare=args.compare or False,
            )
            and None
        )
    )


if __name__ == "__main__":
    sys.exit(main())
