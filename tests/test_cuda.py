"""The engine and the service on an NVIDIA GPU: the same detections as on CPU, devices named and refused, GPU memory.

Every test here is marked `cuda` and skipped unless ONNX Runtime offers CUDAExecutionProvider (onnxruntime-gpu on a
machine with an NVIDIA GPU). `benchmarks/gpu_check.sh` installs onnxruntime-gpu and runs them with
``python -m pytest -q -m cuda tests/test_cuda.py``.

Parity: ONNX Runtime's CUDA provider runs float32 convolutions in TF32 on tensor cores by default (``use_tf32``), so
outputs drift from the CPU's by about 1e-3. The raw model outputs are compared first: the box coordinates of every
anchor within `RAW_BOX_TOLERANCE_INPUT_PX` pixels of the network input, class scores within `SCORE_TOLERANCE`. Then
the detections, matched one to one: same class, boxes within `BOX_TOLERANCE_INPUT_PX` (in the photo's pixels: that
times the letterbox scale, at least 1 px), confidences within `SCORE_TOLERANCE`. A detection found on one device only
is allowed where that drift decides it: its confidence within the tolerance of `conf`, or a tie (the other device kept
instead a box of about its confidence or more that overlaps it by about the IoU threshold: an NMS decision or a
class-score tie went the other way), for at most `MAX_TIE_FRACTION` of the detections. The largest differences seen
go to the JUnit report (`record_property`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from service_fixtures import BCCD_IMAGES, servers  # noqa: F401  # fixture
from test_engine import MIN_BOXES_PER_IMAGE, PARITY_CONF, _box_iou

from engine import Detector, DeviceError, Prediction, Timing

CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not CUDA,
        reason="needs an NVIDIA GPU and onnxruntime-gpu: ONNX Runtime here offers only "
        + ", ".join(ort.get_available_providers()),
    ),
]

REPO = Path(__file__).resolve().parents[1]
IOU = 0.7  # the engine's and the service's default NMS threshold
SCORE_TOLERANCE = 5e-3  # class scores and confidences, CPU vs CUDA (TF32)
RAW_BOX_TOLERANCE_INPUT_PX = 1.0  # raw box coordinates of every anchor, CPU vs CUDA, in pixels of the network input
BOX_TOLERANCE_INPUT_PX = 0.5  # the boxes of detections (at least 1 px of the photo), CPU vs CUDA
NMS_TIE_MARGIN = 0.1  # an unmatched box overlapping a kept one by at least IOU - this: an NMS decision drift can flip
MAX_TIE_FRACTION = 0.25  # of the detections of one image, at most this many on one device only by a tie
OTHER_IMGSZ = 640  # the model's own is 320
LARGE_IMGSZ = 1920  # the service's DETECT_MAX_IMGSZ
SERVER_GROWTH_FLOOR_MIB = 128  # GPU memory a server may keep after a 1920 run in any case (allocator granularity)


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def photos(request: pytest.FixtureRequest) -> list[Path]:
    """Real photos: bus.jpg and zidane.jpg from the ultralytics package when it is installed, and a BCCD blood-smear
    photo when the shared datasets or the repository's imported copy are present."""
    found: list[Path] = []
    if importlib.util.find_spec("ultralytics") is not None:
        found += request.getfixturevalue("real_photos")
    for folder in (BCCD_IMAGES, REPO / "datasets" / "bccd" / "images" / "test"):
        cells = sorted(folder.glob("*.jpg"))[:1] if folder.is_dir() else []
        if cells:
            found += cells
            break
    if not found:
        pytest.skip("no real photos: install ultralytics (its bus.jpg and zidane.jpg) or provide the BCCD images")
    return found


@pytest.fixture(scope="module")
def cpu_detector(trained_onnx_dynamic: Path) -> Detector:
    return Detector(trained_onnx_dynamic, device="cpu")


@pytest.fixture(scope="module")
def cuda_detector(trained_onnx_dynamic: Path) -> Detector:
    detector = Detector(trained_onnx_dynamic, device="cuda")
    detector.warmup()
    return detector


