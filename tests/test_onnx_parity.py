"""Every attention module at every placement exports through Ultralytics' exporter and runs in ONNX Runtime with
the torch model's outputs (relative error <= 1e-4), on real photos and non-square inputs, static and dynamic; the
newest mechanisms (cross, sparse) also at every scale, on small inputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from detector import build_model
from detector import ultralytics_adapter as adapter
from modules import ATTENTION, TWO_INPUT

PLACEMENTS = ["neck", "backbone", "both", "p5"]
TWO_INPUT_PLACEMENTS = ["neck", "backbone", "both", "p3"]  # p5 is their context: it has no finer map
CASES = [(a, p) for a in sorted(ATTENTION) for p in (TWO_INPUT_PLACEMENTS if a in TWO_INPUT else PLACEMENTS)]


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


def export_and_compare(tmp_path, name, real_photos, dynamic: bool, sizes: list[tuple[int, int]],
                       model: torch.nn.Module | None = None) -> None:
    model = trained_looking(name) if model is None else model
    checkpoint = adapter.save_checkpoint(model, tmp_path / f"{name}.pt")
    onnx_path = adapter.export(checkpoint, format="onnx", imgsz=sizes[0], dynamic=dynamic, opset=17, verbose=False)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    for (h, w), photo in zip(sizes, real_photos * len(sizes), strict=False):  # photos cycle over the sizes
        x = as_input(photo, h, w)
        with torch.no_grad():
            reference = model(torch.from_numpy(x))[0].numpy()
        output = session.run(None, {input_name: x})[0]
        assert output.shape == reference.shape
        assert relative_error(reference, output) <= 1e-4, f"{name} {h}x{w}: {relative_error(reference, output)}"


@pytest.mark.slow
@pytest.mark.parametrize(("attention", "placement"), CASES)
def test_dynamic_export_matches_torch(tmp_path, real_photos, attention, placement):
    # first size is the export size; then a non-square 4:3 size and an odd-multiple size (15x20 cells at P5)
    sizes = [(160, 160), (480, 640), (224, 320)]
    export_and_compare(tmp_path, f"yolo11n-{attention}-{placement}", real_photos, True, sizes)


@pytest.mark.slow
@pytest.mark.parametrize("attention", sorted(ATTENTION))
def test_static_export_matches_torch(tmp_path, real_photos, attention):
    export_and_compare(tmp_path, f"yolo11n-{attention}", real_photos, False, [(192, 256)])


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["s", "m", "x"])  # n: the tests above; l has m's widths, only deeper
@pytest.mark.parametrize("attention", ["cross", "sparse"])
def test_new_mechanisms_match_torch_at_every_scale(tmp_path, real_photos, attention, scale):
    # Small inputs: P5 maps of 2x2 to 5x7 cells (7 columns: sparse pads its 8x8 region grid, cross has 35 keys).
    # One dynamic export per scale: the widths are what changes with the scale; static exports are checked at n.
    name = f"yolo11{scale}-{attention}-both"
    export_and_compare(tmp_path, name, real_photos, True, [(64, 64), (128, 96), (160, 224), (96, 128)])


@pytest.mark.slow
def test_ort_transformer_optimizer_check_runs_and_keeps_the_outputs():
    """benchmarks/ort_fusion.py (what ORT's transformer optimizer fuses in our graphs), smoke-tested without timing."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ort_fusion.py"
    spec = importlib.util.spec_from_file_location("benchmark_ort_fusion", script)
    ort_fusion = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ort_fusion)  # puts the repository on sys.path for benchmarks.attention_cost

    assert set(ort_fusion.sdpa_backends(channels=32, size=(4, 4))) == {"mhsa", "area", "cross", "sparse"}
    report = ort_fusion.fusion_report("yolo11n-mhsa", 64, ["vit", "bert"])
    assert report["softmax_nodes"] >= 1 and [row["model_type"] for row in report["rows"]] == ["vit", "bert"]
    for row in report["rows"]:
        assert row["max_relative_difference"] <= 1e-4 and row["attention_fused"] >= 0 and "latency_ms" not in row
