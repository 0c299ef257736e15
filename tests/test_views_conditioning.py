"""Stage 2 conditioned on DA-CLIP's grid of native crops (``data.clip_input: views``): the embeddings are the
mean over the views, in training, in the PyTorch pipeline and in the numpy ONNX runner alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from daclip.engine.checkpoint import load_checkpoint
from daclip.engine.config import ConfigError, load_config
from daclip.engine.errors import UserError
from daclip.inference import load_frozen_daclip
from data.clip_input import grid_views_array
from data.io import write_image
from data.paired import PairedDataset
from irsde.inference.pipeline import RestorationPipeline
from irsde.training.stage import IRTrainConfig, train
from tests.conftest import write_tiny_daclip_checkpoint, write_tiny_ir_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grid_daclip(tmp_path_factory) -> Path:
    """A tiny random DA-CLIP (non-zero control) recorded as classifying from a 2 x 2 grid of native crops."""
    return write_tiny_daclip_checkpoint(tmp_path_factory.mktemp("grid_daclip") / "daclip.pt", views=2)


def _views_restorer(daclip: Path, path: Path) -> Path:
    """A tiny random restorer checkpoint conditioned on ``daclip``'s views (data.clip_input: views)."""
    return write_tiny_ir_checkpoint(
        path, daclip_checkpoint=str(daclip), context=True, overrides=("data.clip_input=views",)
    )


def _images(batch: int = 2, h: int = 40, w: int = 52, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_the_embedding_of_views_is_their_mean(grid_daclip) -> None:
    daclip = load_frozen_daclip(grid_daclip)
    lq = _images()
    views = daclip.grid_views(lq)
    size = daclip.image_size
    assert views.shape == (2, 4, 3, size, size)
    expected = grid_views_array(lq[1].permute(1, 2, 0).numpy(), size, 2, daclip.mean, daclip.std)
    assert torch.equal(views[1], torch.from_numpy(expected))
    content, degra = daclip.encode_image(views)
    one_content, one_degra = daclip.encode_image(views[1])  # the four views of image 1 as a batch
    assert torch.allclose(content[1], one_content.mean(0), atol=1e-6)
    assert torch.allclose(degra[1], one_degra.mean(0), atol=1e-6)
    assert not torch.allclose(degra[0], degra[1])  # per image, not over the batch


def test_a_views_restorer_embeds_its_own_grid_whatever_lq_clip_it_is_given(grid_daclip, tmp_path) -> None:
    ckpt = _views_restorer(grid_daclip, tmp_path / "ir.pt")
    pipeline = RestorationPipeline.from_checkpoint(ckpt, device="cpu")
    assert pipeline.clip_input == "views"
    lq = _images()
    content, degra = pipeline.embedder(pipeline.embedder.grid_views(lq))
    resized = pipeline.embed(lq)  # the whole-image CLIP input a dataset gives is not this restorer's input
    given = pipeline.embed(lq, torch.zeros(2, 3, pipeline.embedder.image_size, pipeline.embedder.image_size))
    for context in (resized, given):
        assert torch.equal(context["degra_emb"], degra) and torch.equal(context["content_emb"], content)
    image = RestorationPipeline.from_checkpoint(
        write_tiny_ir_checkpoint(tmp_path / "ir_image.pt", daclip_checkpoint=str(grid_daclip), context=True),
        device="cpu",
    )
    assert image.clip_input == "image"  # the paper's input, for every checkpoint trained without views
    assert not torch.allclose(image.embed(lq)["degra_emb"], degra)


def test_views_need_a_daclip_trained_on_native_crops(grid_daclip, tiny_daclip_checkpoint, tmp_path) -> None:
    ckpt = _views_restorer(grid_daclip, tmp_path / "ir.pt")
    with pytest.raises(UserError, match="grid of native crops"):
        RestorationPipeline.from_checkpoint(ckpt, daclip=tiny_daclip_checkpoint, device="cpu")


def _paired_root(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 1)):
        for index in range(count):
            gt = np.kron(rng.random((5, 5, 3)), np.ones((8, 8, 1))).astype(np.float32)  # (40, 40, 3)
            write_image(root / split / "noisy" / "GT" / f"{index}.png", gt)
            write_image(
                root / split / "noisy" / "LQ" / f"{index}.png",
                np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1),
            )
    return root


def _stage2_config(root: Path, tmp_path: Path, daclip: Path, *overrides: str) -> IRTrainConfig:
    return load_config(
        IRTrainConfig,
        ROOT / "configs/universal_ir_tiny.yml",
        [
            f"experiment.root={tmp_path}",
            "experiment.device=cpu",
            f"daclip.checkpoint={daclip}",
            "model.use_degra_context=true",
            "model.use_image_context=true",
            "model.nf=16",
            "model.ch_mult=[1, 2]",
            f"data.train_root={root / 'train'}",
            f"data.val_root={root / 'val'}",
            "data.degradations=[noisy]",
            "data.patch_size=16",
            "data.clip_input=views",
            "train.batch_size=2",
            "train.total_steps=2",
            "train.save_every=2",
            "train.val_every=2",
            *overrides,
        ],
    )


