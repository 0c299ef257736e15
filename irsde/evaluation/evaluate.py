"""Evaluation as the papers report it (``scripts/test.py``): per-degradation PSNR/SSIM/LPIPS/FID.

For each degradation of a paired test set (``<root>/<degradation>/{LQ,GT}/``) every LQ image is
restored, saved, and scored: PSNR and SSIM on RGB and on the BT.601 Y channel (on the 8-bit
result, ``crop_border`` pixels removed from each side — the official evaluation removes 4, see
:mod:`irsde.evaluation.metrics`), LPIPS (AlexNet), FID over the set, seconds per image, and the accuracy of
DA-CLIP's zero-shot degradation prediction. Averages over degradations come last. A metric whose
weights are not available is reported as unavailable with a one-line reason; the rest still runs.
Results go to ``results.md`` (table), ``results.csv`` and ``results.json`` in the output folder.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from daclip.engine.cli import progress_bar as make_progress_bar
from daclip.engine.config import ConfigError, spec, to_dict
from daclip.engine.distributed import resolve_device
from daclip.engine.preflight import check_image_pairs, check_writable
from daclip.engine.run_folder import create_run_dir
from data import DEFAULT_DEGRADATIONS
from data.io import write_image
from irsde.diffusion.samplers import GridName, SamplerName, SamplerSpec, check_sampler_options, make_timesteps
from irsde.evaluation.metrics import FIDMetric, LPIPSMetric, MetricUnavailable, psnr, quantize, ssim
from irsde.inference.pipeline import RestorationPipeline
from irsde.models.families import family_of

__all__ = ["TestConfig", "evaluate", "format_markdown", "format_sweep", "sweep_samplers", "METRIC_COLUMNS"]

METRIC_COLUMNS = (
    "input_psnr",
    "psnr",
    "psnr_gain",
    "input_ssim",
    "ssim",
    "psnr_y",
    "ssim_y",
    "lpips",
    "fid",
    "accuracy",
    "seconds",
)


@dataclass
class TestModelSection:
    checkpoint: str = spec(
        "", must_exist=True, help="our stage-2 checkpoint or the released universal-ir.pth"
    )
    daclip_checkpoint: str = spec(
        "", must_exist=True, help="DA-CLIP weights; '' = the one recorded in an (our) checkpoint"
    )
    clip_model: str = "ViT-B-32"
    model_config: str = spec("", must_exist=True)
    use_ema: bool = True


@dataclass
class TestDataSection:
    root: str = spec("", must_exist=True, help="<root>/<degradation>/{LQ,GT}/")
    degradations: list[str] = field(default_factory=lambda: list(DEFAULT_DEGRADATIONS))
    max_images_per_degradation: int = spec(0, minimum=0, help="0 = all")


@dataclass
class SamplingSection:
    sampler: SamplerName = spec(
        "posterior",
        help="posterior (the paper's), sde, ode, mr (deterministic exponential integrator of the ODE) "
        "or mr-sde (exponential integrator of the reverse SDE)",
    )
    num_steps: int | None = spec(None, minimum=1, help="network evaluations; None = T")
    grid: GridName = spec(
        "uniform",
        help="timestep spacing for fewer than T steps: uniform in t (the default) or logsnr "
        "(evenly spaced in the SDE's half log-SNR)",
    )
    clamp_x0: bool | None = spec(
        None, help="clamp x0 to [0, 1] in every step; None = off for noise prediction, on otherwise"
    )
    order: int | None = spec(None, minimum=1, maximum=2, help="order of the mr and mr-sde solvers (None = 2)")
    seed: int = spec(0, minimum=0)
    tile: int | None = spec(None, minimum=16, help="tiled network calls for large images")
    tile_overlap: int = spec(64, minimum=0)
    self_ensemble: bool = spec(False, help="average the restorations of the 8 flips/transposes (8x the NFE)")
    tile_batch_size: int = spec(4, minimum=1)

    def validate(self) -> None:
        try:
            check_sampler_options(self.sampler, self.order, self.grid)
        except ValueError as err:
            raise ConfigError(f"sampling.order: {err}") from None


@dataclass
class MetricsSection:
    crop_border: int = spec(4, minimum=0, help="pixels removed from each side (official evaluation: 4)")
    lpips: bool = True
    lpips_weights: str = spec("", help="torchvision alexnet-owt-7be5be79.pth; '' = torch hub cache")
    fid: bool = True
    fid_weights: str = spec("", help="pt_inception-2015-12-05-6726825d.pth; '' = torch hub cache")
    classification: bool = True


@dataclass
class TestConfig:
    """Everything ``scripts/test.py`` reads from ``configs/test.yml``."""

    __test__ = False  # not a pytest test class, despite the name

    name: str = "test"
    output_root: str = "results"
    device: str = "auto"
    save_images: bool = True
    model: TestModelSection = field(default_factory=TestModelSection)
    data: TestDataSection = field(default_factory=TestDataSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)

    def validate(self) -> None:
        if not self.model.checkpoint:
            raise ConfigError("model.checkpoint: required (our checkpoint or universal-ir.pth)")
        if not self.data.root:
            raise ConfigError("data.root: required (a folder <root>/<degradation>/{LQ,GT}/)")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _maybe(build: Callable[[], Any], what: str, log: Callable[[str], None]) -> tuple[Any, str | None]:
    try:
        return build(), None
    except MetricUnavailable as err:
        log(f"{what} unavailable: {err}")
        return None, str(err)


def check_output_root(cfg: TestConfig) -> None:
    """The results can be written under ``output_root`` (one line naming it if not), before any model loads."""
    check_writable(cfg.output_root, "output_root")


def check_test_pairs(cfg: TestConfig) -> int:
    """Every pair to evaluate is readable and its LQ and GT are of one size (headers only, before any model
    loads; a wrong GT is not found mid-evaluation). Returns how many pairs were checked."""
    from data.paired import PairedDataset

    dataset = PairedDataset(cfg.data.root, cfg.data.degradations, mode="eval")
    groups = dataset.eval_indices(cfg.data.max_images_per_degradation).values()
    pairs = ((dataset.pairs[i].lq_path, dataset.pairs[i].gt_path) for group in groups for i in group)
    return check_image_pairs(pairs, f"test set {cfg.data.root}")


def evaluate(
    cfg: TestConfig,
    *,
    log: Callable[[str], None] = print,
    lpips_metric: Any = None,
    fid_factory: Callable[[], FIDMetric] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the evaluation; returns ``{"rows": {degradation: {metric: value}}, "unavailable": ..., "output": dir}``.

    ``lpips_metric`` / ``fid_factory`` override the metric networks (tests pass randomly initialised
    ones; by default they are built from ``cfg.metrics``).
    """
    from data.paired import PairedDataset

    check_output_root(cfg)
    check_test_pairs(cfg)
    pipeline = RestorationPipeline.from_checkpoint(
        cfg.model.checkpoint,
        daclip=cfg.model.daclip_checkpoint,
        clip_model=cfg.model.clip_model,
        model_config=cfg.model.model_config,
        device=resolve_device(cfg.device, option="device"),
        use_ema=cfg.model.use_ema,
        daclip_option="model.daclip_checkpoint",
        sampler=cfg.sampling.sampler,
        num_steps=cfg.sampling.num_steps,
        grid=cfg.sampling.grid,
        clamp_x0=cfg.sampling.clamp_x0,
        order=cfg.sampling.order,
        tile=cfg.sampling.tile,
        tile_overlap=cfg.sampling.tile_overlap,
        tile_batch_size=cfg.sampling.tile_batch_size,
        self_ensemble=cfg.sampling.self_ensemble,
    )
    embedder, device = pipeline.embedder, pipeline.device
    clip_kwargs = {}
    if embedder is not None:
        clip_kwargs = dict(clip_size=int(embedder.image_size), clip_mean=embedder.mean, clip_std=embedder.std)
    dataset = PairedDataset(cfg.data.root, cfg.data.degradations, mode="eval", **clip_kwargs)

    unavailable: dict[str, str] = {}
    if cfg.metrics.lpips and lpips_metric is None:
        lpips_metric, reason = _maybe(
            lambda: LPIPSMetric("alex", backbone_weights=cfg.metrics.lpips_weights or None), "LPIPS", log
        )
        if reason:
            unavailable["lpips"] = reason
    if lpips_metric is not None:
        lpips_metric = lpips_metric.to(device)
    if cfg.metrics.fid and fid_factory is None:
        probe, reason = _maybe(
            lambda: FIDMetric(inception_weights=cfg.metrics.fid_weights or None), "FID", log
        )
        if reason:
            unavailable["fid"] = reason
        else:
            fid_factory = lambda: probe  # noqa: E731 - one network, reset per degradation
    classify = getattr(embedder, "classify", None) if cfg.metrics.classification else None
    if cfg.metrics.classification and classify is None:
        unavailable["accuracy"] = "no DA-CLIP model to classify with"

    out_dir = create_run_dir(cfg.output_root, cfg.name, subdirs=("images",) if cfg.save_images else ())
    log(f"writing results to {out_dir}")
    indices_by_degradation = dataset.eval_indices(cfg.data.max_images_per_degradation)

    progress_bar: Any = None
    if progress:
        total = sum(len(v) for v in indices_by_degradation.values())
        progress_bar = make_progress_bar(total=total, desc="test")
    generator = torch.Generator(device=device).manual_seed(cfg.sampling.seed)
    per_image: dict[str, dict[str, list[float]]] = {}
    fid_values: dict[str, float] = {}
    border = cfg.metrics.crop_border
    for name, indices in indices_by_degradation.items():
        scores = per_image.setdefault(name, {k: [] for k in METRIC_COLUMNS})
        # One FID accumulator at a time (the feature network is shared), finished per degradation.
        fid = fid_factory() if fid_factory is not None else None
        if fid is not None:
            fid.reset()
        for index in indices:
            item = dataset[index]
            lq, gt = item["lq"][None].to(device), item["gt"][None].to(device)  # (1, 3, H, W)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = pipeline(lq, item["lq_clip"][None], generator=generator)  # (1, 3, H, W) in [0, 1]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            scores["seconds"].append(time.perf_counter() - start)
            out8 = quantize(out)  # the saved 8-bit result, as the official evaluation scores it
            scores["psnr"].append(psnr(out8, gt, crop_border=border).item())
            scores["ssim"].append(ssim(out8, gt, crop_border=border).item())
            # The degraded input scored the same way: what "doing nothing" would get.
            lq8 = quantize(lq)
            scores["input_psnr"].append(psnr(lq8, gt, crop_border=border).item())
            scores["input_ssim"].append(ssim(lq8, gt, crop_border=border).item())
            scores["psnr_gain"].append(scores["psnr"][-1] - scores["input_psnr"][-1])
            scores["psnr_y"].append(psnr(out8, gt, crop_border=border, y_channel=True).item())
            scores["ssim_y"].append(ssim(out8, gt, crop_border=border, y_channel=True).item())
            if lpips_metric is not None:
                scores["lpips"].append(lpips_metric(out, gt).item())
            if fid is not None:
                fid.update(gt, real=True)
                fid.update(out, real=False)
            if classify is not None:
                probs = classify(item["lq_clip"][None].to(device), cfg.data.degradations)  # (1, K)
                predicted = cfg.data.degradations[int(probs.argmax(dim=-1))]
                scores["accuracy"].append(float(predicted == name))
            if cfg.save_images:
                write_image(out_dir / "images" / name / f"{Path(item['lq_path']).stem}.png", out[0])
            if progress_bar is not None:
                progress_bar.update(1)
        if fid is not None:
            fid_values[name] = _fid_or_nan(fid, log, name)
    if progress_bar is not None:
        progress_bar.close()

    rows: dict[str, dict[str, float]] = {}
    for name, scores in per_image.items():
        row = {k: _mean(v) for k, v in scores.items() if v}
        row["images"] = len(scores["psnr"])
        if name in fid_values:
            row["fid"] = fid_values[name]
        rows[name] = row
    if rows:
        rows["average"] = {
            k: _mean([r[k] for r in rows.values() if k in r and not math.isnan(r[k])])
            for k in (*METRIC_COLUMNS, "images")
            if any(k in r for r in rows.values())
        }
        rows["average"]["images"] = sum(r["images"] for n, r in rows.items() if n != "average")
    results = {
        "rows": rows,
        "unavailable": unavailable,
        "output": str(out_dir),
        "config": to_dict(cfg),
        "checkpoint_source": pipeline.loaded.source,
        "prediction": pipeline.prediction,
        "family": family_of(pipeline.model),
        "sampler": "one-pass" if pipeline.one_pass else cfg.sampling.sampler,
        "nfe": (
            1
            if pipeline.one_pass
            else len(
                make_timesteps(pipeline.sde.T, cfg.sampling.num_steps, cfg.sampling.grid, sde=pipeline.sde)
            )
        )
        * (8 if cfg.sampling.self_ensemble else 1),
        "self_ensemble": cfg.sampling.self_ensemble,
        "grid": cfg.sampling.grid,
        "clamp_x0": pipeline.clamp_x0,
    }
    _write_results(out_dir, results)
    log(format_markdown(results))
    return results


