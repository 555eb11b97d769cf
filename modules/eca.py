"""Efficient Channel Attention (Wang et al., CVPR 2020, arXiv:1910.03151)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import ScalingAttention, check_positive_int


class ECA(ScalingAttention):
    """Efficient Channel Attention (Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
    Networks", CVPR 2020, arXiv:1910.03151).

    Like SE but without dimensionality reduction: a 1-D convolution across the globally average-pooled channel
    descriptor (local cross-channel interaction), then a sigmoid gate per channel. The kernel size adapts to the
    channel count, ``k = |log2(C) / gamma + b / gamma|_odd`` with gamma=2, b=1, unless ``kernel_size`` is given.

    Attributes:
        conv (nn.Conv1d): The 1-D convolution across the channel descriptor, no bias.

    Examples:
        >>> layer = ECA(256)
        >>> layer.conv.kernel_size
        (5,)
        >>> x = torch.randn(1, 256, 10, 10)
        >>> layer(x).shape, layer.weights(x).shape
        (torch.Size([1, 256, 10, 10]), torch.Size([1, 256, 1, 1]))
    """

    def __init__(self, channels: int, kernel_size: int | None = None, gate: bool = True) -> None:
        super().__init__(channels, gate)
        if kernel_size is None:
            kernel_size = self.adaptive_kernel_size(channels)
        elif check_positive_int("ECA", "kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"ECA: kernel_size must be odd (to keep the channel count), got {kernel_size}")
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    @staticmethod
    def adaptive_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
        """The paper's Eq. 12: ``|log2(channels) / gamma + b / gamma|``, rounded to an odd int (up if even).

        Examples:
            >>> ECA.adaptive_kernel_size(64), ECA.adaptive_kernel_size(256), ECA.adaptive_kernel_size(1024)
            (3, 5, 5)
        """
        t = int(abs((math.log2(channels) + b) / gamma))
        return t if t % 2 else t + 1

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        descriptor = x.mean((2, 3)).unsqueeze(1)  # (N, 1, C): the channels are the 1-D sequence
        return self.conv(descriptor).sigmoid().transpose(1, 2).unsqueeze(-1)