def _largest(values: np.ndarray) -> float:
    return float(values.max()) if values.size else 0.0


def assert_same_raw_output(cuda: np.ndarray, cpu: np.ndarray) -> dict[str, float]:
    """The model outputs (4 + classes, anchors) agree: boxes within an input pixel, scores within tolerance."""
    assert cuda.shape == cpu.shape
    box_difference = _largest(np.abs(cuda[:4] - cpu[:4]))
    score_difference = _largest(np.abs(cuda[4:] - cpu[4:]))
    assert box_difference <= RAW_BOX_TOLERANCE_INPUT_PX, f"raw boxes differ by {box_difference:.3f} input px"
    assert score_difference <= SCORE_TOLERANCE, f"raw class scores differ by {score_difference:.2e}"
    return {"raw_box_input_px": box_difference, "raw_score": score_difference}


def _excuse(box: int, side: Prediction, other: Prediction, conf: float) -> str | None:
    """Why drift can explain that `side`'s detection `box` has no match in `other`, if it can: "threshold" (its
    confidence is within the tolerance of `conf`), or "tie": `other` kept instead a detection of at least its
    confidence (less the tolerance) that overlaps it by about the IoU limit or more (NMS chose the other box, or the
    class scores were a tie: the box changed class, and another of that class may have suppressed it)."""
    if side.confidences[box] < conf + SCORE_TOLERANCE:
        return "threshold"
    if not len(other):
        return None
    overlap = _box_iou(side.boxes[box : box + 1], other.boxes)[0] >= IOU - NMS_TIE_MARGIN
    return "tie" if np.any(overlap & (other.confidences >= side.confidences[box] - SCORE_TOLERANCE)) else None


def assert_same_detections(
    cuda: Prediction, cpu: Prediction, conf: float = PARITY_CONF, scale: float = 1.0
) -> dict[str, float]:
    """CUDA's detections are the CPU's (see the module docstring); `scale` is original pixels per input pixel.

    Returns the largest differences of the matched detections and how many were matched or excused."""
    assert (cuda.width, cuda.height) == (cpu.width, cpu.height)
    box_tolerance = max(1.0, BOX_TOLERANCE_INPUT_PX * scale)
    distance = np.abs(cuda.boxes[:, None, :] - cpu.boxes[None, :, :]).max(axis=2, initial=0.0)  # (n, m) pixels
    confidence = np.abs(cuda.confidences[:, None] - cpu.confidences[None, :])
    compatible = (
        (cuda.class_ids[:, None] == cpu.class_ids[None, :])
        & (confidence <= SCORE_TOLERANCE)
        & (distance <= box_tolerance)
    )
    unmatched_cpu = set(range(len(cpu)))
    matched: list[tuple[int, int]] = []
    for index in np.argsort(-cuda.confidences, kind="stable"):
        candidates = [j for j in unmatched_cpu if compatible[index, j]]
        if candidates:
            best = min(candidates, key=lambda j: distance[index, j])
            matched.append((int(index), best))
            unmatched_cpu.remove(best)
    unmatched_cuda = set(range(len(cuda))) - {index for index, _ in matched}
    excuses: list[str] = []
    for side, other, unmatched, label in ((cuda, cpu, unmatched_cuda, "CUDA"), (cpu, cuda, unmatched_cpu, "CPU")):
        for box in unmatched:
            excuse = _excuse(box, side, other, conf)
            assert excuse, (
                f"{label} detection {side.boxes[box].round(1).tolist()} (class {side.class_ids[box]}, confidence "
                f"{side.confidences[box]:.4f}) has no counterpart on the other device "
                f"({len(cuda)} CUDA vs {len(cpu)} CPU detections)"
            )
            excuses.append(excuse)
    ties = excuses.count("tie")
    assert ties <= MAX_TIE_FRACTION * max(len(cuda), len(cpu)), (
        f"{ties} of {len(cuda)} CUDA / {len(cpu)} CPU detections are on one device only (NMS or class ties)"
    )
    pairs = np.array(matched, dtype=int).reshape(-1, 2)
    return {
        "matched": len(matched),
        "at_threshold": excuses.count("threshold"),
        "ties": ties,
        "box_px": _largest(distance[pairs[:, 0], pairs[:, 1]]),
        "box_tolerance_px": box_tolerance,
        "confidence": _largest(confidence[pairs[:, 0], pairs[:, 1]]),
    }


