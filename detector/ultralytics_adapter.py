"""The one place that touches Ultralytics. Everything it relies on is pinned by tests/test_adapter_contract.py.

What Ultralytics does not offer, and how we get it without forking it:

* **Custom layers in model YAMLs.** ``parse_model`` looks module names up in the globals of
  ``ultralytics.nn.tasks``; :func:`register_layers` puts our attention classes there (refusing to shadow anything).
* **Input channels for custom layers.** ``parse_model`` injects channels only into its own classes, but it resolves
  string arguments that name its local variables (``nc`` in every Ultralytics YAML works this way). ``c2`` holds
  the previous layer's output channels at the model's scale, so an attention row ``[-1, 1, CBAM, [c2]]`` gets the
  right channels at every scale from one YAML.
* **No pip installs while loading checkpoints.** Ultralytics pip-installs the top-level package of any module a
  checkpoint names but it cannot import (and ``modules`` is a generic PyPI name), unless auto-install is off.
* **Layers that survive the DDP subprocess.** Ultralytics pickles the trainer class by reference for DDP workers;
  training through :class:`AttentionTrainer` (defined here) makes the workers import this module, hence register.
"""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_AUTOINSTALL", "False")

import copy  # noqa: E402
import functools  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import ultralytics  # noqa: E402
import ultralytics.nn.tasks as tasks  # noqa: E402
import ultralytics.utils.checks as checks  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import DEFAULT_CFG, YAML  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

from modules import ATTENTION, TWO_INPUT  # noqa: E402
from modules.base import Attention  # noqa: E402

ULTRALYTICS_VERSION = ultralytics.__version__
CFG_DIR = Path(ultralytics.__file__).parent / "cfg" / "models"
ASSETS_DIR = Path(ultralytics.__file__).parent / "assets"


def register_layers() -> None:
    """Make every registered attention class resolvable by name in Ultralytics model YAMLs."""
    for cls in ATTENTION.values():
        current = vars(tasks).get(cls.__name__)
        if current is not None and current is not cls:
            raise RuntimeError(
                f"ultralytics.nn.tasks already defines {cls.__name__} ({current!r}); refusing to shadow it. "
                "Rename the attention class in modules/."
            )
        setattr(tasks, cls.__name__, cls)
    checks.AUTOINSTALL = False  # also when ultralytics was imported before us with YOLO_AUTOINSTALL unset


register_layers()

TWO_INPUT_LAYERS: dict[str, type[Attention]] = {ATTENTION[name].__name__: ATTENTION[name] for name in TWO_INPUT}


class _TwoInputLayer(torch.nn.Module):
    """What parse_model constructs for a two-input row (see :func:`register_two_input_layers`): the layer named in
    it, built with the output channels of both inputs. A Module subclass, so Ultralytics' restricted loading admits it.
    """

    def __new__(cls, channels: list[int], inputs: list[int], name: str, *args) -> Attention:
        return TWO_INPUT_LAYERS[name](*(channels[i] for i in inputs), *args)


def register_two_input_layers() -> None:
    """Let parse_model build our two-input layers from rows ``[[fine, context], 1, Name, [args...]]``.

    parse_model gives a layer it does not know its input's channels, ``ch[f]``, which a ``from`` list cannot index
    (its own Concat and Detect are special-cased). So tasks.parse_model is wrapped: each such row is handed to it as a
    one-input row on the fine map (output channels: the fine map's) whose layer :class:`_TwoInputLayer` builds from
    the string argument ``"ch"``, which parse_model resolves like ``"c2"``, to its local list of every earlier
    layer's output channels. The row's ``from`` list is put back on the built layer and the context added to the
    outputs kept, so the forward pass hands the layer both tensors, as it does for Concat.
    """
    parse_model = tasks.parse_model
    if getattr(parse_model, "two_input_layers", False):
        return

    @functools.wraps(parse_model)
    def parse(d: dict, ch: int, verbose: bool = True):
        d = copy.deepcopy(d)
        routes = {}
        for i, row in enumerate(d["backbone"] + d["head"]):
            if row[2] in TWO_INPUT_LAYERS:
                f, n, name, args = row
                if not isinstance(f, list) or len(f) != 2 or n != 1:
                    raise ValueError(f"layer {i}: {name} needs from: [fine, context] and one repeat, got {f}, {n}")
                routes[i] = f, TWO_INPUT_LAYERS[name]
                row[:] = [f[0], 1, _TwoInputLayer.__name__, ["ch", f, name, *args]]
        model, save = parse_model(d, ch, verbose)
        for i, (f, cls) in routes.items():
            model[i].f, model[i].type = f, f"{cls.__module__}.{cls.__name__}"
        return model, sorted({*save, *(x % i for i, (f, _) in routes.items() for x in f if x != -1)})

    parse.two_input_layers = True
    if vars(tasks).get(_TwoInputLayer.__name__, _TwoInputLayer) is not _TwoInputLayer:
        raise RuntimeError(f"ultralytics.nn.tasks already defines {_TwoInputLayer.__name__}; refusing to shadow it")
    setattr(tasks, _TwoInputLayer.__name__, _TwoInputLayer)
    tasks.parse_model = parse


