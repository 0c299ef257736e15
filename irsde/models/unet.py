"""The conditional U-Net of DA-CLIP's universal IR-SDE, and its named size presets.

The network predicts the noise ``eps`` of an IR-SDE state ``x_t`` given the low-quality image ``mu``,
the integer timestep ``t`` and two DA-CLIP embeddings: the degradation embedding (``degra_emb``,
through a prompt module added to the time embedding) and the content embedding (``content_emb``,
one token for the cross-attention of the deepest level and the middle block).

It computes exactly what the official ``ConditionalUNet`` (``DenoisingUNet_arch.py`` of
Algolzw/daclip-uir) computes, with two deliberate differences that leave released checkpoints
unchanged:

- without a content embedding the cross-attention sub-layer is skipped (the official code falls
  back to self-attention through the cross-attention weights, which crashes whenever
  ``context_dim`` differs from the channel count, as in the released configuration);
- the channel LayerNorm always runs in float32 with eps 1e-5 (bf16 autocast safety).

Parameter names follow the official module tree (``downs.{level}.{0..3}``, ``Residual(PreNorm(.))``
as ``fn.fn``/``fn.norm``, ...), so released checkpoints load without renaming and our checkpoints
load into the official code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from daclip.engine.config import spec
from irsde.diffusion.sde import PREDICTIONS
from irsde.models.blocks import HEAD_DIM, CrossAttention, GlobalCurve, pad_to_multiple

__all__ = [
    "UNET_PRESETS",
    "UNetConfig",
    "ChannelLayerNorm",
    "ConditionalUNet",
    "LinearAttention",
    "ResBlock",
    "SinusoidalEmbedding",
    "SpatialTransformer",
    "TransformerBlock",
    "sinusoidal_embedding",
]


@dataclass
class UNetConfig:
    """The one description of a :class:`ConditionalUNet`.

    The ``model:`` section of the stage-2 config; stored in every stage-2 checkpoint and rebuilt from
    it (:meth:`ConditionalUNet.from_config`); derived from released weights' shapes by
    :func:`irsde.models.convert.infer_unet_config`; ``model.config`` gives it back.
    """

    family: Literal["irsde"] = spec(
        "irsde", help="the restorer family: irsde (this U-Net under the IR-SDE, the paper) or nafnet"
    )
    in_nc: int = spec(3, minimum=1)
    out_nc: int = spec(3, minimum=1)
    nf: int = spec(64, minimum=1)
    ch_mult: list[int] = spec(default_factory=lambda: [1, 2, 4, 8], minimum=1)
    context_dim: int = spec(512, minimum=1)
    use_degra_context: bool = True
    use_image_context: bool = True
    grad_checkpointing: bool = False
    prediction: Literal["noise", "x0", "residual"] = spec(
        "noise",
        help="what the U-Net outputs: noise (the paper, released weights), x0, or residual = x0 - LQ "
        "(starts as the identity; trains well in few steps)",
    )
    attention_from_level: int = spec(
        0,
        minimum=0,
        help="the first level with linear attention (0: every level, the paper); the levels above it skip "
        "it. At a small width the full-resolution linear attention costs more than the convolutions",
    )
    global_curve: bool = spec(
        False,
        help="with prediction residual: x0 = curve(LQ) + output, a per-image tone curve a*x^p+b from the LQ "
        "image's statistics and the prompt (irsde.models.blocks.GlobalCurve); off = the paper's U-Net",
    )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> UNetConfig:
        """From a saved ``model`` section; keys that are not U-Net settings (newer or older) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "ch_mult" in kwargs:
            kwargs["ch_mult"] = list(kwargs["ch_mult"])
        return cls(**kwargs)


# Named sizes. "universal-ir" is the released configuration (universal-ir.pth, 48,975,747 parameters);
# "tiny" is a CPU debugging size with the same structure (LinearAttention levels, a SpatialTransformer
# level and mid block, the prompt module) and the ViT-B-32 embedding width.
UNET_PRESETS: dict[str, UNetConfig] = {
    "universal-ir": UNetConfig(nf=64, ch_mult=[1, 2, 4, 8], context_dim=512),
    "tiny": UNetConfig(nf=16, ch_mult=[1, 2, 2, 4], context_dim=512),
}

