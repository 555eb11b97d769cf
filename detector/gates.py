"""How open each attention gate is: |γ| per attention layer of a detector.

Every attention layer computes ``y = x + γ (A(x) − x)`` with γ starting at 0 (see :class:`modules.base.Attention`),
so |γ| after training says how much training used the layer: a gate still near 0 left the baseline's function in
place. ``python -m detector compare`` reports this table per variant; ``explain --gates`` prints it for a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from modules import ATTENTION
from modules.base import Attention

# |γ| below this: the layer changes its input by less than 1% of |A(x) − x| — "gate closed" in reports.
CLOSED = 0.01
MECHANISMS = {cls: name for name, cls in ATTENTION.items()}


@dataclass(frozen=True)
class Gate:
    """One attention layer: its index in the model, mechanism, feature-map level (P3/P4/P5) and γ."""

    layer: int
    mechanism: str
    level: str
    gamma: float | None  # None: an ungated layer (gate=False), always fully on

    @property
    def closed(self) -> bool:
        return self.gamma is not None and abs(self.gamma) < CLOSED

    def to_dict(self) -> dict:
        return asdict(self)


def gate_table(model, imgsz: int = 64) -> list[Gate]:
    """The gates of ``model``'s attention layers, in layer order; the level comes from one forward pass at ``imgsz``."""
    import torch

    from . import ultralytics_adapter as adapter

    layers = adapter.layers(model)
    attention = [(i, layer) for i, layer in enumerate(layers) if isinstance(layer, Attention)]
    if not attention:
        return []
    sizes: dict[int, int] = {}
    hooks = [layer.register_forward_hook(lambda m, x, y, i=i: sizes.__setitem__(i, y.shape[-1]))
             for i, layer in attention]
    try:
        was_training = model.training
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, imgsz, imgsz, device=next(model.parameters()).device))
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return [
        Gate(i, MECHANISMS.get(type(layer), type(layer).__name__), f"P{round(math.log2(imgsz / sizes[i]))}",
             None if layer.gamma is None else float(layer.gamma.detach()))
        for i, layer in attention
    ]


def format_gate_table(gates: list[Gate]) -> str:
    """``gate_table``'s rows as a text table of |γ| per layer, closed gates marked."""
    if not gates:
        return "no attention layers"
    lines = [f"{'layer':>5}  {'mechanism':<10}{'level':<6}{'|γ|':>8}"]
    for gate in gates:
        size = "ungated" if gate.gamma is None else f"{abs(gate.gamma):.4f}"
        lines.append(f"{gate.layer:>5}  {gate.mechanism:<10}{gate.level:<6}{size:>8}" + ("  gate closed" * gate.closed))
    return "\n".join(lines)
