"""``python -m detector train MODEL --data data.yaml``: train through the Ultralytics trainer."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .argtypes import non_negative_int, positive_int

# Flags users reach for most; any other Ultralytics train argument passes through as key=value.
COMMON_ARGS = {
    "epochs": (positive_int, 100, "number of epochs"),
    "imgsz": (positive_int, 640, "training image size (square)"),
    "batch": (int, 16, "batch size (-1: auto for GPU memory)"),
    "device": (str, None, "cpu, 0, 0,1 (DDP on two GPUs)... (default: first GPU if any, else cpu)"),
    "seed": (int, 0, "random seed (training is deterministic where torch allows)"),
    "workers": (non_negative_int, 8, "dataloader worker processes"),
    "project": (str, "runs/detect", "directory holding runs"),
    "name": (str, None, "run name inside project (default: the model name)"),
}


def check_data(data: str | Path, splits: tuple[str, ...] | None = None) -> Path:
    """Fail early and clearly on a data.yaml whose images are not on this machine (Ultralytics would try to
    download the dataset); ``splits``: those that must be there (default: train and val, and test if the yaml has one).

    Returns the yaml to give Ultralytics: ``data`` itself, or a copy whose relative ``path:`` is made absolute, as
    :mod:`detector.data.datayaml` resolves it (relative to the yaml's folder).
    """
    from .data.datayaml import check_splits, read_data_yaml

    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset file {str(path)!r} not found. Nothing is downloaded here: import your data with "
            "`python -m detector data import SRC --format voc|coco|yolo --out DIR` and pass DIR/data.yaml"
        )
    spec = read_data_yaml(path)
    check_splits(spec, splits)
    return spec.for_ultralytics()


def parse_overrides(tokens: list[str]) -> dict:
    """Ultralytics-style ``key=value`` tokens (``lr0=0.001 mosaic=0 cos_lr=True``) to a dict of typed values."""
    overrides = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value (an Ultralytics train argument), got {token!r}")
        overrides[key.lstrip("-")] = yaml.safe_load(value) if value else None
    return overrides


def prepare_model(model: str, weights: Path | None, workdir: Path) -> Path:
    """A YAML or checkpoint the Ultralytics trainer can start from, for a model name, YAML or checkpoint."""
    from . import ultralytics_adapter as adapter
    from .models import variant_from_checkpoint, write_yaml

    if Path(model).suffix in (".pt", ".yaml", ".yml"):
        if weights is not None:
            raise ValueError("--weights applies to model names (e.g. yolo11n-cbam), not to a .pt or .yaml")
        return Path(model)
    workdir.mkdir(parents=True, exist_ok=True)
    if weights is None:
        return write_yaml(model, workdir / f"{model}.yaml")
    variant, _ = variant_from_checkpoint(model, weights)
    return adapter.save_checkpoint(variant, workdir / f"{model}-init.pt")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name (yolo11n, yolo11n-cbam, yolo11s-eca-backbone...), YAML, or "
                                      "checkpoint .pt to fine-tune")
    parser.add_argument("--data", required=True, help="dataset YAML (see `python -m detector data import`)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="baseline checkpoint to start from: its weights are transferred into the variant, "
                             "which starts as an exact copy of the baseline (default: train from scratch)")
    for key, (kind, default, help_text) in COMMON_ARGS.items():
        parser.add_argument(f"--{key}", type=kind, default=default,
                            help=help_text if "(default:" in help_text else f"{help_text} (default: {default})")
    add_attention_args(parser)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="any other Ultralytics train argument, e.g. lr0=0.001 mosaic=0.5 patience=20 amp=False")


def add_attention_args(parser: argparse.ArgumentParser) -> None:
    """``--attn-lr-mult`` and ``--attn-warmup-epochs``: how the new attention layers train (docs/ATTENTION.md)."""
    from .ultralytics_adapter import ATTENTION_TRAIN_ARGS

    for key, (default, help_text) in ATTENTION_TRAIN_ARGS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=type(default), default=default,
                            help=f"{help_text} (default: {default})")


def train(model: str | Path, data: str | Path, weights: str | Path | None = None, **args) -> Path:
    """Train ``model`` (a name like ``yolo11s-cbam``, a YAML or a checkpoint) on ``data`` through the Ultralytics
    trainer; ``weights`` is a baseline checkpoint to transfer into the variant first. ``args`` are Ultralytics train
    arguments (``epochs``, ``imgsz``, ``batch``, ``device``...). Returns the run directory (its best checkpoint:
    ``ultralytics_adapter.best_checkpoint``)."""
    from . import ultralytics_adapter as adapter

    args.setdefault("project", "runs/detect")
    args.setdefault("name", Path(str(model)).stem)
    data = check_data(data)
    start = prepare_model(str(model), Path(weights) if weights else None, Path(args["project"]) / "_models")
    return adapter.train(start, data=str(data), **args)


def run(args: argparse.Namespace) -> int:
    from . import ultralytics_adapter as adapter
    from .ultralytics_adapter import ATTENTION_TRAIN_ARGS

    train_args = {k: getattr(args, k) for k in [*COMMON_ARGS, *ATTENTION_TRAIN_ARGS] if getattr(args, k) is not None}
    train_args.update(parse_overrides(args.overrides))
    save_dir = train(args.model, args.data, args.weights, **train_args)
    print(f"best checkpoint: {adapter.best_checkpoint(save_dir)}")
    return 0
