"""`python -m detector predict` and `val` on an exported model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest

from detector.cli import main
from detector.predict import resolve_sources


def test_sources(tmp_path, real_photos):
    for photo in real_photos:
        shutil.copy(photo, tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in resolve_sources(str(tmp_path))] == ["bus.jpg", "zidane.jpg"]
    assert [p.name for p in resolve_sources(str(tmp_path / "*.jpg"))] == ["bus.jpg", "zidane.jpg"]
    assert resolve_sources(str(real_photos[0])) == [real_photos[0]]
    with pytest.raises(FileNotFoundError, match="no images found"):
        resolve_sources(str(tmp_path / "*.png"))


def test_predict_folder_to_jsonl_coco_and_annotated(tmp_path, real_photos, trained_onnx_dynamic, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for photo in real_photos:
        shutil.copy(photo, images)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out, annotated = tmp_path / "results.jsonl", tmp_path / "annotated"
    args = ["predict", str(images), "--model", str(trained_onnx_dynamic), "--conf", "0.05", "--out", str(out)]
    assert main([*args, "--save-dir", str(annotated)]) == 1  # one image failed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(line["image"]).name for line in lines] == ["broken.jpg", "bus.jpg", "zidane.jpg"]
    assert "error" in lines[0] and "JPEG" in lines[0]["error"]
    bus = lines[1]
    assert (bus["width"], bus["height"]) == (810, 1080) and len(bus["detections"]) > 5
    assert set(bus["detections"][0]) == {"name", "class", "confidence", "box"}
    assert "2 images, " in capsys.readouterr().err
    drawn = cv2.imread(str(annotated / "bus.jpg"))
    assert drawn.shape == (1080, 810, 3) and (drawn != cv2.imread(str(images / "bus.jpg"))).any()

    coco = tmp_path / "coco.json"
    assert main(["predict", str(images / "bus.jpg"), "--model", str(trained_onnx_dynamic), "--conf", "0.05",
                 "--format", "coco", "--out", str(coco)]) == 0
    records = json.loads(coco.read_text())
    assert len(records) == len(bus["detections"])
    assert set(records[0]) == {"image_id", "category_id", "bbox", "score"} and records[0]["image_id"] == "bus"


def test_val_of_an_onnx_model(trained_onnx_static, trained_onnx_dynamic, bccd_data, tmp_path, capsys):
    assert main(["val", str(trained_onnx_static), "--data", str(bccd_data), "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0 < metrics["map50_95"] < metrics["map50"] <= 1
    assert "RBC" in capsys.readouterr().out
    # a dynamic model is validated at its export size, not at Ultralytics' default 640
    assert main(["val", str(trained_onnx_dynamic), "--data", str(bccd_data), "--json", str(tmp_path / "d.json")]) == 0
    dynamic = json.loads((tmp_path / "d.json").read_text())
    assert dynamic["map50_95"] == pytest.approx(metrics["map50_95"], abs=0.01), (dynamic, metrics)
    checkpoint = Path(__file__).resolve().parents[1] / "weights" / "bccd.pt"  # validated at its training size
    assert main(["val", str(checkpoint), "--data", str(bccd_data), "--json", str(tmp_path / "p.json")]) == 0
    torch_metrics = json.loads((tmp_path / "p.json").read_text())
    assert torch_metrics["map50_95"] == pytest.approx(metrics["map50_95"], abs=0.01), (torch_metrics, metrics)


def test_annotated_output_that_cannot_be_written_is_an_error(tmp_path, real_photos, trained_onnx_dynamic, monkeypatch):
    import cv2 as cv2_module

    monkeypatch.setattr(cv2_module, "imwrite", lambda *args, **kwargs: False)  # what OpenCV does on ENOSPC
    with pytest.raises(OSError, match="disk full"):
        main(["predict", str(real_photos[0]), "--model", str(trained_onnx_dynamic), "--save-dir", str(tmp_path)])
