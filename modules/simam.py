"""SimAM, a simple parameter-free attention module (Yang et al., ICML 2021)."""

from __future__ import annotations

import torch

from .base import ScalingAttention


class SimAM(ScalingAttention):
    """SimAM (Yang et al., "SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks",
    ICML 2021).

    Full 3-D (channel and spatial) weights without parameters, from neuroscience's spatial suppression: the minimal
    energy of each neuron, ``e = 4 (var + lambda) / ((x - mean)^2 + 2 var + 2 lambda)``, is lowest for neurons that
    stand out from the others in their channel, so the output is ``x * sigmoid(1 / e)`` with the per-channel mean and
    variance (over ``H * W - 1``) and ``lambda`` = 1e-4. A 1x1 map has no variance; every weight is then sigmoid(0.5).

    Attributes:
        lambda_ (float): The energy's regulariser ``lambda``.

    Examples:
        >>> layer = SimAM(64)
        >>> x = torch.randn(1, 64, 20, 20)
        >>> layer(x).shape, sum(p.numel() for p in layer.parameters())  # only the gate gamma
        (torch.Size([1, 64, 20, 20]), 1)
        >>> float(layer.weights(torch.ones(1, 64, 1, 1)).mean()) == float(torch.tensor(0.5).sigmoid())
        True
    """

    def __init__(self, channels: int, lambda_: float = 1e-4, gate: bool = True) -> None:
        super().__init__(channels, gate)
        if not isinstance(lambda_, (int, float)) or isinstance(lambda_, bool) or not lambda_ > 0:
            raise ValueError(f"SimAM: lambda_ must be a positive number, got {lambda_!r}")
        self.lambda_ = float(lambda_)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        positions = x.shape[2] * x.shape[3]
        n = positions - 1
        n = n + (n == 0)  # max(n, 1) that also works on the size tensors seen while tracing for ONNX
        d = (x - x.mean((2, 3), keepdim=True)).pow(2)
        variance = d.mean((2, 3), keepdim=True) * (positions / n)  # sum / n, without a half-precision overflow
        inverse_energy = d / (4 * (variance + self.lambda_)) + 0.5
        return inverse_energy.sigmoid()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lambda_={self.lambda_}"