register_two_input_layers()


# --- Model dicts (what Ultralytics loads from a model YAML) -------------------------------------------------------

# A YAML argument that parse_model resolves to the previous layer's output channels at the model's scale (its local
# ``c2``), so one variant YAML serves every scale. Two-input layers need no such argument: see
# :func:`register_two_input_layers`.
CHANNELS_ARG = "c2"


@dataclass(frozen=True)
class Row:
    """One layer row of a model dict, ``[from, repeats, module, args]``.

    Attributes:
        sources (int | list[int]): ``from``: the input layer index (negative: relative; -1 the previous layer, or the
            image for layer 0), or a list of them.
        repeats (int): how many times the module repeats (scaled by the model's depth multiple).
        module (str): the layer class's name, looked up in ``ultralytics.nn.tasks``.
        args (list): the class's arguments (strings naming parse_model locals, like ``"c2"``, are resolved).

    Examples:
        >>> Row.of([-1, 1, "Conv", [64, 3, 2]]).inputs
        [-1]
    """

    sources: int | list[int]
    repeats: int
    module: str
    args: list

    @classmethod
    def of(cls, row: list) -> Row:
        """The row of a model dict's ``backbone`` or ``head`` list."""
        sources, repeats, module, args = row
        return cls(sources, repeats, module, args)

    def to_list(self) -> list:
        """The row as a model dict holds it."""
        return [self.sources, self.repeats, self.module, self.args]

    @property
    def inputs(self) -> list[int]:
        """``sources`` as a list (indices as written: negative ones are relative)."""
        return self.sources if isinstance(self.sources, list) else [self.sources]


def model_rows(cfg: dict) -> list[Row]:
    """Every layer row of a model dict, in layer-index order (backbone, then head)."""
    return [Row.of(row) for row in cfg["backbone"] + cfg["head"]]


def backbone_length(cfg: dict) -> int:
    """How many of a model dict's layers are the backbone (the rest is the neck and the Detect head)."""
    return len(cfg["backbone"])


def with_rows(cfg: dict, rows: list[Row], backbone_length: int) -> dict:
    """A copy of ``cfg`` whose layers are ``rows``, the first ``backbone_length`` of them the backbone."""
    out = copy.deepcopy(cfg)
    out["backbone"] = [r.to_list() for r in rows[:backbone_length]]
    out["head"] = [r.to_list() for r in rows[backbone_length:]]
    return out


def yaml_sections(cfg: dict) -> list[tuple[str, list[Row]]]:
    """The model dict's layer sections as a model YAML writes them: ``backbone`` then ``head``."""
    return [(section, [Row.of(row) for row in cfg[section]]) for section in ("backbone", "head")]


def model_dict(model: DetectionModel) -> dict:
    """The model dict a built or loaded detector keeps (with any extra keys it was built from)."""
    return model.yaml


def baseline_cfg(family: str) -> dict:
    """The Ultralytics detection model dict of ``family`` (``yolo11``, ``yolo12``, ``yolo26``), all scales."""
    path = CFG_DIR / family.removeprefix("yolo") / f"{family}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"Ultralytics {ULTRALYTICS_VERSION} ships no {path.name}")
    return YAML.load(path)


def build_model(cfg: dict, verbose: bool = False) -> DetectionModel:
    """Build a detection model from a model dict that names its ``scale``."""
    return DetectionModel(cfg, nc=cfg.get("nc"), verbose=verbose)


