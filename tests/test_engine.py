"""Tests of the torch-free ONNX engine (engine).

Ultralytics is the reference: predictions must match `YOLO(onnx).predict` box for box, and the
letterbox/NMS stages are checked against Ultralytics' own implementations. Error paths use
hand-made ONNX graphs (onnx.helper) and crafted image bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image

from engine import (
    Detector,
    DeviceError,
    ImageTooLarge,
    InvalidImage,
    InvalidParameter,
    ModelError,
    Prediction,
    UnsupportedImageType,
    decode_image,
    inspect_image,
)
from engine.model import ExecutionPlan, plan_execution
from engine.postprocess import select_boxes

REPO = Path(__file__).resolve().parents[1]
PARITY_CONF = 0.05  # a low threshold: enough boxes to compare on photos far from the model's blood cells
MIN_BOXES_PER_IMAGE = 3  # parity must compare real boxes, never pass on empty results
COCO_IMAGES = 10


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module", params=["dynamic", "static"])
def model_pair(request: pytest.FixtureRequest):
    """(our Detector, Ultralytics YOLO) over the same trained ONNX file, for the dynamic and the static export."""
    from ultralytics import YOLO

    path = request.getfixturevalue(f"trained_onnx_{request.param}")
    return Detector(path), YOLO(str(path), task="detect")


@pytest.fixture(scope="module")
def dynamic_detector(trained_onnx_dynamic: Path) -> Detector:
    return Detector(trained_onnx_dynamic)


@pytest.fixture(scope="module")
def static_detector(trained_onnx_static: Path) -> Detector:
    return Detector(trained_onnx_static)


@pytest.fixture(scope="module")
def bus(real_photos: list[Path]) -> np.ndarray:
    return cv2.imread(str(real_photos[0]))


def _reference_predict(yolo, source: Path, detector: Detector, conf: float = PARITY_CONF):
    imgsz = detector.info.imgsz[0] if detector.info.dynamic_hw else list(detector.info.imgsz)
    [result] = yolo.predict(str(source), conf=conf, iou=0.7, imgsz=imgsz, verbose=False)
    return result


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes (n, 4) x (m, 4)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], axis=1), np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _assert_same_detections(ours: Prediction, reference) -> None:
    """Every box matched one-to-one at IoU >= 0.99, same class, confidence within 1e-3."""
    ref_boxes = reference.boxes.xyxy.numpy()
    ref_conf = reference.boxes.conf.numpy()
    ref_cls = reference.boxes.cls.numpy().astype(int)
    assert (ours.height, ours.width) == reference.orig_shape
    assert len(ours) == len(ref_boxes), f"{len(ours)} boxes vs Ultralytics' {len(ref_boxes)}"
    iou = _box_iou(ours.boxes, ref_boxes)
    compatible = (ours.class_ids[:, None] == ref_cls[None, :]) & (np.abs(ours.confidences[:, None] - ref_conf) <= 1e-3)
    iou = np.where(compatible, iou, 0.0)
    unmatched = set(range(len(ref_boxes)))
    for index in range(len(ours)):
        best = max(unmatched, key=lambda j: iou[index, j])
        assert iou[index, best] >= 0.99, f"box {ours.boxes[index]} (class {ours.class_ids[index]}) has no match"
        unmatched.remove(best)


def _encode(image: np.ndarray, extension: str, params: tuple[int, ...] = ()) -> bytes:
    ok, encoded = cv2.imencode(extension, image, list(params))
    assert ok
    return encoded.tobytes()


def _pillow_bytes(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _metadata(num_classes: int = 3, **overrides: str | None) -> dict[str, str]:
    """Ultralytics-style metadata for a hand-made model; an override of None removes the key."""
    metadata = {
        "task": "detect",
        "stride": "32",
        "imgsz": "[64, 64]",
        "names": str({i: f"class{i}" for i in range(num_classes)}),
        "args": "{'batch': 1, 'dynamic': False, 'quantize': None}",
        "end2end": "False",
    }
    metadata.update(overrides)
    return {k: v for k, v in metadata.items() if v is not None}


def _constant_model(
    path: Path,
    rows: np.ndarray,
    metadata: dict[str, str],
    input_shape: tuple = (1, 3, 64, 64),
    input_type: int = TensorProto.FLOAT,
) -> Path:
    """Write an ONNX 'detector' whose output is always `rows` (broadcast over the batch), whatever the pixels."""
    pixels = "images"
    nodes = []
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT))
        pixels = "pixels"
    nodes += [
        helper.make_node("ReduceMean", [pixels], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "per_image"], ["mean3d"]),
        helper.make_node("Mul", ["mean3d", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "rows"], ["output0"]),
    ]
    initializers = [
        helper.make_tensor("per_image", TensorProto.INT64, [3], [-1, 1, 1]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("rows", TensorProto.FLOAT, [1, *rows.shape], rows.astype(np.float32).ravel().tolist()),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_detector",
        [helper.make_tensor_value_info("images", input_type, list(input_shape))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [input_shape[0], *rows.shape])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)
    return path


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring width x height 8-bit RGB, with no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


# ---------------------------------------------------------------------------------------------------------------------
# Model loading


def test_model_info_reads_ultralytics_metadata(model_pair):
    detector, yolo = model_pair
    info = detector.info
    dynamic = bool(info.args["dynamic"])
    assert info.task == "detect" and info.stride == 32
    assert info.dynamic_hw is dynamic and info.dynamic_batch is dynamic
    assert info.names == yolo.names and info.num_classes >= 1
    assert info.imgsz[0] == info.imgsz[1] and info.imgsz[0] % info.stride == 0
    assert info.version and "names" in info.metadata and info.providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize(
    ("args", "precision"),
    [
        ("{'quantize': None}", "fp32"),
        ("{'quantize': 8}", "int8"),
        ("{'quantize': 'fp16'}", "fp16"),
        ("{'half': True, 'int8': False}", "fp16"),  # Ultralytics < 8.4
        ("{'half': False, 'int8': True}", "int8"),
    ],
)
def test_precision_comes_from_the_export_args(tmp_path: Path, args: str, precision: str):
    path = _constant_model(tmp_path / "m.onnx", np.zeros((7, 4)), _metadata(args=args))
    assert Detector(path).info.precision == precision


def test_optional_project_metadata_is_parsed_safely(tmp_path: Path):
    metadata = _metadata(
        architecture='{"base": "yolo11n", "attention": "se"}', data="coco128.yaml", attention="__import__('os')"
    )
    detector = Detector(_constant_model(tmp_path / "m.onnx", np.zeros((7, 4)), metadata))
    assert detector.info.architecture == {"base": "yolo11n", "attention": "se"}
    assert detector.info.data == "coco128.yaml"
    assert detector.info.attention == "__import__('os')"  # kept as text, never evaluated


def test_non_onnx_file_is_a_model_error(tmp_path: Path):
    path = tmp_path / "model.onnx"
    path.write_text("this is not a protobuf")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        Detector(path)
    with pytest.raises(ModelError, match="does not exist"):
        Detector(tmp_path / "missing.onnx")


@pytest.mark.parametrize(
    ("rows_shape", "metadata", "message"),
    [
        ((7, 4), {"names": None}, "no 'names' metadata"),
        ((7, 4), {"task": "segment"}, "'segment' model"),
        ((7, 4), {"names": "{0: 'a', 2: 'b'}"}, "must map class ids"),
        ((5, 4), {}, r"output has shape \[1, 5, 4\]; a 3-class detector outputs \(batch, 7, anchors\)"),
        ((4, 7), {"end2end": "True"}, r"output has shape \[1, 4, 7\]; a end-to-end detector outputs"),
    ],
)
def test_models_that_are_not_our_detectors_are_refused(tmp_path: Path, rows_shape, metadata, message):
    path = _constant_model(tmp_path / "m.onnx", np.zeros(rows_shape), _metadata(**metadata))
    with pytest.raises(ModelError, match=message):
        Detector(path)


def test_cuda_request_without_cuda_provider_names_available_providers(tmp_path: Path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu provides CUDA here")
    path = _constant_model(tmp_path / "m.onnx", np.zeros((7, 4)), _metadata())
    with pytest.raises(DeviceError, match="CPUExecutionProvider"):
        Detector(path, device="cuda")
    with pytest.raises(DeviceError, match="'cpu', 'cuda' or 'cuda:N'"):
        Detector(path, device="gpu")


# ---------------------------------------------------------------------------------------------------------------------
# Parity with Ultralytics


def test_parity_on_real_photos(model_pair, real_photos: list[Path]):
    detector, yolo = model_pair
    for photo in real_photos:
        [ours] = detector.predict(photo.read_bytes(), conf=PARITY_CONF)
        _assert_same_detections(ours, _reference_predict(yolo, photo, detector))
        assert len(ours) >= MIN_BOXES_PER_IMAGE


def test_parity_on_exif_rotated_jpeg(model_pair, real_photos: list[Path], tmp_path: Path):
    detector, yolo = model_pair
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_pillow_bytes(Image.open(real_photos[0]), "JPEG", exif=exif.tobytes(), quality=95))
    [ours] = detector.predict(path.read_bytes(), conf=PARITY_CONF)
    assert (ours.width, ours.height) == (1080, 810)  # bus.jpg is 810x1080 before rotation
    _assert_same_detections(ours, _reference_predict(yolo, path, detector))
    assert len(ours) >= MIN_BOXES_PER_IMAGE


def test_parity_on_coco128(model_pair, shared_datasets: Path):
    detector, yolo = model_pair
    photos = sorted((shared_datasets / "coco128" / "images").rglob("*.jpg"))[:COCO_IMAGES]
    assert len(photos) == COCO_IMAGES
    total = 0
    for photo in photos:
        [ours] = detector.predict(photo, conf=PARITY_CONF)
        _assert_same_detections(ours, _reference_predict(yolo, photo, detector))
        total += len(ours)
    assert total >= MIN_BOXES_PER_IMAGE * COCO_IMAGES


def test_summary_has_ultralytics_shape(model_pair, real_photos: list[Path]):
    detector, yolo = model_pair
    [ours] = detector.predict(real_photos[1], conf=PARITY_CONF)
    reference = _reference_predict(yolo, real_photos[1], detector)
    for normalize in (False, True):
        mine, theirs = ours.summary(normalize), reference.summary(normalize)
        assert len(mine) == len(theirs) >= MIN_BOXES_PER_IMAGE
        assert [set(item) for item in mine] == [set(item) for item in theirs]
        assert [set(item["box"]) for item in mine] == [set(item["box"]) for item in theirs]
        assert {(item["class"], item["name"]) for item in mine} == {(item["class"], item["name"]) for item in theirs}
    document = ours.to_dict(normalize=True)
    assert (document["width"], document["height"]) == (1280, 720)
    assert max(item["box"]["x2"] for item in document["detections"]) <= 1.0
    assert set(document["timing_ms"]) == {"decode", "preprocess", "inference", "postprocess"}


def test_nms_matches_ultralytics_on_random_outputs():
    import torch
    from ultralytics.utils.nms import non_max_suppression

    rng = np.random.default_rng(0)
    num_classes, anchors = 80, 2100
    centres = rng.uniform(0, 320, (8, 2))[rng.integers(0, 8, anchors)] + rng.normal(0, 6, (anchors, 2))
    sizes = rng.uniform(20, 120, (anchors, 2))
    scores = rng.random((num_classes, anchors)) ** 8 / 2  # mostly low, a few high
    scores[rng.integers(0, 5, anchors), np.arange(anchors)] += rng.uniform(0.1, 0.5, anchors)  # five busy classes
    output = np.concatenate((centres.T, sizes.T, scores)).astype(np.float32)
    cases = [
        {"conf": 0.25, "iou": 0.7, "classes": None, "agnostic": False, "max_det": 300},
        {"conf": 0.1, "iou": 0.45, "classes": None, "agnostic": True, "max_det": 300},
        {"conf": 0.05, "iou": 0.7, "classes": [1, 3], "agnostic": False, "max_det": 20},
    ]
    for case in cases:
        classes = None if case["classes"] is None else np.array(case["classes"])
        boxes, confidences, class_ids = select_boxes(
            output, case["conf"], case["iou"], case["max_det"], classes, case["agnostic"], end2end=False
        )
        [expected] = non_max_suppression(
            torch.from_numpy(output[None]),
            case["conf"],
            case["iou"],
            case["classes"],
            case["agnostic"],
            max_det=case["max_det"],
        )
        assert len(boxes) >= 10, case
        np.testing.assert_array_equal(boxes, expected[:, :4].numpy())
        np.testing.assert_array_equal(confidences, expected[:, 4].numpy())
        np.testing.assert_array_equal(class_ids, expected[:, 5].numpy().astype(np.int64))


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing, rect inference and batching


def test_letterbox_matches_ultralytics_rect_for_dynamic_and_square_for_static(
    dynamic_detector: Detector, static_detector: Detector, real_photos: list[Path], bus: np.ndarray
):
    from ultralytics.data.augment import LetterBox

    size = dynamic_detector.info.imgsz[0]
    payloads = [photo.read_bytes() for photo in real_photos]
    payloads.append(_encode(bus[:1001, :780], ".png"))  # odd padding: exercises the round(p/2 -+ 0.1) split
    for data in payloads:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        for detector, rect in ((dynamic_detector, True), (static_detector, False)):
            prepared = detector.prepare(data)
            boxed = LetterBox(detector.info.imgsz, auto=rect, stride=detector.info.stride)(image=image)
            expected = boxed[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)
            np.testing.assert_array_equal(prepared.tensor, expected)
            if rect:
                assert max(prepared.input_shape) == size and min(prepared.input_shape) < size
                assert all(side % detector.info.stride == 0 for side in prepared.input_shape)
            else:
                assert prepared.input_shape == static_detector.info.imgsz
    # A 3:4 photo costs about 3/4 of the square input on the dynamic model.
    assert np.prod(dynamic_detector.prepare(real_photos[0]).input_shape) <= 0.85 * size * size


def test_dynamic_model_accepts_other_sizes_and_refuses_bad_ones(
    dynamic_detector: Detector, static_detector: Detector, bus: np.ndarray
):
    size = dynamic_detector.info.imgsz[0]
    larger = dynamic_detector.prepare(bus, imgsz=2 * size)
    assert max(larger.input_shape) == 2 * size
    assert len(dynamic_detector.predict(bus, imgsz=2 * size, conf=PARITY_CONF)[0]) >= MIN_BOXES_PER_IMAGE
    with pytest.raises(InvalidParameter, match="multiple of 32"):
        dynamic_detector.prepare(bus, imgsz=size + 1)
    with pytest.raises(InvalidParameter, match="fixed"):
        static_detector.prepare(bus, imgsz=2 * size)


def test_batched_inference_equals_one_by_one(dynamic_detector: Detector, bus: np.ndarray, real_photos: list[Path]):
    zidane = cv2.imread(str(real_photos[1]))
    images = [zidane, bus, np.ascontiguousarray(zidane[:, ::-1]), bus[:600].copy()]  # 2 shapes + 2 others
    prepared = [dynamic_detector.prepare(image) for image in images]
    raw = dynamic_detector.infer(prepared)
    assert [item.batch_size for item in raw] == [2, 1, 2, 1]  # same-shape inputs share one run
    batched = [dynamic_detector.finish(r, p, conf=PARITY_CONF) for r, p in zip(raw, prepared, strict=True)]
    assert [len(p) for p in batched] == [len(p) for p in dynamic_detector.predict(images, conf=PARITY_CONF)]
    for image, together in zip(images, batched, strict=True):
        [alone] = dynamic_detector.predict(image, conf=PARITY_CONF)
        assert len(alone) == len(together) >= MIN_BOXES_PER_IMAGE
        np.testing.assert_allclose(together.boxes, alone.boxes, atol=1e-2)
        np.testing.assert_allclose(together.confidences, alone.confidences, atol=1e-4)
        np.testing.assert_array_equal(together.class_ids, alone.class_ids)


def test_static_model_runs_one_image_at_a_time(static_detector: Detector, bus: np.ndarray):
    raw = static_detector.infer([static_detector.prepare(bus), static_detector.prepare(bus)])
    assert [item.batch_size for item in raw] == [1, 1]
    np.testing.assert_array_equal(raw[0].output, raw[1].output)


def test_concurrent_predictions_from_threads_agree(dynamic_detector: Detector, real_photos: list[Path]):
    payloads = [photo.read_bytes() for photo in real_photos] * 4
    expected = [dynamic_detector.predict(data, conf=PARITY_CONF)[0] for data in payloads[:2]] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda data: dynamic_detector.predict(data, conf=PARITY_CONF)[0], payloads))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got.boxes, want.boxes)
        np.testing.assert_array_equal(got.class_ids, want.class_ids)


# ---------------------------------------------------------------------------------------------------------------------
# Postprocess semantics on hand-made models with known outputs


def test_end2end_output_is_filtered_and_scaled_without_nms(tmp_path: Path):
    rows = np.array(
        [  # x1, y1, x2, y2 in the 64x64 input, score, class
            [10, 20, 30, 40, 0.9, 1],
            [10, 20, 30, 40, 0.8, 1],  # identical box: end-to-end output is not suppressed again
            [0, 16, 64, 48, 0.5, 0],
            [5, 5, 6, 6, 0.1, 2],
        ]
    )
    path = _constant_model(tmp_path / "e2e.onnx", rows, _metadata(end2end="True"))
    detector = Detector(path)
    image = np.zeros((100, 200, 3), np.uint8)  # scaled by 0.32 into 64x32, padded 16 rows on top
    [prediction] = detector.predict(image, conf=0.25)
    np.testing.assert_allclose(
        prediction.boxes, [[31.25, 12.5, 93.75, 75.0], [31.25, 12.5, 93.75, 75.0], [0, 0, 200, 100]], rtol=1e-6
    )
    assert prediction.class_ids.tolist() == [1, 1, 0]
    assert [d.name for d in prediction.detections] == ["class1", "class1", "class0"]
    assert len(detector.predict(image, conf=0.25, classes=[0])[0]) == 1
    assert len(detector.predict(image, conf=0.25, max_det=1)[0]) == 1
    assert len(detector.predict(image, conf=0.05)[0]) == 4


def test_class_aware_and_agnostic_nms(tmp_path: Path):
    boxes = [  # centre x, centre y, w, h (input pixels), then class scores
        [32, 32, 20, 20, 0.9, 0.0],
        [33, 32, 20, 20, 0.8, 0.0],  # IoU ~0.9 with the first, same class: suppressed at iou=0.7
        [32, 33, 20, 20, 0.0, 0.7],  # same place, other class: kept unless agnostic
        [10, 10, 8, 8, 0.25, 0.0],  # exactly at conf=0.25: dropped (scores must exceed conf)
    ]
    rows = np.array(boxes, dtype=np.float32).T  # (4 + nc, anchors)
    detector = Detector(_constant_model(tmp_path / "m.onnx", rows, _metadata(num_classes=2)))
    image = np.zeros((64, 64, 3), np.uint8)
    assert detector.predict(image)[0].confidences.tolist() == pytest.approx([0.9, 0.7])
    assert detector.predict(image, agnostic=True)[0].confidences.tolist() == pytest.approx([0.9])
    assert detector.predict(image, iou=0.95)[0].confidences.tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert detector.predict(image, classes=[1])[0].class_ids.tolist() == [1]
    assert detector.predict([image, image], classes=iter([1]))[1].class_ids.tolist() == [1]  # iterator read once
    assert len(detector.predict(image, conf=0.2)[0]) == 3


def test_float16_input_model_gets_float16_tensors(tmp_path: Path):
    rows = np.array([[32, 32, 20, 20, 0.9]], dtype=np.float32).T
    path = _constant_model(tmp_path / "m.onnx", rows, _metadata(num_classes=1), input_type=TensorProto.FLOAT16)
    detector = Detector(path)
    assert detector.info.input_dtype == "float16"
    prepared = detector.prepare(np.zeros((64, 64, 3), np.uint8))
    assert prepared.tensor.dtype == np.float16
    assert len(detector.finish(detector.infer([prepared])[0], prepared)) == 1


def test_static_batch_model_pads_the_last_run(tmp_path: Path):
    rows = np.array([[32, 32, 20, 20, 0.9]], dtype=np.float32).T
    detector = Detector(
        _constant_model(tmp_path / "m.onnx", rows, _metadata(num_classes=1), input_shape=(2, 3, 64, 64))
    )
    assert detector.info.batch == 2 and not detector.info.dynamic_batch
    images = [np.zeros((64, 64, 3), np.uint8)] * 3
    raw = detector.infer([detector.prepare(image) for image in images])
    assert [item.batch_size for item in raw] == [2, 2, 1]
    assert [len(p) for p in detector.predict(images)] == [1, 1, 1]


def test_bad_parameters_are_refused(dynamic_detector: Detector, bus: np.ndarray):
    for parameters, message in (
        ({"conf": 1.5}, "conf"),
        ({"iou": -0.1}, "iou"),
        ({"max_det": 0}, "max_det"),
        ({"classes": [dynamic_detector.info.num_classes]}, "classes"),
    ):
        with pytest.raises(InvalidParameter, match=message):
            dynamic_detector.predict(bus, **parameters)


@pytest.mark.parametrize(
    ("cores", "asked", "plan"),
    [
        (1, {}, ExecutionPlan(1, 1, spinning=False)),
        (2, {}, ExecutionPlan(2, 1, spinning=False, solo_threads=2)),  # one core per run; a lone run gets both
        (8, {}, ExecutionPlan(8, 1, spinning=False, solo_threads=4)),
        (16, {}, ExecutionPlan(8, 2, spinning=False, solo_threads=4)),  # at most 8 instances: then threads
        (32, {}, ExecutionPlan(8, 4, spinning=False)),  # the instances have the most threads already: no solo
        (64, {}, ExecutionPlan(8, 4, spinning=True)),  # at most 4 threads each: cores left over
        (2, {"threads": 2}, ExecutionPlan(1, 2, spinning=False)),
        (8, {"instances": 1}, ExecutionPlan(1, 4, spinning=True)),  # what is asked for gets the cores
        (8, {"instances": 2}, ExecutionPlan(2, 4, spinning=False)),
        (8, {"instances": 3, "threads": 3}, ExecutionPlan(3, 3, spinning=False, solo_threads=4)),  # kept as asked
        (2, {"solo_threads": 1}, ExecutionPlan(2, 1, spinning=False)),  # not above the instances' threads: none
        (4, {"instances": 2, "threads": 1, "solo_threads": 3}, ExecutionPlan(2, 1, spinning=True, solo_threads=3)),
        (1, {"instances": 1, "threads": 1, "solo_threads": 4}, ExecutionPlan(1, 1, spinning=False)),  # one instance
        (16, {"device": "cuda"}, ExecutionPlan(1, 4, spinning=True)),
    ],
)
def test_instances_and_threads_are_chosen_from_the_cores(cores: int, asked: dict, plan: ExecutionPlan):
    assert plan_execution(cores=cores, **asked) == plan


@pytest.mark.parametrize("asked", [{"instances": -1}, {"threads": -2}, {"solo_threads": -1}])
def test_a_negative_instance_count_or_thread_count_is_refused(asked: dict):
    with pytest.raises(InvalidParameter, match="must be >= 0"):
        plan_execution(cores=2, **asked)


# ---------------------------------------------------------------------------------------------------------------------
# Image decoding and bad input


def test_declared_size_is_read_from_every_supported_header(bus: np.ndarray):
    image = bus[:300, :200]
    rgb = Image.fromarray(image[..., ::-1])
    payloads = {
        "JPEG": _encode(image, ".jpg"),
        "JPEG progressive": _encode(image, ".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        "PNG": _encode(image, ".png"),
        "BMP": _encode(image, ".bmp"),
        "TIFF": _encode(image, ".tiff"),
        "TIFF big-endian 16-bit": _pillow_bytes(
            Image.fromarray((image[..., 0].astype(np.uint16) * 200).astype(">u2")), "TIFF"
        ),
        "WebP lossy": _encode(image, ".webp", (cv2.IMWRITE_WEBP_QUALITY, 80)),
        "WebP lossless": _pillow_bytes(rgb, "WEBP", lossless=True),
        "WebP extended": _pillow_bytes(rgb.convert("RGBA"), "WEBP", exif=Image.Exif().tobytes()),
    }
    assert payloads["TIFF big-endian 16-bit"].startswith(b"MM")
    for name, data in payloads.items():
        header = inspect_image(data)
        assert (header.width, header.height) == (200, 300), name
        assert name.startswith(header.format), name
        assert decode_image(data).shape == (300, 200, 3), name


def _bad_bytes(case: str, jpeg: bytes, png: bytes, bmp: bytes) -> bytes:
    noise = np.random.default_rng(0).bytes
    return {
        "empty": b"",
        "random": noise(5000),
        "html": b"<html><body>not an image</body></html>",
        "JPEG cut in its header": jpeg[:100],
        "JPEG cut in its data": jpeg[: len(jpeg) * 6 // 10],
        "JPEG cut then zero-padded": jpeg[: len(jpeg) // 2] + bytes(len(jpeg) - len(jpeg) // 2),
        "PNG signature only": png[:8],
        "PNG cut in its data": png[: len(png) * 6 // 10],
        "PNG with corrupt data": png[:33] + noise(len(png) - 33),
        "BMP declaring 0x0": bmp[:18] + bytes(8) + bmp[26:],
    }[case]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "empty"),
        ("random", "not a recognised image"),
        ("html", "not a recognised image"),
        ("JPEG cut in its header", "truncated"),
        ("JPEG cut in its data", "truncated"),
        ("JPEG cut then zero-padded", "truncated"),
        ("PNG signature only", "truncated"),
        ("PNG cut in its data", "could not be decoded"),
        ("PNG with corrupt data", "could not be decoded"),
        ("BMP declaring 0x0", "empty image"),
    ],
)
def test_empty_random_truncated_and_corrupt_bytes_are_invalid(bus: np.ndarray, case: str, message: str):
    data = _bad_bytes(case, _encode(bus, ".jpg"), _encode(bus, ".png"), _encode(bus[:64, :64], ".bmp"))
    with pytest.raises(InvalidImage, match=message):
        decode_image(data)


def test_decompression_bomb_is_refused_from_the_header_alone(dynamic_detector: Detector):
    with pytest.raises(ImageTooLarge, match="100000x100000"):
        decode_image(_png_header(100_000, 100_000))  # 10 gigapixels declared, 33 bytes sent
    with pytest.raises(ImageTooLarge, match="limit is 1,000"):
        decode_image(_png_header(40, 30), max_pixels=1000)
    with pytest.raises(ImageTooLarge):
        dynamic_detector.predict(_png_header(20_000, 20_000))


def test_unsupported_image_types_are_named(bus: np.ndarray):
    gif = _pillow_bytes(Image.fromarray(bus[:64, :64, ::-1]), "GIF")
    with pytest.raises(UnsupportedImageType, match="GIF"):
        decode_image(gif)
    with pytest.raises(UnsupportedImageType, match="HEIF/AVIF"):
        decode_image(b"\x00\x00\x00\x1cftypheic" + bytes(100))


def test_grayscale_rgba_palette_and_16bit_images_become_8bit_bgr():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(_encode(gray, ".png")), np.repeat(gray[..., None], 3, axis=2))

    bgra = rng.integers(0, 256, (24, 32, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(_encode(bgra, ".png")), bgra[..., :3])  # alpha dropped

    palette = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).convert("P")
    expected = np.asarray(palette.convert("RGB"))[..., ::-1]
    np.testing.assert_array_equal(decode_image(_pillow_bytes(palette, "PNG")), expected)

    deep = rng.integers(0, 65536, (24, 32, 3), dtype=np.uint16)
    np.testing.assert_array_equal(decode_image(_encode(deep, ".png")), (deep >> 8).astype(np.uint8))
    deep_gray = rng.integers(0, 65536, (24, 32), dtype=np.uint16)
    decoded = decode_image(_encode(deep_gray, ".png"))
    assert decoded.dtype == np.uint8 and decoded.shape == (24, 32, 3)
    np.testing.assert_array_equal(decoded[..., 1], (deep_gray >> 8).astype(np.uint8))


def test_numpy_input_must_be_bgr_uint8(dynamic_detector: Detector):
    with pytest.raises(InvalidImage, match="uint8"):
        dynamic_detector.prepare(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InvalidImage, match=r"\(H, W, 3\)"):
        dynamic_detector.prepare(np.zeros((10, 10), np.uint8))
