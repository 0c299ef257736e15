"""Packaging: a wheel and an sdist build offline without setuptools deprecation warnings (the licence is an
SPDX string), and carry the export code, the configs and the licence; exporting imports no trainer."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What a build must not see: run outputs, caches, virtual environments, git data.
_SKIP = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", "venv", "experiments", "results",
    "demo_data", "datasets", ".pytest_cache", ".ruff_cache",
)  # fmt: skip


def _run(args: list[str], cwd: Path) -> str:
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout + out.stderr


def test_wheel_and_sdist_build_offline_without_deprecation_warnings(tmp_path):
    source = shutil.copytree(ROOT, tmp_path / "src", ignore=_SKIP)  # the build writes into its tree
    log = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                "-w", str(tmp_path / "dist"), "."], source)  # fmt: skip
    sdist = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path / 'dist')!r}))"
    log += _run([sys.executable, "-W", "always", "-c", sdist], source)
    assert "Deprecat" not in log, log[log.find("Deprecat") - 300 :][:1000]

    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT" in metadata
    assert any(n.endswith("/licenses/LICENSE") for n in names)
    for module in ("irsde/export/runtime.py", "irsde/inference/pretrained.py", "daclip/engine/folder.py",
                   "data/clip_input.py", "daclip_uir_configs/universal_ir_tiny.yml"):  # fmt: skip
        assert module in names, module
    assert "Provides-Extra: export" in metadata and "Requires-Dist: safetensors" in metadata

    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    members = tarfile.open(archive).getnames()
    assert any(m.endswith("/LICENSE") for m in members) and any(
        m.endswith("/irsde/export/runtime.py") for m in members
    )


def test_exporting_imports_no_training_module():
    """scripts/export.py and the benchmark row work from an install without the trainers' code paths."""
    probe = (
        "import sys; import scripts.export, irsde.export.folder, irsde.export.onnx, irsde.apps.benchmark_onnx; "
        "print(sorted(m for m in sys.modules if m.startswith(('irsde.training', 'daclip.train', "
        "'daclip.engine.lifecycle'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
