"""Command line: ``python -m detector <command> ...`` (also installed as ``attention-yolo``)."""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module implementing it, one-line help). Each module has `configure(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("detector.info", "parameters, GFLOPs and per-layer cost of a model or variant"),
    "build": ("detector.build", "write a variant's Ultralytics YAML (e.g. yolo11s-cbam) to a file"),
    "data": ("detector.data.cli", "import a VOC / COCO / YOLO dataset into the YOLO layout, with a report"),
    "train": ("detector.train", "train a baseline or attention variant through the Ultralytics trainer"),
    "compare": ("detector.compare", "compare attention variants against the baseline over several seeds"),
    "export": ("detector.export", "export a checkpoint to ONNX (FP32/FP16/INT8) or a Triton model repository"),
    "predict": ("detector.predict", "run an ONNX model on images, folders or globs; write JSONL / COCO JSON"),
    "val": ("detector.val", "measure mAP of an ONNX model on a dataset"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported (and its options configured)."""
    parser = argparse.ArgumentParser(
        prog="python -m detector",
        description="Attention-augmented YOLO11: build variants, train, compare, export, predict.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == command:
            implementation = importlib.import_module(module)
            implementation.configure(sub)
            sub.set_defaults(run=implementation.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE pass-through arguments may follow options; argparse leaves them over
        if not hasattr(args, "overrides") or not all("=" in token for token in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