def sweep_samplers(
    cfg: TestConfig,
    specs: Sequence[SamplerSpec | str],
    *,
    log: Callable[[str], None] = print,
    progress: bool = True,
    **metric_overrides: Any,
) -> dict[str, Any]:
    """The quality-speed table: evaluate one model with every sampler spec on the same images.

    Each spec (``NAME[:NFE[:ORDER]]``, e.g. ``posterior``, ``posterior:10``, ``mr:5``) overrides
    ``sampling.sampler``, ``num_steps`` and ``order`` of ``cfg`` and runs :func:`evaluate` into
    ``<output_root>/<name>/<spec>/``; ``samplers.md`` and ``samplers.json`` there compare the averages, each
    row against the first (the reference, e.g. the paper's posterior sampler at T). ``metric_overrides``
    go to :func:`evaluate` (``lpips_metric``, ``fid_factory``).
    """
    parsed = [SamplerSpec.parse(s) if isinstance(s, str) else s for s in specs]
    if not parsed:
        raise ConfigError("sampler sweep: no sampler spec given (e.g. posterior,posterior:10,mr:5,mr:10)")
    for choice in parsed:
        check_sampler_options(choice.name, choice.order, cfg.sampling.grid)
    check_output_root(cfg)
    sweep_dir = create_run_dir(cfg.output_root, cfg.name, subdirs=())
    rows: list[dict[str, Any]] = []
    for choice in parsed:
        label = (
            choice.name
            + (f":{choice.nfe}" if choice.nfe else "")
            + (f":{choice.order}" if choice.order else "")
        )
        run = copy.deepcopy(cfg)
        run.output_root, run.name = str(sweep_dir), label.replace(":", "_")
        run.sampling.sampler, run.sampling.num_steps, run.sampling.order = (
            choice.name,
            choice.nfe,
            choice.order,
        )  # type: ignore[assignment]
        log(f"sampler sweep: {label}")
        result = evaluate(run, log=log, progress=progress, **metric_overrides)
        average = result["rows"].get("average", {})
        rows.append(
            {
                "spec": label,
                "sampler": choice.name,
                "order": choice.effective_order,
                "nfe": result["nfe"],
                "grid": result["grid"],
                **{k: average.get(k) for k in ("psnr", "ssim", "lpips", "psnr_gain", "seconds", "images")},
            }
        )
    reference = rows[0]
    for row in rows:
        row["psnr_vs_reference"] = _difference(row["psnr"], reference["psnr"])
        row["speedup_vs_reference"] = (
            reference["seconds"] / row["seconds"] if reference.get("seconds") and row.get("seconds") else None
        )
    table = {"rows": rows, "reference": reference["spec"], "output": str(sweep_dir), "config": to_dict(cfg)}
    with open(sweep_dir / "samplers.json", "w") as handle:
        json.dump(table, handle, indent=2, default=str)
    (sweep_dir / "samplers.md").write_text(format_sweep(table) + "\n")
    log(format_sweep(table))
    return table