def check_local(path: str | Path, what: str = "checkpoint") -> Path:
    """Refuse to let Ultralytics try to download a missing file: say so clearly instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} {str(path)!r} not found. Nothing is downloaded here (Ultralytics would try to fetch official "
            "assets like yolo11n.pt from GitHub): pass a local file, or build a model from its name (e.g. yolo11n) "
            "and train it."
        )
    return path


class CheckpointError(ValueError):
    """A file that is not a loadable Ultralytics checkpoint (truncated, corrupt, or another kind of file)."""


def load_checkpoint(path: str | Path) -> tuple[DetectionModel, dict]:
    """Load an Ultralytics checkpoint (EMA weights when present) as an FP32 model in eval mode, and its dict."""
    try:
        model, ckpt = tasks.load_checkpoint(check_local(path))
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001  # torch.load and Ultralytics raise many types for a bad file
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        raise CheckpointError(f"{path}: not a loadable Ultralytics checkpoint ({reason})") from error
    return model, ckpt


def save_checkpoint(model: DetectionModel, path: str | Path, **extra) -> Path:
    """Save ``model`` (FP32) as a checkpoint Ultralytics can train from, predict with and export."""
    from datetime import datetime

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")  # parallel compare runs may write the same start model
    torch.save({"model": model, "date": datetime.now().isoformat(), "version": ULTRALYTICS_VERSION, **extra}, partial)
    partial.replace(path)
    return path


def set_cpu_threads(threads: int) -> None:
    """Compute threads for CPU training; Ultralytics resets torch to ``min(8, cores - 1)`` when it picks the CPU."""
    import ultralytics.utils.torch_utils as torch_utils

    torch_utils.NUM_THREADS = threads
    torch.set_num_threads(threads)


def yolo(model: str | Path) -> YOLO:
    """An Ultralytics ``YOLO`` object for a model YAML or a local checkpoint."""
    model = Path(model)
    if model.suffix not in (".yaml", ".yml"):  # a checkpoint or an exported model
        check_local(model)
    return YOLO(model, task="detect")


def layers(model: DetectionModel) -> torch.nn.ModuleList:
    """The model's layers in YAML order (Ultralytics' ``model.model``); the last one is the Detect head."""
    return model.model


def state_dict_layer(key: str) -> int:
    """The layer index a detector's state-dict key belongs to (``model.<i>.<...>``)."""
    return int(key.split(".")[1])


def state_dict_key_at(key: str, layer: int) -> str:
    """``key`` (a detector's state-dict key) moved to layer index ``layer``."""
    _, _, rest = key.split(".", 2)
    return f"model.{layer}.{rest}"


def module_layer(name: str) -> int | None:
    """The layer index of a detector submodule's qualified name when it is a whole layer (``model.<i>``), else None."""
    parent, _, index = name.partition(".")
    return int(index) if parent == "model" and index.isdigit() else None


def set_class_names(model: DetectionModel, names: dict[int, str]) -> None:
    """Give a detector its class id -> name map (what its checkpoint and exports carry)."""
    model.names = dict(names)


def head_inputs(model: DetectionModel) -> list[int]:
    """Indices of the layers whose outputs the Detect head takes: the neck's P3, P4 and P5 outputs."""
    head = model.model[-1]
    return [i if i >= 0 else head.i + i for i in head.f]  # Ultralytics' ``from``: negative is relative


def class_names(model: DetectionModel) -> dict[int, str]:
    """Class id -> name of a detector."""
    return dict(model.names)


def training_imgsz(model: DetectionModel) -> int:
    """The image size a loaded checkpoint was trained at (Ultralytics' default, 640, for one saved without)."""
    return int(model.args["imgsz"])


def max_stride(model: DetectionModel) -> int:
    """The detector's largest stride (32 for P5): network inputs are padded to a multiple of it."""
    return int(model.stride.max())


def predict_boxes(model: DetectionModel, x: torch.Tensor, conf: float = 0.25, iou: float = 0.7,
                  max_det: int = 300) -> list[torch.Tensor]:
    """Run ``model`` on a batch and select its boxes with Ultralytics' NMS, as its predictor does.

    Returns, per image, an (n, 6) tensor of x1, y1, x2, y2 (input pixels), confidence and class id.
    """
    from ultralytics.utils import nms

    with torch.no_grad():
        output = model(x)
    return nms.non_max_suppression(output, conf, iou, max_det=max_det, end2end=getattr(model, "end2end", False))


# --- ONNX exports -------------------------------------------------------------------------------------------------


def onnx_node_layer(node_name: str) -> int | None:
    """The detector layer index an exported ONNX node comes from (its name is ``/model.<i>/...``), else None."""
    parts = node_name.split("/")
    if len(parts) < 3 or parts[0]:
        return None
    return module_layer(parts[1])


def onnx_dfl_node(node_name: str) -> bool:
    """Whether an exported ONNX node belongs to the Detect head's distribution focal loss decoding (DFL)."""
    return "/dfl/" in node_name


