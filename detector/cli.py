"""Command line: ``python -m detector <command> ...`` (also installed as ``attention-yolo``).

One error boundary for every command: a mistake in what was asked (a missing file, a bad YAML, a wrong model file or
name, a bad option) is one ``error:`` line on stderr and exit code 2; anything else is a bug and keeps its traceback.
``--debug`` shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import NoReturn

from engine.errors import EngineError

from .data.report import DatasetError
from .models import TransferError
from .ultralytics_adapter import CheckpointError
from .variants import VariantError


class UsageError(ValueError):
    """A mistake in what the user asked for (an option, a file, a model): one line on stderr, exit code 2."""


USER_MISTAKES = (
    UsageError,
    DatasetError,
    VariantError,
    TransferError,
    CheckpointError,
    EngineError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
"""The exception types that mean a user mistake, whichever command raises them."""

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
    "explain": ("detector.explain", "figures of what each attention layer applies and changes; --gates: |γ| per layer"),
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are UsageErrors, for the error boundary to report (its sub-parsers too)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported (and its options configured)."""
    parser = _Parser(
        prog="python -m detector",
        description="Attention-augmented YOLO11: build variants, train, compare, export, predict.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of every error; accepted anywhere on the command line (default: one line for a "
        "mistake in the command)",
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
    """Run a command; its exit code (2 for a user mistake, reported as one line on stderr)."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    argv = [token for token in argv if token != "--debug"]
    try:
        parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
        args, extra = parser.parse_known_args(argv)
        if extra:  # KEY=VALUE pass-through arguments may follow options; argparse leaves them over
            if not hasattr(args, "overrides") or not all("=" in token for token in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.overrides += extra
        return args.run(args)
    except USER_MISTAKES as error:
        return _user_mistake(str(error), debug)
    except SystemExit as exit_:  # raise SystemExit("message"): a command refusing its options
        if not isinstance(exit_.code, str):
            raise
        return _user_mistake(exit_.code, debug)


def _user_mistake(message: str, debug: bool) -> int:
    """Report a user mistake (called while handling it): the traceback under --debug, then one line; exit code 2."""
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
