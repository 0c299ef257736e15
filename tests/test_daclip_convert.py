"""Loading DA-CLIP: the released official format, our own checkpoints, and offline pretrained weights."""

from __future__ import annotations

import socket

import open_clip
import pytest
import torch

from daclip.convert import convert_official_state_dict, to_official_state_dict
from daclip.inference import load_frozen_daclip
from daclip.pretrained import (
    WeightsUnavailableError,
    build_clip,
    build_daclip,
    load_daclip,
    resolve_pretrained,
)
from daclip.train import make_checkpoint
from tests.test_daclip_model import TINY_CONFIG, TINY_NAME, images, released_keys, tiny_daclip


def official_file(model, path, *, wrap: bool = True, prefix: str = "module."):
    """Write ``model`` as the official code saves it (duplicated visual.*, optional wrapper and prefix)."""
    official = {prefix + k: v.clone() for k, v in to_official_state_dict(model.state_dict()).items()}
    torch.save({"state_dict": official, "epoch": 50} if wrap else official, path)
    return official


def test_every_released_key_is_accounted_for() -> None:
    """The 631 keys of daclip_ViT-B-32.pt map onto our ViT-B-32 DA-CLIP exactly (names and shapes)."""
    rows = released_keys()
    assert len(rows) == 631
    fake = {"module." + key: torch.empty(shape, device="meta") for key, shape in rows}
    converted = convert_official_state_dict(fake)
    with torch.device("meta"):
        model, _ = build_daclip("ViT-B-32", "", device=None)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours
    # 631 keys - 152 duplicated visual.* = our 479
    assert len(ours) == 631 - 152


def test_official_file_round_trip_computes_the_same(tmp_path) -> None:
    model = tiny_daclip(perturb_control=True)
    path = tmp_path / "daclip_tiny.pt"
    official_file(model, path)
    loaded, source = load_daclip(path, clip_model=TINY_NAME, model_config=TINY_CONFIG)
    x = images()
    with torch.no_grad():
        expected = model.encode_image(x)
        got = loaded.eval().encode_image(x)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert source.clip_model == TINY_NAME and source.image_size == 32
    # Bare state dict without prefix loads too.
    bare = tmp_path / "bare.pt"
    official_file(model, bare, wrap=False, prefix="")
    again, _ = load_daclip(bare, clip_model=TINY_NAME, model_config=TINY_CONFIG)
    assert torch.equal(again.logit_scale, model.logit_scale)


