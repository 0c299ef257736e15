"""DA-CLIP: a frozen open_clip model steered by a trainable controller (nn.Modules only).

The controller is a full copy of the CLIP vision tower (patch conv, class and
positional embeddings, ``ln_pre``, blocks, ``ln_post``, ``proj``) plus one
``Linear(width, width)`` with bias after each of its ``L`` blocks. With ``x_i``
the controller stream after block ``i``::

    h_i = zero_linear_i(x_i)                      (the stream itself is not changed)
    degra_emb = ln_post(x_{L-1}[:, class]) @ proj

The frozen CLIP tower runs on the same image and adds the hidden signals in
**reverse order**, after every block ``j`` (the last one too)::

    y_j = block_j(y_{j-1}) + h_{L-1-j}
    content_emb = ln_post(y_{L-1}[:, class]) @ proj

This is what the official implementation computes (its frozen tower pops the
hidden list from the end). The zero-Linears start at exactly zero, so at
initialisation ``content_emb`` is plain CLIP's image embedding (the official
initialiser copies parameters by position and leaves the pretrained ``ln_post``
weights in the first zero-Linear; we do not reproduce that flaw: it changes only
the starting point of training, not what a released checkpoint computes).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["Controller", "DaCLIP", "check_vision_tower", "dct_patch_filters", "init_patch_embedding_dct"]


def check_vision_tower(tower: nn.Module) -> None:
    """Raise ``ValueError`` unless ``tower`` is an open_clip ViT that DA-CLIP can control."""
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
    missing = [name for name in needed if not hasattr(tower, name)]
    if missing or not hasattr(tower.transformer, "resblocks"):
        raise ValueError(
            f"DA-CLIP needs an open_clip VisionTransformer image tower; {type(tower).__name__} lacks "
            f"{missing or ['transformer.resblocks']} (ResNet and timm towers are not supported)"
        )
    if getattr(tower, "attn_pool", None) is not None:
        raise ValueError("DA-CLIP does not support vision towers with attentional pooling (CoCa-style)")
    if _pool_type(tower) not in ("tok", "avg"):
        raise ValueError(f"DA-CLIP needs a pooled vision tower, got pool_type={_pool_type(tower)!r}")


def _pool_type(tower: nn.Module) -> str:
    # open_clip >= 2.24 names the pooling `pool_type`; older releases had a `global_average_pool` flag.
    if hasattr(tower, "pool_type"):
        return tower.pool_type
    return "avg" if getattr(tower, "global_average_pool", False) else "tok"


def _embed(tower: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch tokens + class token + positions, then ``ln_pre``: ``(B, 3, H, W) -> (B, N + 1, D)``.

    Patch dropout is deliberately skipped: the controller's hidden signals are added
    token by token to the frozen stream, so both streams must see the same tokens
    (the frozen tower is always in eval mode, where patch dropout is the identity).
    """
    x = tower.conv1(images)  # (B, D, gh, gw)
    x = x.flatten(2).transpose(1, 2)  # (B, N, D)
    cls = tower.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)  # (B, 1, D)
    x = torch.cat([cls, x], dim=1)  # (B, N + 1, D)
    x = x + tower.positional_embedding.to(x.dtype)  # (B, N + 1, D)
    return tower.ln_pre(x)  # (B, N + 1, D)


