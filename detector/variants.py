"""Attention variants of Ultralytics YOLO architectures, as edits of the baseline model YAML.

A variant inserts one attention layer for each chosen baseline layer, which replaces that layer's output for every
later consumer: ``from`` indices are rewritten, and the baseline-to-variant index map lets baseline weights load into
the variant unchanged. A one-input layer sits right after its layer. A two-input layer (``modules.TWO_INPUT``:
``cross``) reads a fine map and a coarse P5 context, ``from: [fine, context]``, and sits after whichever of the two
comes later: after the fine map when the context is earlier (``[-1, k]``), else after the context, so that only the
consumers after it (e.g. the Detect head) see the attended fine map.

Model names (what users type)::

    <family><scale>[-<attention>[-<placement>]]

    family     yolo11 | yolo12 | yolo26
    scale      n | s | m | l | x
    attention  a name registered in modules.ATTENTION (se, eca, cbam, coordatt, simam, ema, mhsa, area, cross, sparse)
    placement  neck      after each of the layers that feed Detect (P3, P4, P5 outputs of the neck)
               backbone  after the backbone's P3, P4, P5 stage outputs (the layers the neck takes from)
               both      neck and backbone
               p3 | p4 | p5  after the neck's P3, P4 or P5 output only (p5: where global attention is cheapest)
               I[-J...]  after the given baseline layer indices, e.g. yolo11n-se-4-6
               omitted   the attention's default placement (``default_placement`` of its class)

    two-input layers (cross): the fine maps of the placement query a P5 context:
               neck, p3, p4  the neck's P3 and/or P4 outputs query the neck's P5 output (inserted before Detect)
               backbone      the backbone's P3 and P4 outputs query its P5 output (SPPF/C2PSA; the neck sees them)
               both          neck and backbone
               I[-J...]      the given layers query the backbone's P5 output
               (p5 is refused: the P5 map has no coarser context)

Examples: ``yolo11n`` (baseline), ``yolo11n-cbam``, ``yolo11s-eca-backbone``, ``yolo11m-mhsa-p5``, ``yolo11n-se-16-19``,
``yolo11n-cross`` (= ``yolo11n-cross-neck``), ``yolo11n-cross-p3``, ``yolo11n-cross-16-19``.

This module only edits model dictionaries, through :mod:`detector.ultralytics_adapter`'s view of their rows
(:class:`~detector.ultralytics_adapter.Row`); building models from them is the adapter's job too.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass

from modules import ATTENTION, TWO_INPUT

from .ultralytics_adapter import CHANNELS_ARG, Row, backbone_length, model_rows, with_rows, yaml_sections

FAMILIES = ("yolo11", "yolo12", "yolo26")
SCALES = "nsmlx"
PLACEMENTS = ("neck", "backbone", "both", "p3", "p4", "p5")

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


@dataclass(frozen=True, order=True)
class Insertion:
    """One new layer, replacing baseline layer ``target``'s output for every consumer after it. A two-input layer
    also reads baseline layer ``context`` and so sits after both."""

    target: int
    context: int | None = None

    @property
    def after(self) -> int:
        """The baseline layer the new layer follows."""
        return self.target if self.context is None else max(self.target, self.context)


def detect_index(cfg: dict) -> int:
    """Index of the final (Detect-like) layer: the last layer of the head."""
    return len(model_rows(cfg)) - 1


def feature_layers(cfg: dict) -> tuple[list[int], list[int]]:
    """The neck's outputs (the Detect head's inputs, P3..P5) and the backbone layers the neck takes from, sorted."""
    rows, n_backbone = model_rows(cfg), backbone_length(cfg)
    neck = sorted(rows[-1].inputs)
    backbone = sorted({f for row in rows[n_backbone:] for f in row.inputs if 0 <= f < n_backbone})
    return neck, backbone


def placement_indices(cfg: dict, placement: str | tuple[int, ...]) -> list[int]:
    """Baseline layer indices that a placement attends (inserts one-input attention after), sorted."""
    neck, backbone = feature_layers(cfg)
    named = {"neck": neck, "backbone": backbone, "both": sorted(set(neck + backbone)),
             "p3": neck[:1], "p4": neck[1:2], "p5": neck[-1:]}
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


def placement_insertions(cfg: dict, attention: str, placement: str | tuple[int, ...]) -> list[Insertion]:
    """The layers a placement of ``attention`` inserts (see the module docstring for two-input layers), sorted."""
    targets = placement_indices(cfg, placement)
    if attention not in TWO_INPUT:
        return [Insertion(i) for i in targets]
    neck, backbone = feature_layers(cfg)
    if isinstance(placement, str):  # each fine map queries the P5 output of its own part of the network
        insertions = [Insertion(i, neck[-1] if i in neck else backbone[-1]) for i in targets
                      if i not in (neck[-1], backbone[-1])]
    else:
        insertions = [Insertion(i, backbone[-1]) for i in targets]
    if not insertions:
        raise VariantError(f"{attention} needs a finer map than its P5 context, and placement {placement!r} has "
                           "none: use neck, p3, p4, backbone, both or layer indices")
    layers = model_rows(cfg)
    for insertion in insertions:
        after, target = insertion.after, insertion.target
        if target == insertion.context:
            raise VariantError(f"layer {target} is the P5 context of {attention} itself: choose a finer layer")
        if not any(target in row.inputs for row in layers[after + 1 :]):
            raise VariantError(
                f"{attention} on layer {target} must follow its context, layer {insertion.context}, and nothing "
                f"after that reads layer {target}: choose a layer that is used after it (e.g. neck = {neck[:-1]})"
            )
    return insertions


def index_map(n_layers: int, insert_after: list[int]) -> dict[int, int]:
    """Baseline layer index -> variant layer index when one layer is inserted after each of ``insert_after`` (an
    index listed twice gets two layers after it)."""
    inserted = Counter(insert_after)
    mapping, shift = {}, 0
    for i in range(n_layers):
        mapping[i] = i + shift
        shift += inserted[i]
    return mapping


def insert_attention(cfg: dict, attention: str, insertions: list[int | Insertion], args: list | None = None) -> dict:
    """Return a copy of the Ultralytics model dict ``cfg`` with an ``attention`` layer for each insertion (a baseline
    layer index for one-input layers, which follow it).

    ``args`` are extra positional arguments for the attention class after its channels (e.g. ``[8]`` heads).
    """
    cls = ATTENTION[attention]
    layers = model_rows(cfg)
    plan = sorted({i if isinstance(i, Insertion) else Insertion(i) for i in insertions}, key=lambda s: (s.after, s))
    if any((s.context is None) == (attention in TWO_INPUT) for s in plan):
        raise VariantError(f"{attention} takes {'two inputs' if attention in TWO_INPUT else 'one input'}: "
                           f"insertions {plan} need {'a' if attention in TWO_INPUT else 'no'} context layer")
    new_index = index_map(len(layers), [s.after for s in plan])
    replaced, slots = {}, Counter()  # baseline target -> variant index of its new layer; new layers after each layer
    for s in plan:
        slots[s.after] += 1
        replaced[s.target] = new_index[s.after] + slots[s.after]

    def output_of(source: int, row: int) -> int:  # baseline layer ``source``'s output as variant layer ``row`` sees it
        index = replaced[source] if replaced.get(source, row) < row else new_index.get(source, -1)  # -1: the image
        return -1 if index == row - 1 else index

    rows: list[Row] = []
    n_backbone_out = 0
    for i, row in enumerate(copy.deepcopy(layers)):
        f = [output_of(i + x if x < 0 else x, len(rows)) for x in row.inputs]
        rows.append(Row(f if isinstance(row.sources, list) else f[0], row.repeats, row.module, row.args))
        for s in (s for s in plan if s.after == i):
            if s.context is None:
                rows.append(Row(-1, 1, cls.__name__, [CHANNELS_ARG, *(args or [])]))
            else:
                rows.append(Row([output_of(s.target, len(rows)), output_of(s.context, len(rows))], 1, cls.__name__,
                                list(args or [])))
        if i == backbone_length(cfg) - 1:
            n_backbone_out = len(rows)
    return with_rows(cfg, rows, n_backbone_out)


def variant_cfg(spec: VariantSpec, baseline: dict, nc: int | None = None, args: list | None = None) -> dict:
    """The model dict for ``spec`` given its family's baseline dict (as Ultralytics loads it from its YAML)."""
    cfg = copy.deepcopy(baseline)
    if spec.attention is not None:
        placement = spec.placement or ATTENTION[spec.attention].default_placement
        cfg = insert_attention(cfg, spec.attention, placement_insertions(baseline, spec.attention, placement), args)
    cfg["scale"], cfg["family"], cfg["yaml_file"] = spec.scale, spec.family, f"{spec.name}.yaml"
    if nc is not None:
        cfg["nc"] = nc
    return cfg


