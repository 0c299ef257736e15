"""NAFNet (Chen et al. 2022, "Simple Baselines for Image Restoration") with DA-CLIP conditioning.

A one-step restorer: ``restored = NAFNet(cfg)(lq, degra_emb, content_emb)``, with the same two
DA-CLIP paths as the conditional U-Net of :mod:`irsde.models.unet`:

- **degradation** (``use_degra_context``): the degradation embedding [B, context_dim] goes through the
  prompt module (``prompt``, ``text_mlp``, ``prompt_mlp``: a learnable prompt weighted by the softmax
  of an MLP of the embedding, as in :class:`irsde.models.unet.ConditionalUNet`) to a conditioning vector
  [B, prompt_dim]; every NAF block maps it (SiLU, then a zero-initialised linear layer ``cond``) to a
  per-channel scale and shift of both of its normalised inputs: ``LN(x) * (1 + scale) + shift``.
- **content** (``use_image_context``): the content embedding is one token (or [B, M, context_dim]
  tokens) of a pre-norm cross-attention block (:class:`irsde.models.blocks.CrossAttention`, output projection
  zero-initialised, residual) after the blocks of the ``cross_attn_levels`` lowest-resolution encoder
  levels, the matching decoder levels and the middle. With a single token the softmax is 1, so this
  is a content-dependent per-channel bias (the query weights get no gradient); it becomes a real
  attention only with several tokens. The U-Net's cross-attention has the same property.

Both injections start at zero, so at initialisation the conditioned network computes exactly what the
plain backbone with the same weights computes; ``use_degra_context`` / ``use_image_context`` give the
three variants NAFNet, NAFNet + degradation, NAFNet + DA-CLIP.

The backbone follows the paper: no nonlinear activation; LayerNorm over channels (weight and bias,
eps 1e-6, computed in float32 for bf16 autocast); NAF block = [LN -> 1x1 conv c->2c -> 3x3 depthwise
-> SimpleGate -> simplified channel attention -> 1x1 conv, times beta] + [LN -> 1x1 conv c->2c ->
SimpleGate -> 1x1 conv, times gamma], beta and gamma zero-initialised; 3x3 intro conv, encoder levels
(blocks, 2x2 stride-2 conv doubling the channels), middle blocks, decoder levels (1x1 conv doubling
the channels, PixelShuffle(2), plus the skip, blocks), 3x3 ending conv, and the global residual
``restored = lq + ending``. Inputs are padded right/bottom to a multiple of ``2 ** len(enc_blocks)``
(reflect, replicate where the image is smaller than the padding) and the output is cropped back.

Sizes (parameters measured with this code, context_dim 512):

=====================  =================================  ===========  ===========  ===========
preset                 setting                            NAFNet       + degra      + DA-CLIP
=====================  =================================  ===========  ===========  ===========
``paper``              width 64, enc [2, 2, 4, 8],        115,982,915  136,510,019  141,759,043
                       middle 12, dec [2, 2, 2, 2]
``tiny`` (CPU tests)   width 16, enc [1, 1, 1], middle 1,     288,691      421,427      733,491
                       dec [1, 1, 1]
=====================  =================================  ===========  ===========  ===========

("+ DA-CLIP" = both contexts, the default; prompt_dim is 4 * width. The plain paper count is the paper's
NAFNet-width64, 116.0M. The degradation path costs a ``Linear(prompt_dim, 4c)`` per block, 20.5M at
paper scale; ``prompt_dim=64`` brings it to 5.2M: 121,149,251 / 126,398,275.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from daclip.engine.config import ConfigError, from_dict, spec
from irsde.models.blocks import HEAD_DIM, CrossAttention, GlobalCurve, pad_to_multiple

__all__ = [
    "NAFNET_PRESETS",
    "ContentCrossAttention",
    "LayerNorm2d",
    "NAFBlock",
    "NAFNet",
    "NAFNetConfig",
    "SimpleGate",
]


@dataclass
class NAFNetConfig:
    """Everything that defines a :class:`NAFNet`; ``dataclasses.asdict`` of it rebuilds the model."""

    KEY: ClassVar[str] = "model"  # where the section lives in a config file (error messages)

    family: Literal["nafnet"] = spec("nafnet", help="the restorer family (see irsde.models.families)")

    in_nc: int = spec(3, minimum=1, help="image channels (the global residual needs out_nc == in_nc)")
    out_nc: int = spec(3, minimum=1)
    width: int = spec(64, minimum=1, help="channels of the first level; each encoder level doubles it")
    enc_blocks: list[int] = spec(
        default_factory=lambda: [2, 2, 4, 8], minimum=0, help="NAF blocks per encoder level (depth)"
    )
    middle_blocks: int = spec(12, minimum=0)
    dec_blocks: list[int] = spec(
        default_factory=lambda: [2, 2, 2, 2],
        minimum=0,
        help="NAF blocks per decoder level, in running order (lowest resolution first)",
    )
    context_dim: int = spec(512, minimum=1, help="width of the DA-CLIP embeddings (512 for ViT-B-32)")
    use_degra_context: bool = True
    use_image_context: bool = True
    cross_attn_levels: int = spec(
        1,
        minimum=0,
        help="with use_image_context: cross-attention after the blocks of this many lowest-resolution "
        "encoder levels and the matching decoder levels, and always in the middle",
    )
    prompt_dim: int = spec(0, minimum=0, help="width of the degradation conditioning vector; 0 = 4 * width")
    global_curve: bool = spec(
        False,
        help="restored = curve(lq) + residual: a per-image tone curve a*x^p+b from the image's statistics "
        "and the degradation conditioning (irsde.models.blocks.GlobalCurve); off = the paper's NAFNet",
    )
    grad_checkpointing: bool = spec(False, help="torch.utils.checkpoint over each block while training")

    def __post_init__(self) -> None:
        # Own copies (presets and asdict() results are not shared); tuples become lists.
        if isinstance(self.enc_blocks, (list, tuple)):
            self.enc_blocks = list(self.enc_blocks)
        if isinstance(self.dec_blocks, (list, tuple)):
            self.dec_blocks = list(self.dec_blocks)

    @property
    def depth(self) -> int:
        return len(self.enc_blocks)

    @property
    def cond_dim(self) -> int:
        return self.prompt_dim or 4 * self.width

    def validate(self) -> None:
        """Raise :class:`ConfigError` (one line, naming the key) on a bad or inconsistent value.

        Repeats the type and range checks that :func:`daclip.engine.config.load_config` applies, so a
        config built directly in Python is checked too.
        """
        key = self.KEY
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            name = f"{key}.{field.name}"
            if field.name == "family":
                if value != "nafnet":
                    raise ConfigError(f"{name}: must be 'nafnet' for a NAFNet, got {value!r}")
                continue
            if field.type in (bool, "bool"):
                if not isinstance(value, bool):
                    raise ConfigError(f"{name}: expected true/false, got {value!r}")
                continue
            values = value if field.name in ("enc_blocks", "dec_blocks") else [value]
            if field.name in ("enc_blocks", "dec_blocks") and not isinstance(value, list):
                raise ConfigError(f"{name}: expected a list of integers, got {value!r}")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ConfigError(f"{name}: expected an integer, got {v!r}")
                low = field.metadata.get("minimum")
                if low is not None and v < low:
                    raise ConfigError(f"{name}: must be >= {low}, got {v}")
        if not self.enc_blocks:
            raise ConfigError(f"{key}.enc_blocks: must list at least one level, got []")
        if len(self.dec_blocks) != len(self.enc_blocks):
            raise ConfigError(
                f"{key}.dec_blocks: needs one entry per encoder level ({len(self.enc_blocks)}, "
                f"enc_blocks={self.enc_blocks}), got {len(self.dec_blocks)} ({self.dec_blocks})"
            )
        if self.out_nc != self.in_nc:
            raise ConfigError(
                f"{key}.out_nc: must equal in_nc ({self.in_nc}) for the global residual, got {self.out_nc}"
            )
        if self.cross_attn_levels > self.depth:
            raise ConfigError(
                f"{key}.cross_attn_levels: at most the number of levels ({self.depth}), "
                f"got {self.cross_attn_levels}"
            )


# Named sizes (kwargs of NAFNetConfig); parameter counts in the module docstring.
NAFNET_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(width=64, enc_blocks=[2, 2, 4, 8], middle_blocks=12, dec_blocks=[2, 2, 2, 2]),
    "tiny": dict(width=16, enc_blocks=[1, 1, 1], middle_blocks=1, dec_blocks=[1, 1, 1]),
}


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of a [B, C, H, W] map, with weight and bias.

    Computed in float32 and cast back to the input dtype (bf16 autocast safety).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()  # (B, C, H, W)
        mean = x32.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        var = (x32 - mean).pow(2).mean(dim=1, keepdim=True)  # (B, 1, H, W)
        y = (x32 - mean) * (var + self.eps).rsqrt()
        y = y * self.weight.float()[:, None, None] + self.bias.float()[:, None, None]
        return y.to(x.dtype)


class SimpleGate(nn.Module):
    """Split the channels in two halves and multiply them: [B, 2C, H, W] -> [B, C, H, W]."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """The NAF block, optionally modulated by a conditioning vector (per-channel scale and shift).

    ``cond`` (a zero-initialised linear layer, present when ``cond_dim`` is given) maps the
    conditioning vector to ``[scale1, shift1, scale2, shift2]`` applied to the two normalised inputs.
    """

    def __init__(self, channels: int, cond_dim: int | None = None) -> None:
        super().__init__()
        c = channels
        self.norm1 = LayerNorm2d(c)
        self.conv1 = nn.Conv2d(c, 2 * c, 1)
        self.conv2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)  # depthwise
        self.sg = SimpleGate()
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.conv3 = nn.Conv2d(c, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.cond: nn.Linear | None = None
        if cond_dim is not None:
            self.cond = nn.Linear(cond_dim, 4 * c)
            nn.init.zeros_(self.cond.weight)
            nn.init.zeros_(self.cond.bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.norm1(x)  # (B, C, H, W)
        mod = None
        if self.cond is not None and cond is not None:
            mod = self.cond(cond)[:, :, None, None].chunk(4, dim=1)  # 4 x (B, C, 1, 1)
            h = h * (1 + mod[0]) + mod[1]
        h = self.sg(self.conv2(self.conv1(h)))  # (B, C, H, W)
        h = h * self.sca(h)  # simplified channel attention
        x = x + self.conv3(h) * self.beta

        h = self.norm2(x)
        if mod is not None:
            h = h * (1 + mod[2]) + mod[3]
        h = self.conv5(self.sg(self.conv4(h)))  # (B, C, H, W)
        return x + h * self.gamma


class ContentCrossAttention(nn.Module):
    """``x + CrossAttention(LN(x) as tokens, context)``, the output projection zero-initialised.

    Heads of :data:`irsde.models.blocks.HEAD_DIM` channels (one head below that width).
    """

    def __init__(self, channels: int, context_dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(channels)
        heads = max(1, channels // HEAD_DIM)
        self.attn = CrossAttention(channels, heads, HEAD_DIM, context_dim=context_dim)
        out = self.attn.to_out[0]
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        if context is None:
            return x
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        out = self.attn(tokens, context=context)  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class NAFNet(nn.Module):
    """NAFNet restorer with optional DA-CLIP conditioning: ``restored = model(lq, degra_emb, content_emb)``.

    Built from a :class:`NAFNetConfig` (``NAFNet(cfg)``; :meth:`from_config` also takes the dict that
    ``dataclasses.asdict(model.config)`` gives). ``.config`` is a copy of that config.
    """

    def __init__(self, config: NAFNetConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = NAFNetConfig()
        if not isinstance(config, NAFNetConfig):
            raise TypeError(f"NAFNet: expected a NAFNetConfig, got {type(config).__name__}")
        config.validate()
        self.config = dataclasses.replace(config)  # own copy (lists copied in __post_init__)
        cfg = self.config
        self.in_nc = cfg.in_nc
        self.depth = cfg.depth
        self.context_dim = cfg.context_dim
        self.use_degra_context = cfg.use_degra_context
        self.use_image_context = cfg.use_image_context
        self.grad_checkpointing = cfg.grad_checkpointing

        cond_dim = cfg.cond_dim if cfg.use_degra_context else None
        if cfg.use_degra_context:
            # The prompt module of irsde.models.unet.ConditionalUNet (same names and shapes, cond_dim wide).
            self.prompt = nn.Parameter(torch.rand(1, cond_dim))
            self.text_mlp = nn.Sequential(
                nn.Linear(cfg.context_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
            )
            self.prompt_mlp = nn.Linear(cond_dim, cond_dim)

        def attention(channels: int) -> ContentCrossAttention:
            return ContentCrossAttention(channels, cfg.context_dim)

        first_attn_level = self.depth - cfg.cross_attn_levels  # encoder levels >= this get attention
        self.intro = nn.Conv2d(cfg.in_nc, cfg.width, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.enc_attn = nn.ModuleDict()
        chan = cfg.width
        for level, num in enumerate(cfg.enc_blocks):
            self.encoders.append(nn.ModuleList([NAFBlock(chan, cond_dim) for _ in range(num)]))
            if cfg.use_image_context and level >= first_attn_level:
                self.enc_attn[str(level)] = attention(chan)
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2))
            chan *= 2
        self.middle = nn.ModuleList([NAFBlock(chan, cond_dim) for _ in range(cfg.middle_blocks)])
        self.middle_attn = attention(chan) if cfg.use_image_context else None
        # Decoders run from the lowest resolution up: decoders[k] works at encoder level depth-1-k.
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.dec_attn = nn.ModuleDict()
        for k, num in enumerate(cfg.dec_blocks):
            self.ups.append(nn.Sequential(nn.Conv2d(chan, 2 * chan, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.ModuleList([NAFBlock(chan, cond_dim) for _ in range(num)]))
            if cfg.use_image_context and k < cfg.cross_attn_levels:
                self.dec_attn[str(k)] = attention(chan)
        self.ending = nn.Conv2d(cfg.width, cfg.out_nc, 3, padding=1)
        self.curve = GlobalCurve(cfg.in_nc, cond_dim or 0) if cfg.global_curve else None

    @classmethod
    def from_config(cls, config: NAFNetConfig | Mapping[str, Any]) -> NAFNet:
        """Build from a config, or from its dict (``dataclasses.asdict(model.config)`` in a checkpoint)."""
        if isinstance(config, Mapping):
            config = from_dict(NAFNetConfig, config)
        return cls(config)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint each block while training (less activation memory, one extra forward)."""
        self.grad_checkpointing = bool(enabled)
        self.config.grad_checkpointing = bool(enabled)

    def _run(self, module: nn.Module, *args: Any) -> Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _pad(self, x: Tensor) -> Tensor:
        return pad_to_multiple(x, 2**self.depth)

    def _check_emb(
        self, name: str, switch: str, emb: Tensor | None, batch: int, ndims: tuple[int, ...]
    ) -> None:
        shape = f"[{batch}, {self.context_dim}]" + (
            f" or [{batch}, M, {self.context_dim}]" if 3 in ndims else ""
        )
        if emb is None:
            raise ValueError(f"NAFNet: {name} {shape} is required ({switch}=True), got None")
        if not torch.is_tensor(emb) or emb.dim() not in ndims or emb.shape[0] != batch:
            raise ValueError(f"NAFNet: {name} must be {shape}, got {tuple(getattr(emb, 'shape', ()))}")
        if emb.shape[-1] != self.context_dim or (emb.dim() == 3 and emb.shape[1] == 0):
            raise ValueError(f"NAFNet: {name} must be {shape}, got {tuple(emb.shape)}")

    def forward(
        self, lq: Tensor, degra_emb: Tensor | None = None, content_emb: Tensor | None = None
    ) -> Tensor:
        """Restore ``lq`` [B, in_nc, H, W] (any H, W) -> [B, out_nc, H, W].

        Args:
            lq: the low-quality images.
            degra_emb: DA-CLIP degradation embedding [B, context_dim]; required with
                ``use_degra_context``, ignored without.
            content_emb: DA-CLIP content embedding [B, context_dim] (one token) or tokens
                [B, M, context_dim]; required with ``use_image_context``, ignored without.
        """
        if not torch.is_tensor(lq) or lq.dim() != 4 or lq.shape[1] != self.in_nc:
            raise ValueError(
                f"NAFNet: lq must be [B, {self.in_nc}, H, W], got {tuple(getattr(lq, 'shape', ()))}"
            )
        batch, _, height, width = lq.shape
        cond = None
        if self.use_degra_context:
            self._check_emb("degra_emb", "use_degra_context", degra_emb, batch, (2,))
            prompt = torch.softmax(self.text_mlp(degra_emb), dim=1) * self.prompt  # (B, cond_dim)
            cond = F.silu(self.prompt_mlp(prompt))  # (B, cond_dim)
        context = None
        if self.use_image_context:
            self._check_emb("content_emb", "use_image_context", content_emb, batch, (2, 3))
            context = content_emb[:, None, :] if content_emb.dim() == 2 else content_emb  # (B, M, ctx)

        x = self._pad(lq)  # (B, in_nc, H', W')
        h = self.intro(x)  # (B, width, H', W')
        skips = []
        for level, (blocks, down) in enumerate(zip(self.encoders, self.downs)):
            for block in blocks:
                h = self._run(block, h, cond)  # (B, C_l, H'/2^l, W'/2^l)
            if str(level) in self.enc_attn:
                h = self._run(self.enc_attn[str(level)], h, context)
            skips.append(h)
            h = down(h)  # (B, 2 C_l, H'/2^(l+1), W'/2^(l+1))
        for block in self.middle:
            h = self._run(block, h, cond)
        if self.middle_attn is not None:
            h = self._run(self.middle_attn, h, context)
        for k, (up, blocks) in enumerate(zip(self.ups, self.decoders)):
            h = up(h) + skips.pop()  # (B, C/2, 2H, 2W)
            for block in blocks:
                h = self._run(block, h, cond)
            if str(k) in self.dec_attn:
                h = self._run(self.dec_attn[str(k)], h, context)
        base = x if self.curve is None else self.curve(x, image=lq, cond=cond)  # (B, in_nc, H', W')
        out = base + self.ending(h)  # (B, out_nc, H', W'), the global residual
        return out[..., :height, :width].contiguous()
