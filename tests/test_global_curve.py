"""``model.global_curve``: a per-image tone curve under both restorer families (irsde.models.blocks).

Off by default (the paper's networks, the released weights); on, it starts as the identity bit for bit,
and it learns the global corrections it exists for (under-exposure, haze) from a few hundred samples.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from daclip.engine.config import ConfigError
from irsde.models.blocks import GlobalCurve
from irsde.models.nafnet import NAFNET_PRESETS, NAFNet, NAFNetConfig
from irsde.models.unet import ConditionalUNet, UNetConfig


def _unets(curve: bool) -> ConditionalUNet:
    torch.manual_seed(0)
    return ConditionalUNet(
        nf=16, ch_mult=(1, 2, 2, 4), context_dim=32, prediction="residual", global_curve=curve
    )


def _nafnets(curve: bool) -> NAFNet:
    torch.manual_seed(0)
    return NAFNet(NAFNetConfig(**NAFNET_PRESETS["tiny"], context_dim=32, global_curve=curve))


def test_the_curve_starts_as_the_identity_in_both_families() -> None:
    """With the curve on, an untrained network computes exactly what it computes without it (the other
    weights are drawn in the same order), and the curve's own output is its input bit for bit."""
    x, mu, emb = torch.rand(2, 3, 40, 56), torch.rand(2, 3, 40, 56), torch.randn(2, 32)
    plain, curved = _unets(False), _unets(True)
    assert set(curved.state_dict()) - set(plain.state_dict()) == {
        f"curve.mlp.{i}.{k}" for i in (0, 2) for k in ("weight", "bias")
    }
    with torch.no_grad():
        plain.final_conv.weight.normal_()  # a non-zero residual, the same in both
        curved.final_conv.weight.copy_(plain.final_conv.weight)
    assert torch.equal(plain(x, mu, 20, emb, emb), curved(x, mu, 20, emb, emb))
    plain_n, curved_n = _nafnets(False), _nafnets(True)
    with torch.no_grad():
        plain_n.ending.weight.normal_()
        curved_n.ending.weight.copy_(plain_n.ending.weight)
    assert torch.equal(plain_n(mu, emb, emb), curved_n(mu, emb, emb))
    assert torch.equal(GlobalCurve(3, 4)(mu, cond=torch.randn(2, 4)), mu)


def test_the_curve_changes_the_output_once_trained_and_follows_the_conditioning() -> None:
    """A non-zero last layer makes the curve act, differently for different conditioning vectors."""
    net = _nafnets(True)
    torch.nn.init.normal_(net.curve.mlp[-1].weight, std=0.5)
    mu, emb = torch.rand(2, 3, 32, 32), torch.randn(2, 32)
    plain = _nafnets(False)
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("curve.")})
    with torch.no_grad():
        out, ref = net(mu, emb, emb), plain(mu, emb, emb)
        other = net(mu, -emb, emb)
    assert (out - ref).abs().mean() > 1e-3
    assert (out - other).abs().mean() > 1e-4


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(((a.clamp(0, 1) - b) ** 2).flatten(1).mean(1))


def _pairs(kind: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random scenes and their ``kind`` version: 0 clean, 1 under-exposed, 2 hazy."""
    clean = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=gen), size=32, mode="bicubic")
    clean = clean.clamp(0, 1)
    u = torch.rand(n, 1, 1, 1, generator=gen)
    if kind == 1:
        return (0.5 + 0.3 * u) * clean.pow(2.0 + u), clean
    if kind == 2:
        t = 0.35 + 0.3 * u
        return clean * t + 0.85 * (1 - t), clean
    return clean, clean


def test_the_curve_learns_under_exposure_and_haze_and_leaves_clean_input_alone() -> None:
    """Trained alone (300 Adam steps, a one-hot type as its conditioning), the curve lifts held-out
    under-exposed and hazy images by over 6 dB each and returns clean ones within 35 dB on average (30 at
    worst); one curve for all three would brighten or darken the clean ones."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    curve = GlobalCurve(3, cond_dim=3)
    opt = torch.optim.Adam(curve.parameters(), lr=1e-2)
    for _ in range(300):
        batch = [_pairs(k, 4, gen) for k in range(3)]
        lq = torch.cat([b[0] for b in batch])
        gt = torch.cat([b[1] for b in batch])
        cond = torch.eye(3).repeat_interleave(4, 0)
        loss = (curve(lq, cond=cond) - gt).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    test_gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for kind in (1, 2):
            lq, gt = _pairs(kind, 16, test_gen)
            cond = torch.eye(3)[[kind] * 16]
            gain = (_psnr(curve(lq, cond=cond), gt) - _psnr(lq, gt)).mean()
            assert gain > 6.0, (kind, float(gain))
        clean, _ = _pairs(0, 16, test_gen)
        kept = _psnr(curve(clean, cond=torch.eye(3)[[0] * 16]), clean)
        assert kept.mean() > 35.0 and kept.min() > 30.0, kept


def test_the_curve_needs_the_residual_parametrisation_and_a_bool() -> None:
    with pytest.raises(ValueError, match="global_curve needs prediction 'residual'"):
        ConditionalUNet(nf=16, ch_mult=(1, 2), context_dim=32, prediction="noise", global_curve=True)
    with pytest.raises(ValueError, match="global_curve must be a bool"):
        ConditionalUNet(nf=16, ch_mult=(1, 2), context_dim=32, prediction="residual", global_curve=1)
    with pytest.raises(ConfigError, match="model.global_curve"):
        NAFNet(NAFNetConfig(**NAFNET_PRESETS["tiny"], global_curve="yes"))


def test_the_switch_travels_with_the_config() -> None:
    """Both families rebuild the curve from their stored config (what checkpoints keep)."""
    unet = _unets(True)
    assert unet.config.global_curve is True
    rebuilt = ConditionalUNet.from_config(UNetConfig(**dataclasses.asdict(unet.config)))
    assert set(rebuilt.state_dict()) == set(unet.state_dict())
    nafnet = _nafnets(True)
    again = NAFNet.from_config(dataclasses.asdict(nafnet.config))
    assert again.curve is not None and set(again.state_dict()) == set(nafnet.state_dict())
    assert _unets(False).curve is None and UNetConfig().global_curve is False
    assert NAFNetConfig().global_curve is False
