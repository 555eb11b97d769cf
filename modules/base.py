"""The common shape of every attention layer: channels first, shape in == shape out, identity at initialisation."""

from __future__ import annotations

import torch
from torch import nn


def check_positive_int(owner: str, name: str, value: object) -> int:
    """Return ``value`` if it is a positive int (bools excluded), else raise a ValueError naming ``owner.name``.

    Examples:
        >>> check_positive_int("SE", "reduction", 16)
        16
        >>> check_positive_int("SE", "reduction", 0)
        Traceback (most recent call last):
        ValueError: SE: reduction must be a positive int, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def reduced_channels(channels: int, reduction: int | None = None, *, rd_ratio: float | None = None,
                     min_channels: int = 1) -> int:
    """Width of a bottleneck over ``channels``: ``channels // reduction`` (an integer reduction, as in SE and CBAM) or
    ``round(channels * rd_ratio)`` (a ratio, as timm's ``rd_ratio``), whichever is given, and at least
    ``min_channels``. Each mechanism keeps the rounding and floor of its paper's code, so its checkpoints load.

    Examples:
        >>> reduced_channels(64, 16), reduced_channels(64, 16, min_channels=8), reduced_channels(65, rd_ratio=0.5)
        (4, 8, 32)
    """
    if (reduction is None) == (rd_ratio is None):
        raise ValueError("reduced_channels: give one of reduction and rd_ratio")
    width = channels // reduction if reduction is not None else round(channels * rd_ratio)
    return max(width, min_channels)


def check_heads(owner: str, channels: int, num_heads: int | None) -> int:
    """Attention heads for ``channels``: ``num_heads``, or ``channels // 32`` (at least 1) when None; a ValueError
    listing the valid counts when ``num_heads`` does not divide ``channels``.

    Examples:
        >>> check_heads("MHSA", 256, None), check_heads("MHSA", 16, None), check_heads("MHSA", 256, 4)
        (8, 1, 4)
    """
    if num_heads is None:
        return max(channels // 32, 1)
    check_positive_int(owner, "num_heads", num_heads)
    if channels % num_heads:
        valid = [h for h in range(1, channels + 1) if channels % h == 0]
        raise ValueError(f"{owner}: num_heads={num_heads} does not divide channels={channels}; valid: {valid}")
    return num_heads


class Attention(nn.Module):
    """Base class: ``y = x + gamma * (A(x) - x)`` with a learnable scalar ``gamma`` that starts at 0.

    At initialisation the layer returns its input exactly, so inserting it into a trained network changes nothing
    until training moves ``gamma``. Subclasses implement :meth:`attend` (``A``); ``gate=False`` gives ``y = A(x)``.

    Attributes:
        default_placement (str): Where ``yolo11n-<name>`` puts the layer (see :mod:`detector.variants`).
        channels (int): Input (and output) channels.
        gamma (nn.Parameter | None): The gate, one scalar starting at 0; None with ``gate=False``.

    Examples:
        >>> from modules import SE
        >>> layer = SE(64)
        >>> x = torch.randn(1, 64, 8, 8)
        >>> torch.equal(layer(x), x), float(layer.gamma.detach())
        (True, 0.0)
        >>> SE(64, gate=False).gamma is None
        True
    """

    default_placement = "neck"  # where `yolo11n-<name>` puts the layer (see detector.variants)

    def __init__(self, channels: int, gate: bool = True) -> None:
        super().__init__()
        self.channels = check_positive_int(type(self).__name__, "channels", channels)
        self.gamma = nn.Parameter(torch.zeros(1)) if gate else None

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention mechanism itself, ``A(x)``, same shape as ``x``."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError unless ``x`` is an (N, channels, H, W) tensor (not checked while tracing)."""
        # While tracing (ONNX export) sizes are tensors and comparing them would bake this check into the graph.
        if not torch.jit.is_tracing() and (x.ndim != 4 or x.shape[1] != self.channels):
            raise ValueError(
                f"{type(self).__name__} built for {self.channels} channels expects (N, {self.channels}, H, W) input, "
                f"got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        a = self.attend(x)
        return a if self.gamma is None else x + self.gamma * (a - x)

    def extra_repr(self) -> str:
        return f"{self.channels}, gate={self.gamma is not None}"


class ScalingAttention(Attention):
    """Attention that rescales its input: ``A(x) = x * w(x)``, with ``w`` broadcastable to ``x``.

    The gate opens the *pattern* of ``w``, not its level: ``y = x * (1 + gamma * (w / mean(w) - 1))``, the mean taken
    per sample over ``w``'s own axes. A sigmoid ``w`` sits near 0.5 at initialisation, so with ``w - 1`` the first
    thing an opening gate buys is a global gain of the features (which the next convolution and BatchNorm can
    provide anyway), and gamma's gradient would measure that gain rather than the re-weighting. Normalised, gamma's
    gradient measures how useful the channel or spatial re-weighting is, and at gamma = 1 the layer applies the
    paper's ``x * w`` up to that per-sample scale. Still exactly ``x`` while gamma is 0, in two passes over the map.
    ``gate=False`` gives the paper's ``x * w``. Subclasses implement :meth:`weights`.

    Examples:
        >>> from modules import SE
        >>> layer = SE(64)
        >>> x = torch.randn(1, 64, 8, 8)
        >>> _ = layer.gamma.data.fill_(1.0)
        >>> w = layer.weights(x)
        >>> torch.allclose(layer(x), x * w / w.mean((1, 2, 3), keepdim=True))  # gamma = 1: the normalised pattern
        True
    """

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The scaling ``w(x)``, broadcastable to ``x``."""
        raise NotImplementedError

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        w = self.weights(x)
        if self.gamma is None:
            return x * w
        pattern = w / w.mean(tuple(range(1, w.ndim)), keepdim=True).clamp_min(1e-6)
        return x * (1 + self.gamma * (pattern - 1))