def _difference(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def format_sweep(table: dict[str, Any]) -> str:
    """A :func:`sweep_samplers` table as Markdown (one row per sampler spec)."""

    def cell(value: Any, fmt: str) -> str:
        return (
            "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)
        )

    lines = [
        f"| sampler | order | NFE | grid | PSNR | SSIM | LPIPS | seconds / image | PSNR − {table['reference']} "
        f"| speed-up vs {table['reference']} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table["rows"]:
        lines.append(
            f"| {row['sampler']} | {row['order']} | {row['nfe']} | {row['grid']} | {cell(row['psnr'], '.2f')} | "
            f"{cell(row['ssim'], '.4f')} | {cell(row['lpips'], '.4f')} | {cell(row['seconds'], '.3f')} | "
            f"{cell(row['psnr_vs_reference'], '+.2f')} | {cell(row['speedup_vs_reference'], '.1f')}× |"
        )
    return "\n".join(lines)


def _fid_or_nan(metric: FIDMetric, log: Callable[[str], None], name: str) -> float:
    try:
        return float(metric.compute())
    except (ValueError, RuntimeError) as err:  # e.g. fewer than two images
        log(f"FID for {name} not computed: {err}")
        return float("nan")


def format_markdown(results: dict[str, Any]) -> str:
    """The results as a Markdown table (one row per degradation, then the average)."""
    rows = results["rows"]
    columns = [c for c in METRIC_COLUMNS if any(c in r for r in rows.values())]
    header = "| degradation | images | " + " | ".join(columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for name, row in rows.items():
        cells = []
        for column in columns:
            value = row.get(column)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("n/a")
            elif column in ("psnr", "psnr_y", "fid", "input_psnr"):
                cells.append(f"{value:.2f}")
            elif column == "psnr_gain":
                cells.append(f"{value:+.2f}")
            elif column == "seconds":
                cells.append(f"{value:.3f}")
            else:
                cells.append(f"{value:.4f}")
        label = f"**{name}**" if name == "average" else name
        lines.append(f"| {label} | {int(row.get('images', 0))} | " + " | ".join(cells) + " |")
    if results.get("sampler") == "one-pass":
        lines.append(
            f"\nA one-pass restorer ({results.get('family', 'nafnet')}): {results['nfe']} network evaluation(s) "
            "per image" + (" (self-ensemble of 8 flips/transposes)." if results.get("self_ensemble") else ".")
        )
    elif "sampler" in results:
        lines.append(
            f"\nModel output: {results['prediction']}; sampler: {results['sampler']}, "
            f"{results['nfe']} network evaluation(s) per image ({results.get('grid', 'uniform')} "
            "timestep grid"
            + ("; self-ensemble of 8 flips/transposes" if results.get("self_ensemble") else "")
            + "), x0 clamping "
            f"{'on' if results['clamp_x0'] else 'off'}."
        )
    worse = [n for n, r in rows.items() if n != "average" and r.get("psnr_gain", 0.0) < 0]
    if worse:
        lines.append(f"\nThe output is worse than the degraded input (lower PSNR) for: {', '.join(worse)}.")
    for metric, reason in results.get("unavailable", {}).items():
        lines.append(f"\n{metric}: unavailable ({reason})")
    return "\n".join(lines)


def _write_results(out_dir: Path, results: dict[str, Any]) -> None:
    (out_dir / "results.md").write_text(format_markdown(results) + "\n")
    with open(out_dir / "results.json", "w") as handle:
        json.dump(results, handle, indent=2, default=str)
    rows = results["rows"]
    with open(out_dir / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["degradation", "images", *METRIC_COLUMNS])
        for name, row in rows.items():
            writer.writerow([name, row.get("images", 0), *[row.get(c, "") for c in METRIC_COLUMNS]])
