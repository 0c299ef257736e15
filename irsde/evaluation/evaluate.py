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
from typing import TYPE_CHECKING, Any

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
from irsde.inference.pipeline import RestorationPipeline, classifier_vocabulary
from irsde.models.families import family_of

if TYPE_CHECKING:
    from data.paired import PairedDataset

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

#: ``sampler_source`` of a sampler the config names (the report then adds nothing: the config says it).
CONFIGURED_SAMPLER = "as configured (sampling.sampler)"


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
    sampler: SamplerName | None = spec(
        None,
        help="None = the checkpoint's (its train.val_sampler; the released weights: posterior); posterior "
        "(the paper's), sde, ode, mr (deterministic exponential integrator of the ODE) or mr-sde "
        "(exponential integrator of the reverse SDE)",
    )
    num_steps: int | None = spec(
        None, minimum=1, help="network evaluations; None = the checkpoint's (train.val_steps) or T"
    )
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
    self_ensemble: bool | None = spec(
        None,
        help="average the restorations of the 8 flips/transposes (8x the NFE); None = as the checkpoint "
        "was validated (train.val_self_ensemble)",
    )
    min_change: float | None = spec(
        None,
        minimum=0.0,
        help="give back the input wherever the restorer changes a 64-px window by less than this RMS, in "
        "grey levels (0 = off); None = as the checkpoint was validated (train.val_min_change)",
    )
    hole_fill: bool | None = spec(
        None,
        help="give back the images DA-CLIP calls uncompleted with their white holes filled (irsde.inference.holes); None = "
        "as the checkpoint was validated (train.val_hole_fill)",
    )
    tile_batch_size: int = spec(4, minimum=1)

    def validate(self) -> None:
        if self.sampler is None and self.order is not None:
            # The checkpoint's validation ran at the default order; an order belongs to a chosen solver.
            raise ConfigError(
                "sampling.order: set sampling.sampler too (order applies to mr and mr-sde; a null sampler "
                "takes the checkpoint's validation sampler at its default order)"
            )
        try:
            check_sampler_options(self.sampler or "posterior", self.order, self.grid)
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
    ones; by default they are built from ``cfg.metrics``). ``sampling.sampler`` None samples as the
    checkpoint was validated in training (``results["sampler_source"]`` says which rule chose it).
    """
    check_output_root(cfg)  # before any model loads: a read-only output_root or a bad pair is one line
    check_test_pairs(cfg)
    pipeline = _build_pipeline(cfg)
    dataset = _build_dataset(cfg, pipeline)
    metrics = _build_metrics(cfg, pipeline, log, lpips_metric, fid_factory)
    out_dir = create_run_dir(cfg.output_root, cfg.name, subdirs=("images",) if cfg.save_images else ())
    log(f"writing results to {out_dir}")
    sampling = _sampling_summary(cfg, pipeline)
    if sampling["sampler"] != "one-pass":
        log(f"sampler: {sampling['sampler']} at {sampling['nfe']} NFE, {sampling['sampler_source']}")
    generator = torch.Generator(device=pipeline.device).manual_seed(cfg.sampling.seed)
    scoring = _Scoring(cfg, pipeline, metrics, out_dir, generator)
    per_image, fid_values = _score_dataset(scoring, dataset, log, progress)
    results = {
        "rows": _aggregate(per_image, fid_values),
        "unavailable": metrics.unavailable,
        "output": str(out_dir),
        "config": to_dict(cfg),
        "checkpoint_source": pipeline.loaded.source,
        "prediction": pipeline.prediction,
        "family": family_of(pipeline.model),
        **sampling,
    }
    _write_results(out_dir, results)
    log(format_markdown(results))
    return results


def _build_pipeline(cfg: TestConfig) -> RestorationPipeline:
    """The restorer of ``model.checkpoint``, sampling as ``sampling`` says (a null sampler: the checkpoint's)."""
    return RestorationPipeline.from_checkpoint(
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
        min_change=cfg.sampling.min_change,
        hole_fill=cfg.sampling.hole_fill,
    )


def _build_dataset(cfg: TestConfig, pipeline: RestorationPipeline) -> PairedDataset:
    """The paired test set, with the CLIP inputs of the pipeline's DA-CLIP (if any)."""
    from data.paired import PairedDataset

    embedder = pipeline.embedder
    clip_kwargs = {}
    if embedder is not None:
        clip_kwargs = dict(clip_size=int(embedder.image_size), clip_mean=embedder.mean, clip_std=embedder.std)
    return PairedDataset(cfg.data.root, cfg.data.degradations, mode="eval", **clip_kwargs)


@dataclass
class _Metrics:
    """The metric networks of one evaluation (None: off or unavailable) and why any is unavailable."""

    lpips: Any
    fid_factory: Callable[[], FIDMetric] | None
    classify: Callable[..., torch.Tensor] | None
    unavailable: dict[str, str]
    #: The names the classifier chooses among: the test set's degradations, plus ``clean`` if DA-CLIP learned
    #: it, as the demo's classification report and ``classify.py`` ask (averaging probabilities over test
    #: views is not invariant to adding a name), so an image called clean is a miss.
    names: tuple[str, ...] = ()


def _build_metrics(
    cfg: TestConfig,
    pipeline: RestorationPipeline,
    log: Callable[[str], None],
    lpips_metric: Any,
    fid_factory: Callable[[], FIDMetric] | None,
) -> _Metrics:
    """LPIPS, FID and the DA-CLIP classifier as ``cfg.metrics`` asks; a missing one is logged and recorded."""
    unavailable: dict[str, str] = {}
    if cfg.metrics.lpips and lpips_metric is None:
        lpips_metric, reason = _maybe(
            lambda: LPIPSMetric("alex", backbone_weights=cfg.metrics.lpips_weights or None), "LPIPS", log
        )
        if reason:
            unavailable["lpips"] = reason
    if lpips_metric is not None:
        lpips_metric = lpips_metric.to(pipeline.device)
    if cfg.metrics.fid and fid_factory is None:
        probe, reason = _maybe(
            lambda: FIDMetric(inception_weights=cfg.metrics.fid_weights or None), "FID", log
        )
        if reason:
            unavailable["fid"] = reason
        else:
            fid_factory = lambda: probe  # noqa: E731 - one network, reset per degradation
    # The DA-CLIP's own test input (the whole image resized, or its grid of native crops), as
    # classify.py and the demo's classification report use it.
    classify = getattr(pipeline.embedder, "classify_images", None) if cfg.metrics.classification else None
    if cfg.metrics.classification and classify is None:
        unavailable["accuracy"] = "no DA-CLIP model to classify with"
    names = classifier_vocabulary(cfg.data.degradations, pipeline.embedder)
    return _Metrics(lpips_metric, fid_factory, classify, unavailable, names)


@dataclass
class _Scoring:
    """What scoring each image needs: the settings, the restorer, the metrics, the output folder, the noise."""

    cfg: TestConfig
    pipeline: RestorationPipeline
    metrics: _Metrics
    out_dir: Path
    generator: torch.Generator


def _score_dataset(
    scoring: _Scoring, dataset: PairedDataset, log: Callable[[str], None], progress: bool
) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Every image's scores per degradation (``METRIC_COLUMNS``) and the FID of each degradation."""
    indices_by_degradation = dataset.eval_indices(scoring.cfg.data.max_images_per_degradation)
    progress_bar: Any = None
    if progress:
        total = sum(len(v) for v in indices_by_degradation.values())
        progress_bar = make_progress_bar(total=total, desc="test")
    per_image: dict[str, dict[str, list[float]]] = {}
    fid_values: dict[str, float] = {}
    for name, indices in indices_by_degradation.items():
        scores = per_image.setdefault(name, {k: [] for k in METRIC_COLUMNS})
        # One FID accumulator at a time (the feature network is shared), finished per degradation.
        factory = scoring.metrics.fid_factory
        fid = factory() if factory is not None else None
        if fid is not None:
            fid.reset()
        for index in indices:
            _score_image(scoring, dataset[index], name, scores, fid)
            if progress_bar is not None:
                progress_bar.update(1)
        if fid is not None:
            fid_values[name] = _fid_or_nan(fid, log, name)
    if progress_bar is not None:
        progress_bar.close()
    return per_image, fid_values


def _score_image(
    scoring: _Scoring, item: dict[str, Any], name: str, scores: dict[str, list[float]], fid: FIDMetric | None
) -> None:
    """Restore one test pair (timed), append its scores to ``scores``, feed FID and save the output."""
    cfg, metrics, device = scoring.cfg, scoring.metrics, scoring.pipeline.device
    lq, gt = item["lq"][None].to(device), item["gt"][None].to(device)  # (1, 3, H, W)
    out, seconds = _timed_restore(scoring.pipeline, lq, item["lq_clip"][None], scoring.generator)
    scores["seconds"].append(seconds)
    _score_quality(quantize(out), quantize(lq), gt, cfg.metrics.crop_border, scores)
    if metrics.lpips is not None:
        scores["lpips"].append(metrics.lpips(out, gt).item())
    if fid is not None:
        fid.update(gt, real=True)
        fid.update(out, real=False)
    if metrics.classify is not None:
        probs = metrics.classify(item["lq"][None], metrics.names)  # (1, K)
        predicted = metrics.names[int(probs.argmax(dim=-1))]
        scores["accuracy"].append(float(predicted == name))
    if cfg.save_images:
        write_image(scoring.out_dir / "images" / name / f"{Path(item['lq_path']).stem}.png", out[0])


def _timed_restore(
    pipeline: RestorationPipeline, lq: torch.Tensor, lq_clip: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, float]:
    """The restoration of ``lq`` ((1, 3, H, W) in [0, 1]) and its seconds (the GPU's work included)."""
    device = pipeline.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = pipeline(lq, lq_clip, generator=generator)  # (1, 3, H, W) in [0, 1]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def _score_quality(
    out8: torch.Tensor, lq8: torch.Tensor, gt: torch.Tensor, border: int, scores: dict[str, list[float]]
) -> None:
    """PSNR/SSIM (RGB and Y) of the 8-bit output, as the official evaluation scores the saved result,
    and of the 8-bit input: what "doing nothing" would get."""
    scores["psnr"].append(psnr(out8, gt, crop_border=border).item())
    scores["ssim"].append(ssim(out8, gt, crop_border=border).item())
    scores["input_psnr"].append(psnr(lq8, gt, crop_border=border).item())
    scores["input_ssim"].append(ssim(lq8, gt, crop_border=border).item())
    scores["psnr_gain"].append(scores["psnr"][-1] - scores["input_psnr"][-1])
    scores["psnr_y"].append(psnr(out8, gt, crop_border=border, y_channel=True).item())
    scores["ssim_y"].append(ssim(out8, gt, crop_border=border, y_channel=True).item())


