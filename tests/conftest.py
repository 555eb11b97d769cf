"""Shared fixtures: paths to real data and to trained ONNX models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_OFFLINE", "True")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
WEIGHTS = REPO / "weights"


def _existing(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    return _existing(SHARED_DATASETS)


@pytest.fixture(scope="session")
def trained_onnx_dynamic() -> Path:
    """The shipped default model: ONNX (dynamic batch/height/width) of a detector trained on BCCD."""
    return _existing(WEIGHTS / "bccd.onnx")


@pytest.fixture(scope="session")
def trained_onnx_static(tmp_path_factory) -> Path:
    """The shipped default checkpoint exported with a static 1x3xSxS input (S: its training size)."""
    from detector.export import export_onnx
    from detector.ultralytics_adapter import load_checkpoint

    checkpoint = _existing(WEIGHTS / "bccd.pt")
    imgsz = int(load_checkpoint(checkpoint)[0].args["imgsz"])
    path, _ = export_onnx(checkpoint, imgsz=imgsz, out=tmp_path_factory.mktemp("static") / "bccd-static.onnx")
    return path


@pytest.fixture(scope="session")
def real_photos() -> list[Path]:
    """bus.jpg (810x1080) and zidane.jpg (1280x720), shipped inside the ultralytics package."""
    import ultralytics

    assets = Path(ultralytics.__file__).parent / "assets"
    return [assets / "bus.jpg", assets / "zidane.jpg"]


def write_shapes_dataset(root: Path, n_train: int = 16, n_val: int = 8, size: tuple[int, int] = (96, 128)) -> Path:
    """A small YOLO dataset of drawn shapes (class 0: filled rectangle, 1: filled circle); returns its data.yaml."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    h, w = size
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = np.full((h, w, 3), rng.integers(40, 90), np.uint8)
            lines = []
            for _ in range(rng.integers(1, 4)):
                cls = int(rng.integers(0, 2))
                bw, bh = int(rng.integers(16, 40)), int(rng.integers(16, 40))
                x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                color = tuple(int(c) for c in rng.integers(150, 255, 3))
                if cls == 0:
                    cv2.rectangle(image, (x1, y1), (x1 + bw, y1 + bh), color, -1)
                else:
                    cv2.ellipse(image, (x1 + bw // 2, y1 + bh // 2), (bw // 2, bh // 2), 0, 0, 360, color, -1)
                lines.append(f"{cls} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{i:03d}.jpg"), image)
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text("train: images/train\nval: images/val\nnames:\n  0: rectangle\n  1: circle\n")
    return data


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """data.yaml of a generated 2-class shapes dataset (16 train, 8 val images of 128x96)."""
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def bccd_data(shared_datasets, tmp_path_factory) -> Path:
    """data.yaml of BCCD imported from ../shared/datasets/bccd-voc by our importer (skipped when absent)."""
    from detector.data import import_dataset

    out = tmp_path_factory.mktemp("bccd")
    import_dataset(_existing(shared_datasets / "bccd-voc"), "voc", out, link=True, progress=False)
    return out / "data.yaml"
