"""The NAFNet restorer: shapes, zero-initialised DA-CLIP injection, residual, training, configs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from daclip.engine.config import ConfigError, from_dict
from irsde.models.nafnet import NAFNET_PRESETS, LayerNorm2d, NAFNet, NAFNetConfig

CTX = 24  # a small embedding width keeps the tests fast
SWITCHES = [(False, False), (True, False), (False, True), (True, True)]
INJECTION_PREFIXES = ("prompt", "text_mlp.", "prompt_mlp.", "enc_attn.", "dec_attn.", "middle_attn.")


def _cfg(degra: bool = True, image: bool = True, **overrides) -> NAFNetConfig:
    kwargs = dict(
        width=8,
        enc_blocks=[1, 1, 1],
        middle_blocks=1,
        dec_blocks=[1, 1, 1],
        context_dim=CTX,
        use_degra_context=degra,
        use_image_context=image,
    )
    return NAFNetConfig(**(kwargs | overrides))


def _model(degra: bool = True, image: bool = True, seed: int = 0, **overrides) -> NAFNet:
    torch.manual_seed(seed)
    return NAFNet(_cfg(degra, image, **overrides)).eval()


def _is_injection(name: str) -> bool:
    return name.startswith(INJECTION_PREFIXES) or ".cond." in name


@torch.no_grad()
def _perturb(model: NAFNet, injection: bool, seed: int = 1) -> None:
    """Random values for the backbone (beta, gamma included) or for the injection parameters."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if _is_injection(name) == injection:
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


def _inputs(batch: int = 2, h: int = 17, w: int = 23, seed: int = 2) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    lq = torch.rand(batch, 3, h, w, generator=gen)
    return lq, torch.randn(batch, CTX, generator=gen), torch.randn(batch, CTX, generator=gen)


@pytest.mark.parametrize(("degra", "image"), SWITCHES)
@pytest.mark.parametrize(("h", "w"), [(17, 23), (31, 16), (3, 5)])
def test_output_shape_equals_input_shape_for_odd_sizes(degra: bool, image: bool, h: int, w: int) -> None:
    model = _model(degra, image)
    _perturb(model, injection=False)
    lq, de, ce = _inputs(h=h, w=w)
    out = model(lq, de, ce)
    assert out.shape == lq.shape
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, lq)  # the body does something once beta/gamma are non-zero


@pytest.mark.parametrize(("degra", "image"), SWITCHES[1:])
def test_conditioned_model_equals_plain_backbone_at_init_then_embeddings_matter(
    degra: bool, image: bool
) -> None:
    plain = _model(False, False)
    _perturb(plain, injection=False)  # beta/gamma non-zero: every block and level contributes
    cond = _model(degra, image, seed=5)
    missing, unexpected = cond.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(_is_injection(k) for k in missing)
    lq, de, ce = _inputs()
    with torch.no_grad():
        expected = plain(lq)
        assert torch.equal(cond(lq, de, ce), expected)  # exactly, not approximately
        _perturb(cond, injection=True)
        base = cond(lq, de, ce)
        assert not torch.allclose(base, expected, atol=1e-4)
        if degra:  # another degradation embedding, same content embedding
            assert not torch.allclose(cond(lq, -de, ce), base, atol=1e-4)
        if image:  # another content embedding, same degradation embedding
            assert not torch.allclose(cond(lq, de, ce.flip(0)), base, atol=1e-4)


def test_injection_sites_follow_cross_attn_levels() -> None:
    model = _model(True, True)
    assert set(model.enc_attn) == {"2"} and set(model.dec_attn) == {"0"}  # the lowest-resolution level
    assert model.middle_attn is not None and model.middle_attn.norm.weight.shape == (64,)
    assert model.enc_attn["2"].norm.weight.shape == (32,) and model.dec_attn["0"].norm.weight.shape == (32,)
    every = _model(True, True, cross_attn_levels=3)
    assert set(every.enc_attn) == {"0", "1", "2"} and set(every.dec_attn) == {"0", "1", "2"}
    assert every.dec_attn["2"].norm.weight.shape == (8,)  # decoders run lowest resolution first
    blocks = [m for m in model.modules() if hasattr(m, "beta")]
    assert len(blocks) == 7 and all(b.cond is not None for b in blocks)
    assert all(b.cond is None for b in _model(False, True).modules() if hasattr(b, "beta"))


