"""The common shape of every attention layer: channels first, shape in == shape out, identity at initialisation."""

from __future__ import annotations

import torch
from torch import nn


def check_positive_int(owner: str, name: str, value: object) -> int:
    """Return ``value`` if it is a positive int (bools excluded), else raise a ValueError naming ``owner.name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def check_heads(owner: str, channels: int, num_heads: int | None) -> int:
    """Attention heads for ``channels``: ``num_heads``, or ``channels // 32`` (at least 1) when None."""
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

    The gate folds into the weights, ``x + gamma * (x * w - x) = x * (1 + gamma * (w - 1))``: the same function with
    two fewer passes over the feature map, and still exactly ``x`` while gamma is 0. Subclasses implement
    :meth:`weights`.
    """

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The scaling ``w(x)``, broadcastable to ``x``."""
        raise NotImplementedError

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        w = self.weights(x)
        return x * (w if self.gamma is None else 1 + self.gamma * (w - 1))
