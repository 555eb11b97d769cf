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

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import ultralytics  # noqa: E402
import ultralytics.nn.tasks as tasks  # noqa: E402
import ultralytics.utils.checks as checks  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import YAML  # noqa: E402

from modules import ATTENTION  # noqa: E402

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


def load_checkpoint(path: str | Path) -> tuple[DetectionModel, dict]:
    """Load an Ultralytics checkpoint (EMA weights when present) as an FP32 model in eval mode, and its dict."""
    model, ckpt = tasks.load_checkpoint(check_local(path))
    return model, ckpt


def save_checkpoint(model: DetectionModel, path: str | Path, **extra) -> Path:
    """Save ``model`` (FP32) as a checkpoint Ultralytics can train from, predict with and export."""
    from datetime import datetime

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": model, "date": datetime.now().isoformat(), "version": ULTRALYTICS_VERSION, **extra}, path
    )
    return path


def yolo(model: str | Path) -> YOLO:
    """An Ultralytics ``YOLO`` object for a model YAML or a local checkpoint."""
    model = Path(model)
    if model.suffix not in (".yaml", ".yml"):  # a checkpoint or an exported model
        check_local(model)
    return YOLO(model, task="detect")


class AttentionTrainer(DetectionTrainer):
    """Ultralytics' detection trainer; defined here so DDP workers import this module (and register our layers)."""


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
        from service.engine.model import create_session, read_model_info

        args["imgsz"] = max(read_model_info(create_session(model, threads=1), model).imgsz)
    metrics = yolo(model).val(plots=False, verbose=False, **args)
    box = metrics.box
    recall, precision, *_ = box.curves_results[0]
    return {
        "map50_95": float(box.map),
        "map50": float(box.map50),
        "precision": float(box.mp),
        "recall": float(box.mr),
        "per_class_map50_95": {metrics.names[c]: float(v) for c, v in zip(box.ap_class_index, box.maps[box.ap_class_index])},
        "pr_curve": {"recall": recall[::10].round(4).tolist(), "precision": precision.mean(0)[::10].round(4).tolist()},
    }


def export(model: str | Path, **args) -> Path:
    """Export through Ultralytics' exporter (``format``, ``imgsz``, ``dynamic``, ``half``, ``opset``...)."""
    return Path(yolo(model).export(**args))
