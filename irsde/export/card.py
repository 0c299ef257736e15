"""The model card (``README.md``) of a model folder: what the model is, how it was trained and on what,
how it scored, how to use it, and whose terms apply to the weights."""

from __future__ import annotations

from typing import Any

from irsde.inference.pretrained import PretrainedConfig

__all__ = ["model_card"]

_FAMILY_TITLES = {
    "irsde": "IR-SDE conditional U-Net (the DA-CLIP paper's restorer, sampled by a reverse-time solver)",
    "nafnet": "NAFNet (a one-pass regression restorer: one network evaluation per image)",
}


def model_card(config: PretrainedConfig, name: str, parameters: int, results: str = "") -> str:
    """The Markdown model card of a folder called ``name`` (``results``: an evaluation table, Markdown)."""
    sections = [
        _summary(config, name, parameters),
        _usage(config, name),
        _training(config.source),
        _evaluation(results, name),
        _licence(config),
    ]
    return "\n\n".join(sections) + "\n"


def _conditioning(config: PretrainedConfig) -> str:
    model = config.model
    paths = [
        p for p, on in (("degradation", model.use_degra_context), ("content", model.use_image_context)) if on
    ]
    return f"DA-CLIP ({' and '.join(paths)} embeddings)" if paths else "none (a plain restorer)"


def _summary(config: PretrainedConfig, name: str, parameters: int) -> str:
    model, sde, sampling, clip = config.model, config.sde, config.sampling, config.daclip
    rows = [
        ("family", f"`{model.family}`: {_FAMILY_TITLES.get(model.family, model.family)}"),
        ("parameters", f"{parameters:,} (restorer)"),
        ("conditioning", _conditioning(config)),
    ]
    if sde is not None:
        rows += [
            ("IR-SDE", f"max_sigma {sde.max_sigma:g}, T = {sde.T}, {sde.schedule} schedule, eps {sde.eps:g}"),
            ("prediction", f"`{getattr(model, 'prediction', 'noise')}`"),
            ("default sampler", f"`{sampling.sampler}`, {sampling.num_steps or sde.T} network evaluation(s)"),
        ]
    if clip is not None:
        width = clip.model_config.get("embed_dim", "?")
        rows.append(("DA-CLIP", f"`{clip.clip_model}` ({clip.image_size} px input, {width}-d embeddings)"))
    rows.append(("degradations", ", ".join(config.degradations)))
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    return f"# {name}\n\nA universal image restorer of daclip-uir.\n\n| | |\n|---|---|\n{table}"


def _usage(config: PretrainedConfig, name: str) -> str:
    lines = [
        "## Use",
        "",
        "```bash",
        f"python scripts/restore.py -i photos/ -o restored/ --checkpoint {name}",
        f"python scripts/test.py -c configs/test.yml model.checkpoint={name} data.root=<root>/  # per degradation",
        "```",
        "",
        "```python",
        "from irsde.inference.pipeline import RestorationPipeline",
        f'pipeline = RestorationPipeline.from_pretrained("{name}")  # JSON + safetensors, nothing unpickled',
        "restored = pipeline(lq)  # (B, 3, H, W) in [0, 1]",
        "```",
    ]
    if config.onnx is not None:
        lines += [
            "",
            f"Without PyTorch (onnxruntime; `onnx/`, checked against PyTorch at export: max abs difference "
            f"{config.onnx.max_abs_diff:.1e}):",
            "",
            "```python",
            "from irsde.export.runtime import OnnxRestorer",
            f'restored = OnnxRestorer("{name}")(lq)  # numpy (B, 3, H, W) float32 in [0, 1]',
            "```",
        ]
    return "\n".join(lines)


def _training(source: dict[str, Any]) -> str:
    lines = ["## Training", ""]
    if source.get("kind") == "official":
        lines.append(
            f"The authors' released weights (`{source.get('checkpoint', '?')}`), converted; "
            "not trained with this project."
        )
        return "\n".join(lines)
    step = source.get("step")
    lines.append(
        f"Weights: the EMA of `{source.get('checkpoint', '?')}`" + (f", step {step}." if step else ".")
    )
    command = str(source.get("command") or "")
    if command:
        command = (
            f"python {command}" if command.split(" ")[0].endswith(".py") else command
        )  # argv[0] is the script
        lines += ["", "```bash", command, "```", f"(git {source.get('git', 'unknown')})"]
    cfg = source.get("training_config") or {}
    data, train = cfg.get("data", {}), cfg.get("train", {})
    if data:
        where = data.get("train_root") if data.get("source", "paired") == "paired" else data.get("clean_root")
        lines += [
            "",
            f"Data: `{data.get('source', 'paired')}` from `{where or 'not recorded'}`, patches of {data.get('patch_size')} px, "
            f"batch {train.get('batch_size')}, {train.get('total_steps')} steps at lr {train.get('lr')}.",
        ]
    return "\n".join(lines)


def _evaluation(results: str, name: str) -> str:
    if results.strip():
        return "## Evaluation\n\n" + results.strip()
    return (
        "## Evaluation\n\nNo evaluation was attached at export (`scripts/export.py --results "
        f"<results.md>`). Measure it: `python scripts/test.py -c configs/test.yml model.checkpoint={name} "
        "data.root=<root>/`."
    )


def _licence(config: PretrainedConfig) -> str:
    lines = ["## Licence", "", "The code that wrote and reads this folder (daclip-uir) is MIT-licensed."]
    if config.source.get("kind") == "official":
        lines.append(
            "The weights are the DA-CLIP authors' release (Luo et al., ICLR 2024, github.com/Algolzw/daclip-uir): "
            "their licence and citation apply."
        )
    else:
        lines.append(
            "The weights were trained with daclip-uir; their terms are those of whoever trained them "
            "and of the data they were trained on."
        )
    clip = config.daclip
    if clip is not None and clip.pretrained:
        lines.append(
            f"DA-CLIP's frozen CLIP started from open_clip's `{clip.clip_model}` / `{clip.pretrained}` "
            "weights: their licence applies too."
        )
    return "\n".join(lines)