FIRST_TRANSFORMER_LEVEL = 3  # levels >= 3 use a SpatialTransformer when image context is on (official rule)


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``[sin | cos]`` of raw timesteps ``t`` (shape [B]) -> [B, dim], float32.

    Frequencies are ``exp(-k * ln(10000) / (dim/2 - 1))`` for ``k = 0 .. dim/2 - 1``.
    """
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1))
    )
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([args.sin(), args.cos()], dim=-1)  # (B, dim)


class SinusoidalEmbedding(nn.Module):
    """Parameter-free module form of :func:`sinusoidal_embedding`: [B] timesteps -> [B, dim]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        return sinusoidal_embedding(t, self.dim)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a [B, C, H, W] map: gain only, biased variance, eps 1e-5.

    Always computed in float32 and cast back, so bf16 autocast does not lose the variance.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()  # (B, C, H, W)
        var = torch.var(x32, dim=1, unbiased=False, keepdim=True)  # (B, 1, H, W)
        mean = torch.mean(x32, dim=1, keepdim=True)  # (B, 1, H, W)
        return ((x32 - mean) * (var + self.eps).rsqrt() * self.g.float()).to(x.dtype)


class Residual(nn.Module):
    """``x + fn(x, ...)``."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
        return self.fn(x, **kwargs) + x


class NoAttention(nn.Module):
    """The attention slot of a level without attention (``attention_from_level``): ``x`` unchanged."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return x


class PreNorm(nn.Module):
    """``fn(ChannelLayerNorm(x), ...)``."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
        return self.fn(self.norm(x), **kwargs)


def conv_nobias(dim_in: int, dim_out: int, kernel_size: int = 3) -> nn.Conv2d:
    """A 'same'-padded convolution without bias (the official `default_conv`)."""
    return nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2, bias=False)


class ConvAct(nn.Module):
    """3x3 conv (no bias), optional FiLM ``h * (scale + 1) + shift``, SiLU (the official `Block`)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = conv_nobias(dim_in, dim_out)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, scale_shift: tuple[Tensor, Tensor] | None = None) -> Tensor:
        h = self.proj(x)  # (B, C_out, H, W)
        if scale_shift is not None:
            scale, shift = scale_shift
            h = h * (scale + 1) + shift
        return self.act(h)


class ResBlock(nn.Module):
    """Residual block without normalisation, modulated by the time embedding (scale and shift)."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, dim_out * 2))
        self.block1 = ConvAct(dim_in, dim_out)
        self.block2 = ConvAct(dim_out, dim_out)
        self.res_conv = conv_nobias(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: Tensor, time_emb: Tensor) -> Tensor:
        scale_shift = self.mlp(time_emb)[:, :, None, None].chunk(2, dim=1)  # 2 x (B or 1, C_out, 1, 1)
        h = self.block1(x, scale_shift=scale_shift)  # (B, C_out, H, W)
        h = self.block2(h)  # (B, C_out, H, W)
        return h + self.res_conv(x)


class LinearAttention(nn.Module):
    """Linear ("efficient") attention over positions: 4 heads x 32 channels, O(HW) memory.

    q is softmaxed over the channels of a head, k over positions; the result goes through a 1x1 conv
    and a channel LayerNorm. The ``context`` argument is accepted and ignored.
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = HEAD_DIM) -> None:
        super().__init__()
        self.scale = dim_head**-0.5
        self.heads = heads
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        b, _, h, w = x.shape
        q, k, v = (
            t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1)
        )  # 3 x (B, heads, d, N)
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        kv = torch.einsum("bhdn,bhen->bhde", k, v)  # (B, heads, d, d)
        out = torch.einsum("bhde,bhdn->bhen", kv, q)  # (B, heads, d, N)
        return self.to_out(out.reshape(b, -1, h, w))  # (B, C, H, W)


