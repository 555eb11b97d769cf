"""``python -m detector info MODEL``: parameters, GFLOPs, and what each inserted attention layer adds."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class LayerCost:
    index: int
    module: str
    channels: int
    feature_map: tuple[int, int]
    params: int
    gflops: float


@dataclass
class ModelCost:
    name: str
    imgsz: tuple[int, int]
    params: int
    gflops: float
    attention: list[LayerCost]
    baseline_params: int | None = None
    baseline_gflops: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def measure(model, imgsz: tuple[int, int]):
    """Parameters, total GFLOPs, per-layer GFLOPs and per-layer output sizes of a detector at ``imgsz`` (h, w).

    FLOPs come from ``torch.utils.flop_counter`` (convolutions, matmuls and attention kernels; 2 per MAC).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from . import ultralytics_adapter as adapter

    model = model.eval()
    sizes = {}
    hooks = [
        layer.register_forward_hook(lambda m, i, o, k=k: sizes.__setitem__(k, tuple(o.shape[-2:])))
        for k, layer in enumerate(adapter.layers(model)[:-1])
    ]
    counter = FlopCounterMode(display=False, depth=2)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *imgsz))
    for hook in hooks:
        hook.remove()
    prefix = f"{type(model).__name__}."  # the counter names submodules from the model's class name
    per_layer = {
        layer: sum(ops.values()) / 1e9
        for key, ops in counter.get_flop_counts().items()
        if key.startswith(prefix) and (layer := adapter.module_layer(key[len(prefix) :])) is not None
    }
    params = sum(p.numel() for p in model.parameters())
    return params, counter.get_total_flops() / 1e9, per_layer, sizes


def model_cost(model_ref: str, imgsz: tuple[int, int] = (640, 640)) -> ModelCost:
    """Cost of a model given by name (``yolo11n-cbam``), YAML or checkpoint, next to its baseline's."""
    from . import ultralytics_adapter as adapter
    from .models import baseline_of, build_model, load_model
    from .variants import inserted_indices

    model = load_model(model_ref)
    params, gflops, per_layer, sizes = measure(model, imgsz)
    layers = adapter.layers(model)
    attention = [
        LayerCost(
            index=i,
            module=type(layers[i]).__name__,
            channels=layers[i].channels,
            feature_map=sizes[i],
            params=sum(p.numel() for p in layers[i].parameters()),
            gflops=per_layer.get(i, 0.0),
        )
        for i in inserted_indices(adapter.model_dict(model))
    ]
    cost = ModelCost(Path(str(model_ref)).stem, imgsz, params, gflops, attention)
    if attention:
        baseline = build_model(baseline_of(model), nc=adapter.model_dict(model)["nc"])
        cost.baseline_params, cost.baseline_gflops, _, _ = measure(baseline, imgsz)
    return cost


def format_cost(cost: ModelCost) -> str:
    h, w = cost.imgsz
    lines = [f"{cost.name} at {h}x{w}: {cost.params:,} parameters, {cost.gflops:.2f} GFLOPs"]
    if cost.attention:
        dp, df = cost.params - cost.baseline_params, cost.gflops - cost.baseline_gflops
        lines.append(
            f"baseline: {cost.baseline_params:,} parameters, {cost.baseline_gflops:.2f} GFLOPs; attention adds "
            f"{dp:+,} parameters ({100 * dp / cost.baseline_params:+.2f}%), {df:+.3f} GFLOPs "
            f"({100 * df / cost.baseline_gflops:+.2f}%)"
        )
        lines.append(f"{'layer':>5}  {'module':<14}{'channels':>8}  {'feature map':>11}  {'params':>9}  {'MFLOPs':>8}")
        for layer in cost.attention:
            fm = f"{layer.feature_map[0]}x{layer.feature_map[1]}"
            lines.append(
                f"{layer.index:>5}  {layer.module:<14}{layer.channels:>8}  {fm:>11}  {layer.params:>9,}  "
                f"{1e3 * layer.gflops:>8.1f}"
            )
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name (yolo11n, yolo11s-cbam, yolo11n-eca-backbone...), variant YAML or "
                                      "checkpoint .pt")
    parser.add_argument("--imgsz", type=int, nargs="+", default=[640], metavar="SIZE",
                        help="input size: one value for square, or H W (default: 640)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    import json

    imgsz = tuple(args.imgsz * 2 if len(args.imgsz) == 1 else args.imgsz[:2])
    cost = model_cost(args.model, imgsz)
    print(json.dumps(cost.to_dict(), indent=2) if args.json else format_cost(cost))
    return 0
