"""Bi-level routing attention as in BiFormer (Zhu et al., CVPR 2023, arXiv:2303.08125)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Attention, check_heads, check_positive_int


class BiLevelRoutingAttention(Attention):
    """Bi-level routing attention, BiFormer's BRA (Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing
    Attention", CVPR 2023, arXiv:2303.08125): sparse attention in which each query attends to a routed subset of keys.

    The map is cut into a ``regions`` x ``regions`` grid. Coarse level: each region's query and key are the means of
    its tokens' queries and keys, their dot products give a region-to-region affinity, and every region keeps its
    ``topk`` most affine regions. Fine level: the tokens of a region attend (``scaled_dot_product_attention``,
    ``num_heads`` heads) to the tokens of those ``topk`` regions only, ``topk / regions^2`` of the map. BiFormer's
    local context enhancement, a depthwise 5x5 convolution of the values, is added before the 1x1 output projection.
    Any H, W: regions have ``ceil(H / regions)`` x ``ceil(W / regions)`` tokens, the grid is zero-padded and padded
    tokens are masked out of the region means, the routing and the keys, so padding never changes a real position's
    output. Routing is ``TopK`` + ``Gather`` in ONNX, with no loops over sizes. Each query reads ``topk * H*W /
    regions^2`` keys, still quadratic in the map but ``regions^2 / topk`` times cheaper than global attention, hence
    ``default_placement = "p4"``: the largest map where that stays cheap (on P3 at 640 it adds 14% to YOLO11n's FLOPs).

    Attributes:
        num_heads (int): Attention heads (default ``channels // 32``, at least 1).
        regions (int): Regions per side of the grid.
        topk (int): Regions each region's tokens attend to, at most ``regions ** 2``.
        qkv (nn.Conv2d): Query, key and value projection.
        lce (nn.Conv2d): Local context enhancement, a depthwise 5x5 convolution of the values.
        proj (nn.Conv2d): Output projection.

    Examples:
        >>> layer = BiLevelRoutingAttention(128, regions=8, topk=4)
        >>> x = torch.randn(1, 128, 40, 40)
        >>> layer(x).shape
        torch.Size([1, 128, 40, 40])
        >>> torch.equal(layer(x), x)  # gamma = 0
        True
    """

    default_placement = "p4"

    def __init__(self, channels: int, num_heads: int | None = None, regions: int = 8, topk: int = 4,
                 gate: bool = True) -> None:
        super().__init__(channels, gate)
        owner = "BiLevelRoutingAttention"
        self.num_heads = check_heads(owner, channels, num_heads)
        self.regions = check_positive_int(owner, "regions", regions)
        self.topk = check_positive_int(owner, "topk", topk)
        if topk > regions**2:
            raise ValueError(f"{owner}: topk={topk} exceeds the {regions}x{regions} = {regions**2} regions")
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.lce = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.proj = nn.Conv2d(channels, channels, 1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s, heads, area = self.regions, self.num_heads, self.regions**2
        rh, rw = (h + s - 1) // s, (w + s - 1) // s  # tokens per region along H and W
        qkv = self.qkv(x)  # (N, 3C, H, W), channels ordered (q|k|v, head, head_dim)
        padded = F.pad(qkv, (0, s * rw - w, 0, s * rh - h))  # zero q, k, v at padded positions
        real = ((torch.arange(s * rh, device=x.device) < h).view(s, 1, rh, 1)
                & (torch.arange(s * rw, device=x.device) < w).view(1, s, 1, rw)).reshape(area, rh * rw)
        counts = real.to(x.dtype).sum(1)  # real tokens per region, (R,)
        # Coarse level: region means over real tokens, affinities, the top-k regions (empty ones are never chosen).
        sums = padded[:, : 2 * c].detach().reshape(n, 2 * c, s, rh, s, rw).sum((3, 5)).flatten(2)  # (N, 2C, R)
        q_region, k_region = (sums / counts.clamp_min(1)).chunk(2, 1)
        affinity = (q_region.transpose(1, 2) @ k_region).masked_fill(counts == 0, float("-inf"))  # (N, R, R)
        chosen = affinity.topk(self.topk, dim=-1).indices  # (N, R, topk)
        # Fine level: each region's tokens attend to the tokens of its chosen regions.
        tokens = padded.reshape(n, 3, heads, c // heads, s, rh, s, rw).permute(1, 0, 4, 6, 2, 5, 7, 3)
        q, k, v = tokens.reshape(3, n * area, heads, rh * rw, c // heads).unbind(0)  # (N*R, heads, T, head_dim)
        flat = (chosen + torch.arange(n, device=x.device).view(n, 1, 1) * area).flatten()  # into N*R regions

        def gather(t: torch.Tensor) -> torch.Tensor:  # (N*R, heads, T, d) -> (N*R, heads, topk*T, d)
            return t[flat].unflatten(0, (n * area, self.topk)).transpose(1, 2).flatten(2, 3)

        mask = real.repeat(n, 1)[flat].reshape(n * area, 1, 1, self.topk * rh * rw)
        out = F.scaled_dot_product_attention(q, gather(k), gather(v), attn_mask=mask)  # (N*R, heads, T, head_dim)
        out = out.reshape(n, s, s, heads, rh, rw, c // heads).permute(0, 3, 6, 1, 4, 2, 5).reshape(n, c, s * rh, s * rw)
        return self.proj(out[:, :, :h, :w] + self.lce(qkv[:, 2 * c :]))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, regions={self.regions}, topk={self.topk}"