def _scale(detector: Detector, image: Path | np.ndarray, imgsz: int | None = None) -> float:
    """Original pixels per network-input pixel for `image` (the inverse of the letterbox gain)."""
    box = detector.prepare(image if isinstance(image, np.ndarray) else image.read_bytes(), imgsz).letterbox
    return max(box.height / box.resized_height, box.width / box.resized_width)


COUNTS = ("matched", "at_threshold", "ties")


def _worst(rows: list[dict[str, float]]) -> dict[str, float]:
    """Of the images' comparisons: the largest differences, and the counts added up."""
    return {key: (sum if key in COUNTS else max)(row[key] for row in rows) for key in rows[0]} if rows else {}


# ---------------------------------------------------------------------------------------------------------------------
# The engine


def test_cuda_detector_runs_on_the_gpu(cuda_detector: Detector):
    assert cuda_detector.info.providers[0] == "CUDAExecutionProvider", cuda_detector.info.providers
    assert cuda_detector.device == "cuda"


def test_cuda_matches_cpu_on_real_photos(cpu_detector, cuda_detector, photos, record_property):
    rows = []
    for photo in photos:
        data = photo.read_bytes()
        prepared = cpu_detector.prepare(data)
        [cpu_raw], [cuda_raw] = cpu_detector.infer([prepared]), cuda_detector.infer([prepared])
        raw = assert_same_raw_output(cuda_raw.output, cpu_raw.output)
        [cpu], [cuda] = cpu_detector.predict(data, conf=PARITY_CONF), cuda_detector.predict(data, conf=PARITY_CONF)
        rows.append(raw | assert_same_detections(cuda, cpu, scale=_scale(cpu_detector, photo)))
        assert rows[-1]["matched"] >= MIN_BOXES_PER_IMAGE, f"{photo.name}: too few detections to compare"
    record_property("cuda_vs_cpu_photos", json.dumps(_worst(rows)))