# --- Training runs ----------------------------------------------------------------------------------------------

# The validation metric of a training epoch that runs are compared by: mAP50-95 of the boxes.
MAP50_95 = "metrics/mAP50-95(B)"


def best_checkpoint(run: str | Path) -> Path:
    """The checkpoint a finished training run ``run`` (its save directory) keeps of its best epoch."""
    return Path(run) / "weights" / "best.pt"


def last_checkpoint(run: str | Path) -> Path:
    """The checkpoint of a training run's last finished epoch, which a resumed run continues from."""
    return Path(run) / "weights" / "last.pt"


def results_table(run: str | Path) -> Path:
    """The per-epoch table (losses, metrics) of a training run."""
    return Path(run) / "results.csv"


def run_files(run: str | Path) -> list[str]:
    """Paths, relative to a training run's directory, of the files a finished run leaves that its report reads."""
    return [str(p.relative_to(run)) for p in (results_table(run), best_checkpoint(run))]


def training_curve(run: str | Path) -> list[float]:
    """Validation mAP50-95 after each finished epoch of a training run."""
    import csv

    with results_table(run).open() as f:
        return [float(row[MAP50_95]) for row in csv.DictReader(f, skipinitialspace=True)]


@dataclass(frozen=True)
class EpochEvents:
    """Functions of the trainer called at points of each epoch, for :func:`train`'s ``callbacks``.

    Attributes:
        start: before an epoch's training.
        trained: after an epoch's training, before its validation.
        validated: after an epoch's validation (also after the final validation of the best checkpoint; see
            :func:`is_final_validation`).

    Examples:
        >>> callbacks = EpochEvents(validated=lambda trainer: print(epoch_map50_95(trainer))).callbacks()
    """

    start: Callable | None = None
    trained: Callable | None = None
    validated: Callable | None = None

    def callbacks(self) -> dict[str, Callable]:
        """Ultralytics event name -> function."""
        events = {"on_train_epoch_start": self.start, "on_train_epoch_end": self.trained,
                  "on_fit_epoch_end": self.validated}
        return {event: function for event, function in events.items() if function is not None}


def trainer_epoch(trainer) -> tuple[int, int]:
    """The epoch a trainer is at (0-based) and the run's number of epochs."""
    return trainer.epoch, trainer.epochs


def is_final_validation(trainer) -> bool:
    """Whether a ``validated`` event is the final validation of the best checkpoint, after the last epoch."""
    return trainer.epoch >= trainer.epochs


def epoch_map50_95(trainer) -> float:
    """Validation mAP50-95 of the epoch just validated (NaN when the epoch was not validated)."""
    return float(trainer.metrics.get(MAP50_95, float("nan")))


def epoch_images(trainer) -> int:
    """Images in one epoch of a trainer's training data."""
    return len(trainer.train_loader.dataset)


def trainer_device(trainer) -> str:
    """The device a trainer resolved and trains on (``cpu``, ``cuda:0``...)."""
    return str(trainer.device)


# Our own train arguments, beside Ultralytics' (which refuses unknown keys): name -> (default, help).
ATTENTION_TRAIN_ARGS: dict[str, tuple[float, str]] = {
    "attn_lr_mult": (10.0, "learning rate of the attention layers as a multiple of the base learning rate (lr0, or "
                           "the one optimizer=auto picks); warm-up and schedule apply to both alike"),
    "attn_warmup_epochs": (0, "first epochs in which only the attention layers train: every baseline weight and "
                              "BatchNorm statistic stays frozen"),
}


