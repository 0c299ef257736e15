"""Shared experiment plumbing: checkpoints, RNG state, run folders, script errors."""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import random
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from daclip.engine.checkpoint import (
    NonFiniteWeightsError,
    file_fingerprint,
    get_rng_state,
    load_checkpoint,
    nonfinite_weights,
    prune_checkpoints,
    require_format,
    save_checkpoint,
    set_rng_state,
    strip_prefix,
    unwrap_state_dict,
)
from daclip.engine.cli import run_main
from daclip.engine.config import ConfigError
from daclip.engine.errors import UserError
from daclip.engine.preflight import check_image_pairs, check_images, image_size
from daclip.engine.run_folder import (
    create_run_dir,
    find_resume_checkpoint,
    open_run_dir,
    plan_resume,
    run_dir_of_checkpoint,
    write_run_info,
)
from daclip.engine.runtime import NonFiniteGuard, NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]


class NotATensor:
    """A class a weights_only load must refuse to construct."""


def test_checkpoint_round_trip_and_atomic_failure(tmp_path):
    path = tmp_path / "ckpt" / "latest.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3.0)}, "step": 7})
    assert load_checkpoint(path)["step"] == 7
    # A failing save (unpicklable object) must leave the previous file intact and no temp files.
    with pytest.raises((AttributeError, pickle.PicklingError, TypeError)):
        save_checkpoint(path, {"model": {"w": torch.zeros(1)}, "bad": lambda: None})
    assert load_checkpoint(path)["step"] == 7
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.pt"]


def test_load_checkpoint_refuses_code_and_names_file(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": NotATensor()}, path)
    with pytest.raises(ValueError, match="evil.pt.*weights_only"):
        load_checkpoint(path)
    truncated = tmp_path / "cut.pt"
    save_checkpoint(tmp_path / "ok.pt", {"w": torch.randn(1000)})
    truncated.write_bytes((tmp_path / "ok.pt").read_bytes()[:500])
    with pytest.raises(ValueError, match="cut.pt is corrupt or truncated"):
        load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_unwrap_state_dict_variants():
    sd = {"a.weight": torch.ones(1), "b.bias": torch.zeros(1)}
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    for obj in (sd, prefixed, {"state_dict": prefixed, "epoch": 3}, {"params": sd}):
        assert list(unwrap_state_dict(obj)) == list(sd)
    assert strip_prefix({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}  # only when all keys carry it
    with pytest.raises(ValueError, match="not a state dict"):
        unwrap_state_dict({"epoch": 3})


def test_rng_state_round_trip(tmp_path):
    state = get_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_run_dir_never_overwrites(tmp_path):
    first = create_run_dir(tmp_path, "exp")
    (first / "train.log").write_text("precious")
    second = create_run_dir(tmp_path, "exp")
    assert second.name == "exp_1" and (first / "train.log").read_text() == "precious"
    assert create_run_dir(tmp_path, "exp", resume=True) == first
    assert all((second / sub).is_dir() for sub in ("checkpoints", "tensorboard"))
    assert not (second / "samples").exists()  # made by whoever writes samples, never left empty
    with pytest.raises(ConfigError):
        create_run_dir(tmp_path, "a/b")


def test_write_run_info(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        lr: float = 0.1

    write_run_info(tmp_path, Cfg(), ["train.py", "-c", "x.yml"])
    assert "lr: 0.1" in (tmp_path / "config.yaml").read_text()
    text = (tmp_path / "command.txt").read_text()
    assert "train.py -c x.yml" in text and "git:" in text


def test_run_main_turns_user_errors_into_exit_2(capsys):
    def bad_config():
        raise ConfigError("train.lrr: unknown key\nsecond line")

    assert run_main(bad_config) == 2
    err = capsys.readouterr().err
    assert err == "error: train.lrr: unknown key\n"
    assert run_main(lambda argv: len(argv), ["a", "b", "c"]) == 3  # arguments and return value pass through
    with pytest.raises(ZeroDivisionError):  # bugs keep their traceback
        run_main(lambda: 1 / 0)


# ----------------------------------------------------------------------------- checkpoint safety


def test_save_checkpoint_refuses_non_finite_weights_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "step": 1})
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteWeightsError, match=r"latest\.pt.*ema\['b'\]"):
            save_checkpoint(path, {"model": {"w": torch.ones(3)}, "ema": {"b": torch.tensor([1.0, bad])}})
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]
    assert nonfinite_weights({"w": torch.tensor([0.0, float("-inf")]), "i": torch.arange(2)}) == ["w"]
    # A bare state dict is checked too; integer tensors are never non-finite.
    with pytest.raises(NonFiniteWeightsError):
        save_checkpoint(tmp_path / "bare.pt", {"w": torch.tensor([float("nan")])})


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        "torch-wrapped",  # what torch.save raises on a full disk: RuntimeError over the OSError
    ],
)
def test_disk_full_is_one_line_naming_file_and_os_error(tmp_path, monkeypatch, capsys, failure):
    path = tmp_path / "checkpoints" / "latest.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "step": 1})
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(10)}, f)  # some bytes reach the temporary file first
        if failure == "torch-wrapped":
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                # As torch does: the OSError is only the implicit context of the RuntimeError.
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)

    def body():
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "step": 2})

    assert run_main(body) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert str(path) in err and "No space left on device" in err
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 1  # the previous checkpoint stays loadable
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.pt"]  # no temporary file left


