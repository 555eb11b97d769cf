"""Cross-scale attention: a fine feature map queries a coarse one (Zhang et al., ECCV 2020, arXiv:2007.09451)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Attention, check_positive_int, reduced_channels


class CrossScaleAttention(Attention):
    """Cross-scale attention, the grounding transformer of the Feature Pyramid Transformer (Zhang et al., "Feature
    Pyramid Transformer", ECCV 2020, arXiv:2007.09451) computed as multi-head dot-product cross-attention (Vaswani et
    al., "Attention Is All You Need", NeurIPS 2017, arXiv:1706.03762).

    A two-input layer, ``layer([x, context])`` (Ultralytics' ``from: [fine, coarse]``): every position of the fine map
    ``x`` (P3 or P4) queries every position of the coarse map ``context`` (P5), whose keys and values are few (1/16 of
    P3's positions, 1/4 of P4's), so the cost is ``H*W * h*w``: linear in the fine map for a given context, where
    self-attention on P3 would cost ``(H*W)^2``. Both maps get CPVT's positional encoding (a depthwise 3x3
    convolution added to the map, Chu et al., ICLR 2023); 1x1 projections give the queries (from ``x``), keys and
    values (from ``context``) ``dim`` channels in ``num_heads`` heads, computed with ``scaled_dot_product_attention``,
    and a 1x1 projection maps back to ``channels``. The gate acts on the fine map, ``y = x + gamma * (A(x, context) -
    x)``: an exact identity of ``x`` at gamma = 0. The context may have any size; its batch must be ``x``'s.

    Attributes:
        context_channels (int): Channels of the coarse map.
        num_heads (int): Attention heads (default ``dim // 32``, at least 1).
        dim (int): Attention width, ``rd_ratio * channels`` rounded down to a multiple of ``num_heads``.
        pos (nn.Conv2d): Positional encoding of the fine map.
        context_pos (nn.Conv2d): Positional encoding of the coarse map.
        q (nn.Conv2d): Query projection of the fine map.
        kv (nn.Conv2d): Key and value projection of the coarse map.
        proj (nn.Conv2d): Output projection back to ``channels``.

    Examples:
        >>> layer = CrossScaleAttention(64, 256)
        >>> p3, p5 = torch.randn(1, 64, 80, 80), torch.randn(1, 256, 20, 20)
        >>> layer([p3, p5]).shape
        torch.Size([1, 64, 80, 80])
        >>> torch.equal(layer([p3, p5]), p3)  # gamma = 0
        True
    """

    default_placement = "neck"
    inputs = 2  # called as layer([x, context]); see modules.TWO_INPUT

    def __init__(self, channels: int, context_channels: int | None = None, num_heads: int | None = None,
                 rd_ratio: float = 0.5, gate: bool = True) -> None:
        super().__init__(channels, gate)
        owner = "CrossScaleAttention"
        if context_channels is not None:
            check_positive_int(owner, "context_channels", context_channels)
        self.context_channels = channels if context_channels is None else context_channels
        if isinstance(rd_ratio, bool) or not isinstance(rd_ratio, (int, float)) or not rd_ratio > 0:
            raise ValueError(f"{owner}: rd_ratio must be a positive number, got {rd_ratio!r}")
        width = reduced_channels(channels, rd_ratio=rd_ratio, min_channels=1)
        self.num_heads = max(width // 32, 1) if num_heads is None else check_positive_int(owner, "num_heads", num_heads)
        if self.num_heads > width:
            raise ValueError(f"{owner}: num_heads={num_heads} exceeds the attention width rd_ratio x channels, {width}")
        self.dim = width - width % self.num_heads
        self.pos = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.context_pos = nn.Conv2d(self.context_channels, self.context_channels, 3, padding=1,
                                     groups=self.context_channels)
        self.q = nn.Conv2d(channels, self.dim, 1)
        self.kv = nn.Conv2d(self.context_channels, 2 * self.dim, 1)
        self.proj = nn.Conv2d(self.dim, channels, 1)

    def attend(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``A(x, context)``: what the fine map ``x`` reads from ``context``, in ``x``'s shape."""
        n, _, h, w = x.shape
        q = self.q(x + self.pos(x))
        k, v = self.kv(context + self.context_pos(context)).chunk(2, 1)
        # (N, dim, H, W) -> (N, heads, H*W, dim / heads), head dim contiguous: SDPA's fused kernels need stride 1 there
        q, k, v = (t.flatten(2).unflatten(1, (self.num_heads, -1)).transpose(-1, -2).contiguous() for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(-1, -2).reshape(n, self.dim, h, w))

    def forward(self, x: Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(x, torch.Tensor) or len(x) != 2:
            raise ValueError(f"CrossScaleAttention takes [x, context] (the fine and the coarse map), got {type(x)}")
        fine, context = x
        self.check_input(fine)
        if not torch.jit.is_tracing() and (
            context.ndim != 4 or context.shape[1] != self.context_channels or context.shape[0] != fine.shape[0]
        ):
            raise ValueError(
                f"CrossScaleAttention built for {self.context_channels} context channels expects a "
                f"({fine.shape[0]}, {self.context_channels}, h, w) context, got {tuple(context.shape)}"
            )
        a = self.attend(fine, context)
        return a if self.gamma is None else fine + self.gamma * (a - fine)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, context_channels={self.context_channels}, num_heads={self.num_heads}, " \
               f"dim={self.dim}"
