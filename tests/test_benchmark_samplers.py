"""``scripts/benchmark.py --samplers``: sampler × NFE × grid timed side by side on one tiny random U-Net."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import irsde.apps.benchmark as benchmark
from irsde.diffusion.samplers import make_timesteps
from irsde.diffusion.sde import IRSDE

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "universal_ir_tiny.yml"


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def network_calls(monkeypatch):
    """The timestep of every U-Net call the benchmark makes (a forward hook on the U-Net it builds)."""
    calls: list[int] = []
    real_build = benchmark.build_model

    def build_counted(model_cfg):
        unet = real_build(model_cfg)
        unet.register_forward_hook(lambda module, args, output: calls.append(int(args[2][0])))
        return unet

    monkeypatch.setattr(benchmark, "build_model", build_counted)
    return calls


def _runs(calls: list[int], T: int) -> list[list[int]]:
    """The calls split into restorations: each one starts at t = T, which it visits once."""
    runs: list[list[int]] = []
    for t in calls:
        if t == T:
            runs.append([])
        runs[-1].append(t)
    return runs


def test_sampler_benchmark_rows_and_network_calls(tmp_path, network_calls, capsys):
    out = tmp_path / "samplers.json"
    args = [
        "-c",
        str(TINY),
        "experiment.device=cpu",
        "sde.T=10",
        "--size",
        "16",
        "24",
        "--samplers",
        "posterior:10,posterior:3,mr:1",
        "mr:4:1",
        "mr-sde:5",
        "mr:3:1:logsnr",  # its own grid: timed on that one only
        "--grid",
        "uniform",
        "logsnr",
        "--repeats",
        "2",
        "--json",
        str(out),
    ]
    assert _script().main(args) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    expected = [
        (name, order, nfe, grid)
        for grid in ("uniform", "logsnr")
        for name, order, nfe in (
            ("posterior", 1, 10),
            ("posterior", 1, 3),
            ("mr", 2, 1),
            ("mr", 1, 4),
            ("mr-sde", 2, 5),
        )
    ] + [("mr", 1, 3, "logsnr")]
    rows = result["rows"]
    assert [(r["sampler"], r["order"], r["nfe"], r["grid"]) for r in rows] == expected
    assert result["device"].startswith("CPU") and result["size"] == [16, 24] and result["T"] == 10
    for row in rows:
        assert (
            row["device"] == result["device"]
            and row["size"] == [16, 24]
            and row["torch"] == torch.__version__
        )
        assert row["seconds_per_image"] > 0 and row["seconds_per_nfe"] == pytest.approx(
            row["seconds_per_image"] / row["nfe"]
        )
        assert row["runs_timed"] == 2 and row["warmup_runs"] == 1 and row["prediction"] == "residual"

    # Counted calls, not the reported field: per row one warm-up and two timed restorations of NFE calls
    # each, at that row's timesteps.
    sde = IRSDE(max_sigma=5, T=10)
    runs = _runs(network_calls, 10)
    assert len(runs) == 3 * len(rows)
    for index, row in enumerate(rows):
        grid_steps = make_timesteps(10, row["nfe"], row["grid"], sde=sde).tolist()
        for run in runs[3 * index : 3 * index + 3]:
            assert len(run) == row["nfe"] and run == grid_steps, (row, run)


def test_sampler_benchmark_rejects_bad_specs_before_timing(tmp_path, network_calls, capsys):
    base = ["-c", str(TINY), "experiment.device=cpu", "sde.T=10", "--size", "16"]
    with pytest.raises(SystemExit) as exit_info:
        _script().main([*base, "--samplers", "mr:x"])
    assert exit_info.value.code == 2 and "NFE and ORDER must be integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _script().main([*base, "--samplers", "ode:5:2"])
    assert "first order" in capsys.readouterr().err
    assert _script().main([*base, "--samplers", "mr:5,mr:11"]) == 2  # NFE beyond T: checked before timing
    assert "num_steps must be an integer in 1..10" in capsys.readouterr().err and network_calls == []
    with pytest.raises(SystemExit):
        _script().main([*base, "--grid", "uniform", "logsnr"])  # several grids need --samplers
