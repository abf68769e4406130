"""Shared layers: building blocks that carry no knowledge of which model uses them.

Tensors are channel-first ([B, C, T]) between blocks, as Conv1d wants them; layer norms and the
pointwise MLP work channel-last inside a block. A condition (a speaker vector, a style code) is either
one vector per item [B, D] or one per frame [B, T, D].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AdaptiveLayerNorm(nn.Module):
    """Layer norm whose scale and shift are predicted from a condition (FiLM on normalized features).

    The projections start at zero, so an untrained layer is a plain layer norm with unit scale: the
    condition can only move the network away from a working unconditional one, never start it broken.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.scale = nn.Linear(cond_dim, dim)
        self.shift = nn.Linear(cond_dim, dim)
        for layer in (self.scale, self.shift):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x [B, T, dim] (channel-last), cond [B, cond_dim] or [B, T, cond_dim] -> [B, T, dim]."""
        if cond.dim() == 2:
            cond = cond.unsqueeze(1)
        return self.norm(x) * (1 + self.scale(cond)) + self.shift(cond)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block as Vocos uses it on 1-D sequences: depthwise conv, norm, pointwise MLP, scaled residual.

    With `cond_dim` the norm is an AdaptiveLayerNorm and `forward` needs `cond`. The residual branch is
    scaled by a learnt per-channel factor that starts small (`layer_scale`), so a deep stack starts close
    to the identity and trains without warm-up tricks.
    """

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int = 7, layer_scale: float | None = None,
                 cond_dim: int | None = None) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the length, got {kernel_size}")
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm: nn.Module = (AdaptiveLayerNorm(dim, cond_dim) if cond_dim
                                else nn.LayerNorm(dim, eps=1e-6))
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale else None

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """x [B, dim, T], cond [B, cond_dim] or [B, T, cond_dim] (only with cond_dim) -> [B, dim, T]."""
        residual = x
        x = self.dwconv(x).transpose(1, 2)
        if isinstance(self.norm, AdaptiveLayerNorm):
            if cond is None:
                raise ValueError("this ConvNeXtBlock was built with cond_dim and needs a condition")
            x = self.norm(x, cond)
        else:
            x = self.norm(x)
        x = self.pwconv2(self.act(self.pwconv1(x)))
        if self.gamma is not None:
            x = x * self.gamma
        return residual + x.transpose(1, 2)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a channel-first tensor, saving the caller two transposes."""

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, T] -> [B, C, T]."""
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


F0_REF_HZ = 150.0  # log-F0 inputs are octaves relative to this, so speech and singing sit near 0


def pitch_features(f0_hz: Tensor) -> Tensor:
    """The pitch inputs of both models. f0_hz [B, T] (Hz, 0 = unvoiced) -> [B, 2, T].

    Channel 0: log2(f0 / 150 Hz), octaves around a mid voice (about -1.6 .. +2.9 over 50-1100 Hz),
    0 where unvoiced. Channel 1: the voiced flag (1.0 / 0.0).
    """
    voiced = f0_hz > 0
    octaves = torch.where(voiced, torch.log2(f0_hz.clamp(min=1.0) / F0_REF_HZ), torch.zeros_like(f0_hz))
    return torch.stack([octaves, voiced.to(octaves.dtype)], dim=1)
