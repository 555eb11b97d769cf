"""Reduced JPEG decoding (libjpeg's 1/2, 1/4, 1/8 scales): the reduction chosen, the original's upright size
kept (EXIF too), boxes and mAP as with full decoding, and the service's setting."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from service_fixtures import REPO, servers  # noqa: F401  # fixtures

from engine import Detector, decode_image, decode_image_at_least

sys.path.insert(0, str(REPO / "benchmarks"))
import reduced_decoding  # noqa: E402

MAX_MAP_CHANGE = 0.002  # the goal of issue 14: mAP50-95 within 0.002 of full decoding


def _jpeg(height: int, width: int, exif: bytes | None = None) -> bytes:
    """A JPEG with structure at every scale (a smooth gradient under noise)."""
    rng = np.random.default_rng(0)
    image = (np.linspace(0, 255, width)[None, :, None] + rng.normal(0, 20, (height, width, 3))).clip(0, 255)
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, "JPEG", quality=90, **({"exif": exif} if exif else {}))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "need", "reduction"),
    [
        ((2160, 3840), (360, 640), 4),  # 4K frame at imgsz 640
        ((2160, 3840), (541, 640), 2),  # one row more than 1/4 gives
        ((2160, 3840), (271, 480), 4),  # one row more than 1/8 gives
        ((2160, 3840), (270, 480), 8),
        ((2161, 3841), (271, 481), 8),  # libjpeg rounds the scaled size up
        ((480, 640), (240, 320), 2),  # a BCCD photo at imgsz 320
        ((480, 640), (241, 320), 1),
        ((100, 120), (100, 120), 1),
    ],
)
def test_the_largest_reduction_that_still_covers_the_input_is_used(size, need, reduction):
    data = _jpeg(*size)
    decoded = decode_image_at_least(data, *need)
    assert (decoded.height, decoded.width) == size
    assert decoded.pixels.shape[:2] == (-(-size[0] // reduction), -(-size[1] // reduction))
    if reduction == 1:
        np.testing.assert_array_equal(decoded.pixels, decode_image(data))


def test_only_jpegs_are_decoded_reduced():
    png = cv2.imencode(".png", np.zeros((2160, 3840, 3), np.uint8))[1].tobytes()
    decoded = decode_image_at_least(png, 270, 480)
    assert decoded.pixels.shape[:2] == (decoded.height, decoded.width) == (2160, 3840)


def test_an_exif_turned_jpeg_keeps_its_upright_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = _jpeg(2160, 3840, exif.tobytes())
    decoded = decode_image_at_least(data, 270, 480)  # the sides as stored: 3840 wide, 1/8 covers it
    assert (decoded.height, decoded.width) == (3840, 2160)
    assert decoded.pixels.shape[:2] == (480, 270)


@pytest.fixture(scope="module")
def detectors(trained_onnx_dynamic) -> tuple[Detector, Detector]:
    return Detector(trained_onnx_dynamic), Detector(trained_onnx_dynamic, reduced_decoding=True)


@pytest.mark.shared
@pytest.mark.parametrize("scale", [1, 4])  # a BCCD photo (1/2 at 320) and the same as a 2560x1920 frame (1/8)
def test_boxes_stay_where_full_decoding_puts_them(detectors, bccd_data: Path, scale: int):
    """Nearly every box of full decoding is found again after reduced decoding, in nearly the same place.
    Measured on six BCCD val photos at conf 0.25: 92-100 % found at IoU >= 0.5, median IoU 0.990-0.995."""
    full, reduced = detectors
    photos = sorted((bccd_data.parent / "images" / "val").glob("*.jpg"))[:6]
    for photo in photos:
        data = photo.read_bytes()
        if scale > 1:
            large = cv2.resize(decode_image(data), None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            data = cv2.imencode(".jpg", large, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        [expected], [got] = (detector.predict(data, conf=0.25) for detector in (full, reduced))
        assert (got.width, got.height) == (expected.width, expected.height)
        changes = reduced_decoding.box_changes(expected, got)
        assert changes["boxes_full"] >= 5, changes  # compare real boxes
        assert changes["matched_share"] >= 0.85 and changes["median_iou"] >= 0.95, (photo.name, changes)


@pytest.mark.shared
def test_map_on_bccd_val_is_no_lower_than_with_full_decoding(trained_onnx_dynamic, bccd_data: Path):
    """BCCD's 640x480 photos at the shipped model's 320 decode at 1/2 scale. The goal of issue 14 was parity within
    0.002; measured, mAP50-95 is 0.0033 higher (0.5168 vs 0.5135: libjpeg's scaling filters better than the
    bilinear resize from full size), so the test holds it to no more than 0.002 lower."""
    report = reduced_decoding.measure(trained_onnx_dynamic, bccd_data, "val", None, {}, runs=1)
    accuracy = report["accuracy"]
    assert accuracy["full"]["map50_95"] > 0.3, accuracy  # the model works: the comparison means something
    assert accuracy["map50_95_change"] >= -MAX_MAP_CHANGE, accuracy


def test_the_service_decodes_reduced_unless_told_not_to(servers, trained_onnx_dynamic):  # noqa: F811
    data = reduced_decoding.default_frames()["bus-3840x2160.jpg"]
    for setting, reduced in (("true", True), ("false", False)):
        server = servers({"MODELS": str(trained_onnx_dynamic), "REDUCED_DECODING": setting})
        response = httpx.post(server.url + "/v1/detect", files={"image": ("frame.jpg", data)}, data={"conf": "0.05"})
        assert response.status_code == 200, response.text
        [result] = response.json()["results"]
        assert (result["width"], result["height"]) == (3840, 2160)
        [expected] = Detector(trained_onnx_dynamic, reduced_decoding=reduced).predict(data, conf=0.05)
        served = np.array([[item["box"][key] for key in ("x1", "y1", "x2", "y2")] for item in result["detections"]])
        np.testing.assert_allclose(served, expected.boxes, atol=0.01)
