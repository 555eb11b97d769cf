"""Attention layers for convolutional feature maps. Depends on torch only.

Every layer takes its input channels as the first positional argument, returns a tensor of its input's shape for
any height and width, and starts as an exact identity (see :class:`modules.base.Attention`). Two-input layers
(:data:`TWO_INPUT`) are called as ``layer([x, context])`` and return ``x``'s shape, an identity of ``x`` at start.
"""

from __future__ import annotations

from .area import AreaAttention
from .base import Attention
from .cbam import CBAM
from .coordatt import CoordAtt
from .cross import CrossScaleAttention
from .eca import ECA
from .ema import EMA
from .mhsa import MHSA
from .se import SE
from .simam import SimAM
from .sparse import BiLevelRoutingAttention

ATTENTION: dict[str, type[Attention]] = {
    "se": SE,
    "eca": ECA,
    "cbam": CBAM,
    "coordatt": CoordAtt,
    "simam": SimAM,
    "ema": EMA,
    "mhsa": MHSA,
    "area": AreaAttention,
    "cross": CrossScaleAttention,
    "sparse": BiLevelRoutingAttention,
}
# Names of the layers that take two inputs, [x, context] (Ultralytics' `from: [fine, coarse]`).
TWO_INPUT = frozenset(name for name, cls in ATTENTION.items() if getattr(cls, "inputs", 1) == 2)


def create_attention(name: str, channels: int, **kwargs) -> Attention:
    """Build the attention layer registered as ``name`` (e.g. ``"cbam"``) for ``channels`` input channels.

    Examples:
        >>> layer = create_attention("cbam", 64, reduction=8)
        >>> type(layer).__name__, layer.mlp[0].out_channels
        ('CBAM', 8)
    """
    try:
        cls = ATTENTION[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown attention module {name!r}; registered: {', '.join(ATTENTION)}") from None
    return cls(channels, **kwargs)


__all__ = ["ATTENTION", "TWO_INPUT", "Attention", "create_attention", *(cls.__name__ for cls in ATTENTION.values())]
