"""One benchmark row: a model folder restored by onnxruntime and by PyTorch, both on the CPU, in one run
(``scripts/benchmark.py --onnx FOLDER``).

Both sides do the same work: the DA-CLIP embedding and one network evaluation for a one-pass restorer; the
embedding and ``mr`` at the same steps and order for an IR-SDE restorer (PyTorch's
:class:`irsde.diffusion.samplers.MRSolver`, the runner's numpy loop). Each is timed after a warm-up run, with
the same number of threads, and the row also gives the largest difference between their outputs (from the
same x_T for an IR-SDE).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from irsde.diffusion.samplers import sample
from irsde.export.runtime import OnnxRestorer, mr_timesteps
from irsde.inference.pipeline import RestorationPipeline

__all__ = ["benchmark_onnx"]


def _seconds(run: Callable[[], Any], repeats: int) -> float:
    """Mean wall seconds of ``run`` over ``repeats`` calls, after one warm-up call."""
    run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def _pytorch_from(
    pipeline: RestorationPipeline, lq: torch.Tensor, x_T: torch.Tensor, steps: int | None
) -> np.ndarray:
    """PyTorch's restoration from a given x_T (the runner's start), for the difference column."""
    if pipeline.one_pass:
        return pipeline(lq).numpy()
    model_fn = pipeline.model_fn(pipeline.embed(lq))
    out = sample(
        model_fn,
        lq,
        pipeline.sde,
        "mr",
        steps,
        x_T=x_T,
        prediction=pipeline.prediction,
        clamp_x0=pipeline.clamp_x0,
        order=pipeline.order,
        grid=pipeline.grid,
    )
    return out.clamp(0.0, 1.0).numpy()


def benchmark_onnx(
    folder: str | os.PathLike, size: int | tuple[int, int] = 256, repeats: int = 3, threads: int | None = None
) -> dict[str, Any]:
    """Seconds per image of onnxruntime and PyTorch on the CPU for the folder's model, side by side."""
    height, width = (size, size) if isinstance(size, int) else size
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    runner = OnnxRestorer(folder, threads=threads)
    steps = None if runner.one_pass else runner.sampling.get("num_steps")
    order = None if runner.one_pass else (runner.sampling.get("order") or 2)
    sampler = None if runner.one_pass else "mr"
    pipeline = RestorationPipeline.from_pretrained(
        folder, device="cpu", sampler=sampler, num_steps=steps, order=order
    )
    gen = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, height, width, generator=gen)
    x_T = (
        lq + pipeline.sde.max_sigma * torch.randn(lq.shape, generator=gen) if pipeline.sde is not None else lq
    )
    got = runner(lq.numpy(), x_T=x_T.numpy())
    difference = float(np.abs(got - _pytorch_from(pipeline, lq, x_T, steps)).max())
    torch_s = _seconds(lambda: pipeline(lq), repeats)
    onnx_s = _seconds(lambda: runner(lq.numpy(), x_T=x_T.numpy()), repeats)
    nfe = (
        1
        if runner.one_pass
        else len(mr_timesteps(runner.tables, steps, runner.sampling.get("grid", "uniform")))
    )
    return {
        "folder": str(folder),
        "family": runner.config.get("model", {}).get("family"),
        "size": [height, width],
        "nfe": nfe,
        "threads": threads,
        "pytorch_cpu_s_per_image": round(torch_s, 4),
        "onnxruntime_cpu_s_per_image": round(onnx_s, 4),
        "speedup": round(torch_s / onnx_s, 2) if onnx_s > 0 else None,
        "max_abs_diff": difference,
        "torch": torch.__version__,
        "onnxruntime": _onnxruntime_version(),
    }


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
