"""Attention-augmented YOLO detectors: build variants by name, transfer baseline weights, train, compare, export.

Importing this package registers the attention layers with Ultralytics, so ``ultralytics.YOLO("variant.yaml")``
and checkpoints of variants load, and turns Ultralytics' pip auto-install off.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

os.environ.setdefault("YOLO_AUTOINSTALL", "False")

try:
    __version__ = version("attention-yolo")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

from .models import (  # noqa: E402
    Transfer,
    TransferError,
    build_model,
    model_cfg,
    transfer_weights,
    variant_from_checkpoint,
    write_yaml,
)
from .train import train  # noqa: E402
from .variants import VariantError, VariantSpec, parse_name  # noqa: E402

__all__ = [
    "__version__",
    "Transfer",
    "TransferError",
    "VariantError",
    "VariantSpec",
    "build_model",
    "model_cfg",
    "parse_name",
    "train",
    "transfer_weights",
    "variant_from_checkpoint",
    "write_yaml",
]