def _aggregate(
    per_image: dict[str, dict[str, list[float]]], fid_values: dict[str, float]
) -> dict[str, dict[str, float]]:
    """One row of means per degradation (FID: over the set), then their average over degradations."""
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
    return rows


def _sampling_summary(cfg: TestConfig, pipeline: RestorationPipeline) -> dict[str, Any]:
    """How the images were sampled, and which rule chose the sampler (``sampler_source``)."""
    if pipeline.one_pass:
        sampler, steps, source = "one-pass", 1, "a one-pass restorer: one network evaluation"
    else:
        sampler, source = pipeline.sampler, _sampler_source(cfg, pipeline)
        steps = len(make_timesteps(pipeline.sde.T, pipeline.num_steps, cfg.sampling.grid, sde=pipeline.sde))
    return {
        "sampler": sampler,
        "nfe": steps * (8 if pipeline.self_ensemble else 1),
        "self_ensemble": pipeline.self_ensemble,
        "min_change": pipeline.min_change,
        "hole_fill": pipeline.hole_fill,
        "grid": cfg.sampling.grid,
        "clamp_x0": pipeline.clamp_x0,
        "sampler_source": source,
    }


def _sampler_source(cfg: TestConfig, pipeline: RestorationPipeline) -> str:
    """Why this sampler: the config's choice, or (``sampling.sampler`` null) the checkpoint's default."""
    if cfg.sampling.sampler is not None:
        return CONFIGURED_SAMPLER
    if pipeline.loaded is None or pipeline.loaded.config is None:
        source = "the paper's posterior sampler at T: the released weights record no validation sampler"
    else:
        source = "the checkpoint's validation sampler: train.val_sampler / val_steps"
    return source + ("; steps from sampling.num_steps" if cfg.sampling.num_steps is not None else "")