class GEGLU(nn.Module):
    """``a * gelu(b)`` where ``[a | b] = Linear(x)`` (value half first, exact GELU)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with a 4x hidden width."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        # Indices 0 and 2 match the official keys `ff.net.0.proj` / `ff.net.2` (index 1 was Dropout(0)).
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, cross-attention on the context, feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim=context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = x + self.attn1(self.norm1(x))  # (B, N, C)
        if context is not None:
            # Without a context the sub-layer is skipped (the official code would run self-attention
            # through to_k/to_v of width context_dim and crash when context_dim != C).
            x = x + self.attn2(self.norm2(x), context=context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the positions of a feature map, cross-attending to ``context`` tokens.

    GroupNorm(32) -> 1x1 proj_in -> one TransformerBlock -> 1x1 proj_out (zero-initialised, so a new
    block starts as the identity) -> plus the input.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, dim_head, context_dim)])
        self.proj_out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        b, _, h, w = x.shape
        tokens = self.proj_in(self.norm(x))  # (B, inner, H, W)
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, HW, inner)
        for block in self.transformer_blocks:
            tokens = block(tokens, context=context)  # (B, HW, inner)
        tokens = tokens.transpose(1, 2).reshape(b, -1, h, w)  # (B, inner, H, W)
        return self.proj_out(tokens) + x  # (B, C, H, W)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"ConditionalUNet: {name} must be a positive integer, got {value!r}")


class ConditionalUNet(nn.Module):
    """The IR-SDE network of DA-CLIP: ``output = unet(x_t, mu, t, degra_emb, content_emb)``.

    Args:
        in_nc: image channels of ``x_t`` and ``mu`` (the network sees ``cat[x_t - mu, mu]``).
        out_nc: output channels (the predicted noise, x_0 or x_0 − μ: see ``prediction``).
        nf: base width; the time embedding has ``4 * nf`` features.
        ch_mult: width multiplier of each level; its length is the depth (inputs are padded to a
            multiple of ``2 ** len(ch_mult)``).
        context_dim: width of the DA-CLIP embeddings (512 for ViT-B-32); None only when both
            contexts are off.
        use_degra_context: build the prompt module driven by the degradation embedding.
        use_image_context: use SpatialTransformers with cross-attention on the content embedding at
            levels >= 3 and in the middle block (LinearAttention elsewhere).
        use_checkpoint: gradient checkpointing of the residual and attention blocks while training
            (less memory, one extra forward; the same numbers).
        prediction: what the output means (``noise``: the paper and the released weights; ``x0``;
            ``residual`` = x_0 − μ). Samplers and losses read it from here; for ``residual`` the output
            conv starts at zero, so an untrained network restores as the identity (x̂_0 = μ) and training
            only has to learn the correction.
        attention_from_level: the first level with linear attention (0: every level, the paper and the
            released weights); the levels above it have none (their ``downs.{i}.2``/``ups.*.2`` slots
            hold no parameters). The cross-attention levels and the middle block keep theirs.
        global_curve: with ``prediction="residual"``, x̂_0 = curve(μ) + output, where the curve is a
            per-image tone curve (:class:`irsde.models.blocks.GlobalCurve`) from μ's statistics and the
            prompt; it starts as the identity. Off: the paper's network.
    """

    def __init__(
        self,
        in_nc: int = 3,
        out_nc: int = 3,
        nf: int = 64,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        context_dim: int | None = 512,
        use_degra_context: bool = True,
        use_image_context: bool = True,
        use_checkpoint: bool = False,
        prediction: str = "noise",
        attention_from_level: int = 0,
        global_curve: bool = False,
    ) -> None:
        super().__init__()
        shape = (in_nc, out_nc, nf, ch_mult, context_dim)
        ch_mult = self._validate(*shape, use_degra_context, use_image_context, use_checkpoint, prediction)
        if isinstance(attention_from_level, bool) or not isinstance(attention_from_level, int):
            raise ValueError(
                f"ConditionalUNet: attention_from_level must be an integer >= 0, got {attention_from_level!r}"
            )
        if attention_from_level < 0:
            raise ValueError(
                f"ConditionalUNet: attention_from_level must be an integer >= 0, got {attention_from_level!r}"
            )
        self.attention_from_level = attention_from_level
        if not isinstance(global_curve, bool):
            raise ValueError(f"ConditionalUNet: global_curve must be a bool, got {global_curve!r}")
        if global_curve and prediction != "residual":
            raise ValueError(
                f"ConditionalUNet: global_curve needs prediction 'residual' (the curve corrects μ), got {prediction!r}"
            )
        self._config_args = (in_nc, out_nc, nf, list(ch_mult), context_dim)
        self.prediction = prediction
        self.in_nc = in_nc
        self.nf = nf
        self.depth = len(ch_mult)
        self.context_dim = context_dim
        self.use_degra_context = use_degra_context
        self.use_image_context = use_image_context
        self.use_checkpoint = use_checkpoint
        time_dim = nf * 4
        # Modules are created in the official order: the random initialisation draws in that order, and
        # the registration order is the state dict's key order.
        self.init_conv = conv_nobias(in_nc * 2, nf, 7)
        self.time_mlp = nn.Sequential(
            SinusoidalEmbedding(nf), nn.Linear(nf, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )
        if use_degra_context:
            self.prompt = nn.Parameter(torch.rand(1, time_dim))
            self.text_mlp = nn.Sequential(
                nn.Linear(context_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
            )
            self.prompt_mlp = nn.Linear(time_dim, time_dim)
        # Each level is a ModuleList [res1, res2, attention, resample] (the official layout).
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        mults = [1, *ch_mult]
        for i in range(self.depth):
            down, up = self._level(i, nf * mults[i], nf * mults[i + 1], time_dim)
            self.downs.append(down)
            self.ups.insert(0, up)  # ups run from the deepest level outwards
        mid_dim = nf * mults[-1]
        self.mid_block1 = ResBlock(mid_dim, mid_dim, time_dim)
        self.mid_attn = self._attention(mid_dim, None)
        self.mid_block2 = ResBlock(mid_dim, mid_dim, time_dim)
        self.final_res_block = ResBlock(nf * 2, nf, time_dim)
        self.final_conv = nn.Conv2d(nf, out_nc, 3, 1, 1)
        if prediction == "residual":
            # Zero output = zero correction: training starts from the identity restorer x̂_0 = μ.
            nn.init.zeros_(self.final_conv.weight)
            nn.init.zeros_(self.final_conv.bias)
        # Created last: the modules above draw their random initialisation exactly as without it.
        self.curve = GlobalCurve(in_nc, time_dim if use_degra_context else 0) if global_curve else None

    def _attention(self, dim: int, level: int | None) -> nn.Module:
        """The attention of a level (None: the middle block): cross-attention on the content embedding
        at the deep levels when ``use_image_context``, else linear attention; none (a parameterless
        pass-through) below ``attention_from_level``."""
        if (
            level is not None
            and level < self.attention_from_level
            and not (self.use_image_context and level >= FIRST_TRANSFORMER_LEVEL)
        ):
            return NoAttention()
        if self.use_image_context and (level is None or level >= FIRST_TRANSFORMER_LEVEL):
            block: nn.Module = SpatialTransformer(dim, dim // HEAD_DIM, HEAD_DIM, self.context_dim)
        else:
            block = LinearAttention(dim)
        return Residual(PreNorm(dim, block))

    def _level(self, i: int, dim_in: int, dim_out: int, time_dim: int) -> tuple[nn.ModuleList, nn.ModuleList]:
        """The down and up blocks of level ``i`` (created in this order: down, then the upsample, then up)."""
        is_last = i == self.depth - 1
        down = nn.ModuleList(
            [
                ResBlock(dim_in, dim_in, time_dim),
                ResBlock(dim_in, dim_in, time_dim),
                self._attention(dim_in, i),
                conv_nobias(dim_in, dim_out) if is_last else nn.Conv2d(dim_in, dim_out, 4, 2, 1),
            ]
        )
        upsample: nn.Module = (
            conv_nobias(dim_out, dim_in)
            if i == 0
            else nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim_out, dim_in, 3, 1, 1)
            )
        )
        up = nn.ModuleList(
            [
                ResBlock(dim_out + dim_in, dim_out, time_dim),
                ResBlock(dim_out + dim_in, dim_out, time_dim),
                self._attention(dim_out, i),
                upsample,
            ]
        )
        return down, up

    @classmethod
    def from_config(cls, config: UNetConfig) -> ConditionalUNet:
        """The U-Net a :class:`UNetConfig` describes (randomly initialised)."""
        return cls(
            in_nc=config.in_nc,
            out_nc=config.out_nc,
            nf=config.nf,
            ch_mult=tuple(config.ch_mult),
            context_dim=config.context_dim,
            use_degra_context=config.use_degra_context,
            use_image_context=config.use_image_context,
            use_checkpoint=config.grad_checkpointing,
            prediction=config.prediction,
            attention_from_level=config.attention_from_level,
            global_curve=config.global_curve,
        )

    @property
    def config(self) -> UNetConfig:
        """The description this network rebuilds from (what checkpoints store)."""
        in_nc, out_nc, nf, ch_mult, context_dim = self._config_args
        return UNetConfig(
            in_nc=in_nc,
            out_nc=out_nc,
            nf=nf,
            ch_mult=list(ch_mult),
            context_dim=context_dim,
            use_degra_context=self.use_degra_context,
            use_image_context=self.use_image_context,
            grad_checkpointing=self.use_checkpoint,
            prediction=self.prediction,
            attention_from_level=self.attention_from_level,
            global_curve=self.curve is not None,
        )

    @staticmethod
    def _validate(
        in_nc: Any,
        out_nc: Any,
        nf: Any,
        ch_mult: Any,
        context_dim: Any,
        use_degra_context: Any,
        use_image_context: Any,
        use_checkpoint: Any,
        prediction: Any,
    ) -> list[int]:
        """``ch_mult`` as a list, after checking every argument (ValueError naming the bad one)."""
        _check_positive_int("in_nc", in_nc)
        _check_positive_int("out_nc", out_nc)
        _check_positive_int("nf", nf)
        if nf % 2 or nf < 4:
            raise ValueError(f"ConditionalUNet: nf must be even and >= 4 (sinusoidal embedding), got {nf}")
        if isinstance(ch_mult, (str, bytes)) or not isinstance(ch_mult, Sequence) or len(ch_mult) == 0:
            raise ValueError(
                f"ConditionalUNet: ch_mult must be a non-empty sequence of positive ints, got {ch_mult!r}"
            )
        for m in ch_mult:
            _check_positive_int("ch_mult entries", m)
        for name, flag in (
            ("use_degra_context", use_degra_context),
            ("use_image_context", use_image_context),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"ConditionalUNet: {name} must be a bool, got {flag!r}")
        if use_degra_context or use_image_context:
            if context_dim is None:
                raise ValueError("ConditionalUNet: context_dim is required when a context is used, got None")
            _check_positive_int("context_dim", context_dim)
        elif context_dim is not None:
            _check_positive_int("context_dim", context_dim)
        if use_image_context:
            mults = [1, *ch_mult]
            widths = [nf * mults[-1]]  # the middle block
            for i in range(FIRST_TRANSFORMER_LEVEL, len(ch_mult)):
                widths += [nf * mults[i], nf * mults[i + 1]]
            bad = sorted({w for w in widths if w % HEAD_DIM})
            if bad:
                raise ValueError(
                    f"ConditionalUNet: with use_image_context, the widths of the transformer levels must be "
                    f"multiples of {HEAD_DIM} (heads of 32 channels, GroupNorm(32)); nf={nf}, ch_mult={list(ch_mult)} "
                    f"gives {bad}"
                )
        if not isinstance(use_checkpoint, bool):
            raise ValueError(f"ConditionalUNet: use_checkpoint must be a bool, got {use_checkpoint!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"ConditionalUNet: prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}"
            )
        return list(ch_mult)

    def _run(self, module: nn.Module, *args: Any, **kwargs: Any) -> Tensor:
        """Call ``module``, with gradient checkpointing when enabled and it saves memory."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False, **kwargs)
        return module(*args, **kwargs)

    def _time_embedding(self, t: Tensor | int | float, batch: int, device: torch.device) -> Tensor:
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            t = torch.tensor([t], device=device)
        if not torch.is_tensor(t):
            raise TypeError(f"ConditionalUNet: t must be a number or a tensor, got {type(t).__name__}")
        t = t.to(device).reshape(-1)  # a 0-d tensor becomes [1]
        if t.shape[0] not in (1, batch):
            raise ValueError(f"ConditionalUNet: t has {t.shape[0]} timesteps for a batch of {batch}")
        return self.time_mlp(t)  # (B or 1, 4nf)

    def _pad(self, x: Tensor) -> Tensor:
        return pad_to_multiple(x, 2**self.depth)

    def forward(
        self,
        x: Tensor,
        mu: Tensor,
        t: Tensor | int,
        degra_emb: Tensor | None = None,
        content_emb: Tensor | None = None,
    ) -> Tensor:
        """Predict the noise of the state ``x`` (= x_t).

        Args:
            x: the noisy state x_t, [B, in_nc, H, W] (any H, W).
            mu: the low-quality image, same shape.
            t: raw integer timesteps 1..T: a Python int, a 0-d tensor or a [B] tensor.
            degra_emb: degradation embedding [B, context_dim] driving the prompt module (ignored
                without ``use_degra_context``).
            content_emb: content embedding [B, context_dim] (one cross-attention token) or tokens
                [B, M, context_dim] (ignored without ``use_image_context``; None skips cross-attention).

        Returns:
            The predicted noise, [B, out_nc, H, W].
        """
        if x.dim() != 4 or x.shape[1] != self.in_nc or mu.shape != x.shape:
            raise ValueError(
                f"ConditionalUNet: x and mu must both be [B, {self.in_nc}, H, W], got {tuple(x.shape)} "
                f"and {tuple(mu.shape)}"
            )
        batch, _, height, width = x.shape
        time_emb = self._time_embedding(t, batch, x.device)  # (B or 1, 4nf)
        prompt_vec = None
        if self.use_degra_context and degra_emb is not None:
            self._check_emb("degra_emb", degra_emb, batch, ndims=(2,))
            # Prompt module: softmax over features of text_mlp(e_d), weighting a learned prompt.
            prompt = torch.softmax(self.text_mlp(degra_emb), dim=1) * self.prompt  # (B, 4nf)
            prompt_vec = self.prompt_mlp(prompt)  # (B, 4nf)
            time_emb = time_emb + prompt_vec
        context = None
        if self.use_image_context and content_emb is not None:
            self._check_emb("content_emb", content_emb, batch, ndims=(2, 3))
            context = content_emb[:, None, :] if content_emb.dim() == 2 else content_emb  # (B, M, ctx)

        h = self._pad(torch.cat([x - mu, mu], dim=1))  # (B, 2in, H', W')
        h = self.init_conv(h)  # (B, nf, H', W')
        h_init = h

        skips = []
        for res1, res2, attn, downsample in self.downs:
            h = self._run(res1, h, time_emb)  # (B, C_i, H_i, W_i)
            skips.append(h)
            h = self._run(res2, h, time_emb)
            h = self._run(attn, h, context=context)
            skips.append(h)
            h = downsample(h)  # (B, C_{i+1}, H_i/2, W_i/2), the deepest level keeps its size

        h = self._run(self.mid_block1, h, time_emb)  # (B, C_mid, H'/2**(depth-1), W'/2**(depth-1))
        h = self._run(self.mid_attn, h, context=context)
        h = self._run(self.mid_block2, h, time_emb)

        for res1, res2, attn, upsample in self.ups:
            h = self._run(res1, torch.cat([h, skips.pop()], dim=1), time_emb)  # (B, C_{i+1}, H_i, W_i)
            h = self._run(res2, torch.cat([h, skips.pop()], dim=1), time_emb)
            h = self._run(attn, h, context=context)
            h = upsample(h)  # (B, C_i, 2H_i, 2W_i), the outermost level keeps its size

        h = self._run(self.final_res_block, torch.cat([h, h_init], dim=1), time_emb)  # (B, nf, H', W')
        out = self.final_conv(h)[..., :height, :width]  # (B, out_nc, H, W)
        if self.curve is not None:  # x̂_0 = curve(μ) + out: the residual to μ gains curve(μ) − μ
            if self.curve.cond_dim and prompt_vec is None:
                prompt_vec = torch.zeros(batch, self.curve.cond_dim, device=mu.device)  # no embedding given
            out = out + (self.curve(mu, cond=prompt_vec) - mu).to(out.dtype)
        return out.contiguous()  # (B, out_nc, H, W)

    def _check_emb(self, name: str, emb: Tensor, batch: int, ndims: tuple[int, ...]) -> None:
        if emb.dim() not in ndims or emb.shape[0] != batch or emb.shape[-1] != self.context_dim:
            raise ValueError(
                f"ConditionalUNet: {name} must be [{batch}, {self.context_dim}]"
                + (f" or [{batch}, M, {self.context_dim}]" if 3 in ndims else "")
                + f", got {tuple(emb.shape)}"
            )
