"""Squeeze-and-Excitation (Hu et al., CVPR 2018, arXiv:1709.01507)."""

from __future__ import annotations

import torch
from torch import nn

from .base import ScalingAttention, check_positive_int, reduced_channels


class SE(ScalingAttention):
    """Squeeze-and-Excitation (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018, arXiv:1709.01507).

    Channel gates from a bottleneck MLP (``channels -> max(channels // reduction, 8) -> channels``, ReLU, sigmoid)
    over the globally average-pooled features; the input is rescaled channel by channel.

    Attributes:
        fc (nn.Sequential): The bottleneck MLP as 1x1 convolutions, ending in the sigmoid.

    Examples:
        >>> layer = SE(64)
        >>> x = torch.randn(1, 64, 20, 20)
        >>> layer(x).shape, layer.weights(x).shape
        (torch.Size([1, 64, 20, 20]), torch.Size([1, 64, 1, 1]))
        >>> torch.equal(layer(x), x)  # gamma = 0
        True
    """

    def __init__(self, channels: int, reduction: int = 16, gate: bool = True) -> None:
        super().__init__(channels, gate)
        hidden = reduced_channels(channels, check_positive_int("SE", "reduction", reduction), min_channels=8)
        self.fc = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3), keepdim=True))
