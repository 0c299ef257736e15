#!/usr/bin/env python
"""Measure training throughput and restoration latency for a stage-2 config; prints JSON.

python scripts/benchmark.py -c configs/universal_ir.yml --size 256 --steps 100
python scripts/benchmark.py -c configs/universal_ir_tiny.yml train.batch_size=4 data.patch_size=64

Restoration is timed with the config's validation sampler (train.val_sampler / val_steps: the paper's
posterior sampler at T for configs/universal_ir.yml, mr at 1 step for the demo's) unless --sampler is given.

Samplers side by side (no training benchmark): one model, one image size, one JSON row per sampler
spec NAME[:NFE[:ORDER[:GRID]]] (NFE defaults to T) and grid, each timed after a warm-up run:

python scripts/benchmark.py -c configs/universal_ir.yml --size 256 384 \\
    --samplers posterior:100,posterior:10,mr:5,mr:10,mr:20,mr-sde:10:1 --grid uniform logsnr --json cpu.json

onnxruntime against PyTorch, both on the CPU, seconds per image of a model folder with ONNX graphs
(scripts/export.py --onnx; no config needed):

python scripts/benchmark.py --onnx my_restorer/ --size 256
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from daclip.engine.cli import run_main  # noqa: E402
from daclip.engine.config import add_config_arguments, load_config  # noqa: E402
from daclip.engine.distributed import resolve_device  # noqa: E402
from irsde.apps.benchmark import SamplerSpec, benchmark_samplers, run_benchmark  # noqa: E402
from irsde.diffusion.samplers import GRIDS, SAMPLERS, check_sampler_options  # noqa: E402
from irsde.training.stage import IRTrainConfig  # noqa: E402


def _sampler_specs(text: str) -> list[SamplerSpec]:
    """An argparse type: comma-separated NAME[:NFE[:ORDER[:GRID]]] specs."""
    try:
        return [SamplerSpec.parse(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, default="configs/universal_ir.yml")
    p.add_argument(
        "--size", type=int, nargs="+", default=[256], metavar="N", help="restoration image size: S, or H W"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps (default: the config's train.val_steps without --sampler, else T)",
    )
    p.add_argument(
        "--sampler",
        default=None,
        choices=list(SAMPLERS),
        help="default: the config's validation sampler (train.val_sampler; the paper's config: posterior)",
    )
    p.add_argument("--order", type=int, default=None, choices=[1, 2], help="mr / mr-sde order (default: 2)")
    p.add_argument(
        "--grid",
        nargs="+",
        default=["uniform"],
        choices=list(GRIDS),
        help="timestep spacing (several: --samplers)",
    )
    p.add_argument(
        "--samplers",
        type=_sampler_specs,
        nargs="+",
        default=None,
        metavar="NAME[:NFE[:ORDER[:GRID]]]",
        help="time these sampler settings side by side (comma- or space-separated) instead of training",
    )
    p.add_argument("--repeats", type=int, default=2, help="timed restorations per setting (after a warm-up)")
    p.add_argument("--tile", type=int, default=None)
    p.add_argument("--json", default="", help="also write the result to this file")
    p.add_argument(
        "--onnx", default="", metavar="FOLDER", help="time a model folder's ONNX graphs against PyTorch"
    )
    return p


def _checked_size(p: argparse.ArgumentParser, args: argparse.Namespace) -> int | tuple[int, int]:
    """The image size (S or (H, W)), after checking the options that fit together (else exit code 2)."""
    if len(args.size) not in (1, 2):
        p.error(f"--size takes S or H W, got {len(args.size)} numbers")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.samplers is None:
        if len(args.grid) != 1:
            p.error("several --grid values need --samplers")
        if args.sampler is None and args.order is not None:
            p.error("--order needs --sampler (mr or mr-sde)")
        try:
            check_sampler_options(args.sampler or "posterior", args.order, args.grid[0])
        except ValueError as err:
            p.error(str(err))
    return args.size[0] if len(args.size) == 1 else tuple(args.size)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    size = _checked_size(p, args)

    def body() -> None:
        if args.onnx:  # a model folder: no config
            from irsde.apps.benchmark_onnx import benchmark_onnx

            _report(benchmark_onnx(args.onnx, size=size, repeats=args.repeats), args.json)
            return
        # Benchmarks need no dataset: the data roots may point anywhere.
        overrides = ["data.train_root=", "data.val_root=", *args.overrides]
        cfg = load_config(IRTrainConfig, args.config, overrides)
        device = resolve_device(cfg.experiment.device)
        if args.samplers is not None:
            specs = [spec for group in args.samplers for spec in group]
            result = benchmark_samplers(
                cfg, device, specs, size=size, grids=args.grid, repeats=args.repeats, tile=args.tile
            )
        else:
            result = run_benchmark(
                cfg,
                device,
                size=size,
                num_steps=args.steps,
                sampler=args.sampler,
                order=args.order,
                grid=args.grid[0],
                tile=args.tile,
                repeats=args.repeats,
            )
        _report(result, args.json)

    return run_main(body)


def _report(result: dict, path: str) -> None:
    """Print the result as JSON, and write it to ``path`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        Path(path).write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