def test_training_on_views_gives_a_checkpoint_that_restores_with_them(grid_daclip, tmp_path) -> None:
    root = _paired_root(tmp_path / "data")
    dataset = PairedDataset(root / "train", ["noisy"], mode="train", patch_size=16, clip_size=16,
                            clip_input="views", clip_views=2)  # fmt: skip
    item = dataset.get_item(0, seed=0)
    assert item["lq"].shape == (3, 16, 16) and item["lq_clip"].shape == (4, 3, 16, 16)
    run_dir = train(_stage2_config(root, tmp_path, grid_daclip))
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    assert load_checkpoint(checkpoint)["config"]["data"]["clip_input"] == "views"
    pipeline = RestorationPipeline.from_checkpoint(checkpoint, device="cpu")
    assert pipeline.clip_input == "views"
    assert "validation PSNR" in (run_dir / "train.log").read_text()


def test_views_with_a_whole_image_daclip_or_patch_degradation_name_the_key(
    tiny_daclip_checkpoint, tmp_path
) -> None:
    root = _paired_root(tmp_path / "data")
    with pytest.raises(ConfigError, match="data.clip_input: views needs a DA-CLIP trained on native crops"):
        train(_stage2_config(root, tmp_path, tiny_daclip_checkpoint))
    assert not (tmp_path / "universal-ir-tiny").exists()  # nothing written
    with pytest.raises(ConfigError, match="data.clip_input: views shows DA-CLIP the whole degraded image"):
        _stage2_config(
            root, tmp_path, tiny_daclip_checkpoint, "data.source=synthetic", "data.degrade_at=patch"
        )


class _TorchSession:
    """Stands in for ``daclip.onnx``'s onnxruntime session: the PyTorch DA-CLIP on numpy inputs."""

    def __init__(self, daclip) -> None:
        self.daclip = daclip

    def run(self, _outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        content, degra = self.daclip(torch.from_numpy(feeds["clip_images"]))
        return [content.numpy(), degra.numpy()]


def test_the_numpy_runner_embeds_views_as_the_pytorch_pipeline(grid_daclip, tmp_path) -> None:
    from irsde.export.runtime import OnnxRestorer

    ckpt = _views_restorer(grid_daclip, tmp_path / "ir.pt")
    pipeline = RestorationPipeline.from_checkpoint(ckpt, device="cpu")
    runner = OnnxRestorer.__new__(OnnxRestorer)  # the folder-free part: its DA-CLIP input and embedding
    runner.daclip, runner.inputs = _TorchSession(pipeline.embedder), ["degra_emb", "content_emb"]
    embedder = pipeline.embedder
    runner.clip_size, runner.clip_mean, runner.clip_std = embedder.image_size, embedder.mean, embedder.std
    runner.clip_views = 2
    lq = _images(seed=3)
    got = runner.embed(lq.numpy())
    expected = pipeline.embed(lq)
    for name in ("degra_emb", "content_emb"):
        assert np.abs(got[name] - expected[name].numpy()).max() < 1e-5, name


def test_a_model_folder_keeps_the_views_input(grid_daclip, tmp_path) -> None:
    from irsde.inference.pretrained import save_pretrained

    ckpt = _views_restorer(grid_daclip, tmp_path / "ir.pt")
    pipeline = RestorationPipeline.from_checkpoint(ckpt, device="cpu")
    (tmp_path / "folder").mkdir()
    save_pretrained(pipeline, tmp_path / "folder")
    loaded = RestorationPipeline.from_pretrained(tmp_path / "folder", device="cpu")
    assert loaded.clip_input == "views"
    lq = _images(seed=5)
    assert torch.equal(loaded.embed(lq)["degra_emb"], pipeline.embed(lq)["degra_emb"])


def test_the_embeddings_of_written_pairs_are_computed_once_and_train_alike(
    grid_daclip, tmp_path, monkeypatch
) -> None:
    """A written pair's whole-image DA-CLIP input never changes, so its embeddings are cached: the same
    training as computing them every step, with one DA-CLIP pass per distinct pair."""
    from daclip.inference import FrozenDaCLIP
    from irsde.training.stage import IRStage

    root = _paired_root(tmp_path / "data")
    calls: list[int] = []
    encode = FrozenDaCLIP.encode_image

    def counting(self, clip_images):
        calls.append(clip_images.shape[0])
        return encode(self, clip_images)

    monkeypatch.setattr(FrozenDaCLIP, "encode_image", counting)
    overrides = ("train.total_steps=6", "train.save_every=6", "train.val_every=0", "data.clean_fraction=0.3")
    cached = load_checkpoint(
        train(_stage2_config(root, tmp_path / "a", grid_daclip, *overrides)) / "checkpoints" / "latest.pt"
    )
    cached_calls = sum(calls)
    assert cached_calls <= 6  # 3 pairs and their 3 clean GTs at most, though 6 steps x 2 samples were drawn
    calls.clear()
    monkeypatch.setattr(IRStage, "_cached_embeddings", lambda self, batch: self._embed(batch["lq_clip"]))
    every = load_checkpoint(
        train(_stage2_config(root, tmp_path / "b", grid_daclip, *overrides)) / "checkpoints" / "latest.pt"
    )
    assert sum(calls) == 12
    for key, value in every["model"].items():
        assert torch.allclose(cached["model"][key], value, atol=1e-5), key