@pytest.mark.parametrize(("degra", "image"), SWITCHES)
def test_zero_ending_makes_the_model_the_identity(degra: bool, image: bool) -> None:
    model = _model(degra, image)
    _perturb(model, injection=False)
    _perturb(model, injection=True)
    with torch.no_grad():
        model.ending.weight.zero_()
        model.ending.bias.zero_()
        lq, de, ce = _inputs(h=19, w=13)
        assert torch.equal(model(lq, de, ce), lq)


def test_overfits_one_pair_with_daclip_conditioning() -> None:
    torch.manual_seed(0)
    model = NAFNet(_cfg(True, True, enc_blocks=[1, 1], dec_blocks=[1, 1])).train()
    gen = torch.Generator().manual_seed(3)
    gt = F.avg_pool2d(torch.rand(1, 3, 20, 20, generator=gen), 5, stride=1)  # a smooth 16x16 image
    lq = 0.5 * gt + 0.05  # darken + offset
    de, ce = torch.randn(1, CTX, generator=gen), torch.randn(1, CTX, generator=gen)
    start = (lq - gt).abs().mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(100):
        loss = (model(lq, de, ce) - gt).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = (model.eval()(lq, de, ce) - gt).abs().mean().item()
    assert final < 0.3 * start, (final, start)
    # the zero-initialised injections learnt too
    assert model.middle_attn.attn.to_out[0].weight.abs().sum() > 0
    assert model.middle[0].cond.weight.abs().sum() > 0


def test_config_round_trip_rebuilds_the_same_model() -> None:
    model = _model(True, True, cross_attn_levels=2, prompt_dim=12)
    _perturb(model, injection=False)
    _perturb(model, injection=True)
    saved = dataclasses.asdict(model.config)
    rebuilt = NAFNet(NAFNetConfig(**saved)).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    via_dict = NAFNet.from_config(saved).eval()  # through daclip.engine.config.from_dict
    via_dict.load_state_dict(model.state_dict(), strict=True)
    lq, de, ce = _inputs()
    with torch.no_grad():
        out = model(lq, de, ce)
        assert torch.equal(rebuilt(lq, de, ce), out)
        assert torch.equal(via_dict(lq, de, ce), out)
    assert rebuilt.config == model.config and rebuilt.use_degra_context and rebuilt.use_image_context


def test_model_keeps_its_own_copy_of_the_config() -> None:
    cfg = _cfg()
    model = NAFNet(cfg)
    cfg.enc_blocks.append(4)
    preset = NAFNetConfig(**NAFNET_PRESETS["tiny"])
    preset.enc_blocks[0] = 9
    assert model.config.enc_blocks == [1, 1, 1]
    assert NAFNET_PRESETS["tiny"]["enc_blocks"] == [1, 1, 1]


@pytest.mark.parametrize(
    ("degra", "image", "which", "bad", "match"),
    [
        (True, False, "degra", None, "degra_emb .* is required"),
        (False, True, "content", None, "content_emb .* is required"),
        (True, True, "degra", torch.zeros(2, CTX + 1), r"degra_emb must be \[2, 24\]"),
        (True, True, "degra", torch.zeros(3, CTX), r"degra_emb must be \[2, 24\]"),
        (True, True, "degra", torch.zeros(2, 1, CTX), r"degra_emb must be \[2, 24\]"),
        (True, True, "content", torch.zeros(2, CTX, 1), r"content_emb must be \[2, 24\]"),
        (True, True, "content", torch.zeros(CTX), r"content_emb must be \[2, 24\]"),
    ],
)
def test_missing_or_wrong_shape_embedding_raises(degra, image, which, bad, match) -> None:
    model = _model(degra, image)
    lq, de, ce = _inputs()
    args = {"degra_emb": de, "content_emb": ce}
    args["degra_emb" if which == "degra" else "content_emb"] = bad
    with pytest.raises(ValueError, match=match):
        model(lq, **args)