def sweep_samplers(
    cfg: TestConfig,
    specs: Sequence[SamplerSpec | str],
    *,
    log: Callable[[str], None] = print,
    progress: bool = True,
    **metric_overrides: Any,
) -> dict[str, Any]:
    """The quality-speed table: evaluate one model with every sampler spec on the same images.

    Each spec (``NAME[:NFE[:ORDER[:GRID]]]``, e.g. ``posterior``, ``posterior:10``, ``mr:5``,
    ``mr:10:2:logsnr``) overrides ``sampling.sampler``, ``num_steps``, ``order`` (and ``grid``) of ``cfg``
    and runs :func:`evaluate` into ``<output_root>/<name>/<spec>/``; ``samplers.md`` and ``samplers.json``
    there compare the averages, each row against the first (the reference, e.g. the paper's posterior
    sampler at T). ``metric_overrides`` go to :func:`evaluate` (``lpips_metric``, ``fid_factory``).
    """
    parsed = [SamplerSpec.parse(s) if isinstance(s, str) else s for s in specs]
    if not parsed:
        raise ConfigError("sampler sweep: no sampler spec given (e.g. posterior,posterior:10,mr:5,mr:10)")
    grids = [choice.grid or cfg.sampling.grid for choice in parsed]  # a spec's own grid wins
    for choice, grid in zip(parsed, grids):
        check_sampler_options(choice.name, choice.order, grid)
    check_output_root(cfg)
    sweep_dir = create_run_dir(cfg.output_root, cfg.name, subdirs=())
    rows: list[dict[str, Any]] = []
    for choice, grid in zip(parsed, grids):
        label = choice.label
        run = copy.deepcopy(cfg)
        run.output_root, run.name = str(sweep_dir), label.replace(":", "_")
        run.sampling.sampler, run.sampling.num_steps, run.sampling.order = (
            choice.name,
            choice.nfe,
            choice.order,
        )  # type: ignore[assignment]
        run.sampling.grid = grid  # type: ignore[assignment]
        log(f"sampler sweep: {label}")
        result = evaluate(run, log=log, progress=progress, **metric_overrides)
        rows.append(_sweep_row(label, choice, result))
    _compare_with_reference(rows)
    table = {"rows": rows, "reference": rows[0]["spec"], "output": str(sweep_dir), "config": to_dict(cfg)}
    with open(sweep_dir / "samplers.json", "w") as handle:
        json.dump(table, handle, indent=2, default=str)
    (sweep_dir / "samplers.md").write_text(format_sweep(table) + "\n")
    log(format_sweep(table))
    return table


