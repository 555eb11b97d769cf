"""Area attention as in YOLO12 (Tian et al., 2025, arXiv:2502.12524)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Attention, check_heads, check_positive_int


def _conv_bn(channels_in: int, channels_out: int, kernel: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution without bias followed by BatchNorm, no activation (YOLO12's ``Conv(..., act=False)``).

    Examples:
        >>> _conv_bn(64, 128)(torch.randn(1, 64, 8, 8)).shape
        torch.Size([1, 128, 8, 8])
    """
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(channels_out),
    )


class AreaAttention(Attention):
    """Area attention, YOLO12's ``AAttn`` (Tian et al., "YOLOv12: Attention-Centric Real-Time Object Detectors",
    2025, arXiv:2502.12524).

    The map is cut into ``area`` (default 4) horizontal strips of ``ceil(H / area)`` rows and multi-head
    self-attention (``scaled_dot_product_attention``) runs within each strip, cutting the cost of global attention
    by ``area``. For any H the strips are exact: the last one is zero-padded and its padded keys are masked out, so
    padding never changes a real position's output (there are fewer strips when ``area`` strips would leave one
    empty, e.g. H=5: 2+2+1 rows). Positional encoding as in YOLO12: a depthwise 7x7 convolution of the values added
    to the attention output; BatchNorm follows the qkv, positional and output convolutions.

    Attributes:
        num_heads (int): Attention heads (default ``channels // 32``, at least 1).
        area (int): Strips the map is cut into.
        qkv (nn.Sequential): Query, key and value projection with BatchNorm.
        pos (nn.Sequential): Positional encoding of the values, a depthwise 7x7 convolution with BatchNorm.
        proj (nn.Sequential): Output projection with BatchNorm.

    Examples:
        >>> layer = AreaAttention(256, area=4)
        >>> x = torch.randn(1, 256, 20, 20)
        >>> layer(x).shape
        torch.Size([1, 256, 20, 20])
        >>> torch.equal(layer(x), x)  # gamma = 0
        True
    """

    default_placement = "p5"

    def __init__(self, channels: int, num_heads: int | None = None, area: int = 4, gate: bool = True) -> None:
        super().__init__(channels, gate)
        self.num_heads = check_heads("AreaAttention", channels, num_heads)
        self.area = check_positive_int("AreaAttention", "area", area)
        self.qkv = _conv_bn(channels, 3 * channels)
        self.pos = _conv_bn(channels, channels, 7, groups=channels)
        self.proj = _conv_bn(channels, channels)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        c = self.channels
        qkv = self.qkv(x)  # (N, 3C, H, W), channels ordered (q|k|v, head, head_dim)
        rows = (h + self.area - 1) // self.area  # rows per strip
        strips = (h + rows - 1) // rows
        tokens = F.pad(qkv, (0, 0, 0, strips * rows - h)).reshape(n, 3, self.num_heads, -1, strips, rows * w)
        q, k, v = tokens.permute(1, 0, 4, 2, 5, 3).flatten(1, 2).unbind(0)  # (N * strips, heads, rows * W, dim)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # head dim with stride 1: SDPA's fused kernels
        # Padding rows come last in row-major order, so the real tokens are the first H*W of each image's grid.
        real = torch.arange(strips * rows * w, device=x.device) < h * w
        mask = real.reshape(strips, 1, 1, rows * w).repeat(n, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.unflatten(0, (n, strips)).permute(0, 2, 4, 1, 3).reshape(n, c, strips * rows, w)[:, :, :h]
        return self.proj(out + self.pos(qkv[:, 2 * c :]))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, area={self.area}"