class AttentionTrainer(DetectionTrainer):
    """Ultralytics' detection trainer with attention layers in their own optimizer groups.

    Defined here so DDP workers import this module (and register our layers). Attention parameters get
    ``attn_lr_mult`` x the learning rate of their Ultralytics group, and the gates γ get no weight decay (decay
    would pull every gate back to closed). With ``attn_warmup_epochs`` the baseline part of the model is frozen for
    the first epochs. Both arguments are stored with the run's other arguments, so a resumed run keeps them.

    Attributes:
        args: Ultralytics' train arguments plus ``attn_lr_mult`` and ``attn_warmup_epochs``.
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks=None) -> None:
        overrides = dict(overrides or {})
        own = {k: overrides.pop(k) for k in ATTENTION_TRAIN_ARGS if k in overrides}
        super().__init__(cfg, overrides, _callbacks)
        for key, (default, _) in ATTENTION_TRAIN_ARGS.items():  # a resumed run already has the checkpoint's values
            if not hasattr(self.args, key):
                setattr(self.args, key, own.get(key, default))

    def get_validator(self):
        """Ultralytics' validator, built from the run's arguments without ours (its config refuses unknown keys)."""
        own = {k: vars(self.args).pop(k) for k in ATTENTION_TRAIN_ARGS}
        try:
            return super().get_validator()
        finally:
            vars(self.args).update(own)

    def attention_parameters(self, model: torch.nn.Module) -> tuple[set[int], set[int]]:
        """Ids of every attention parameter, and of the gates among them."""
        layers = [m for m in unwrap_model(model).modules() if isinstance(m, Attention)]
        return ({id(p) for m in layers for p in m.parameters()},
                {id(m.gamma) for m in layers if m.gamma is not None})

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Ultralytics' optimizer, each of its groups split into baseline and attention parameters."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        attention, gates = self.attention_parameters(model)
        groups = []
        for group in optimizer.param_groups:
            params = group.pop("params")
            groups.append({**group, "params": [p for p in params if id(p) not in attention]})
            for subset, extra in (
                ([p for p in params if id(p) in attention and id(p) not in gates], {}),
                ([p for p in params if id(p) in gates], {"weight_decay": 0.0, "param_group": "gate"}),
            ):
                if subset:
                    groups.append({**group, "params": subset, "lr": group["lr"] * self.args.attn_lr_mult, **extra})
        optimizer.param_groups.clear()
        for group in groups:
            if group["params"]:
                optimizer.add_param_group(group)
        return optimizer

    def _model_train(self) -> None:
        """Training mode for the epoch; while the attention warms up, the baseline part stays as it was."""
        super()._model_train()
        warming_up = self.epoch < self.args.attn_warmup_epochs
        if not hasattr(self, "baseline_trainable"):  # what Ultralytics left trainable (it always freezes .dfl)
            attention, _ = self.attention_parameters(self.model)
            inside = {id(m) for a in self.model.modules() if isinstance(a, Attention) for m in a.modules()}
            self.baseline_trainable = [p for p in self.model.parameters() if p.requires_grad and id(p) not in attention]
            self.baseline_norms = [m for m in self.model.modules()
                                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and id(m) not in inside]
        for p in self.baseline_trainable:
            p.requires_grad_(not warming_up)
        if warming_up:
            for m in self.baseline_norms:
                m.eval()


def train(model: str | Path, callbacks: dict[str, Callable] | None = None, **args) -> Path:
    """Train through the Ultralytics trainer; ``args`` are Ultralytics train arguments, ``callbacks`` maps Ultralytics
    event names (``on_train_epoch_start``, ``on_fit_epoch_end``...) to functions of the trainer. Returns the run
    directory."""
    if args.get("project"):  # Ultralytics puts a relative project under its own runs_dir; we mean the working dir
        args["project"] = str(Path(args["project"]).resolve())
    runner = yolo(model)
    for event, function in (callbacks or {}).items():
        runner.add_callback(event, function)
    runner.train(trainer=AttentionTrainer, **args)
    return Path(runner.trainer.save_dir)


def validate(model: str | Path, **args) -> dict:
    """Ultralytics validation (``data``, ``split``, ``imgsz``, ``batch``, ``device``...) of a checkpoint or ONNX file.

    Returns mAP50-95, mAP50, precision, recall, per-class mAP50-95 and the class-mean precision-recall curve. An ONNX
    model is validated at its export size unless ``imgsz`` is given (Ultralytics would take 640 for a dynamic one; a
    checkpoint already gets its training size).
    """
    if Path(model).suffix == ".onnx" and "imgsz" not in args:
        from engine.model import create_session, read_model_info

        args["imgsz"] = max(read_model_info(create_session(model, threads=1), model).imgsz)
    metrics = yolo(model).val(plots=False, verbose=False, **args)
    box = metrics.box
    recall, precision, *_ = box.curves_results[0]
    return {
        "map50_95": float(box.map),
        "map50": float(box.map50),
        "precision": float(box.mp),
        "recall": float(box.mr),
        "per_class_map50_95": {metrics.names[c]: float(v)
                               for c, v in zip(box.ap_class_index, box.maps[box.ap_class_index], strict=True)},
        "pr_curve": {"recall": recall[::10].round(4).tolist(), "precision": precision.mean(0)[::10].round(4).tolist()},
    }


def export(model: str | Path, **args) -> Path:
    """Export through Ultralytics' exporter (``format``, ``imgsz``, ``dynamic``, ``half``, ``opset``...)."""
    return Path(yolo(model).export(**args))
