#!/usr/bin/env python
"""Measure training throughput and restoration latency for a stage-2 config; prints JSON.

python scripts/benchmark.py -c configs/universal_ir.yml --size 256 --steps 100
python scripts/benchmark.py -c configs/universal_ir_tiny.yml train.batch_size=4 data.patch_size=64
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.utils.config import add_config_arguments, load_config  # noqa: E402
from daclip.utils.distributed import resolve_device  # noqa: E402
from daclip.utils.experiment import run_main  # noqa: E402
from irsde.benchmark import run_benchmark  # noqa: E402
from irsde.train import IRTrainConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, default="configs/universal_ir.yml")
    p.add_argument("--size", type=int, default=256, help="restoration image size")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: T)")
    p.add_argument("--sampler", default="posterior", choices=["posterior", "sde", "ode", "mr"])
    p.add_argument("--tile", type=int, default=None)
    p.add_argument("--json", default="", help="also write the result to this file")
    args = p.parse_args(argv)

    def body() -> None:
        # Benchmarks need no dataset: the data roots may point anywhere.
        overrides = ["data.train_root=", "data.val_root=", *args.overrides]
        cfg = load_config(IRTrainConfig, args.config, overrides)
        device = resolve_device(cfg.experiment.device)
        result = run_benchmark(
            cfg, device, size=args.size, num_steps=args.steps, sampler=args.sampler, tile=args.tile
        )
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n")

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
