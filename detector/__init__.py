"""Attention-augmented YOLO detectors: build variants by name, transfer baseline weights, train, compare, export.

Importing this package registers the attention layers with Ultralytics, so ``ultralytics.YOLO("variant.yaml")``
and checkpoints of variants load, and turns Ultralytics' pip auto-install off.
"""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_AUTOINSTALL", "False")

from .models import Transfer, TransferError, build_model, model_cfg, transfer_weights, variant_from_checkpoint, write_yaml  # noqa: E402
from .variants import VariantError, VariantSpec, parse_name  # noqa: E402

__all__ = [
    "Transfer",
    "TransferError",
    "VariantError",
    "VariantSpec",
    "build_model",
    "model_cfg",
    "parse_name",
    "transfer_weights",
    "variant_from_checkpoint",
    "write_yaml",
]
