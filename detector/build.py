"""``python -m detector build NAME``: write a variant's YAML, or a variant checkpoint holding baseline weights."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="model name, e.g. yolo11s-cbam, yolo11n-eca-backbone, yolo11n-se-16-19 "
                                     "(grammar: <family><scale>[-<attention>[-<placement>]], see docs/MODELS.md)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output file (default: <name>.yaml, or <name>.pt with --weights)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="baseline checkpoint (e.g. a trained yolo11s.pt) whose weights are transferred into the "
                             "variant; writes a .pt that starts as an exact copy of the baseline (default: none)")
    parser.add_argument("--nc", type=int, default=None, help="number of classes for the YAML (default: 80)")


def run(args: argparse.Namespace) -> int:
    from . import ultralytics_adapter as adapter
    from .models import variant_from_checkpoint, write_yaml

    if args.weights is None:
        print(f"wrote {write_yaml(args.name, args.out, nc=args.nc)}")
        return 0
    if args.nc is not None:
        raise SystemExit("--nc cannot be combined with --weights: the variant takes the checkpoint's classes")
    model, _ = variant_from_checkpoint(args.name, args.weights)
    out = args.out or Path(f"{args.name}.pt")
    print(f"wrote {adapter.save_checkpoint(model, out)}")
    return 0
