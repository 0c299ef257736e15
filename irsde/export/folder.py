"""``scripts/export.py``: a stage-2 checkpoint (or the released ``universal-ir.pth`` + ``daclip_ViT-B-32.pt``)
-> one self-contained model folder (:mod:`irsde.inference.pretrained`), with its model card and, on request,
its ONNX graphs.

The folder is written under a temporary name next to ``out`` and renamed into place at the end, so a failed
export leaves nothing under ``out``; an existing non-empty ``out`` is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daclip.engine.errors import UserError
from daclip.engine.folder import write_text_file
from daclip.engine.run_folder import git_revision, run_dir_of_checkpoint
from irsde.export.card import model_card
from irsde.inference.pipeline import RestorationPipeline
from irsde.inference.pretrained import MODEL_CARD, parse_config, save_pretrained, write_config

__all__ = ["export_folder", "provenance", "read_results"]


def _last_command(run_dir: Path | None) -> tuple[str, str]:
    """The last ``command:`` and ``git:`` lines of a run folder's ``command.txt`` (a resume appends)."""
    path = run_dir / "command.txt" if run_dir is not None else None
    if path is None or not path.is_file():
        return "", ""
    command = git = ""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("command: "):
            command = line[len("command: ") :]
        elif line.startswith("git: "):
            git = line[len("git: ") :]
    return command, git


def provenance(checkpoint: str | os.PathLike, pipeline: RestorationPipeline) -> dict[str, Any]:
    """Where the weights come from, for ``config.json`` and the model card: the checkpoint (by name), its
    step, the training command and git revision of its run folder, the training config."""
    loaded = pipeline.loaded
    if loaded is not None and loaded.source == "pretrained":  # re-exporting a folder: keep its record
        return dict(parse_config(checkpoint).source)
    command, git = _last_command(run_dir_of_checkpoint(checkpoint))
    return {
        "kind": loaded.source if loaded is not None else "ours",
        "checkpoint": Path(checkpoint).name,
        "step": loaded.step if loaded is not None else None,
        "command": command,
        "git": git,
        "exported_with_git": git_revision(Path(__file__).parent),
        "training_config": loaded.config if loaded is not None else None,
    }


def read_results(path: str | os.PathLike) -> str:
    """The evaluation table for the card: ``results.md`` of ``scripts/test.py`` (its file or its folder)."""
    path = Path(path)
    path = path / "results.md" if path.is_dir() else path
    if not path.is_file():
        raise UserError(
            f"{path}: evaluation results not found (--results takes scripts/test.py's results.md)"
        )
    return path.read_text(encoding="utf-8", errors="replace")


def _fresh_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(
            f"{out}: already exists and is not an empty folder; choose another --out (nothing is overwritten)"
        )


def export_folder(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    daclip: str = "",
    clip_model: str = "ViT-B-32",
    model_config: str = "",
    results: str = "",
    onnx: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the model folder of ``checkpoint`` (with ``daclip`` for a released U-Net) to ``out``."""
    out = Path(out)
    _fresh_target(out)
    results_text = read_results(results) if results else ""
    pipeline = RestorationPipeline.from_checkpoint(
        checkpoint, daclip=daclip, clip_model=clip_model, model_config=model_config, device="cpu"
    )
    source = provenance(checkpoint, pipeline)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))  # renamed at the end
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0o700 would keep a shared folder private
    try:
        config = save_pretrained(pipeline, staging, source=source)
        if onnx:
            from irsde.export.onnx import export_onnx

            config.onnx = export_onnx(pipeline, staging, log=log)
            write_config(staging, config)
        parameters = sum(p.numel() for p in pipeline.model.parameters())
        card = model_card(config, out.name, parameters, results_text)
        write_text_file(staging / MODEL_CARD, card)
        with contextlib.suppress(FileNotFoundError):
            out.rmdir()  # an empty folder given as --out
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"wrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return out