def _pool(tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``ln_post`` and pooling in the tower's own order, then ``proj``: ``(B, N + 1, D) -> (B, E)``."""
    pool_type = _pool_type(tower)

    def global_pool(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1:].mean(dim=1) if pool_type == "avg" else tokens[:, 0]  # (B, D)

    if getattr(tower, "final_ln_after_pool", False):
        pooled = tower.ln_post(global_pool(x))  # (B, D)
    else:
        pooled = global_pool(tower.ln_post(x))  # (B, D)
    if tower.proj is not None:
        pooled = pooled @ tower.proj  # (B, E)
    return pooled


def _run_block(block: nn.Module, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


def dct_patch_filters(width: int, patch: int) -> torch.Tensor:
    """A frequency basis for a patch embedding ``Conv2d(3, width, patch, stride=patch)``: ``(n, 3, p, p)``.

    The first three filters take each colour channel's mean; then the orthonormal 2-D DCT-II basis
    functions of the patch on the luminance (the three channels alike), lowest frequencies first,
    without the constant one; ``n = min(width, p² + 2)``. A random-initialised tower that starts from
    them sees each patch as JPEG does: blocking, noise and blur are then differences between
    coefficients rather than something its first layer must discover.
    """
    coords = torch.arange(patch, dtype=torch.float64)

    def cosine(freq: int) -> torch.Tensor:  # (p,) orthonormal DCT-II
        scale = math.sqrt((1 if freq == 0 else 2) / patch)
        return scale * torch.cos((2 * coords + 1) * freq * math.pi / (2 * patch))

    pairs = sorted(
        ((u, v) for u in range(patch) for v in range(patch) if u or v), key=lambda uv: (sum(uv), uv)
    )
    count = min(width, patch * patch + 2)
    filters = torch.zeros(count, 3, patch, patch, dtype=torch.float64)
    for channel in range(min(3, count)):
        filters[channel, channel] = 1.0 / patch  # the channel's DC coefficient
    for index, (u, v) in zip(range(3, count), pairs):
        filters[index] = torch.outer(cosine(u), cosine(v)).expand(3, patch, patch) / math.sqrt(3.0)
    return filters.float()


@torch.no_grad()
def init_patch_embedding_dct(tower: nn.Module) -> None:
    """Start a vision tower's patch embedding (``conv1``) as :func:`dct_patch_filters`; its other filters,
    when it is wider, keep their values."""
    conv = tower.conv1
    filters = dct_patch_filters(conv.out_channels, conv.kernel_size[0])
    conv.weight[: filters.shape[0]] = filters.to(conv.weight)


class Controller(nn.Module):
    """The trainable controller: a copy of a CLIP vision tower plus one zero-initialised Linear per block."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        check_vision_tower(tower)
        # A copy by module *name* (deepcopy), so every parameter lands in its own slot.
        self.tower = copy.deepcopy(tower)
        for param in self.tower.parameters():
            param.requires_grad_(True)
        width = self.tower.conv1.out_channels
        num_blocks = len(self.tower.transformer.resblocks)
        # Zero-initialised (weight and bias): the control signal is exactly zero at the start,
        # so training begins from plain CLIP and the gradient reaches the Linear first.
        self.zero_linears = nn.ModuleList(nn.Linear(width, width, bias=True) for _ in range(num_blocks))
        for linear in self.zero_linears:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        self.grad_checkpointing = False

    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks (= number of hidden control signals)."""
        return len(self.zero_linears)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``(degra_emb (B, E), hiddens)`` with ``hiddens[i] = zero_linear_i(x_i)`` in block order."""
        x = _embed(self.tower, images)  # (B, N + 1, D)
        batch_first = getattr(self.tower.transformer, "batch_first", False)
        if not batch_first:  # open_clip < 2.30 runs its blocks sequence-first
            x = x.transpose(0, 1)  # (N + 1, B, D)
        hiddens = []
        for block, zero_linear in zip(self.tower.transformer.resblocks, self.zero_linears):
            x = _run_block(block, x, self.grad_checkpointing)  # (B, N + 1, D)
            hiddens.append(zero_linear(x))  # h_i, (B, N + 1, D); the stream x itself is unchanged
        if not batch_first:
            x = x.transpose(0, 1)
        return _pool(self.tower, x), hiddens  # (B, E), L x (B, N + 1, D)


class DaCLIP(nn.Module):
    """A frozen open_clip CLIP model, a trainable :class:`Controller` and DA-CLIP's own logit scale.

    Attributes:
        clip: the open_clip model (frozen: ``requires_grad=False`` and kept in eval mode).
        controller: the trainable copy of ``clip.visual`` with its zero-Linears.
        logit_scale: DA-CLIP's learnable log temperature, initialised from CLIP's (trainable).
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        check_vision_tower(clip.visual)
        self.clip = clip
        for param in self.clip.parameters():
            param.requires_grad_(False)
        self.controller = Controller(clip.visual)
        self.logit_scale = nn.Parameter(clip.logit_scale.detach().clone().reshape(()))
        self.clip.eval()

    def train(self, mode: bool = True) -> DaCLIP:
        """Set the controller's mode; the frozen CLIP always stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (both streams) to save memory."""
        self.controller.grad_checkpointing = enable

    @property
    def embed_dim(self) -> int:
        """Size of the image/text embeddings."""
        return int(self.clip.visual.output_dim)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights that training changes: the controller and the DA-CLIP logit scale."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("clip.")}

    def _controlled_image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        degra_emb, hiddens = self.controller(images)  # (B, E), L x (B, N + 1, D)
        tower = self.clip.visual
        y = _embed(tower, images)  # (B, N + 1, D)
        batch_first = getattr(tower.transformer, "batch_first", False)
        if not batch_first:
            y = y.transpose(0, 1)  # (N + 1, B, D)
        blocks = tower.transformer.resblocks
        num_blocks = len(blocks)
        for j, block in enumerate(blocks):
            y = _run_block(block, y, self.controller.grad_checkpointing)  # (B, N + 1, D)
            # Reverse order: main block j receives the controller's hidden L-1-j.
            y = y + hiddens[num_blocks - 1 - j]  # (B, N + 1, D)
        if not batch_first:
            y = y.transpose(0, 1)
        content_emb = _pool(tower, y)  # (B, E)
        return content_emb, degra_emb

    def encode_image(
        self, images: torch.Tensor, control: bool = True, normalize: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Image embeddings.

        Args:
            images: ``(B, 3, S, S)`` CLIP-normalised images.
            control: ``True`` returns ``(content_emb, degra_emb)``, each ``(B, E)``; ``False``
                returns plain CLIP's image embedding ``(B, E)``.
            normalize: L2-normalise the returned embeddings.
        """
        if not control:
            return self.clip.encode_image(images, normalize=normalize)
        content_emb, degra_emb = self._controlled_image_features(images)
        if normalize:
            content_emb = F.normalize(content_emb, dim=-1)
            degra_emb = F.normalize(degra_emb, dim=-1)
        return content_emb, degra_emb

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Frozen CLIP text embedding of ``(B, context_length)`` token ids -> ``(B, E)``."""
        return self.clip.encode_text(tokens, normalize=normalize)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(content_emb, degra_emb)``, unnormalised (what the restoration U-Net consumes)."""
        return self._controlled_image_features(images)
