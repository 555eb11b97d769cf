"""``python -m detector explain MODEL IMAGE... --out DIR``: what each attention layer looks at, and how open it is.

For every image one figure: the detections, an EigenCAM of the neck outputs (pytorch-grad-cam), and for every
attention layer two maps over the image, read from forward hooks on the layers (``modules/`` is left as it is):

* **applies** — the mechanism's own map at full strength, computed by the hook from the layer's input, so a layer
  whose gate γ is still 0 shows what it *would* apply: a scaling mechanism's weights ``w / mean(w)`` averaged over
  channels (CBAM's spatial gate, coordinate attention's ``a_h · a_w``, SimAM's weights); for self-attention (MHSA,
  area) the attention weights, averaged over heads, that the query positions inside the detected boxes give each
  position; for any other mechanism (EMA) its gain along the input, ``A(x)·x / ‖x‖²`` per position. Channel attention
  (SE, ECA) has no spatial map: its channel weights ``w / mean(w)`` are plotted instead.
* **changes** — what the layer actually does to its input, γ included: ``‖y − x‖ / ‖x‖`` over channels per position.
  Exactly 0 at a variant's identity start.

``explain MODEL --gates`` prints |γ| per attention layer (:func:`detector.gates.gate_table`) instead.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from engine.errors import ImageError
from engine.images import inspect_image, read_image
from engine.preprocess import Letterbox, letterbox, to_input_tensor
from modules import MHSA, AreaAttention
from modules.base import Attention, ScalingAttention

from . import ultralytics_adapter as adapter
from .cli import UsageError
from .gates import Gate, format_gate_table, gate_table
from .predict import resolve_sources

# Self-attention whose scaled_dot_product_attention sequences are the map's positions in row-major order (see
# attention_received); any other mechanism gets the gain map.
SELF_ATTENTION = (MHSA, AreaAttention)
PANEL_INCHES = 3.0  # width of one panel in the figure
DPI = 110  # a panel's image is then about as many pixels wide as a 320 network input
HEATMAP = "turbo"
EPS = 1e-12


@dataclass
class LayerMaps:
    """What one attention layer does to one image: (h, w) maps over the positions of its feature map."""

    gate: Gate
    change: np.ndarray  # ‖y − x‖ / ‖x‖ over channels, y the layer's actual (γ-gated) output
    applied: np.ndarray | None  # the mechanism's own map at full strength; None: channel attention (no spatial map)
    applied_label: str  # what `applied` shows
    channel_weights: np.ndarray | None = None  # channel attention: w / mean(w) per channel, what it would apply


@dataclass
class _Record:
    """What a hook saw in one forward call of one layer, before the detections are known."""

    change: torch.Tensor
    applied: torch.Tensor | None = None
    applied_label: str = ""
    channel_weights: torch.Tensor | None = None
    attention_calls: list[tuple] = field(default_factory=list)  # (q, k, mask) of each scaled_dot_product_attention


class _AttentionCalls(TorchFunctionMode):
    """While active, records the queries, keys and mask of every ``scaled_dot_product_attention`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, _, *rest = args
            self.calls.append((q, k, kwargs.get("attn_mask", rest[0] if rest else None)))
        return func(*args, **kwargs)


def attention_received(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None,
                       queries: torch.Tensor) -> torch.Tensor:
    """Attention weight each position receives, averaged over heads and over the ``queries`` positions that attend
    to it.

    Args:
        q, k: (B, heads, L, dim), as handed to ``scaled_dot_product_attention`` for one image. The B sequences of L
            tokens, concatenated, are the feature map's positions in row-major order, the last sequence padded —
            one sequence for global attention (MHSA), one per horizontal strip for area attention.
        mask: None, or a boolean (B, 1, 1, L) mask of the keys that may be attended to.
        queries: (h, w) boolean map of the query positions to average over.

    Returns:
        (h, w) map that sums to 1 over each sequence holding a chosen query (a query's weights sum to 1), 0 elsewhere.
    """
    sequences, _, length, dim = q.shape
    h, w = queries.shape
    chosen = F.pad(queries.flatten(), (0, sequences * length - h * w)).view(sequences, length)
    received = torch.zeros(sequences, k.shape[2])
    for i in range(sequences):
        logits = q[i][:, chosen[i]] @ k[i].transpose(-1, -2) / math.sqrt(dim)  # (heads, chosen queries, L)
        if mask is not None:
            logits = logits.masked_fill(~mask[i], float("-inf"))
        received[i] = logits.softmax(-1).mean(0).sum(0) / chosen[i].sum().clamp_min(1)
    return received.flatten()[: h * w].view(h, w)


def query_cells(boxes: torch.Tensor, input_size: tuple[int, int], map_size: tuple[int, int]) -> torch.Tensor:
    """(h, w) boolean map of the feature-map cells inside ``boxes`` (xyxy input pixels): the cells whose centre lies
    in a box, and the cell of each box's centre; every cell when there are no boxes."""
    if not len(boxes):
        return torch.ones(map_size, dtype=torch.bool)
    cell_h, cell_w = input_size[0] / map_size[0], input_size[1] / map_size[1]
    rows = (torch.arange(map_size[0]) + 0.5) * cell_h
    columns = (torch.arange(map_size[1]) + 0.5) * cell_w
    x1, y1, x2, y2 = boxes.T[:, :, None, None]
    cells = ((rows[:, None] >= y1) & (rows[:, None] <= y2) & (columns >= x1) & (columns <= x2)).any(0)
    centre_rows = ((y1 + y2).flatten() / 2 / cell_h).long().clamp(0, map_size[0] - 1)
    centre_columns = ((x1 + x2).flatten() / 2 / cell_w).long().clamp(0, map_size[1] - 1)
    cells[centre_rows, centre_columns] = True
    return cells


class AttentionHooks:
    """Forward hooks on a detector's attention layers that record what each does to its input, per position.

    Use as a context manager around one forward pass of a single image, then call :meth:`maps` with the detections
    of that pass (self-attention maps are averaged over the queries inside the boxes).

    Examples:
        >>> with AttentionHooks(model, gate_table(model)) as hooks:
        ...     boxes = adapter.predict_boxes(model, x)[0]
        >>> [m.change.shape for m in hooks.maps(boxes[:, :4], x.shape[-2:])]
        [(40, 40), (20, 20), (10, 10)]
    """

    def __init__(self, model: torch.nn.Module, gates: Sequence[Gate]) -> None:
        self.layers = adapter.layers(model)
        self.gates = list(gates)
        self.records: dict[int, _Record] = {}
        self.handles: list = []

    def __enter__(self) -> Self:
        self.records.clear()
        self.handles = [self.layers[g.layer].register_forward_hook(self._record(g.layer)) for g in self.gates]
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _record(self, index: int):
        def hook(layer: Attention, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
            self.records[index] = self.measure(layer, inputs[0], output)

        return hook

    @staticmethod
    @torch.no_grad()
    def measure(layer: Attention, inputs: torch.Tensor | Sequence[torch.Tensor], y: torch.Tensor) -> _Record:
        """The relative change ``y`` makes to the layer's input ``x`` and the mechanism's own map, computed from the
        input alone, whatever γ is. ``inputs``: ``x``, or ``[x, context]`` for a two-input layer."""
        x, *context = [inputs] if isinstance(inputs, torch.Tensor) else inputs
        record = _Record(change=((y - x).norm(dim=1) / x.norm(dim=1).clamp_min(EPS))[0])
        if isinstance(layer, SELF_ATTENTION):
            with _AttentionCalls() as attention:
                layer.attend(x)
            record.attention_calls = attention.calls
        elif isinstance(layer, ScalingAttention):
            weights = layer.weights(x)
            pattern = weights / weights.mean(tuple(range(1, weights.ndim)), keepdim=True).clamp_min(EPS)
            if weights.shape[-2:] == (1, 1):
                record.channel_weights = pattern.flatten()
            else:
                record.applied, record.applied_label = pattern.mean(1)[0], "w / mean(w), mean over channels"
        else:
            attended = layer.attend(x, *context)
            record.applied = ((attended * x).sum(1) / (x * x).sum(1).clamp_min(EPS))[0]
            record.applied_label = "gain A(x)·x / ‖x‖²"
        return record

    def maps(self, boxes: torch.Tensor, input_size: Sequence[int]) -> list[LayerMaps]:
        """The maps of the last forward pass; ``boxes`` (n, 4) xyxy in input pixels pick the self-attention queries."""
        result = []
        for gate in self.gates:
            record = self.records[gate.layer]
            applied, label = record.applied, record.applied_label
            if record.attention_calls:
                queries = query_cells(boxes, tuple(input_size), tuple(record.change.shape))
                applied = torch.stack([attention_received(*call, queries) for call in record.attention_calls]).mean(0)
                where = f"{int(queries.sum())} cells in {len(boxes)} boxes" if len(boxes) else "all cells (no boxes)"
                label = f"attention from {where}"
            result.append(LayerMaps(gate, record.change.numpy(), None if applied is None else applied.numpy(), label,
                                    None if record.channel_weights is None else record.channel_weights.numpy()))
        return result


def eigencam(model: torch.nn.Module, x: torch.Tensor, layers: Sequence[int]) -> np.ndarray:
    """EigenCAM (pytorch-grad-cam) of the outputs of ``layers``, averaged: an (H, W) map in [0, 1] over ``x``.

    SVD leaves the sign of each layer's principal component arbitrary, and a flipped one shows the background as
    salient, so each projection is signed as Seg-Eigen-CAM does (its largest magnitude positive, grad-cam's
    ``get_2d_projection_with_sign_correction``).
    """
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    class SignedEigenCAM(EigenCAM):
        def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
            return get_2d_projection_with_sign_correction(activations)

    modules = adapter.layers(model)
    with torch.no_grad(), SignedEigenCAM(model, [modules[i] for i in layers]) as cam:
        return cam(x, targets=[])[0]  # EigenCAM needs no targets; [] stops grad-cam arg-maxing the detector's output


@dataclass
class Explanation:
    """One model on one image: its input, detections, EigenCAM and the maps of its attention layers."""

    title: str
    image: np.ndarray  # the network input, (H, W, 3) RGB in [0, 1]
    letterbox: Letterbox
    detections: np.ndarray  # (n, 6): x1, y1, x2, y2 in input pixels, confidence, class id
    class_names: dict[int, str]
    eigencam: np.ndarray  # (H, W)
    eigencam_layers: list[int]  # the layers EigenCAM was computed from
    layers: list[LayerMaps]


def explain_image(model: torch.nn.Module, image: np.ndarray, gates: Sequence[Gate], imgsz: int, conf: float = 0.25,
                  title: str = "") -> Explanation:
    """Run ``model`` on a BGR ``image`` letterboxed to ``imgsz`` and collect the maps of the layers in ``gates``."""
    box = letterbox(image.shape[0], image.shape[1], (imgsz, imgsz), adapter.max_stride(model), rect=True)
    x = torch.from_numpy(to_input_tensor(image, box))
    neck = adapter.head_inputs(model)
    with AttentionHooks(model, gates) as hooks:
        detections = adapter.predict_boxes(model, x, conf)[0]
    return Explanation(
        title=title,
        image=x[0].permute(1, 2, 0).numpy(),
        letterbox=box,
        detections=detections.numpy(),
        class_names=adapter.class_names(model),
        eigencam=eigencam(model, x, neck),
        eigencam_layers=neck,
        layers=hooks.maps(detections[:, :4], x.shape[-2:]),
    )


def _overlay(ax, explanation: Explanation, values: np.ndarray | None, label: str) -> None:
    """The image with ``values`` (any grid over the input) as a heatmap on it, cropped to the letterbox's content;
    a map that is exactly 0 everywhere is left out (nothing to show)."""
    box = explanation.letterbox
    extent = (0, box.input_width, box.input_height, 0)
    ax.imshow(explanation.image, extent=extent)
    if values is not None and values.any():
        heat = ax.imshow(values, extent=extent, cmap=HEATMAP, alpha=0.55, interpolation="nearest")
        ax.figure.colorbar(heat, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    ax.set_xlim(box.left, box.left + box.resized_width)
    ax.set_ylim(box.top + box.resized_height, box.top)
    ax.set_title(label, fontsize=7)
    ax.axis("off")


def _detections_panel(panel, explanation: Explanation, conf: float) -> None:
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    ax = panel.subplots()
    _overlay(ax, explanation, None, "")
    colors = colormaps["tab10"]
    for x1, y1, x2, y2, score, cls in explanation.detections:
        color = colors(int(cls) % colors.N)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, lw=0.8))
        ax.text(x1, y1, f"{explanation.class_names[int(cls)]} {score:.2f}", fontsize=4, color="white", va="bottom",
                bbox={"facecolor": color, "pad": 0.5, "lw": 0})
    classes, counts = np.unique(explanation.detections[:, 5].astype(int), return_counts=True)
    found = ", ".join(f"{n} {explanation.class_names[c]}" for c, n in zip(classes, counts, strict=True)) or "none"
    panel.suptitle(f"detections (conf ≥ {conf:g})\n{found}", fontsize=8)


def _eigencam_panel(panel, explanation: Explanation) -> None:
    _overlay(panel.subplots(), explanation, explanation.eigencam, "")
    panel.suptitle(f"EigenCAM\nneck outputs (layers {', '.join(map(str, explanation.eigencam_layers))})", fontsize=8)


def _layer_panel(panel, explanation: Explanation, layer: LayerMaps) -> None:
    gate = layer.gate
    gamma = "γ: none (ungated)" if gate.gamma is None else f"γ = {gate.gamma:+.4f}" + " · gate closed" * gate.closed
    panel.suptitle(f"layer {gate.layer} · {gate.mechanism} · {gate.level}\n{gamma}", fontsize=8)
    applies, changes = panel.subplots(2, 1)
    if layer.channel_weights is not None:
        applies.plot(layer.channel_weights, lw=0.6)
        applies.axhline(1, color="gray", lw=0.5)
        applies.set_xlabel("channel", fontsize=6)
        applies.tick_params(labelsize=6)
        applies.set_title("applies: w / mean(w) per channel (no spatial map)", fontsize=7)
    else:
        _overlay(applies, explanation, layer.applied, f"applies: {layer.applied_label}")
    change = f"max {layer.change.max():.3g}" if layer.change.any() else "exactly 0 (identity)"
    _overlay(changes, explanation, layer.change, f"changes: ‖y − x‖ / ‖x‖, {change}")


def draw(explanations: Sequence[Explanation], title: str, conf: float = 0.25):
    """One matplotlib figure, a row per model: its detections above its EigenCAM, then one panel per attention layer
    (what its mechanism applies at full strength, above what the layer actually changes). Every panel is a
    subfigure with a title."""
    from matplotlib.figure import Figure

    columns = 1 + max(len(e.layers) for e in explanations)
    box = explanations[0].letterbox
    row_inches = 2 * PANEL_INCHES * box.resized_height / box.resized_width + 1.0
    figure = Figure(figsize=(PANEL_INCHES * max(columns, 2), row_inches * len(explanations)), layout="constrained")
    figure.suptitle(title, fontsize=10)
    for row, explanation in zip(figure.subfigures(len(explanations), 1, squeeze=False)[:, 0], explanations,
                                strict=True):
        row.suptitle(explanation.title, fontsize=9, fontweight="bold")
        first, *panels = row.subfigures(1, columns, squeeze=False)[0]
        detections, cam = first.subfigures(2, 1)
        _detections_panel(detections, explanation, conf)
        _eigencam_panel(cam, explanation)
        for panel, layer in zip(panels, explanation.layers, strict=False):  # a compared model may have fewer
            _layer_panel(panel, explanation, layer)
    return figure


def load_checkpoint(path: str | Path) -> torch.nn.Module:
    """A detector from its PyTorch checkpoint; an ONNX file or another kind of file is a UsageError."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        raise UsageError(
            f"{path}: explain needs the PyTorch checkpoint: the ONNX graph no longer has per-layer outputs"
        )
    if path.suffix.lower() != ".pt":
        raise UsageError(f"{path}: expected a PyTorch checkpoint (.pt)")
    return adapter.load_checkpoint(path)[0]


def check_images(sources: Sequence[str | Path]) -> list[Path]:
    """The image files of ``sources`` (files, folders or glob patterns), each checked to be an image we decode."""
    images = [path for source in sources for path in resolve_sources(str(source))]
    for path in images:
        try:
            inspect_image(path.read_bytes())
        except ImageError as error:
            raise UsageError(f"{path}: not an image ({error})") from None
    return images


def describe(path: Path, gates: Sequence[Gate]) -> str:
    """``runs/x/weights/best.pt: 3 attention layers, cbam at P3 P4 P5``."""
    if not gates:
        return f"{path}: no attention layers"
    where: dict[str, list[str]] = {}
    for gate in gates:
        where.setdefault(gate.mechanism, []).append(gate.level)
    mechanisms = "; ".join(f"{name} at {' '.join(levels)}" for name, levels in where.items())
    return f"{path}: {len(gates)} attention layer{'s' * (len(gates) > 1)}, {mechanisms}"


def select_layers(gates: list[Gate], layers: Sequence[int] | None, path: Path) -> list[Gate]:
    """The gates of ``layers`` (all when None); an index that is not an attention layer is a UsageError."""
    if layers is None:
        return gates
    known = {gate.layer for gate in gates}
    if unknown := [i for i in layers if i not in known]:
        raise UsageError(f"--layers {','.join(map(str, unknown))}: not an attention layer of {path}; its attention "
                         f"layers: {', '.join(map(str, sorted(known))) or 'none'}")
    return [gate for gate in gates if gate.layer in layers]


def explain(model: str | Path, images: Sequence[str | Path], out: str | Path, imgsz: int | None = None,
            conf: float = 0.25, layers: Sequence[int] | None = None, compare: str | Path | None = None) -> list[Path]:
    """Write one PNG figure per image of what ``model``'s attention layers apply and change, with its detections
    and an EigenCAM of its neck outputs (see the module docstring for what each map is).

    Args:
        model: checkpoint (.pt) of a baseline or an attention variant.
        images: image files, folders of images or glob patterns.
        out: folder for the figures, ``<image stem>.png``.
        imgsz: inference size (default: the checkpoint's training size).
        conf: confidence threshold of the detections drawn, whose boxes also pick the self-attention queries.
        layers: indices of ``model``'s attention layers to draw (default: all).
        compare: a second checkpoint (e.g. the baseline) drawn in a second row of the same figures.

    Returns:
        The paths of the figures written.

    Examples:
        >>> from detector.explain import explain
        >>> explain("runs/yolo11n-cbam/weights/best.pt", ["cells.jpg"], "explain", compare="weights/bccd.pt")
        [PosixPath('explain/cells.png')]
    """
    from tqdm import tqdm

    paths = check_images(images)
    models = [Path(model), *([Path(compare)] if compare else [])]
    loaded = [load_checkpoint(path) for path in models]
    imgsz = imgsz or adapter.training_imgsz(loaded[0])
    gates = [gate_table(m) for m in loaded]
    shown = [select_layers(gates[0], layers, models[0]), *gates[1:]]
    titles = [describe(path, g) for path, g in zip(models, gates, strict=True)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(paths, desc="explain", unit="img", disable=None):
        image = read_image(path)
        explanations = [explain_image(m, image, g, imgsz, conf, t)
                        for m, g, t in zip(loaded, shown, titles, strict=True)]
        box = explanations[0].letterbox
        figure = draw(explanations, f"{path.name} ({box.width}x{box.height}) at {box.input_width}x{box.input_height}",
                      conf)
        written.append(out / f"{path.stem}.png")
        figure.savefig(written[-1], dpi=DPI)
    return written


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="checkpoint (.pt) of a baseline or attention variant")
    parser.add_argument("images", nargs="*", metavar="IMAGE",
                        help="image file, folder of images, or quoted glob pattern like 'imgs/*.jpg'")
    parser.add_argument("--out", type=Path, default=None, help="folder for the figures, one PNG per image")
    parser.add_argument("--imgsz", type=int, default=None,
                        help="inference size (default: the checkpoint's training size)")
    parser.add_argument("--conf", type=float, default=0.25,
                        help="confidence threshold of the detections drawn, whose boxes pick the self-attention "
                             "queries (default: 0.25)")
    parser.add_argument("--layers", default=None,
                        help="comma-separated indices of the attention layers to draw (default: all)")
    parser.add_argument("--compare", type=Path, default=None, metavar="BASELINE.pt",
                        help="a second checkpoint (e.g. the baseline) drawn in a second row of each figure")
    parser.add_argument("--gates", action="store_true",
                        help="print |γ| per attention layer instead of drawing figures")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="with --gates: also write it as JSON")


def layer_indices(text: str | None) -> list[int] | None:
    """``--layers 17,21`` -> [17, 21] (None: all layers)."""
    if not text:
        return None
    try:
        return [int(i) for i in text.split(",")]
    except ValueError:
        raise UsageError(f"--layers {text!r}: expected comma-separated layer indices, e.g. 17,21") from None


def run(args: argparse.Namespace) -> int:
    if args.gates:
        gates = gate_table(load_checkpoint(args.model))
        print(format_gate_table(gates))
        if args.json:
            rows = [{**g.to_dict(), "abs_gamma": None if g.gamma is None else abs(g.gamma), "closed": g.closed}
                    for g in gates]
            args.json.write_text(json.dumps({"model": str(args.model), "gates": rows}, indent=1) + "\n")
        return 0
    if args.json:
        raise UsageError("--json writes the gate table: use it with --gates")
    if not args.images or args.out is None:
        raise UsageError("explain needs IMAGE... and --out DIR (or --gates for the gate table)")
    for path in explain(args.model, args.images, args.out, args.imgsz, args.conf, layer_indices(args.layers),
                        args.compare):
        print(path)
    return 0
