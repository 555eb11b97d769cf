"""Global multi-head self-attention over the pixels of a feature map (Vaswani et al., NeurIPS 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Attention, check_heads


class MHSA(Attention):
    """Multi-head self-attention (Vaswani et al., "Attention Is All You Need", NeurIPS 2017, arXiv:1706.03762) over
    all H*W positions, as used on CNN feature maps by BoTNet (Srinivas et al., CVPR 2021, arXiv:2101.11605).

    Positional encoding: CPVT's positional encoding generator (Chu et al., "Conditional Positional Encodings for
    Vision Transformers", ICLR 2023, arXiv:2102.10882), a depthwise 3x3 convolution whose output is added to the
    input, so it works at any input size. Then 1x1 conv query/key/value projections, ``num_heads`` heads (default
    ``channels // 32``, at least 1) computed with ``scaled_dot_product_attention`` (flash / memory-efficient kernels
    on GPUs), and a 1x1 conv output projection. Cost is quadratic in H*W, hence ``default_placement = "p5"``.

    Attributes:
        num_heads (int): Attention heads.
        pos (nn.Conv2d): Positional encoding, a depthwise 3x3 convolution.
        qkv (nn.Conv2d): Query, key and value projection.
        proj (nn.Conv2d): Output projection.

    Examples:
        >>> layer = MHSA(256)
        >>> layer.num_heads
        8
        >>> x = torch.randn(1, 256, 20, 20)
        >>> layer(x).shape
        torch.Size([1, 256, 20, 20])
        >>> torch.equal(layer(x), x)  # gamma = 0
        True
    """

    default_placement = "p5"

    def __init__(self, channels: int, num_heads: int | None = None, gate: bool = True) -> None:
        super().__init__(channels, gate)
        self.num_heads = check_heads("MHSA", channels, num_heads)
        self.pos = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        # (N, 3C, H, W) -> 3 x (N, heads, H*W, C / heads)
        q, k, v = self.qkv(x).flatten(2).unflatten(1, (3, self.num_heads, -1)).transpose(-1, -2).unbind(1)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # head dim with stride 1: SDPA's fused kernels
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, H*W, C / heads)
        return self.proj(out.transpose(-1, -2).reshape_as(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}"
