"""Attention layers for convolutional feature maps. Depends on torch only.

Every layer takes its input channels as the first positional argument, returns a tensor of its input's shape for
any height and width, and starts as an exact identity (see :class:`modules.base.Attention`).
"""

from __future__ import annotations

from .area import AreaAttention
from .base import Attention
from .cbam import CBAM
from .coordatt import CoordAtt
from .eca import ECA
from .ema import EMA
from .mhsa import MHSA
from .se import SE
from .simam import SimAM

ATTENTION: dict[str, type[Attention]] = {
    "se": SE,
    "eca": ECA,
    "cbam": CBAM,
    "coordatt": CoordAtt,
    "simam": SimAM,
    "ema": EMA,
    "mhsa": MHSA,
    "area": AreaAttention,
}


def create_attention(name: str, channels: int, **kwargs) -> Attention:
    """Build the attention layer registered as ``name`` (e.g. ``"cbam"``) for ``channels`` input channels."""
    try:
        cls = ATTENTION[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown attention module {name!r}; registered: {', '.join(ATTENTION)}") from None
    return cls(channels, **kwargs)


__all__ = ["ATTENTION", "Attention", "create_attention", *(cls.__name__ for cls in ATTENTION.values())]