def test_cuda_batch_matches_cpu(cpu_detector, cuda_detector, photos, record_property):
    pictures = [cv2.imread(str(photo)) for photo in photos]
    first = pictures[0]
    images = [*pictures, np.ascontiguousarray(first[:, ::-1]), first[: first.shape[0] * 2 // 3].copy()]
    prepared = [cuda_detector.prepare(image) for image in images]
    raw = cuda_detector.infer(prepared)
    assert raw[0].batch_size >= 2  # the photo and its mirror image share one run on the GPU
    cpu_raw = cpu_detector.infer(prepared)
    batched = [cuda_detector.finish(r, p, conf=PARITY_CONF) for r, p in zip(raw, prepared, strict=True)]
    expected = cpu_detector.predict(images, conf=PARITY_CONF)
    rows = []
    for index, (image, together, cpu) in enumerate(zip(images, batched, expected, strict=True)):
        same_raw = assert_same_raw_output(raw[index].output, cpu_raw[index].output)
        rows.append(same_raw | assert_same_detections(together, cpu, scale=_scale(cpu_detector, image)))
        assert rows[-1]["matched"] >= MIN_BOXES_PER_IMAGE
    record_property("cuda_vs_cpu_batch", json.dumps(_worst(rows)))


def test_cuda_matches_cpu_at_another_imgsz(cpu_detector, cuda_detector, photos, record_property):
    rows = []
    for photo in photos:
        data = photo.read_bytes()
        prepared = cpu_detector.prepare(data, OTHER_IMGSZ)
        assert max(prepared.input_shape) == OTHER_IMGSZ
        [cpu_raw], [cuda_raw] = cpu_detector.infer([prepared]), cuda_detector.infer([prepared])
        raw = assert_same_raw_output(cuda_raw.output, cpu_raw.output)
        [cpu] = cpu_detector.predict(data, conf=PARITY_CONF, imgsz=OTHER_IMGSZ)
        [cuda] = cuda_detector.predict(data, conf=PARITY_CONF, imgsz=OTHER_IMGSZ)
        rows.append(raw | assert_same_detections(cuda, cpu, scale=_scale(cpu_detector, photo, OTHER_IMGSZ)))
        assert rows[-1]["matched"] >= 1
    assert sum(row["matched"] for row in rows) >= MIN_BOXES_PER_IMAGE * len(photos)
    record_property(f"cuda_vs_cpu_imgsz_{OTHER_IMGSZ}", json.dumps(_worst(rows)))


def test_cuda_0_names_the_first_gpu(trained_onnx_dynamic, cuda_detector, photos):
    first = Detector(trained_onnx_dynamic, device="cuda:0")
    assert first.info.providers[0] == "CUDAExecutionProvider" and first.device == "cuda:0"
    data = photos[0].read_bytes()
    [on_first], [on_default] = first.predict(data, conf=PARITY_CONF), cuda_detector.predict(data, conf=PARITY_CONF)
    assert_same_detections(on_first, on_default, scale=_scale(first, photos[0]))


def _gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 1
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    return max(1, sum(line.startswith("GPU ") for line in listed.splitlines()))


def test_a_gpu_that_is_not_there_is_a_device_error(trained_onnx_dynamic):
    if _gpu_count() > 7:
        pytest.skip("this machine has a GPU 7")
    with pytest.raises(DeviceError, match="cuda:7"):
        Detector(trained_onnx_dynamic, device="cuda:7")


# ---------------------------------------------------------------------------------------------------------------------
# The service


@pytest.fixture(scope="module")
def cuda_server(servers, trained_onnx_dynamic):  # noqa: F811
    return servers({"MODELS": f"bccd={trained_onnx_dynamic}", "DEVICE": "cuda"})


@pytest.fixture(scope="module")
def service_reference(trained_onnx_dynamic) -> Detector:
    """The CPU engine as the service configures it (reduced JPEG decoding is the service's default)."""
    return Detector(trained_onnx_dynamic, device="cpu", reduced_decoding=True)


def _post(server, photos: list[Path], **data: str) -> httpx.Response:
    files = [("image", (photo.name, photo.read_bytes(), "image/jpeg")) for photo in photos]
    return httpx.post(server.url + "/v1/detect", files=files, data=data, timeout=60)


def _served_prediction(result: dict, names: dict[int, str]) -> Prediction:
    detections = result["detections"]
    boxes = np.array([[d["box"][k] for k in ("x1", "y1", "x2", "y2")] for d in detections], np.float32).reshape(-1, 4)
    return Prediction(
        result["width"],
        result["height"],
        boxes,
        np.array([d["confidence"] for d in detections], np.float32),
        np.array([d["class"] for d in detections], np.int64),
        names,
        Timing(0, 0, 0, 0),
    )


def test_service_on_cuda_is_ready_and_serves_from_the_gpu(cuda_server):
    ready = httpx.get(cuda_server.url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
    model = httpx.get(cuda_server.url + "/v1/models/bccd", timeout=10).json()
    assert model["ready"] and model["providers"][0] == "CUDAExecutionProvider", model


def test_service_on_cuda_answers_like_the_cpu_engine(cuda_server, service_reference, photos, record_property):
    response = _post(cuda_server, photos, conf=str(PARITY_CONF))  # one request, several images: one batch
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(photos)
    rows = []
    for photo, result in zip(photos, results, strict=True):
        [cpu] = service_reference.predict(photo.read_bytes(), conf=PARITY_CONF)
        served = _served_prediction(result, service_reference.info.names)
        rows.append(assert_same_detections(served, cpu, scale=_scale(service_reference, photo)))
        assert rows[-1]["matched"] >= MIN_BOXES_PER_IMAGE
    record_property("service_cuda_vs_cpu_engine", json.dumps(_worst(rows)))


def _visible_gpu() -> str:
    """The nvidia-smi id (index or UUID) of the GPU that "cuda" means here."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


def gpu_memory_mib(pid: int) -> tuple[float, str]:
    """GPU memory of process `pid` in MiB (nvidia-smi's compute apps), and what was measured.

    Where nvidia-smi cannot see the process (a container's own PID namespace) or lists no processes, the memory used
    on the whole GPU: the other processes of the test hold theirs unchanged meanwhile."""

    def query(*args: str) -> tuple[list[list[str]], str]:
        result = subprocess.run(
            ["nvidia-smi", *args, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        rows = [[field.strip() for field in line.split(",")] for line in result.stdout.splitlines() if line.strip()]
        return (rows if result.returncode == 0 else []), result.stdout + result.stderr

    apps, _ = query("--query-compute-apps=pid,used_memory")
    used = [
        float(row[1])
        for row in apps
        if len(row) == 2 and row[0] == str(pid) and row[1].replace(".", "", 1).isdigit()  # not "[N/A]"
    ]
    if used:
        return sum(used), f"process {pid}"
    gpu, output = query("-i", _visible_gpu(), "--query-gpu=memory.used")
    if len(gpu) != 1 or not gpu[0][0].replace(".", "", 1).isdigit():
        pytest.skip(f"nvidia-smi reads no GPU memory here: {output.strip()[:300]}")
    return float(gpu[0][0]), f"GPU {_visible_gpu()} (process {pid} not listed by nvidia-smi)"


def _settled_memory(pid: int) -> tuple[float, str]:
    time.sleep(0.5)  # the driver's accounting of freed memory lags a little
    return gpu_memory_mib(pid)


def test_service_gpu_memory_stays_bounded_after_a_1920_request(
    cuda_server, trained_onnx_dynamic, photos, record_property
):
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not installed: GPU memory cannot be measured")
    pid = cuda_server.process.pid
    photo = photos[0]
    for _ in range(5):
        assert _post(cuda_server, [photo]).status_code == 200
    baseline, measured = _settled_memory(pid)
    large = _post(cuda_server, [photo], imgsz=str(LARGE_IMGSZ))
    assert large.status_code == 200, large.text
    for _ in range(5):
        assert _post(cuda_server, [photo]).status_code == 200
    after, _ = _settled_memory(pid)
    growth = after - baseline

    # What the same run keeps without the service's arena shrinkage: a session of this process, run once at the
    # model's size and once at 1920 (the server is idle meanwhile, so a whole-GPU reading measures it too).
    unshrunk_detector = Detector(trained_onnx_dynamic, device="cuda")
    unshrunk_detector.predict(photo.read_bytes())
    before_own, _ = _settled_memory(os.getpid())
    unshrunk_detector.predict(photo.read_bytes(), imgsz=LARGE_IMGSZ)
    after_own, _ = _settled_memory(os.getpid())
    unshrunk = after_own - before_own
    del unshrunk_detector

    limit = max(SERVER_GROWTH_FLOOR_MIB, unshrunk / 4)
    record_property(
        "gpu_memory_mib",
        json.dumps(
            {"measured": measured, "baseline": baseline, "after": after, "growth": growth, "unshrunk": unshrunk}
        ),
    )
    assert growth <= limit, (
        f"{measured}: {baseline:.0f} MiB before a request at imgsz {LARGE_IMGSZ}, {after:.0f} MiB after it and 5 "
        f"more (+{growth:.0f} MiB; a session without arena shrinkage kept +{unshrunk:.0f} MiB; limit {limit:.0f})"
    )
    assert httpx.get(cuda_server.url + "/readyz", timeout=10).status_code == 200
