"""Build baseline and attention-variant detectors by name, and move baseline weights into them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import ultralytics_adapter as adapter
from .variants import VariantSpec, inserted_indices, parse_name, to_yaml, variant_cfg


class TransferError(ValueError):
    """A checkpoint whose tensors do not all fit the variant (other architecture or scale)."""


def model_cfg(name: str | VariantSpec, nc: int | None = None, args: list | None = None) -> dict:
    """The Ultralytics model dict for a model name like ``yolo11s-cbam`` (see :mod:`detector.variants`)."""
    spec = parse_name(name) if isinstance(name, str) else name
    return variant_cfg(spec, adapter.baseline_cfg(spec.family), nc=nc, args=args)


def build_model(name: str | VariantSpec, nc: int | None = None, args: list | None = None, verbose: bool = False):
    """Build a baseline or variant detector with freshly initialised weights (attention layers are identities)."""
    spec = parse_name(name) if isinstance(name, str) else name
    cfg = model_cfg(spec, nc=nc, args=args)
    try:
        return adapter.build_model(cfg, verbose=verbose)
    except ValueError as e:  # e.g. heads that do not divide a layer's channels
        raise ValueError(f"cannot build {spec.name}: {e}") from e


def write_yaml(name: str, path: str | Path | None = None, nc: int | None = None, args: list | None = None) -> Path:
    """Write the variant's Ultralytics YAML (default: ``<name>.yaml`` in the working directory)."""
    spec = parse_name(name)
    path = Path(path or f"{spec.name}.yaml")
    partial = path.with_name(f".{path.name}.{os.getpid()}")  # parallel compare runs may write the same file
    title = f"{spec.name}: Ultralytics {spec.family} + attention"
    partial.write_text(to_yaml(model_cfg(spec, nc=nc, args=args), title))
    partial.replace(path)
    return path


def load_model(ref: str | Path):
    """A detector from a model name (``yolo11s-cbam``), a model YAML or a checkpoint (``.pt``)."""
    suffix = Path(str(ref)).suffix
    if suffix == ".pt":
        return adapter.load_checkpoint(ref)[0]
    if suffix in (".yaml", ".yml"):
        return adapter.yolo(ref).model
    return build_model(ref)


def baseline_of(model) -> str:
    """Name of a detector's baseline, e.g. ``yolo11s`` for a yolo11s-cbam model."""
    cfg = adapter.model_dict(model)
    family = cfg.get("family") or parse_name(Path(cfg.get("yaml_file", "")).stem.split("-")[0]).family
    return f"{family}{cfg.get('scale') or 'n'}"


@dataclass
class Transfer:
    """How many baseline tensors went where."""

    transferred: int
    total: int
    attention_layers: list[int]

    def __str__(self) -> str:
        return (f"transferred {self.transferred}/{self.total} baseline tensors; "
                f"new attention layers {self.attention_layers}")


def _rows(cfg: dict) -> list[tuple]:
    return [(r.sources if isinstance(r.sources, int) else tuple(r.sources), r.repeats, r.module)
            for r in adapter.model_rows(cfg)]


def transfer_weights(baseline: nn.Module, variant: nn.Module) -> Transfer:
    """Copy every tensor of ``baseline`` into ``variant`` through the insertion's layer-index map.

    Raises :class:`TransferError` naming the first mismatch if the baseline is not the variant's baseline
    (other family, scale or class count), so a partial load can never happen silently.
    """
    base_cfg, variant_cfg = adapter.model_dict(baseline), adapter.model_dict(variant)
    attention = inserted_indices(variant_cfg)
    kept = [i for i in range(len(adapter.layers(variant))) if i not in attention]  # variant index of baseline layers
    base_rows, variant_rows = _rows(base_cfg), [r for i, r in enumerate(_rows(variant_cfg)) if i not in attention]
    if attention and inserted_indices(base_cfg):
        raise TransferError("the checkpoint already holds attention layers: train or fine-tune it directly")
    for i, (a, b) in enumerate(zip(base_rows, variant_rows, strict=False)):  # lengths compared below
        if a[1:] != b[1:]:
            raise TransferError(f"layer {i}: checkpoint has {a[2]} x{a[1]}, the variant's baseline {b[2]} x{b[1]}")
    if len(base_rows) != len(variant_rows):
        raise TransferError(f"checkpoint has {len(base_rows)} layers, the variant's baseline {len(variant_rows)}")
    source, target = baseline.state_dict(), variant.state_dict()
    renamed = {}
    for key, tensor in source.items():
        new_key = adapter.state_dict_key_at(key, kept[adapter.state_dict_layer(key)])
        if new_key not in target:
            raise TransferError(f"checkpoint tensor {key} has no counterpart {new_key} in the variant")
        if target[new_key].shape != tensor.shape:
            raise TransferError(
                f"checkpoint tensor {key} has shape {tuple(tensor.shape)}, the variant's {new_key} "
                f"{tuple(target[new_key].shape)}: the checkpoint is another scale or class count"
            )
        renamed[new_key] = tensor
    untouched = [k for k in target if k not in renamed and adapter.state_dict_layer(k) not in attention]
    if untouched:
        raise TransferError(f"variant tensor {untouched[0]} gets nothing from the checkpoint")
    variant.load_state_dict(renamed, strict=False)
    return Transfer(len(renamed), len(source), attention)


def variant_from_checkpoint(name: str, checkpoint: str | Path, verbose: bool = True) -> tuple[nn.Module, Transfer]:
    """Build variant ``name`` with the class count of a baseline checkpoint and load all of its weights."""
    baseline, _ = adapter.load_checkpoint(checkpoint)
    spec = parse_name(name)
    scale = adapter.model_dict(baseline).get("scale")
    if scale and scale != spec.scale:
        raise TransferError(f"{checkpoint} is scale {scale!r} but {spec.name} is scale {spec.scale!r}")
    variant = build_model(spec, nc=adapter.model_dict(baseline)["nc"])
    report = transfer_weights(baseline, variant)
    adapter.set_class_names(variant, adapter.class_names(baseline))
    if verbose:
        print(f"{spec.name} <- {checkpoint}: {report}")
    return variant, report


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between two detectors' eval-mode outputs on ``x``."""
    ya, yb = a.eval()(x), b.eval()(x)
    ya, yb = (ya[0] if isinstance(ya, (tuple, list)) else ya), (yb[0] if isinstance(yb, (tuple, list)) else yb)
    return float((ya - yb).abs().max())
