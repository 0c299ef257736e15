"""The conditional U-Net against the official implementation (fixtures) and the weights loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from irsde.models.convert import convert_official_state_dict, infer_unet_config, load_official_unet
from irsde.models.unet import (
    UNET_PRESETS,
    ChannelLayerNorm,
    ConditionalUNet,
    SpatialTransformer,
    TransformerBlock,
)

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 1e-4


@pytest.fixture(scope="module")
def small() -> dict:
    """unet_small.pt: config, official state dict, inputs, eval outputs and grads of the official code."""
    return torch.load(FIXTURES / "unet_small.pt", weights_only=True)


@pytest.fixture(scope="module")
def small_model(small: dict) -> ConditionalUNet:
    return load_official_unet(small["state_dict"], config=small["config"])


def _tiny(**overrides) -> ConditionalUNet:
    torch.manual_seed(0)
    cfg = dict(nf=32, ch_mult=(1, 1, 2, 2), context_dim=48) | overrides
    return ConditionalUNet(**cfg)


# --- agreement with the official implementation -------------------------------------------------


@pytest.mark.parametrize(
    ("output", "time", "use_degra", "use_content"),
    [
        ("text_image", "time", True, True),
        ("image_only", "time", False, True),
        ("text_image_scalar_time37", "scalar_time", True, True),
        ("text_image_time_37_37", "tensor37", True, True),
    ],
)
@torch.no_grad()
def test_outputs_match_official(small, small_model, output, time, use_degra, use_content):
    inputs = small["inputs"]
    t = torch.tensor([37, 37]) if time == "tensor37" else inputs[time]
    out = small_model(
        inputs["xt"],
        inputs["cond"],
        t,
        degra_emb=inputs["text_context"] if use_degra else None,
        content_emb=inputs["image_context"] if use_content else None,
    )
    assert out.shape == inputs["xt"].shape  # 40x56 is not a multiple of 16: padded and cropped back
    torch.testing.assert_close(out, small["outputs"][output], atol=ATOL, rtol=0)


@torch.no_grad()
def test_zero_dim_time_equals_python_int(small, small_model):
    inputs = small["inputs"]
    args = (inputs["xt"], inputs["cond"])
    kw = dict(degra_emb=inputs["text_context"], content_emb=inputs["image_context"])
    out = small_model(*args, torch.tensor(37), **kw)
    torch.testing.assert_close(out, small["outputs"]["text_image_scalar_time37"], atol=ATOL, rtol=0)


def test_gradients_match_official(small):
    model = load_official_unet(small["state_dict"], config=small["config"]).train()
    inputs, grads = small["inputs"], small["grads"]
    leaves = {
        k: inputs[k].clone().requires_grad_(True) for k in ("xt", "cond", "text_context", "image_context")
    }
    out = model(leaves["xt"], leaves["cond"], inputs["time"], leaves["text_context"], leaves["image_context"])
    loss = (out * inputs["grad_weight"]).sum()
    loss.backward()
    torch.testing.assert_close(out, grads["out"], atol=ATOL, rtol=0)
    for name, leaf in leaves.items():
        torch.testing.assert_close(leaf.grad, grads[name], atol=ATOL, rtol=0, msg=name)
    params = dict(model.named_parameters())
    for name, expected in grads["params"].items():
        # A conv weight's gradient sums B·H·W = 2·40·56 = 4480 products per entry. Reordering that float32 sum
        # (another thread count or BLAS build) moves it by about sqrt(n)·u·Σ|terms| ≈ 67 · 6e-8 · Σ|terms|,
        # i.e. a few 1e-6 of the tensor's largest entry: final_conv's reach 125, where one thread instead of
        # two moves them by 2.8e-4. The tolerance scales with the tensor, so small gradients stay tight.
        atol = ATOL + 4e-6 * float(expected.abs().max())
        torch.testing.assert_close(params[name].grad, expected, atol=atol, rtol=0, msg=name)


# --- the released configuration -------------------------------------------------------------------


def _read_tsv(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    shapes, footer = {}, {}
    for line in path.read_text().splitlines()[1:]:
        fields = line.split("\t")
        if line.startswith("#"):
            footer[fields[0][1:]] = int(fields[1])
        else:
            shapes[fields[0]] = tuple(int(d) for d in fields[1].split("x"))
    return shapes, footer


def test_released_config_keys_and_shapes_match_listing():
    official, footer = _read_tsv(FIXTURES / "universal_ir_unet_nf64.tsv")
    assert footer == {"num_keys": 224, "total_params": 48_975_747}
    converted = convert_official_state_dict({k: torch.empty(s, device="meta") for k, s in official.items()})
    with torch.device("meta"):
        model = ConditionalUNet.from_config(UNET_PRESETS["universal-ir"])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(converted)  # same keys, in the official registration order
    assert ours == {k: tuple(v.shape) for k, v in converted.items()}
    assert sum(p.numel() for p in model.parameters()) == 48_975_747
    assert infer_unet_config(converted) == UNET_PRESETS["universal-ir"]


# --- loader -------------------------------------------------------------------------------------------


def test_loader_accepts_wrapped_prefixed_file(small, tmp_path):
    sd = small["state_dict"]
    path = tmp_path / "universal-ir.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    model = load_official_unet(path)  # config inferred from the shapes
    # Released weights predict noise (the paper's parametrisation).
    assert dataclasses.asdict(model.config) == {
        "family": "irsde",
        **small["config"],
        "ch_mult": list(small["config"]["ch_mult"]),
        "grad_checkpointing": False,
        "prediction": "noise",
        "attention_from_level": 0,
        "global_curve": False,
    }
    assert not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())


def test_loader_names_missing_and_unexpected_keys(small):
    sd = dict(small["state_dict"])
    del sd["mid_block1.mlp.1.bias"]
    sd["mid_block1.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="missing keys") as err:
        load_official_unet(sd, config=small["config"])
    assert "mid_block1.mlp.1.bias" in str(err.value)
    assert "unexpected keys" in str(err.value) and "mid_block1.extra.weight" in str(err.value)


def test_loader_names_shape_mismatch(small):
    with pytest.raises(ValueError, match=r"shape mismatches.*init_conv\.weight"):
        load_official_unet(small["state_dict"], config={**small["config"], "nf": 64})


def test_loader_missing_file(tmp_path):
    missing = tmp_path / "nowhere" / "universal-ir.pth"
    with pytest.raises(FileNotFoundError, match="universal-ir.pth"):
        load_official_unet(missing)


def test_loader_rejects_non_state_dict():
    with pytest.raises(ValueError, match="not a U-Net state dict"):
        load_official_unet({"epoch": 3, "state_dict": {"a": 1}})


# --- our fixes and extras ---------------------------------------------------------------------------------


@torch.no_grad()
def test_no_content_embedding_skips_cross_attention():
    # context_dim (48) differs from every transformer width (64): the official self-attention
    # fallback through to_k/to_v (48 inputs) would crash here.
    model = _tiny().eval()
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    assert blocks and all(b.attn2.to_k.in_features != b.norm2.normalized_shape[0] for b in blocks)
    for module in model.modules():
        if isinstance(module, SpatialTransformer):
            module.proj_out.reset_parameters()  # zero-initialised: make the transformers contribute
    g = torch.Generator().manual_seed(1)
    x, mu = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    degra, content = torch.randn(2, 48, generator=g), torch.randn(2, 48, generator=g)
    out_none = model(x, mu, 10, degra, None)
    assert out_none.shape == (2, 3, 32, 32) and torch.isfinite(out_none).all()
    # Skipping must equal a cross-attention that contributes nothing: zero every attn2 output.
    with_content = model(x, mu, 10, degra, content)
    for name, p in model.named_parameters():
        if ".attn2.to_out." in name:
            p.zero_()
    assert not torch.allclose(with_content, out_none, atol=1e-4)  # the content embedding mattered...
    torch.testing.assert_close(model(x, mu, 10, degra, content), out_none, atol=1e-6, rtol=0)  # ...only there


@torch.no_grad()
def test_released_config_runs_without_content_embedding():
    model = ConditionalUNet.from_config(UNET_PRESETS["universal-ir"]).eval()
    x = torch.randn(1, 3, 16, 16)
    out = model(x, x.flip(-1), 100, torch.randn(1, 512), None)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(17, 23), (5, 40)])
@torch.no_grad()
def test_odd_sizes_keep_shape(size):
    model = _tiny().eval()
    x = torch.randn(1, 3, *size)
    assert model(x, x * 0.5, 3, torch.randn(1, 48), torch.randn(1, 48)).shape == x.shape


def test_channel_layernorm_float32_and_dtype():
    torch.manual_seed(0)
    norm = ChannelLayerNorm(8)
    with torch.no_grad():
        norm.g.copy_(torch.rand(1, 8, 1, 1) + 0.5)
    x = torch.randn(2, 8, 3, 3) * 3 + 1
    # closed form: biased variance, eps 1e-5, gain only
    ref = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-5) * norm.g
    torch.testing.assert_close(norm(x), ref)
    x16 = x.bfloat16()
    out16 = norm(x16)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16, norm(x16.float()).bfloat16(), atol=0, rtol=0)  # computed in float32


def test_gradient_checkpointing_same_gradients():
    g = torch.Generator().manual_seed(2)
    x, mu = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    degra, content = torch.randn(2, 48, generator=g), torch.randn(2, 48, generator=g)
    grads = []
    for use_checkpoint in (False, True):
        model = _tiny(use_checkpoint=use_checkpoint).train()
        model(x, mu, torch.tensor([4, 9]), degra, content).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (dict(nf=30), "nf"),
        (dict(nf=16, ch_mult=(1, 1, 1, 1)), "multiples of 32"),
        (dict(ch_mult=()), "ch_mult"),
        (dict(context_dim=None), "context_dim"),
        (dict(use_image_context="yes"), "use_image_context"),
        (dict(attention_from_level=-1), "attention_from_level"),
        (dict(attention_from_level=1.5), "attention_from_level"),
    ],
)
def test_constructor_validates(overrides, key):
    with pytest.raises(ValueError, match=key):
        _tiny(**overrides)


@torch.no_grad()
def test_forward_validates_shapes(small_model):
    x = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="degra_emb"):
        small_model(x, x, 5, degra_emb=torch.zeros(2, 63))
    with pytest.raises(ValueError, match="t has 3 timesteps"):
        small_model(x, x, torch.tensor([1, 2, 3]))


@torch.no_grad()
def test_bf16_autocast_close_to_float32():
    model = _tiny().eval()
    for module in model.modules():
        if isinstance(module, SpatialTransformer):
            module.proj_out.reset_parameters()
    g = torch.Generator().manual_seed(3)
    x, mu = torch.randn(1, 3, 16, 16, generator=g), torch.randn(1, 3, 16, 16, generator=g)
    degra, content = torch.randn(1, 48, generator=g), torch.randn(1, 48, generator=g)
    ref = model(x, mu, 50, degra, content)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, mu, 50, degra, content)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.03


@pytest.mark.parametrize("preset", sorted(UNET_PRESETS))
def test_presets_build(preset):
    with torch.device("meta"):
        model = ConditionalUNet.from_config(UNET_PRESETS[preset])
    assert model.config == UNET_PRESETS[preset]  # the one description, given back


@torch.no_grad()
def test_attention_from_level_skips_the_shallow_linear_attention():
    """Levels below ``attention_from_level`` have no linear attention: the network computes what the full
    one computes once those attentions add nothing, has fewer parameters, and rebuilds from its keys."""
    full = _tiny(nf=16, ch_mult=(1, 2, 2, 4), context_dim=32).eval()
    lean = _tiny(nf=16, ch_mult=(1, 2, 2, 4), context_dim=32, attention_from_level=2).eval()
    assert lean.config.attention_from_level == 2
    state = full.state_dict()
    skipped = {k for k in state if k not in lean.state_dict()}
    assert skipped and all(
        k.split(".")[:3] in (["downs", "0", "2"], ["downs", "1", "2"], ["ups", "2", "2"], ["ups", "3", "2"])
        for k in skipped
    )
    assert any(k.startswith("downs.2.2.") for k in lean.state_dict())  # level 2 keeps its attention
    for key in skipped:  # the full network's skipped attentions add nothing: output gain g = 0
        if key.endswith("to_out.1.g"):
            state[key].zero_()
    full.load_state_dict(state)
    lean.load_state_dict({k: v for k, v in state.items() if k not in skipped})
    g = torch.Generator().manual_seed(0)
    x, mu = torch.randn(2, 3, 24, 24, generator=g), torch.randn(2, 3, 24, 24, generator=g)
    degra, content = torch.randn(2, 32, generator=g), torch.randn(2, 32, generator=g)
    torch.testing.assert_close(lean(x, mu, 7, degra, content), full(x, mu, 7, degra, content))
    assert sum(p.numel() for p in lean.parameters()) < sum(p.numel() for p in full.parameters())
    assert infer_unet_config(lean.state_dict()) == dataclasses.replace(lean.config, family="irsde")
    assert infer_unet_config(full.state_dict()).attention_from_level == 0
