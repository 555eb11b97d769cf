"""Convolutional Block Attention Module (Woo et al., ECCV 2018, arXiv:1807.06521)."""

from __future__ import annotations

import torch
from torch import nn

from .base import ScalingAttention, check_positive_int, reduced_channels


class CBAM(ScalingAttention):
    """Convolutional Block Attention Module (Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018,
    arXiv:1807.06521).

    Channel attention then spatial attention, applied sequentially. Channel: the average- and max-pooled
    descriptors go through one shared MLP (``channels -> max(channels // reduction, 1) -> channels``, ReLU), are
    summed and squashed by a sigmoid. Spatial: the channel-wise mean and max maps, concatenated, go through a
    ``spatial_kernel`` x ``spatial_kernel`` convolution (7 in the paper) and a sigmoid.

    Attributes:
        mlp (nn.Sequential): The shared channel MLP as 1x1 convolutions.
        spatial (nn.Conv2d): The spatial attention convolution, 2 maps in, 1 out.

    Examples:
        >>> layer = CBAM(64)
        >>> x = torch.randn(1, 64, 20, 20)
        >>> layer(x).shape, layer.weights(x).shape
        (torch.Size([1, 64, 20, 20]), torch.Size([1, 64, 20, 20]))
        >>> torch.equal(layer(x), x)  # gamma = 0
        True
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7, gate: bool = True) -> None:
        super().__init__(channels, gate)
        hidden = reduced_channels(channels, check_positive_int("CBAM", "reduction", reduction), min_channels=1)
        if check_positive_int("CBAM", "spatial_kernel", spatial_kernel) % 2 == 0:
            raise ValueError(f"CBAM: spatial_kernel must be odd (to keep the map size), got {spatial_kernel}")
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        channel_gate = (self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))).sigmoid()
        x = x * channel_gate
        spatial_gate = self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)).sigmoid()
        return channel_gate * spatial_gate
