"""Every attention module at every placement exports through Ultralytics' exporter and runs in ONNX Runtime with
the torch model's outputs (relative error <= 1e-4), on real photos and non-square inputs, static and dynamic."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from detector import build_model
from detector import ultralytics_adapter as adapter
from modules import ATTENTION

PLACEMENTS = ["neck", "backbone", "both", "p5"]


def as_input(path, height: int, width: int) -> np.ndarray:
    image = cv2.resize(cv2.imread(str(path)), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255


def trained_looking(name: str) -> torch.nn.Module:
    """A variant whose attention layers act (gamma != 0) and whose BN layers are not at their initial state."""
    torch.manual_seed(0)
    model = build_model(name)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        if getattr(m, "gamma", None) is not None:
            m.gamma.data.fill_(0.5)
    return model.eval()


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.abs(reference - candidate).max() / np.abs(reference).max())


def export_and_compare(tmp_path, name, real_photos, dynamic: bool, sizes: list[tuple[int, int]]) -> None:
    model = trained_looking(name)
    checkpoint = adapter.save_checkpoint(model, tmp_path / f"{name}.pt")
    onnx_path = adapter.export(checkpoint, format="onnx", imgsz=sizes[0], dynamic=dynamic, opset=17, verbose=False)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    for (h, w), photo in zip(sizes, real_photos * len(sizes)):
        x = as_input(photo, h, w)
        with torch.no_grad():
            reference = model(torch.from_numpy(x))[0].numpy()
        output = session.run(None, {input_name: x})[0]
        assert output.shape == reference.shape
        assert relative_error(reference, output) <= 1e-4, f"{name} {h}x{w}: {relative_error(reference, output)}"


@pytest.mark.slow
@pytest.mark.parametrize("attention", sorted(ATTENTION))
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_dynamic_export_matches_torch(tmp_path, real_photos, attention, placement):
    # first size is the export size; then a non-square 4:3 size and an odd-multiple size (15x20 cells at P5)
    export_and_compare(tmp_path, f"yolo11n-{attention}-{placement}", real_photos, True, [(160, 160), (480, 640), (224, 320)])


@pytest.mark.slow
@pytest.mark.parametrize("attention", sorted(ATTENTION))
def test_static_export_matches_torch(tmp_path, real_photos, attention):
    export_and_compare(tmp_path, f"yolo11n-{attention}", real_photos, False, [(192, 256)])
