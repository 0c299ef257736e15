"""ONNX export (scripts/export.py --onnx): onnxruntime equals PyTorch at two odd sizes, the numpy ``mr`` loop on
the exported step equals PyTorch's ``mr`` sampler on it, the runner needs no PyTorch, the benchmark row."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

for _module in ("onnxruntime", "onnxscript", "onnx"):
    pytest.importorskip(
        _module, reason=f'{_module} is not installed (the [export] extra: pip install -e ".[export]")'
    )

from daclip.engine.folder import read_folder_config  # noqa: E402
from irsde.diffusion.samplers import sample  # noqa: E402
from irsde.export.onnx import (  # noqa: E402
    DACLIP_GRAPH,
    PARITY_ATOL,
    embedding_names,
    export_restorer_graph,
    parity_sizes,
)
from irsde.export.runtime import OnnxRestorer, mr_sample, mr_timesteps  # noqa: E402
from irsde.inference.pipeline import RestorationPipeline  # noqa: E402
from irsde.inference.pretrained import parse_config, write_config  # noqa: E402
from tests.test_export import export, perturbed_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("nafnet", "irsde")


@pytest.fixture(scope="module")
def onnx_folders(tmp_path_factory, tiny_daclip_checkpoint) -> dict[str, Path]:
    """Both families with DA-CLIP and their ONNX graphs (the slow part of this module: about a minute per
    graph on a 2-core CPU). NAFNet goes through scripts/export.py --onnx; the IR-SDE restorer shares its
    DA-CLIP, so only its step graph is exported (the same code --onnx runs) and daclip.onnx is copied."""
    root = tmp_path_factory.mktemp("onnx")
    nafnet = perturbed_checkpoint(root / "nafnet.pt", tiny_daclip_checkpoint, "nafnet")
    irsde = perturbed_checkpoint(
        root / "irsde.pt", tiny_daclip_checkpoint, "irsde", "train.val_sampler=mr", "train.val_steps=3"
    )
    folders = {"nafnet": export(nafnet, root / "nafnet", "--onnx"), "irsde": export(irsde, root / "irsde")}
    config = parse_config(folders["irsde"])
    config.onnx = export_restorer_graph(_pipeline(folders["irsde"]), folders["irsde"])
    config.onnx.daclip = DACLIP_GRAPH
    shutil.copy(folders["nafnet"] / DACLIP_GRAPH, folders["irsde"] / DACLIP_GRAPH)
    write_config(folders["irsde"], config)
    return folders


def _pipeline(folder: Path) -> RestorationPipeline:
    return RestorationPipeline.from_pretrained(folder, device="cpu")


def _images(size: tuple[int, int], batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_restorer_graph_equals_pytorch_at_two_odd_sizes(family, onnx_folders):
    folder = onnx_folders[family]
    pipeline, runner = _pipeline(folder), OnnxRestorer(folder)
    graphs = read_folder_config(folder)["onnx"]
    assert graphs["max_abs_diff"] <= PARITY_ATOL and graphs["restorer"] == "onnx/restorer.onnx"
    sizes = parity_sizes(runner.pad_multiple)
    assert all(h % 2 == 1 and w % 2 == 1 and h != w for h, w in sizes)
    gen = torch.Generator().manual_seed(1)
    for batch, size in zip((1, 2), sizes):  # batch and both sides are dynamic
        lq = _images(size, batch)
        embeddings = pipeline.embed(lq)
        assert sorted(embeddings) == sorted(embedding_names(pipeline.model))
        feeds = {name: value.numpy() for name, value in embeddings.items()}
        with torch.no_grad():
            if pipeline.one_pass:
                expected = pipeline.model(lq, **embeddings)
                got = runner.restorer.run(None, {"lq": lq.numpy(), **feeds})[0]
            else:
                x_t = lq + 0.3 * torch.randn(lq.shape, generator=gen)
                t = torch.randint(1, pipeline.sde.T + 1, (batch,), generator=gen)
                expected = pipeline.model(x_t, lq, t, **embeddings)
                got = runner.restorer.run(
                    None, {"x_t": x_t.numpy(), "mu": lq.numpy(), "t": t.numpy(), **feeds}
                )[0]
        assert got.shape == (batch, 3, *size)
        assert np.abs(got - expected.numpy()).max() <= PARITY_ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_runner_restores_like_the_pytorch_pipeline(family, onnx_folders):
    """Image in, image out: the numpy CLIP input, daclip.onnx, restorer.onnx (and the numpy mr loop)."""
    folder = onnx_folders[family]
    pipeline, runner = _pipeline(folder), OnnxRestorer(folder)
    for size in parity_sizes(runner.pad_multiple):
        lq = _images(size, seed=size[0])
        with torch.no_grad():
            content, degra = pipeline.embedder(pipeline.clip_inputs(lq))
        clip = runner.embed(lq.numpy())
        for name, value in (("content_emb", content), ("degra_emb", degra)):
            assert np.abs(clip[name] - value.numpy()).max() <= PARITY_ATOL
        if pipeline.one_pass:
            expected = pipeline(lq)
            got = runner(lq.numpy())
        else:
            x_T = lq + pipeline.sde.max_sigma * torch.randn(
                lq.shape, generator=torch.Generator().manual_seed(2)
            )
            with torch.no_grad():
                expected = sample(pipeline.model_fn(pipeline.embed(lq)), lq, pipeline.sde, "mr", 3, x_T=x_T,
                                  prediction=pipeline.prediction, clamp_x0=pipeline.clamp_x0).clamp(0, 1)  # fmt: skip
            got = runner(lq.numpy(), x_T=x_T.numpy())
        assert got.shape == tuple(lq.shape) and np.abs(got - expected.numpy()).max() <= PARITY_ATOL


def test_runner_self_ensemble_is_the_pytorch_one_and_the_folders_default(onnx_folders, tmp_path):
    """The eight flips/transposes averaged as the PyTorch pipeline does, and by default when the folder
    says so (exported from a checkpoint validated with it)."""
    folder = onnx_folders["nafnet"]
    pipeline, runner = _pipeline(folder), OnnxRestorer(folder)
    lq = _images(parity_sizes(runner.pad_multiple)[0], seed=5)
    pipeline.self_ensemble = True
    expected = pipeline(lq).numpy()
    got, plain = runner(lq.numpy(), self_ensemble=True), runner(lq.numpy())
    assert np.abs(got - expected).max() <= PARITY_ATOL
    assert (
        np.abs(got - plain).max() > 10 * PARITY_ATOL
    )  # really averaged: a perturbed NAFNet is not symmetric
    config = parse_config(folder)
    config.sampling.self_ensemble = True
    copy = shutil.copytree(folder, tmp_path / "ensembled")
    write_config(copy, config)
    assert np.array_equal(OnnxRestorer(copy)(lq.numpy()), got)
    assert _pipeline(copy).self_ensemble is True and _pipeline(folder).self_ensemble is False


def test_runner_min_change_is_the_pytorch_one_and_the_folders_default(onnx_folders, tmp_path):
    """The min_change gate as the PyTorch pipeline applies it, and by default when the folder says so."""
    folder = onnx_folders["nafnet"]
    pipeline, runner = _pipeline(folder), OnnxRestorer(folder)
    lq = _images(parity_sizes(runner.pad_multiple)[0], seed=6)
    plain = runner(lq.numpy())
    change = np.sqrt(((plain - lq.numpy()) ** 2).mean()) * 255  # the perturbed network's change, grey levels
    pipeline.min_change = float(change)  # about half the windows change more, half less
    expected = pipeline(lq).numpy()
    got = runner(lq.numpy(), min_change=float(change))
    assert np.abs(got - expected).max() <= PARITY_ATOL
    untouched = (got == lq.numpy()).all(axis=1)
    assert untouched.any() and not untouched.all()  # some windows given back, others restored
    config = parse_config(folder)
    config.sampling.min_change = float(change)
    copy = shutil.copytree(folder, tmp_path / "gated")
    write_config(copy, config)
    assert np.array_equal(OnnxRestorer(copy)(lq.numpy()), got)
    assert _pipeline(copy).min_change == float(change) and _pipeline(folder).min_change == 0.0


@pytest.mark.parametrize("order", [1, 2])
def test_numpy_mr_loop_equals_the_pytorch_mr_sampler_on_the_exported_step(order, onnx_folders):
    runner = OnnxRestorer(onnx_folders["irsde"])
    lq = _images((9, 15))
    embeddings = runner.embed(lq.numpy())
    step = runner.step(embeddings)
    x_T = lq + runner.tables.max_sigma * torch.randn(lq.shape, generator=torch.Generator().manual_seed(4))

    def torch_step(x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(step(x.numpy(), mu.numpy(), t.numpy()))

    for steps in (1, 3, 5):
        expected = sample(torch_step, lq, _pipeline(onnx_folders["irsde"]).sde, "mr", steps, x_T=x_T,
                          prediction=runner.prediction, order=order)  # fmt: skip
        timesteps = mr_timesteps(runner.tables, steps)
        got = mr_sample(
            step, lq.numpy(), x_T.numpy(), runner.tables, timesteps, runner.prediction, False, order
        )
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_runner_runs_without_pytorch(onnx_folders, tmp_path):
    """A subprocess where ``import torch`` fails restores with both folders."""
    lq = _images((9, 15), batch=1).numpy()
    np.save(tmp_path / "lq.npy", lq)
    probe = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from irsde.export.runtime import OnnxRestorer\n"
        f"lq = np.load({str(tmp_path / 'lq.npy')!r})\n"
        f"for name, folder in {json.dumps({k: str(v) for k, v in onnx_folders.items()})}.items():\n"
        f"    np.save({str(tmp_path)!r} + f'/{{name}}.npy', OnnxRestorer(folder)(lq, seed=3))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['torch']"  # only the blocked entry: nothing imported it
    for family, folder in onnx_folders.items():
        expected = OnnxRestorer(folder)(lq, seed=3)
        assert np.array_equal(np.load(tmp_path / f"{family}.npy"), expected)
    nafnet = np.load(tmp_path / "nafnet.npy")
    assert (
        np.abs(nafnet - _pipeline(onnx_folders["nafnet"])(torch.from_numpy(lq)).numpy()).max() <= PARITY_ATOL
    )


def test_benchmark_row_puts_onnxruntime_beside_pytorch(onnx_folders, tmp_path, capsys):
    from scripts.benchmark import main as benchmark_main

    for family in FAMILIES:
        args = ["--onnx", str(onnx_folders[family]), "--size", "13", "11", "--repeats", "1"]
        assert benchmark_main([*args, "--json", str(tmp_path / f"{family}.json")]) == 0
        row = json.loads((tmp_path / f"{family}.json").read_text())
        assert (
            row["family"] == family
            and row["size"] == [13, 11]
            and row["nfe"] == (1 if family == "nafnet" else 3)
        )
        assert row["pytorch_cpu_s_per_image"] > 0 and row["onnxruntime_cpu_s_per_image"] > 0
        assert row["max_abs_diff"] <= PARITY_ATOL
    assert '"speedup"' in capsys.readouterr().out


def test_onnx_export_without_the_extra_is_one_line(onnx_folders, tmp_path, monkeypatch, capsys):
    from scripts.export import main as export_main

    monkeypatch.setitem(sys.modules, "onnxscript", None)
    capsys.readouterr()
    assert (
        export_main(["--checkpoint", str(onnx_folders["nafnet"]), "--out", str(tmp_path / "x"), "--onnx"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[export]"' in err and not (tmp_path / "x").exists()
