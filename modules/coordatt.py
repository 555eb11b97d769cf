"""Coordinate Attention (Hou et al., CVPR 2021, arXiv:2103.02907)."""

from __future__ import annotations

import torch
from torch import nn

from .base import ScalingAttention, check_positive_int, reduced_channels


class CoordAtt(ScalingAttention):
    """Coordinate Attention (Hou et al., "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021,
    arXiv:2103.02907).

    Factorises global pooling into two 1-D poolings, along the width (one descriptor per row) and along the height
    (one per column), so the gates keep positional information in the other direction. Both descriptors share a
    1x1 reduction to ``max(8, channels // reduction)`` channels with BatchNorm and h-swish, are split again and
    mapped by their own 1x1 convolution and sigmoid to ``a_h`` (N, C, H, 1) and ``a_w`` (N, C, 1, W);
    the output is ``x * a_h * a_w``. Pooling uses ``mean`` so exported ONNX graphs keep dynamic sizes.

    Attributes:
        reduce (nn.Sequential): The shared 1x1 reduction, BatchNorm and h-swish.
        expand_h (nn.Conv2d): 1x1 convolution giving the row gates ``a_h``.
        expand_w (nn.Conv2d): 1x1 convolution giving the column gates ``a_w``.

    Examples:
        >>> layer = CoordAtt(64)
        >>> x = torch.randn(1, 64, 20, 30)
        >>> layer(x).shape, layer.weights(x).shape
        (torch.Size([1, 64, 20, 30]), torch.Size([1, 64, 20, 30]))
        >>> torch.equal(layer(x), x)  # gamma = 0
        True
    """

    def __init__(self, channels: int, reduction: int = 32, gate: bool = True) -> None:
        super().__init__(channels, gate)
        hidden = reduced_channels(channels, check_positive_int("CoordAtt", "reduction", reduction), min_channels=8)
        self.reduce = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.expand_h = nn.Conv2d(hidden, channels, 1)
        self.expand_w = nn.Conv2d(hidden, channels, 1)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        pooled_h = x.mean(3, keepdim=True)  # (N, C, H, 1)
        pooled_w = x.mean(2, keepdim=True).transpose(2, 3)  # (N, C, W, 1)
        y = self.reduce(torch.cat([pooled_h, pooled_w], 2))  # (N, hidden, H + W, 1)
        a_h = self.expand_h(y[:, :, :h]).sigmoid()
        a_w = self.expand_w(y[:, :, h:].transpose(2, 3)).sigmoid()
        return a_h * a_w