def test_switched_off_embeddings_are_ignored_and_tokens_are_accepted() -> None:
    plain = _model(False, False)
    lq, de, ce = _inputs()
    with torch.no_grad():
        assert torch.equal(plain(lq, de, ce), plain(lq))
        model = _model(True, True)
        _perturb(model, injection=True)
        one = model(lq, de, ce)
        assert torch.allclose(model(lq, de, ce[:, None, :].expand(2, 3, CTX)), one, atol=1e-5)
    with pytest.raises(ValueError, match=r"lq must be \[B, 3, H, W\]"):
        plain(lq[:, :1])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(dec_blocks=[1, 1]), r"^model\.dec_blocks: needs one entry per encoder level"),
        (dict(enc_blocks=[], dec_blocks=[]), r"^model\.enc_blocks: must list at least one level"),
        (dict(width=0), r"^model\.width: must be >= 1, got 0"),
        (dict(enc_blocks=[1, -1, 1]), r"^model\.enc_blocks: must be >= 0, got -1"),
        (dict(middle_blocks=1.5), r"^model\.middle_blocks: expected an integer"),
        (dict(out_nc=1), r"^model\.out_nc: must equal in_nc \(3\)"),
        (dict(cross_attn_levels=4), r"^model\.cross_attn_levels: at most the number of levels \(3\)"),
        (dict(use_image_context="yes"), r"^model\.use_image_context: expected true/false"),
    ],
)
def test_bad_config_raises_config_error_naming_the_key(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NAFNet(_cfg(**overrides))
    with pytest.raises(ConfigError):  # the same through the YAML/checkpoint loader
        from_dict(NAFNetConfig, dataclasses.asdict(_cfg()) | overrides)


def test_grad_checkpointing_gives_the_same_numbers() -> None:
    model = _model(True, True).train()
    _perturb(model, injection=False)
    _perturb(model, injection=True)
    lq, de, ce = _inputs(h=16, w=16)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(lq, de, ce)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out_plain, grads_plain = run()
    model.set_grad_checkpointing(True)
    assert model.config.grad_checkpointing
    out_ckpt, grads_ckpt = run()
    assert torch.allclose(out_ckpt, out_plain, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_ckpt, grads_plain))


def test_layernorm_in_float32_under_bf16() -> None:
    torch.manual_seed(0)
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 5, 7) * 3 + 100  # a large mean: bf16 statistics would lose the variance
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, eps=1e-6).permute(0, 3, 1, 2)
    assert torch.allclose(norm(x), expected, atol=1e-4)
    out = norm(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), norm(x.bfloat16().float()), atol=0.05)


def test_presets_match_the_documented_parameter_counts() -> None:
    counts = {}
    with torch.device("meta"):  # no memory: the paper model has 141.8M parameters
        for name, preset in NAFNET_PRESETS.items():
            for degra, image in ((False, False), (True, False), (True, True)):
                model = NAFNet(NAFNetConfig(**preset, use_degra_context=degra, use_image_context=image))
                counts[name, degra, image] = sum(p.numel() for p in model.parameters())
    assert counts["paper", False, False] == 115_982_915  # NAFNet-width64 of the paper (116.0M)
    assert counts["paper", True, False] == 136_510_019
    assert counts["paper", True, True] == 141_759_043
    assert counts["tiny", False, False] == 288_691
    assert counts["tiny", True, False] == 421_427
    assert counts["tiny", True, True] == 733_491


def test_padding_reflects_to_a_multiple_of_two_to_the_depth() -> None:
    model = _model(False, False)  # 3 levels: multiples of 8
    lq, _, _ = _inputs(h=17, w=23)
    padded = model._pad(lq)
    assert padded.shape[-2:] == (24, 24)
    assert torch.equal(padded, F.pad(lq, (0, 1, 0, 7), mode="reflect"))
    small = lq[..., :3, :5]  # smaller than the padding: replicate
    assert torch.equal(model._pad(small), F.pad(small, (0, 3, 0, 5), mode="replicate"))
    assert model._pad(padded) is padded
