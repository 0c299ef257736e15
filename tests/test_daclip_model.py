"""DA-CLIP model: zero control at init, the order of the control signals, what trains, key layout."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from daclip.convert import to_official_state_dict
from daclip.model import DaCLIP
from daclip.pretrained import build_clip, build_daclip

FIXTURES = Path(__file__).parent / "fixtures"

#: A tiny open_clip ViT (3 blocks, width 64, patch 16 on 32x32 images): fast on CPU.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_NAME = "ViT-Tiny-16"


def tiny_daclip(seed: int = 0, perturb_control: bool = False) -> DaCLIP:
    """A randomly initialised tiny DA-CLIP; optionally with non-zero control Linears."""
    torch.manual_seed(seed)
    model, _ = build_daclip(TINY_NAME, "", TINY_CONFIG)
    if perturb_control:
        with torch.no_grad():
            for linear in model.controller.zero_linears:
                linear.weight.normal_(0.0, 0.2)
                linear.bias.normal_(0.0, 0.2)
            for param in model.controller.tower.parameters():  # controller no longer a copy of the tower
                param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def released_keys() -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every entry of the released ViT-B-32 DA-CLIP state dict, in file order."""
    lines = (FIXTURES / "daclip_ViT-B-32.tsv").read_text().splitlines()[1:]
    rows = [line.split("\t") for line in lines if line and not line.startswith("#")]
    return [(key, tuple(int(d) for d in shape.split("x")) if shape != "()" else ()) for key, shape, _ in rows]


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def reference_controlled(
    model: DaCLIP, x: torch.Tensor, reverse: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """An independent reference built on open_clip's *own* VisionTransformer.forward with block hooks.

    Controller: hidden i = zero_linear_i(output of controller block i). Main tower: after block j
    add hidden L-1-j (``reverse``) or hidden j (the wrong order, to show the test can tell).
    """
    hiddens: list[torch.Tensor] = []
    handles = []
    for block, linear in zip(model.controller.tower.transformer.resblocks, model.controller.zero_linears):
        handles.append(
            block.register_forward_hook(lambda mod, inp, out, lin=linear: hiddens.append(lin(out)))
        )
    degra = model.controller.tower(x)  # open_clip forward: ln_post, class token, proj
    for handle in handles:
        handle.remove()
    num = len(hiddens)
    handles = []
    for j, block in enumerate(model.clip.visual.transformer.resblocks):
        index = num - 1 - j if reverse else j
        handles.append(block.register_forward_hook(lambda mod, inp, out, i=index: out + hiddens[i]))
    content = model.clip.visual(x)
    for handle in handles:
        handle.remove()
    return content, degra


@torch.no_grad()
def test_zero_control_at_init_gives_plain_clip_exactly() -> None:
    model = tiny_daclip()
    x = images()
    content, degra = model.encode_image(x, control=True)
    plain = model.encode_image(x, control=False)
    assert torch.equal(content, plain)
    # The controller starts as an exact copy of the tower, so its embedding is CLIP's too.
    assert torch.equal(degra, plain)
    for linear in model.controller.zero_linears:
        assert not linear.weight.any() and not linear.bias.any()
    # Normalised output has unit norm.
    content_n, degra_n = model.encode_image(x, control=True, normalize=True)
    torch.testing.assert_close(content_n.norm(dim=-1), torch.ones(3))


@torch.no_grad()
def test_control_signals_are_added_in_reverse_order() -> None:
    model = tiny_daclip(perturb_control=True)
    x = images()
    content, degra = model.encode_image(x, control=True)
    ref_content, ref_degra = reference_controlled(model, x, reverse=True)
    torch.testing.assert_close(content, ref_content, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(degra, ref_degra, rtol=1e-5, atol=1e-5)
    wrong_content, _ = reference_controlled(model, x, reverse=False)
    # The order matters by far more than the tolerance: a reversed implementation fails above.
    assert (wrong_content - content).abs().max() > 1e-2
    # And the control changes the embedding (the test is not vacuous).
    assert (content - model.encode_image(x, control=False)).abs().max() > 1e-2


def test_only_controller_and_logit_scale_are_trainable() -> None:
    model = tiny_daclip()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "logit_scale" in trainable
    assert all(name == "logit_scale" or name.startswith("controller.") for name in trainable)
    controller = {name for name, _ in model.controller.named_parameters()}
    assert {f"controller.{n}" for n in controller} <= trainable
    assert not any(p.requires_grad for p in model.clip.parameters())
    model.train()
    assert model.controller.training and not model.clip.training
    assert set(model.trainable_state_dict()) == {k for k in model.state_dict() if not k.startswith("clip.")}
    # DA-CLIP's logit scale starts from CLIP's but is a separate parameter.
    assert model.logit_scale is not model.clip.logit_scale
    assert torch.equal(model.logit_scale.detach(), model.clip.logit_scale.detach().reshape(()))


def test_gradients_reach_controller_not_clip_and_checkpointing_matches() -> None:
    model = tiny_daclip(perturb_control=True).train()
    x = images()

    def grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(checkpointing)
        content, degra = model(x)
        (content.square().sum() + degra.sum()).backward()
        return content.detach(), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    out_plain, grads_plain = grads(False)
    out_ckpt, grads_ckpt = grads(True)
    assert not any(name.startswith("clip.") for name in grads_plain)
    assert grads_plain["controller.zero_linears.0.weight"].abs().sum() > 0
    assert grads_plain["controller.tower.conv1.weight"].abs().sum() > 0
    torch.testing.assert_close(out_ckpt, out_plain)
    assert grads_ckpt.keys() == grads_plain.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-4, atol=1e-6)


def test_vit_b32_layout_matches_the_released_checkpoint_keys() -> None:
    """Built on the meta device (no memory, no init): names and shapes against daclip_ViT-B-32.tsv."""
    rows = released_keys()
    released = dict(rows)
    with torch.device("meta"):
        model, source = build_daclip("ViT-B-32", "", device=None)
    ours = model.state_dict()
    # clip.* is exactly pip open_clip's ViT-B-32, in the same order.
    released_clip = [k for k, _ in rows if k.startswith("clip.")]
    assert [k for k in ours if k.startswith("clip.")] == released_clip
    official = to_official_state_dict(ours)
    assert set(official) == set(released)
    assert {k: tuple(v.shape) for k, v in official.items()} == released
    assert len(model.controller.zero_linears) == 12 and source.image_size == 224


def test_non_vit_towers_are_rejected() -> None:
    with pytest.raises(ValueError, match="VisionTransformer"):
        with torch.device("meta"):
            build_clip("RN50", "", device=None)


def test_controller_is_a_copy_not_a_shared_module() -> None:
    model = tiny_daclip()
    with torch.no_grad():
        model.controller.tower.conv1.weight.add_(1.0)
    assert not torch.equal(model.controller.tower.conv1.weight, model.clip.visual.conv1.weight)
    # deepcopy of the model keeps working (used by EMA-style tooling)
    clone = copy.deepcopy(model)
    assert torch.equal(clone.controller.tower.conv1.weight, model.controller.tower.conv1.weight)
