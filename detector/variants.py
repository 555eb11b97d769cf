"""Attention variants of Ultralytics YOLO architectures, as edits of the baseline model YAML.

A variant inserts one attention layer after each chosen baseline layer. Everything that consumed that layer's
output now consumes the attended output, every ``from`` index is rewritten, and the baseline-to-variant index map
lets baseline weights load into the variant unchanged.

Model names (what users type)::

    <family><scale>[-<attention>[-<placement>]]

    family     yolo11 | yolo12 | yolo26
    scale      n | s | m | l | x
    attention  a name registered in modules.ATTENTION (se, eca, cbam, coordatt, simam, ema, mhsa, area)
    placement  neck      after each of the layers that feed Detect (P3, P4, P5 outputs of the neck)
               backbone  after the backbone's P3, P4, P5 stage outputs (the layers the neck takes from)
               both      neck and backbone
               p5        after the neck's P5 output only (where global attention is cheapest)
               I[-J...]  after the given baseline layer indices, e.g. yolo11n-se-4-6
               omitted   the attention's default placement (``default_placement`` of its class)

Examples: ``yolo11n`` (baseline), ``yolo11n-cbam``, ``yolo11s-eca-backbone``, ``yolo11m-mhsa-p5``, ``yolo11n-se-16-19``.

This module only edits YAML dictionaries; building models from them is :mod:`detector.ultralytics_adapter`'s job.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from modules import ATTENTION

FAMILIES = ("yolo11", "yolo12", "yolo26")
SCALES = "nsmlx"
PLACEMENTS = ("neck", "backbone", "both", "p5")
# A YAML argument that Ultralytics' parse_model resolves to the previous layer's output channels at the model's
# scale (see ultralytics_adapter and tests/test_adapter_contract.py), so one variant YAML serves every scale.
CHANNELS_ARG = "c2"

_NAME = re.compile(
    rf"^(?P<family>{'|'.join(FAMILIES)})(?P<scale>[{SCALES}])"
    rf"(?:-(?P<attention>[a-z0-9_]+)(?:-(?P<placement>{'|'.join(PLACEMENTS)}|\d+(?:-\d+)*))?)?$"
)


class VariantError(ValueError):
    """A model name, placement or layer index that cannot be built."""


@dataclass(frozen=True)
class VariantSpec:
    """What to build: a baseline family and scale, and optionally an attention layer and where to insert it."""

    family: str
    scale: str
    attention: str | None = None
    placement: str | tuple[int, ...] | None = None  # None: the attention's default placement

    @property
    def baseline_name(self) -> str:
        return f"{self.family}{self.scale}"

    @property
    def name(self) -> str:
        if self.attention is None:
            return self.baseline_name
        if self.placement is None:
            return f"{self.baseline_name}-{self.attention}"
        where = self.placement if isinstance(self.placement, str) else "-".join(map(str, self.placement))
        return f"{self.baseline_name}-{self.attention}-{where}"


def parse_name(name: str) -> VariantSpec:
    """Parse ``yolo11s-eca-backbone`` and friends (see the module docstring for the grammar)."""
    stem = name.strip().lower().removesuffix(".yaml")
    match = _NAME.match(stem)
    if not match:
        raise VariantError(
            f"cannot parse model name {name!r}: expected <family><scale>[-<attention>[-<placement>]] with family in "
            f"{FAMILIES}, scale in {tuple(SCALES)}, attention in {tuple(ATTENTION)}, placement in {PLACEMENTS} or "
            "layer indices like 16-19 (e.g. yolo11n-cbam, yolo11s-eca-backbone, yolo11n-se-4-6)"
        )
    attention, placement = match["attention"], match["placement"]
    if attention is not None and attention not in ATTENTION:
        raise VariantError(f"unknown attention module {attention!r} in {name!r}; registered: {', '.join(ATTENTION)}")
    if placement is not None and placement[0].isdigit():
        placement = tuple(int(i) for i in placement.split("-"))
    return VariantSpec(match["family"], match["scale"], attention, placement)


def _layers(cfg: dict) -> list[list]:
    return cfg["backbone"] + cfg["head"]


def detect_index(cfg: dict) -> int:
    """Index of the final (Detect-like) layer: the last layer of the head."""
    return len(_layers(cfg)) - 1


def placement_indices(cfg: dict, placement: str | tuple[int, ...]) -> list[int]:
    """Baseline layer indices that a placement inserts attention after, sorted."""
    layers = _layers(cfg)
    head_inputs = layers[-1][0]
    neck = sorted(head_inputs if isinstance(head_inputs, list) else [head_inputs])
    n_backbone = len(cfg["backbone"])
    backbone = sorted(
        {f for row in cfg["head"] for f in (row[0] if isinstance(row[0], list) else [row[0]]) if 0 <= f < n_backbone}
    )
    named = {"neck": neck, "backbone": backbone, "both": sorted(set(neck + backbone)), "p5": neck[-1:]}
    if isinstance(placement, str):
        if placement not in named:
            raise VariantError(f"unknown placement {placement!r}; valid: {', '.join(PLACEMENTS)} or layer indices")
        return named[placement]
    indices = sorted(set(placement))
    last = detect_index(cfg) - 1
    bad = [i for i in indices if not 0 <= i <= last]
    if not indices or bad:
        raise VariantError(
            f"layer indices {bad or 'none given'} out of range: attention can follow baseline layers 0..{last} "
            f"(layer {last + 1} is the detection head); e.g. neck = {neck}, backbone = {backbone}"
        )
    return indices


def index_map(n_layers: int, insert_after: list[int]) -> dict[int, int]:
    """Baseline layer index -> variant layer index when one layer is inserted after each of ``insert_after``."""
    inserted = set(insert_after)
    mapping, shift = {}, 0
    for i in range(n_layers):
        mapping[i] = i + shift
        shift += i in inserted
    return mapping


def insert_attention(cfg: dict, attention: str, insert_after: list[int], args: list | None = None) -> dict:
    """Return a copy of the Ultralytics model dict ``cfg`` with ``attention`` inserted after each listed layer.

    ``args`` are extra positional arguments for the attention class after its channels (e.g. ``[8]`` heads).
    """
    cls = ATTENTION[attention]
    layers = _layers(cfg)
    inserted = set(insert_after)
    new_index = index_map(len(layers), insert_after)

    def output_of(i: int) -> int:  # variant index of baseline layer i's (possibly attended) output
        return new_index[i] + (i in inserted)

    def rewrite(f: int, i: int) -> int:
        source = i + f if f < 0 else f
        return -1 if source == i - 1 else output_of(source)

    out = copy.deepcopy(cfg)
    rows: list[list] = []
    n_backbone_out = 0
    for i, (f, n, module, module_args) in enumerate(copy.deepcopy(layers)):
        f = [rewrite(x, i) for x in f] if isinstance(f, list) else rewrite(f, i)
        rows.append([f, n, module, module_args])
        if i in inserted:
            rows.append([-1, 1, cls.__name__, [CHANNELS_ARG, *(args or [])]])
        if i == len(cfg["backbone"]) - 1:
            n_backbone_out = len(rows)
    out["backbone"], out["head"] = rows[:n_backbone_out], rows[n_backbone_out:]
    return out


def variant_cfg(spec: VariantSpec, baseline: dict, nc: int | None = None, args: list | None = None) -> dict:
    """The model dict for ``spec`` given its family's baseline dict (as Ultralytics loads it from its YAML)."""
    cfg = copy.deepcopy(baseline)
    if spec.attention is not None:
        placement = spec.placement or ATTENTION[spec.attention].default_placement
        cfg = insert_attention(cfg, spec.attention, placement_indices(baseline, placement), args)
    cfg["scale"], cfg["family"], cfg["yaml_file"] = spec.scale, spec.family, f"{spec.name}.yaml"
    if nc is not None:
        cfg["nc"] = nc
    return cfg


def inserted_indices(cfg: dict) -> list[int]:
    """Variant layer indices that hold registered attention layers."""
    names = {cls.__name__ for cls in ATTENTION.values()}
    return [i for i, row in enumerate(_layers(cfg)) if row[2] in names]


def to_yaml(cfg: dict, title: str) -> str:
    """Ultralytics-style YAML text: parameters first, one flow-style row per layer."""
    import yaml

    params = {k: v for k, v in cfg.items() if k not in ("backbone", "head", "scale", "yaml_file", "channels")}
    lines = [f"# {title}", "# Built by `python -m detector build`; load with detector.load_model or, after", "# `import detector`, ultralytics.YOLO(this_file) (the scale comes from the file name, as in Ultralytics).", ""]
    lines.append(yaml.safe_dump(params, sort_keys=False, default_flow_style=None).rstrip())
    attention_rows = set(inserted_indices(cfg))
    index = 0
    for section in ("backbone", "head"):
        lines += ["", f"{section}:"]
        for row in cfg[section]:
            text = yaml.safe_dump(row, default_flow_style=True, width=10_000).strip()
            lines.append(f"  - {text} # {index}{' attention' if index in attention_rows else ''}")
            index += 1
    return "\n".join(lines) + "\n"