def test_official_loader_fails_clearly_on_missing_unexpected_or_inconsistent_keys(tmp_path) -> None:
    model = tiny_daclip()
    official = to_official_state_dict(model.state_dict())

    missing = dict(official)
    del missing["visual_control.transformer.zero_modules.1.bias"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing \(controller\.zero_linears\.1\.bias\)"):
        load_daclip(tmp_path / "missing.pt", clip_model=TINY_NAME, model_config=TINY_CONFIG)

    extra = dict(official, **{"visual_control.transformer.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="visual_control.transformer.extra.weight"):
        convert_official_state_dict(extra)

    stray = dict(official, **{"text_tower.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="keys outside the DA-CLIP checkpoint format: text_tower.weight"):
        convert_official_state_dict(stray)

    differing = dict(official)
    differing["visual.proj"] = differing["visual.proj"] + 1.0
    with pytest.raises(ValueError, match="visual.proj"):
        convert_official_state_dict(differing)

    # The right keys for the wrong architecture: shapes are checked, the model name suggested.
    torch.save(official, tmp_path / "tiny.pt")
    wider = {**TINY_CONFIG, "vision_cfg": {**TINY_CONFIG["vision_cfg"], "width": 96}}
    with pytest.raises(ValueError, match="CLIP model name"):
        load_daclip(tmp_path / "tiny.pt", clip_model=TINY_NAME, model_config=wider)

    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither a DA-CLIP checkpoint"):
        load_daclip(tmp_path / "other.pt", clip_model=TINY_NAME, model_config=TINY_CONFIG)


def test_our_checkpoint_rebuilds_from_the_file_alone(tmp_path) -> None:
    """Random CLIP: the frozen weights travel in the checkpoint; loading needs no config or name."""
    model = tiny_daclip(perturb_control=True)
    _, source = build_clip(TINY_NAME, "", TINY_CONFIG)
    path = tmp_path / "ours.pt"
    torch.save(make_checkpoint(model, source, epoch=3, step=7), path)
    frozen = load_frozen_daclip(path, clip_model="ignored-for-our-format")
    x = images()
    with torch.no_grad():
        content, degra = model.encode_image(x)
    got_content, got_degra = frozen(x)
    assert torch.equal(got_content, content) and torch.equal(got_degra, degra)
    assert frozen.image_size == 32 and not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.model.training
    probs = frozen.classify(x, ["noisy", "hazy", "rainy"])
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(3))


def test_trained_weights_only_checkpoint_rebuilds_clip_from_its_pretrained_file(tmp_path) -> None:
    torch.manual_seed(3)
    clip, _ = build_clip(TINY_NAME, "", TINY_CONFIG)
    clip_file = tmp_path / "open_clip_tiny.bin"
    torch.save(clip.state_dict(), clip_file)
    model, source = build_daclip(TINY_NAME, str(clip_file), TINY_CONFIG)
    assert torch.equal(model.clip.visual.conv1.weight, clip.visual.conv1.weight)
    with torch.no_grad():
        model.controller.zero_linears[2].bias.fill_(0.3)
    ckpt = make_checkpoint(model, source)
    assert not any(k.startswith("clip.") for k in ckpt["model"])  # lean: CLIP comes from the file
    torch.save(ckpt, tmp_path / "lean.pt")
    loaded, _ = load_daclip(tmp_path / "lean.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    clip_file.unlink()
    with pytest.raises(FileNotFoundError, match="open_clip_tiny.bin"):
        load_daclip(tmp_path / "lean.pt")


def test_offline_pretrained_tag_fails_at_once_with_one_line(tmp_path, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    def must_not_download(*args, **kwargs):  # open_clip's own download retries for ~50 s
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(open_clip, "download_pretrained", must_not_download)
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_pretrained("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message
    assert "laion2b_s34b_b79k" in message and "model.pretrained=" in message
    assert isinstance(info.value, FileNotFoundError)  # scripts report it in one line, exit code 2


def test_pretrained_tag_found_in_the_hugging_face_cache_is_used_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(
        socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("offline"))
    )
    snapshot = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    refs = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    found = resolve_pretrained("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert found == snapshot / "open_clip_model.safetensors"


def test_pretrained_bad_values_are_user_errors(tmp_path) -> None:
    assert resolve_pretrained("ViT-B-32", "") is None
    with pytest.raises(FileNotFoundError, match="weights.bin"):
        resolve_pretrained("ViT-B-32", str(tmp_path / "weights.bin"))
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag.*laion2b_s34b_b79k"):
        resolve_pretrained("ViT-B-32", "laion3b")
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        build_clip("ViT-Q-99", "")


def test_corrupt_local_pretrained_file_is_one_line_naming_it(tmp_path) -> None:
    """EOFError, UnpicklingError, zip and safetensors errors of a local `model.pretrained` file."""
    import collections
    import pickle

    from daclip.engine.cli import run_main

    clip, _ = build_clip(TINY_NAME, "", TINY_CONFIG)
    torch.save(clip.state_dict(), tmp_path / "good.bin")
    raw = (tmp_path / "good.bin").read_bytes()
    files = {
        "empty.bin": (b"", "is empty or truncated"),
        "cut.bin": (raw[: len(raw) // 2], r"is corrupt or not a weights file \(RuntimeError: "),
        "text.bin": (b"this is not a weights file\n" * 4, "is corrupt or not a weights file"),
        # Any pickle of objects that are not tensors or plain data is refused unread (weights_only).
        "code.pt": (pickle.dumps(collections.Counter(a=1)), "not a plain PyTorch weights file"),
        "bad.safetensors": (
            b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json}......",
            "is corrupt or not a weights",
        ),
    }
    for name, (data, message) in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=message) as caught:
            build_clip(TINY_NAME, str(tmp_path / name), TINY_CONFIG)
        assert f"pretrained weights file {tmp_path / name} " in str(caught.value)
        assert run_main(lambda n=name: build_daclip(TINY_NAME, str(tmp_path / n), TINY_CONFIG)) == 2
    # A readable file of another architecture is still reported as not fitting, with the keys.
    torch.save({"visual.proj": torch.zeros(3)}, tmp_path / "other.bin")
    with pytest.raises(ValueError, match=r"do not fit ViT-Tiny-16: Error\(s\) in loading .* Missing key"):
        build_clip(TINY_NAME, str(tmp_path / "other.bin"), TINY_CONFIG)
    build_clip(TINY_NAME, str(tmp_path / "good.bin"), TINY_CONFIG)  # and a good file loads
