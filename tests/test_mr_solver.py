"""The reverse-SDE MR solver (``mr-sde``) and the timestep grids (``uniform`` | ``logsnr``), with oracles.

``mr-sde`` with the true x_0 must keep every visited state on the exact marginal (mean α_t(x_0 − μ) + μ,
std σ̄_t) and land on x_0; its first order is the optimal posterior written in the half log-SNR, so it must
reproduce the posterior sampler draw for draw; its second order must be the written-out multistep update.
The ``logsnr`` grid must give any NFE from 1 to T as distinct timesteps from T down to 1, evenly spaced
in ℓ_t where integers allow, and ``uniform`` must stay what it was.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from irsde.diffusion.samplers import (
    GRIDS,
    MRSDESolver,
    PosteriorSampler,
    build_sampler,
    half_log_snr_table,
    make_timesteps,
    sample,
)
from irsde.diffusion.sde import IRSDE, PREDICTIONS
from irsde.inference.pipeline import RestorationPipeline
from tests.test_parametrisation import Oracle, T, _pair

ROOT = Path(__file__).resolve().parents[1]


def _smooth_model(prediction: str):
    """A fixed, non-trivial network of the given parametrisation (not an oracle: the paths differ)."""

    def model(xt: torch.Tensor, mu: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = t.view(-1, 1, 1, 1).to(xt.dtype) / T
        if prediction == "noise":
            return torch.tanh(xt - mu) * scale
        residual = 0.3 * torch.tanh(3 * (xt - mu)) * (1 - 0.5 * scale)
        return residual if prediction == "residual" else mu + residual

    return model


# ----------------------------------------------------------------------------- mr-sde with an oracle


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("nfe", [1, 2, 3, 7, T])
def test_mr_sde_lands_on_x0_with_an_oracle(nfe, prediction, order, grid):
    sde = IRSDE(T=T, dtype=torch.float64)
    gt, lq = _pair(20)
    oracle = Oracle(sde, gt, prediction)
    solver = MRSDESolver(sde, prediction=prediction, order=order, grid=grid)
    out = sample(oracle, lq, sde, solver, nfe, generator=torch.Generator().manual_seed(21))
    assert [t for _, t in oracle.calls] == make_timesteps(T, nfe, grid, sde=sde).tolist()  # NFE = nfe
    torch.testing.assert_close(out, gt, rtol=0, atol=1e-9)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("nfe,grid", [(3, "uniform"), (7, "logsnr"), (T, "uniform")])
def test_mr_sde_states_have_the_marginal_mean_and_std(nfe, grid, order):
    """Started on the exact marginal at T, every visited state is N(μ + α_t(x_0 − μ), σ̄_t²) per pixel.

    z = (x_t − marginal mean)/σ̄_t is then n independent N(0, 1) draws: their mean has std 1/sqrt(n) and
    their sample std has std about 1/sqrt(2n); both are checked at 5 of those (a chance failure ~1e-6,
    and with the fixed seed the outcome is reproducible). x_0 − μ has a nonzero mean (a brightness drop),
    so a wrong mean coefficient shows in mean(z) and a wrong noise coefficient in std(z).
    """
    sde = IRSDE(T=T, dtype=torch.float64)
    generator = torch.Generator().manual_seed(22)
    gt = torch.rand((1, 3, 96, 96), generator=generator, dtype=torch.float64)
    lq = 0.3 * gt + 0.05
    x_T = sde.add_noise(gt, lq, T, torch.randn(gt.shape, generator=generator, dtype=torch.float64))
    oracle = Oracle(sde, gt, "x0")
    solver = MRSDESolver(sde, prediction="x0", order=order, grid=grid)
    sample(oracle, lq, sde, solver, nfe, generator=generator, x_T=x_T)
    n = gt.numel()
    assert len(oracle.calls) == nfe
    for xt, t in oracle.calls[1:]:
        z = (xt - sde.marginal_mean(gt, lq, t)) / sde.marginal_std(t)
        assert abs(float(z.mean())) < 5 / math.sqrt(n), (t, float(z.mean()))
        assert abs(float(z.std()) - 1) < 5 / math.sqrt(2 * n), (t, float(z.std()))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("nfe", [1, 2, 3, 7, T])
def test_first_order_mr_sde_is_the_posterior_sampler_draw_for_draw(nfe, prediction, grid):
    """1 − e^{−2h} = (1 − A²)/(1 − B²): the same mean, std and draws as q(x_s | x_t, x̂_0), for any network.

    This pins the sign of the noise term (a symmetric draw would hide it from any statistical test).
    """
    sde = IRSDE(T=T, dtype=torch.float64)
    _, lq = _pair(23)
    model = _smooth_model(prediction)
    runs = {}
    for solver in (
        MRSDESolver(sde, prediction=prediction, order=1, grid=grid),
        PosteriorSampler(sde, prediction=prediction, noise_on_last_step=False, grid=grid),
    ):
        states = []

        def recording(xt, mu, t, states=states):
            states.append(xt)
            return model(xt, mu, t)

        out = sample(recording, lq, sde, solver, nfe, generator=torch.Generator().manual_seed(24))
        runs[solver.name] = [*states, out]
    assert len(runs["mr-sde"]) == nfe + 1
    for ours, posterior in zip(runs["mr-sde"], runs["posterior"]):
        torch.testing.assert_close(ours, posterior, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("nfe", [3, 7, T])
def test_second_order_mr_sde_is_the_written_out_multistep_update(nfe, grid):
    """y_s = (σ̄_s/σ̄_t)e^{−h}y_t + α_s(1 − e^{−2h})(D_t + (D_t − D_prev)/(2r)) + σ̄_s·sqrt(1 − e^{−2h})·z."""
    sde = IRSDE(T=T, dtype=torch.float64)
    _, lq = _pair(25)
    model = _smooth_model("x0")
    out = sample(
        model, lq, sde, "mr-sde", nfe, generator=torch.Generator().manual_seed(26), prediction="x0", grid=grid
    )

    generator = torch.Generator().manual_seed(26)
    x = lq + sde.max_sigma * torch.randn(lq.shape, generator=generator, dtype=lq.dtype)
    steps = make_timesteps(T, nfe, grid, sde=sde).tolist()
    alpha = lambda t: float(sde.alpha(t))  # noqa: E731
    sigma = lambda t: float(sde.marginal_std(t))  # noqa: E731
    previous = None  # (ℓ_t, D_t) of the step before
    for t, s in zip(steps, [*steps[1:], 0]):
        data = model(x, lq, torch.tensor([t])) - lq
        if s == 0:
            x = data + lq
            break
        ell_t, ell_s = math.log(alpha(t) / sigma(t)), math.log(alpha(s) / sigma(s))
        h = ell_s - ell_t
        extrapolated = data
        if previous is not None:
            r = (ell_t - previous[0]) / h
            extrapolated = data + (data - previous[1]) / (2 * r)
        z = torch.randn(lq.shape, generator=generator, dtype=lq.dtype)
        y = (
            sigma(s) / sigma(t) * math.exp(-h) * (x - lq)
            + alpha(s) * (1 - math.exp(-2 * h)) * extrapolated
            + sigma(s) * math.sqrt(1 - math.exp(-2 * h)) * z
        )
        x, previous = lq + y, (ell_t, data)
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-12)
    first = sample(
        model,
        lq,
        sde,
        "mr-sde",
        nfe,
        generator=torch.Generator().manual_seed(26),
        prediction="x0",
        order=1,
        grid=grid,
    )
    assert (first - out).abs().max() > 1e-4  # the correction is applied


@pytest.mark.parametrize("order", [1, 2])
def test_mr_sde_is_reproducible_with_a_seed_and_draws_noise(order):
    sde = IRSDE(T=T)
    _, lq = _pair(27, dtype=torch.float32)
    model = _smooth_model("noise")
    run = lambda seed: sample(  # noqa: E731
        model, lq, sde, "mr-sde", 5, generator=torch.Generator().manual_seed(seed), order=order
    )
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    # Given x_T, the ODE solver is deterministic and the SDE solver is not.
    x_T = lq + sde.max_sigma * torch.randn(lq.shape, generator=torch.Generator().manual_seed(3))
    ode = [
        sample(model, lq, sde, "mr", 5, generator=torch.Generator().manual_seed(s), x_T=x_T) for s in (1, 2)
    ]
    sde_runs = [
        sample(model, lq, sde, "mr-sde", 5, generator=torch.Generator().manual_seed(s), x_T=x_T)
        for s in (1, 2)
    ]
    assert torch.equal(*ode) and not torch.equal(*sde_runs)


def test_mr_sde_options():
    sde = IRSDE(T=T)
    solver = build_sampler("mr-sde", sde, prediction="residual", clamp_x0=True, order=1, grid="logsnr")
    assert isinstance(solver, MRSDESolver) and solver.order == 1 and solver.grid == "logsnr"
    assert solver.prediction == "residual" and solver.clamp_x0 and "grid='logsnr'" in repr(solver)
    assert build_sampler("mr-sde", sde).order == 2
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        build_sampler("mr-sde", sde, order=3)
    with pytest.raises(ValueError, match="applies to mr and mr-sde only"):
        build_sampler("ode", sde, order=2)


# ----------------------------------------------------------------------------- timestep grids


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("T_", [20, 100])
def test_logsnr_grid_gives_every_nfe(T_, schedule):
    sde = IRSDE(T=T_, schedule=schedule)
    for n in range(1, T_ + 1):
        steps = make_timesteps(T_, n, "logsnr", sde=sde)
        values = steps.tolist()
        assert steps.dtype == torch.long and len(values) == n, n
        assert values[0] == T_ and all(a > b for a, b in zip(values, values[1:])), (n, values)
        assert values[-1] >= 1 and (n == 1 or values[-1] == 1), (n, values)
    assert make_timesteps(T_, T_, "logsnr", sde=sde).tolist() == list(range(T_, 0, -1))


def test_logsnr_grid_is_even_in_the_half_log_snr():
    """Without collisions each timestep is the one whose ℓ_t is nearest its target; ℓ steps are more even."""
    sde = IRSDE(T=100)
    ell = half_log_snr_table(sde)
    assert math.isinf(float(ell[0])) and bool((ell[1:-1] > ell[2:]).all())  # strictly decreasing in t
    # The float32 and float64 SDEs share one grid (it is computed from the parameters in float64).
    for n in (3, 5, 10):
        steps = make_timesteps(100, n, "logsnr", sde=sde).tolist()
        assert steps == make_timesteps(100, n, "logsnr", sde=sde.to(dtype=torch.float64)).tolist()
        targets = np.linspace(float(ell[100]), float(ell[1]), n)
        for t, target in zip(steps, targets):
            distances = (ell[1:] - target).abs()
            assert int(distances.argmin()) + 1 == t, (n, steps)

        def spread(grid_steps):
            h = [float(ell[s] - ell[t]) for t, s in zip(grid_steps, grid_steps[1:])]
            return max(h) / min(h)

        assert spread(steps) < spread(make_timesteps(100, n).tolist()), n
    assert make_timesteps(100, 5, "logsnr", sde=sde).tolist() != make_timesteps(100, 5).tolist()


def test_uniform_grid_is_unchanged_and_the_default():
    sde = IRSDE(T=100)
    for n in range(2, 100):
        old = torch.floor(torch.linspace(100.0, 1.0, n, dtype=torch.float64) + 0.5).long()
        assert torch.equal(make_timesteps(100, n), old)
        assert torch.equal(make_timesteps(100, n, "uniform", sde=sde), old)
    sampler = build_sampler("posterior", sde)
    sampler.set_timesteps(7)
    assert sampler.grid == "uniform" and torch.equal(sampler.timesteps, make_timesteps(100, 7))


def test_grid_arguments():
    sde = IRSDE(T=T)
    with pytest.raises(ValueError, match="valid choices: uniform, logsnr"):
        make_timesteps(T, 5, "log")
    with pytest.raises(ValueError, match="needs the IR-SDE"):
        make_timesteps(T, 5, "logsnr")
    with pytest.raises(ValueError, match="needs the IR-SDE"):
        make_timesteps(T + 1, 5, "logsnr", sde=sde)
    with pytest.raises(ValueError, match="valid choices: uniform, logsnr"):
        build_sampler("mr", sde, grid="even")
    sampler = build_sampler("ode", sde)
    sampler.set_timesteps(5, grid="logsnr")  # switches the grid, and keeps it for later calls
    assert sampler.timesteps.tolist() == make_timesteps(T, 5, "logsnr", sde=sde).tolist()
    sampler.set_timesteps(4)
    assert (
        sampler.grid == "logsnr"
        and sampler.timesteps.tolist() == make_timesteps(T, 4, "logsnr", sde=sde).tolist()
    )
    # sample(grid=...) on a ready sampler keeps its number of steps.
    model = _smooth_model("noise")
    _, lq = _pair(28)
    calls = []
    sample(lambda x, m, t: calls.append(int(t[0])) or model(x, m, t), lq, sde, sampler, grid="uniform")
    assert calls == make_timesteps(T, 4).tolist()


class _RecordingNet(nn.Module):
    use_degra_context = use_image_context = False

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.1))
        self.calls: list[int] = []

    def forward(self, x, mu, t, **kwargs):
        self.calls.append(int(t[0]))
        return torch.tanh(x - mu) * self.scale


def test_pipeline_passes_the_sampler_order_and_grid():
    sde = IRSDE(T=T)
    net = _RecordingNet()
    pipeline = RestorationPipeline(net, sde, sampler="mr-sde", num_steps=6, order=1, grid="logsnr")
    lq = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pipeline(lq, generator=torch.Generator().manual_seed(1))
    assert net.calls == make_timesteps(T, 6, "logsnr", sde=sde).tolist()
    with pytest.raises(ValueError, match="first order"):
        RestorationPipeline(net, sde, sampler="posterior", order=2)
    with pytest.raises(ValueError, match="valid choices: uniform, logsnr"):
        RestorationPipeline(net, sde, sampler="mr", grid="cosine")


def test_sampling_config_accepts_mr_sde_and_the_grid():
    from daclip.engine.config import ConfigError
    from irsde.evaluation.evaluate import SamplingSection

    section = SamplingSection(sampler="mr-sde", order=1, grid="logsnr")
    section.validate()
    with pytest.raises(ConfigError, match="sampling.order"):
        SamplingSection(sampler="sde", order=2).validate()


def test_test_config_loads_the_sampler_order_and_grid(tmp_path):
    from daclip.engine.config import ConfigError, load_config
    from irsde.evaluation.evaluate import TestConfig
    from tests.conftest import write_tiny_ir_checkpoint

    checkpoint = write_tiny_ir_checkpoint(tmp_path / "ir.pt")
    path, required = (
        ROOT / "configs" / "test.yml",
        [f"model.checkpoint={checkpoint}", f"data.root={tmp_path}"],
    )
    cfg = load_config(TestConfig, path, [*required, "sampling.sampler=mr-sde", "sampling.grid=logsnr"])
    assert (cfg.sampling.sampler, cfg.sampling.grid, cfg.sampling.order) == ("mr-sde", "logsnr", None)
    assert load_config(TestConfig, path, required).sampling.grid == "uniform"  # the documented default
    with pytest.raises(ConfigError, match="sampling.grid"):
        load_config(TestConfig, path, [*required, "sampling.grid=log"])
    with pytest.raises(ConfigError, match="sampling.order"):
        load_config(TestConfig, path, [*required, "sampling.sampler=ode", "sampling.order=2"])


def test_restore_script_takes_the_sampler_order_and_grid(tmp_path, monkeypatch, capsys):
    import importlib.util

    import irsde.inference.pipeline
    from data.io import write_image
    from tests.conftest import write_tiny_ir_checkpoint

    spec = importlib.util.spec_from_file_location("restore_script", ROOT / "scripts" / "restore.py")
    restore = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(restore)
    checkpoint = write_tiny_ir_checkpoint(tmp_path / "ir.pt")  # T = 5
    write_image(tmp_path / "in.png", np.full((12, 16, 3), 0.5, dtype=np.float32))
    seen, options = [], []
    real_sample = irsde.inference.pipeline.sample

    def recording_sample(model_fn, *args, **kwargs):
        options.append((args[2], kwargs["order"], kwargs["grid"]))

        def counted(x, mu, t):
            seen.append(int(t[0]))
            return model_fn(x, mu, t)

        return real_sample(counted, *args, **kwargs)

    monkeypatch.setattr(irsde.inference.pipeline, "sample", recording_sample)
    common = ["-i", tmp_path / "in.png", "--checkpoint", checkpoint, "--device", "cpu", "--steps", "3"]
    argv = [*common, "-o", tmp_path / "out.png", "--sampler", "mr-sde", "--order", "1", "--grid", "logsnr"]
    assert restore.main([str(a) for a in argv]) == 0
    assert options == [("mr-sde", 1, "logsnr")]
    assert seen == make_timesteps(5, 3, "logsnr", sde=IRSDE(T=5)).tolist()
    assert (tmp_path / "out.png").exists()
    with pytest.raises(SystemExit) as exit_info:
        restore.main(
            [str(a) for a in [*common, "-o", tmp_path / "x.png", "--sampler", "sde", "--order", "2"]]
        )
    assert exit_info.value.code == 2 and "first order" in capsys.readouterr().err


def test_restore_script_defaults_to_the_checkpoints_validation_sampler(tmp_path, monkeypatch, capsys):
    import importlib.util

    import irsde.inference.pipeline
    from data.io import write_image
    from tests.conftest import write_tiny_ir_checkpoint

    spec = importlib.util.spec_from_file_location("restore_script", ROOT / "scripts" / "restore.py")
    restore = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(restore)
    write_image(tmp_path / "in.png", np.full((12, 16, 3), 0.5, dtype=np.float32))
    calls = []
    real_sample = irsde.inference.pipeline.sample

    def recording_sample(model_fn, mu, sde, sampler, num_steps, **kwargs):
        calls.append((sampler, len(make_timesteps(sde.T, num_steps))))
        return real_sample(model_fn, mu, sde, sampler, num_steps, **kwargs)

    monkeypatch.setattr(irsde.inference.pipeline, "sample", recording_sample)
    one_step = write_tiny_ir_checkpoint(
        tmp_path / "mr1.pt",
        overrides=("train.val_sampler=mr", "train.val_steps=1", "model.prediction=residual"),
    )
    paper = write_tiny_ir_checkpoint(tmp_path / "paper.pt")  # val_sampler posterior, val_steps None (T = 5)

    def run(checkpoint, name, *extra):
        argv = [
            "-i",
            tmp_path / "in.png",
            "-o",
            tmp_path / name,
            "--checkpoint",
            checkpoint,
            "--device",
            "cpu",
        ]
        assert restore.main([str(a) for a in [*argv, *extra]]) == 0

    run(one_step, "a.png")
    run(paper, "b.png")
    run(one_step, "c.png", "--steps", "3")
    run(one_step, "d.png", "--sampler", "posterior")
    assert calls == [("mr", 1), ("posterior", 5), ("mr", 3), ("posterior", 5)]
    assert "sampler: mr, 1 network evaluation(s)" in capsys.readouterr().out
