"""Shared fixtures: paths to real data and to trained ONNX models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_OFFLINE", "True")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
# Transitional: a yolo11n trained briefly on coco128, until weights/ ships the default model.
DEV_MODELS = Path(os.environ.get("DETECTOR_DEV_MODELS", "/tmp/devmodel"))


def _existing(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    return _existing(SHARED_DATASETS)


@pytest.fixture(scope="session")
def trained_onnx_dynamic() -> Path:
    """ONNX exported by Ultralytics (dynamic batch/height/width) from a trained detector."""
    return _existing(DEV_MODELS / "dev-dynamic.onnx")


@pytest.fixture(scope="session")
def trained_onnx_static() -> Path:
    """ONNX exported by Ultralytics (static 1x3xSxS) from the same trained detector."""
    return _existing(DEV_MODELS / "dev-static.onnx")


@pytest.fixture(scope="session")
def real_photos() -> list[Path]:
    """bus.jpg (810x1080) and zidane.jpg (1280x720), shipped inside the ultralytics package."""
    import ultralytics

    assets = Path(ultralytics.__file__).parent / "assets"
    return [assets / "bus.jpg", assets / "zidane.jpg"]