def _sweep_row(label: str, choice: SamplerSpec, result: dict[str, Any]) -> dict[str, Any]:
    """The averages of one sweep evaluation, labelled with its sampler spec."""
    average = result["rows"].get("average", {})
    return {
        "spec": label,
        "sampler": choice.name,
        "order": choice.effective_order,
        "nfe": result["nfe"],
        "grid": result["grid"],
        **{k: average.get(k) for k in ("psnr", "ssim", "lpips", "psnr_gain", "seconds", "images")},
    }


def _compare_with_reference(rows: list[dict[str, Any]]) -> None:
    """Add each row's PSNR difference and speed-up against the first row (the reference), in place."""
    reference = rows[0]
    for row in rows:
        row["psnr_vs_reference"] = _difference(row["psnr"], reference["psnr"])
        row["speedup_vs_reference"] = (
            reference["seconds"] / row["seconds"] if reference.get("seconds") and row.get("seconds") else None
        )


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
    note = _sampling_note(results)
    if note:
        lines.append("\n" + note)
    worse = [n for n, r in rows.items() if n != "average" and r.get("psnr_gain", 0.0) < 0]
    if worse:
        lines.append(f"\nThe output is worse than the degraded input (lower PSNR) for: {', '.join(worse)}.")
    for metric, reason in results.get("unavailable", {}).items():
        lines.append(f"\n{metric}: unavailable ({reason})")
    return "\n".join(lines)


def _sampling_note(results: dict[str, Any]) -> str:
    """How the images were restored: the network evaluations per image, and the sampler (with why it was
    chosen when the config did not name it)."""
    ensemble = bool(results.get("self_ensemble"))
    gate = float(results.get("min_change") or 0.0)
    gate_note = (
        f" Windows changed by less than {gate:g} grey levels (RMS) were given back unchanged (min_change)."
        if gate
        else ""
    )
    if results.get("hole_fill"):
        gate_note += " The images DA-CLIP called uncompleted were given back with their white holes filled (hole_fill)."
    if results.get("sampler") == "one-pass":
        return (
            f"A one-pass restorer ({results.get('family', 'nafnet')}): {results['nfe']} network evaluation(s) "
            "per image" + (" (self-ensemble of 8 flips/transposes)." if ensemble else ".") + gate_note
        )
    if "sampler" not in results:
        return ""
    source = results.get("sampler_source", CONFIGURED_SAMPLER)
    why = "" if source == CONFIGURED_SAMPLER else f" ({source})"
    return (
        f"Model output: {results['prediction']}; sampler: {results['sampler']}{why}, "
        f"{results['nfe']} network evaluation(s) per image ({results.get('grid', 'uniform')} timestep grid"
        + ("; self-ensemble of 8 flips/transposes" if ensemble else "")
        + f"), x0 clamping {'on' if results['clamp_x0'] else 'off'}."
        + gate_note
    )


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
