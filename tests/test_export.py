"""`python -m detector export`: metadata, automatic parity check, FP16, INT8, Triton model repository."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from detector import build_model
from detector.cli import main
from detector.export import ExportError, export_onnx
from detector.ultralytics_adapter import save_checkpoint
from engine import Detector


def acting_variant(name: str, nc: int = 2, seed: int = 0) -> torch.nn.Module:
    """A variant whose attention acts (gamma != 0), whose BN statistics are not at their initial values and whose
    class scores are not all ~0: outputs that vary with the input, like a trained model's."""
    torch.manual_seed(seed)
    model = build_model(name, nc=nc)
    for m in model.modules():
        if getattr(m, "gamma", None) is not None:
            m.gamma.data.fill_(0.5)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    for conv in model.model[-1].cv3:
        conv[-1].bias.data.fill_(0.0)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(acting_variant("yolo11n-cbam"), tmp_path_factory.mktemp("export") / "yolo11n-cbam.pt")


def metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.slow
def test_export_embeds_metadata_and_checks_parity(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), "--imgsz", "160", "--dynamic", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parity torch vs ONNX Runtime (fp32, dynamic 160): boxes max abs" in printed
    meta = metadata(out)
    assert meta["architecture"] == "yolo11n-cbam" and meta["baseline"] == "yolo11n"
    assert [layer["module"] for layer in json.loads(meta["attention"])] == ["CBAM"] * 3
    assert meta["names"] == "{0: '0', 1: '1'}" and meta["task"] == "detect"
    info = Detector(out).info
    assert info.architecture == "yolo11n-cbam" and info.dynamic_batch and info.dynamic_hw


@pytest.mark.slow
def test_export_fails_when_onnx_disagrees_with_torch(checkpoint, tmp_path, monkeypatch):
    from detector import ultralytics_adapter as adapter

    other = save_checkpoint(acting_variant("yolo11n-cbam", seed=1), tmp_path / "other.pt")
    real_export = adapter.export
    monkeypatch.setattr(adapter, "export", lambda weights, **kw: real_export(other, **kw))
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(checkpoint, imgsz=96)


@pytest.mark.slow
def test_fp16_export(checkpoint, tmp_path):
    path, parity = export_onnx(checkpoint, imgsz=96, half=True, out=tmp_path / "half.onnx")
    assert Detector(path).info.precision == "fp16"
    # on CPU, Ultralytics converts weights and activations to FP16 and keeps FP32 inputs and outputs
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(str(path)).graph.initializer)
    assert parity.score_rel <= 1e-2


@pytest.mark.slow
def test_int8_quantizes_and_reports_map_and_latency(tmp_path, shapes_data, capsys):
    checkpoint = save_checkpoint(acting_variant("yolo11n-se"), tmp_path / "se.pt")
    args = ["export", str(checkpoint), "--imgsz", "64", "--int8", "--data", str(shapes_data), "--calib", "8"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "INT8 vs FP32: mAP50-95" in printed and "latency x" in printed
    graph = onnx.load(str(tmp_path / "se-int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    head_tail = [n for n in graph.node if "/dfl/" in n.name]
    assert head_tail and all(n.op_type != "QuantizeLinear" for n in head_tail)


def test_int8_needs_data(checkpoint, capsys):
    assert main(["export", str(checkpoint), "--int8"]) == 2
    assert "--int8 needs --data" in capsys.readouterr().err


@pytest.mark.slow
def test_triton_repository_is_a_valid_model_config(checkpoint, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "model_repository"
    assert main(["export", str(checkpoint), "--format", "triton", "--imgsz", "96", "--out", str(repo),
                 "--name", "cells", "--max-batch", "8"]) == 0
    config = text_format.Parse((repo / "cells" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "cells" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    assert list(config.input[0].dims) == [3, -1, -1] and list(config.output[0].dims) == [6, -1]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.parameters["architecture"].string_value == "yolo11n-cbam"
    info = Detector(repo / "cells" / "1" / "model.onnx").info
    assert info.dynamic_batch and config.input[0].name == info.input_name