def inserted_indices(cfg: dict) -> list[int]:
    """Variant layer indices that hold registered attention layers."""
    names = {cls.__name__ for cls in ATTENTION.values()}
    return [i for i, row in enumerate(model_rows(cfg)) if row.module in names]


def to_yaml(cfg: dict, title: str) -> str:
    """Ultralytics-style YAML text: parameters first, one flow-style row per layer."""
    import yaml

    params = {k: v for k, v in cfg.items() if k not in ("backbone", "head", "scale", "yaml_file", "channels")}
    lines = [
        f"# {title}",
        "# Built by `python -m detector build`; load with detector.load_model or, after",
        "# `import detector`, ultralytics.YOLO(this_file) (the scale comes from the file name, as in Ultralytics).",
        "",
    ]
    lines.append(yaml.safe_dump(params, sort_keys=False, default_flow_style=None).rstrip())
    attention_rows = set(inserted_indices(cfg))
    index = 0
    for section, rows in yaml_sections(cfg):
        lines += ["", f"{section}:"]
        for row in rows:
            text = yaml.safe_dump(row.to_list(), default_flow_style=True, width=10_000).strip()
            lines.append(f"  - {text} # {index}{' attention' if index in attention_rows else ''}")
            index += 1
    return "\n".join(lines) + "\n"
