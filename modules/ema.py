"""Efficient Multi-Scale Attention with cross-spatial learning (Ouyang et al., ICASSP 2023, arXiv:2305.13563)."""

from __future__ import annotations

import torch
from torch import nn

from .base import Attention, check_positive_int


class EMA(Attention):
    """Efficient Multi-Scale Attention (Ouyang et al., "Efficient Multi-Scale Attention Module with Cross-Spatial
    Learning", ICASSP 2023, arXiv:2305.13563).

    The channels are split into ``factor`` groups, each processed as its own small map. A 1x1 branch pools along H
    and along W (as in coordinate attention), shares a 1x1 conv over both, and gates the group with the two
    sigmoids, followed by GroupNorm; a parallel 3x3 branch captures multi-scale context. Cross-spatial learning: the
    softmax of each branch's global-average descriptor is matrix-multiplied with the other branch's features, giving
    two (H*W) spatial maps whose sum, through a sigmoid, reweights the group's pixels.

    Attributes:
        groups (int): Channel groups (``factor``); ``channels`` must be a multiple of it.
        conv1x1 (nn.Conv2d): The 1x1 branch's convolution over both directional poolings.
        conv3x3 (nn.Conv2d): The 3x3 branch.
        norm (nn.GroupNorm): GroupNorm after the 1x1 branch's gating.

    Examples:
        >>> layer = EMA(64, factor=8)
        >>> x = torch.randn(2, 64, 20, 20)
        >>> layer(x).shape
        torch.Size([2, 64, 20, 20])
        >>> torch.equal(layer(x), x)  # gamma = 0
        True
    """

    def __init__(self, channels: int, factor: int = 32, gate: bool = True) -> None:
        super().__init__(channels, gate)
        check_positive_int("EMA", "factor", factor)
        if channels % factor:
            valid = [g for g in range(1, channels + 1) if channels % g == 0]
            raise ValueError(
                f"EMA: channels={channels} must be a multiple of factor={factor} (the number of groups); "
                f"use channels that are a multiple of {factor}, or factor in {valid}"
            )
        self.groups = factor
        width = channels // factor
        self.conv1x1 = nn.Conv2d(width, width, 1)
        self.conv3x3 = nn.Conv2d(width, width, 3, padding=1)
        self.norm = nn.GroupNorm(width, width)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        width = self.channels // self.groups
        grouped = x.reshape(-1, width, *x.shape[2:])  # (N * groups, C / groups, H, W)
        pooled = torch.cat([grouped.mean(3, keepdim=True), grouped.mean(2, keepdim=True).transpose(2, 3)], 2)
        directional = self.conv1x1(pooled)  # (N * groups, C / groups, H + W, 1)
        gate_h, gate_w = directional[:, :, :h], directional[:, :, h:].transpose(2, 3)
        branch1 = self.norm(grouped * gate_h.sigmoid() * gate_w.sigmoid())
        branch3 = self.conv3x3(grouped)
        # Each branch's channel descriptor (softmax over channels) weights the other branch's pixels.
        descriptor1 = branch1.mean((2, 3)).softmax(-1).unsqueeze(1)  # (N * groups, 1, C / groups)
        descriptor3 = branch3.mean((2, 3)).softmax(-1).unsqueeze(1)
        spatial = descriptor1 @ branch3.flatten(2) + descriptor3 @ branch1.flatten(2)  # (N * groups, 1, H * W)
        return (grouped * spatial.reshape_as(grouped[:, :1]).sigmoid()).reshape_as(x)