def test_a_real_failed_write_reports_the_os_error(tmp_path):
    """The real torch writer under a file-size limit (as on a full disk): the OS error reaches the message."""
    script = f"""
import resource, signal, sys, torch
sys.path.insert(0, {str(ROOT)!r})
from daclip.engine.checkpoint import CheckpointWriteError, save_checkpoint, load_checkpoint
save_checkpoint({str(tmp_path / "latest.pt")!r}, {{"model": {{"w": torch.ones(10)}}, "step": 1}})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
try:
    save_checkpoint({str(tmp_path / "latest.pt")!r}, {{"model": {{"w": torch.randn(100000)}}, "step": 2}})
except CheckpointWriteError as err:
    print("ERROR", err)
print("STEP", load_checkpoint({str(tmp_path / "latest.pt")!r})["step"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"ERROR could not write checkpoint {tmp_path / 'latest.pt'}: File too large" in result.stdout
    assert "STEP 1" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


def test_checkpoints_get_the_normal_file_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "a.pt", {"w": torch.ones(1)})
        os.umask(0o077)
        save_checkpoint(tmp_path / "b.pt", {"w": torch.ones(1)})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.pt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.pt").stat().st_mode) == 0o600


def test_prune_keeps_the_newest_numbered_checkpoints(tmp_path):
    for name in ("step_0000002.pt", "step_0000010.pt", "step_0000003.pt", "latest.pt", "step_x.pt"):
        (tmp_path / name).write_bytes(b"x")
    removed = prune_checkpoints(tmp_path, "step_", keep_last=2)
    assert [p.name for p in removed] == ["step_0000002.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest.pt",
        "step_0000003.pt",
        "step_0000010.pt",
        "step_x.pt",
    ]
    assert prune_checkpoints(tmp_path, "step_", keep_last=0) == []  # 0 keeps everything


def test_require_format_names_what_the_file_is(tmp_path):
    with pytest.raises(UserError, match=r"^x\.pt is a DA-CLIP \(stage-1\) checkpoint, not a stage-2 one$"):
        require_format({"format": "daclip-uir/daclip-v1"}, "x.pt", "daclip-uir/irsde-v1", "a stage-2 one")
    with pytest.raises(UserError, match=r"is a restoration \(stage-2\) checkpoint, not a DA-CLIP"):
        require_format({"format": "daclip-uir/irsde-v1"}, "y.pt", "daclip-uir/daclip-v1", "a DA-CLIP one")
    with pytest.raises(UserError, match="carries no 'format' entry"):
        require_format({"w": torch.ones(1)}, "z.pt", "daclip-uir/irsde-v1", "a stage-2 one")
    require_format({"format": "daclip-uir/irsde-v1"}, "ok.pt", "daclip-uir/irsde-v1", "a stage-2 one")


def test_file_fingerprint_is_absolute_and_content_based(tmp_path, monkeypatch):
    (tmp_path / "w.pt").write_bytes(b"abc")
    monkeypatch.chdir(tmp_path)
    record = file_fingerprint("w.pt")
    assert record["path"] == str(tmp_path.resolve() / "w.pt") and record["size"] == 3
    assert record["sha256"] == hashlib.sha256(b"abc").hexdigest()


# ----------------------------------------------------------------------------- resume rules


def _fake_run(root, name, *, checkpoint: bool, mtime: int | None = None):
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("x: 1\n")
    if checkpoint:
        latest = run / "checkpoints" / "latest.pt"
        latest.write_bytes(b"x")
        if mtime is not None:
            os.utime(latest, ns=(mtime, mtime))
    return run


def test_auto_resume_finds_the_newest_checkpoint_of_the_name(tmp_path):
    from daclip.engine.run_folder import ExperimentConfig

    _fake_run(tmp_path, "exp", checkpoint=False)  # a start that died before its first checkpoint
    older = _fake_run(tmp_path, "exp_1", checkpoint=True, mtime=1_000_000_000_000_000_000)
    newer = _fake_run(tmp_path, "exp_2", checkpoint=True, mtime=1_500_000_000_000_000_000)
    _fake_run(tmp_path, "exp2", checkpoint=True, mtime=1_900_000_000_000_000_000)  # another name
    _fake_run(tmp_path, "other", checkpoint=True, mtime=1_900_000_000_000_000_000)
    assert find_resume_checkpoint(tmp_path, "exp") == newer / "checkpoints" / "latest.pt"
    auto = ExperimentConfig(name="exp", root=str(tmp_path), resume="auto")
    assert plan_resume(auto) == (newer / "checkpoints" / "latest.pt", newer)
    assert find_resume_checkpoint(tmp_path, "nothing") is None
    assert plan_resume(ExperimentConfig(name="nothing", root=str(tmp_path), resume="auto")) == (None, None)
    assert plan_resume(ExperimentConfig(name="exp", root=str(tmp_path))) == (None, None)
    # An explicit checkpoint continues in the run it belongs to, whatever experiment.name says ...
    explicit = ExperimentConfig(name="other", root=str(tmp_path), resume=str(older / "checkpoints/latest.pt"))
    assert plan_resume(explicit)[1] == older
    assert run_dir_of_checkpoint(older / "checkpoints" / "latest.pt") == older
    # ... and one outside any run folder gets a new folder, never the existing run of that name.
    loose = tmp_path / "loose.pt"
    loose.write_bytes(b"x")
    ckpt, existing = plan_resume(ExperimentConfig(name="other", root=str(tmp_path), resume=str(loose)))
    assert (ckpt, existing) == (loose, None)
    fresh = open_run_dir(ExperimentConfig(name="other", root=str(tmp_path)), existing)
    assert fresh.name == "other_1" and not (fresh / "samples").exists()


def test_nonfinite_guard_skips_up_to_the_limit_then_names_the_step():
    guard = NonFiniteGuard(max_skipped=0)
    assert guard.check(1.0, 1)
    with pytest.raises(NonFiniteLossError, match=r"^step 2: the training loss is nan;.*max_nonfinite_steps"):
        guard.check(float("nan"), 2)
    guard = NonFiniteGuard(max_skipped=2)
    assert not guard.check(float("inf"), 1) and not guard.check(float("nan"), 2)
    assert guard.check(0.5, 3)  # a finite loss resets the count
    assert not guard.check(float("nan"), 4) and not guard.check(float("nan"), 5)
    with pytest.raises(NonFiniteLossError, match=r"step 6: .*\(3 steps in a row\)"):
        guard.check(float("nan"), 6)


# ----------------------------------------------------------------------------- start-up checks


def test_image_pair_check_reads_headers_and_names_the_bad_file(tmp_path):
    from data.io import ImageReadError, write_image

    lq, gt, small = tmp_path / "lq.png", tmp_path / "gt.png", tmp_path / "small.png"
    write_image(lq, np.zeros((8, 12, 3), np.float32))
    write_image(gt, np.zeros((8, 12, 3), np.float32))
    write_image(small, np.zeros((8, 10, 3), np.float32))
    assert image_size(lq) == (12, 8)
    assert check_image_pairs([(lq, gt)], "val") == 1
    with pytest.raises(
        ValueError, match=r"val: LQ and GT sizes differ: .*lq\.png is 12x8, .*small\.png is 10x8"
    ):
        check_image_pairs([(lq, gt), (lq, small)], "val")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match=r"val: not an image .*broken\.png"):
        check_image_pairs([(lq, gt), (broken, gt)], "val")
    with pytest.raises(ImageReadError, match="missing.png"):
        check_images([lq, tmp_path / "missing.png"], "val")


def test_the_shared_reachability_probe_is_bounded_and_honours_the_proxy(monkeypatch):
    import socket
    import threading

    from data.net import reachable

    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    with socket.socket() as server:  # a listening port is reachable
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert reachable(f"http://127.0.0.1:{port}/some/file", timeout=2.0)
    assert not reachable(f"http://127.0.0.1:{port}", timeout=2.0)  # the same port, closed now
    assert not reachable("not a url", timeout=2.0)  # no host

    # A DNS lookup that never returns (until the test releases it): the probe gives up after its
    # timeout + 0.5 s of waiting, and the connection attempt itself was given the timeout.
    release = threading.Event()
    probed, waits, threads = [], [], []

    def stuck(address, timeout):
        probed.append((address, timeout))
        release.wait()
        raise OSError("name resolution timed out")

    class Recorded(threading.Thread):
        def join(self, timeout=None):
            waits.append(timeout)
            threads.append(self)
            super().join(timeout)

    monkeypatch.setattr(socket, "create_connection", stuck)
    monkeypatch.setattr("data.net.threading.Thread", Recorded)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    try:
        assert not reachable("https://huggingface.co", timeout=0.2)
        assert waits == [pytest.approx(0.7)] and threads[0].is_alive()  # returned while the lookup hung
        assert probed == [(("proxy.example", 3128), 0.2)]  # where a download would connect
    finally:
        release.set()  # no thread is left waiting after the test
    threads[0].join()


def test_the_inference_path_imports_no_training_module():
    """restore.py, test.py and the pipeline they share load models without the trainers' code."""
    import subprocess
    import sys

    import daclip.engine.lifecycle
    import daclip.train
    import irsde.training.losses
    import irsde.training.stage

    training = [
        m.__name__
        for m in (irsde.training.stage, irsde.training.losses, daclip.train, daclip.engine.lifecycle)
    ]
    probe = (
        "import sys; import irsde.inference.pipeline, irsde.evaluation.evaluate, irsde.inference.restore, "
        "scripts.restore, scripts.test; "
        f"print(sorted(m for m in sys.modules if m in {training!r} or m == 'irsde.training'))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    assert out == "[]"
