"""``python -m detector export WEIGHTS.pt``: ONNX (FP32, FP16, INT8) with metadata and a parity check, or a Triton
model repository.

Every export is checked: the torch model and ONNX Runtime run the same real photos, the errors are printed, and the
export fails when they disagree beyond the tolerance of its precision. INT8 models are judged by what they cost in
mAP and gain in latency instead, both measured here and printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


class ExportError(RuntimeError):
    """An export whose ONNX model does not reproduce the torch model."""


@dataclass
class Parity:
    """Largest errors of ONNX Runtime against torch, relative to the largest reference value of each part."""

    box_abs: float
    box_rel: float
    score_abs: float
    score_rel: float

    def __str__(self) -> str:
        return (f"boxes max abs {self.box_abs:.2e} (rel {self.box_rel:.2e}), "
                f"scores max abs {self.score_abs:.2e} (rel {self.score_rel:.2e})")


def architecture_metadata(model) -> dict[str, str]:
    """What our exports add to Ultralytics' ONNX metadata: the model name, its attention layers, and the exporter."""
    from . import ultralytics_adapter as adapter
    from .models import baseline_of
    from .variants import inserted_indices

    cfg, layers = adapter.model_dict(model), adapter.layers(model)
    attention = [{"index": i, "module": type(layers[i]).__name__} for i in inserted_indices(cfg)]
    name = Path(cfg.get("yaml_file") or baseline_of(model)).stem
    data = (getattr(model, "args", None) or {}).get("data")
    return {
        "architecture": name,
        "baseline": baseline_of(model),
        "attention": json.dumps(attention),
        "data": str(data) if data else "",
        "exporter": f"attention-yolo {__version__}",
    }


def add_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))


def parity_inputs(imgsz: int, dynamic: bool, stride: int = 32) -> list[np.ndarray]:
    """The real photos shipped with Ultralytics, letterboxed as the engine does: square, and for dynamic models also
    at their own aspect ratio (rect inference)."""
    from engine.images import read_image
    from engine.preprocess import letterbox, to_input_tensor

    from .ultralytics_adapter import ASSETS_DIR

    tensors = []
    for photo in ("bus.jpg", "zidane.jpg"):
        image = read_image(ASSETS_DIR / photo)
        for rect in (False, True) if dynamic else (False,):
            box = letterbox(image.shape[0], image.shape[1], (imgsz, imgsz), stride, rect)
            tensors.append(to_input_tensor(image, box))
    return tensors


def check_parity(model, onnx_path: Path, inputs: list[np.ndarray]) -> Parity:
    """Worst-case torch vs ONNX Runtime errors over ``inputs`` (N, 3, H, W float32 tensors)."""
    import torch

    from engine.model import create_session

    session = create_session(onnx_path)
    feed = session.get_inputs()[0]
    dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
    worst = Parity(0.0, 0.0, 0.0, 0.0)
    for x in inputs:
        with torch.no_grad():
            reference = model(torch.from_numpy(x))[0].numpy()
        output = session.run(None, {feed.name: x.astype(dtype)})[0].astype(np.float32)
        for part, rows in (("box", slice(0, 4)), ("score", slice(4, None))):
            ref, out = reference[:, rows], output[:, rows]
            abs_err = float(np.abs(ref - out).max())
            rel_err = abs_err / max(float(np.abs(ref).max()), 1e-12)
            setattr(worst, f"{part}_abs", max(getattr(worst, f"{part}_abs"), abs_err))
            setattr(worst, f"{part}_rel", max(getattr(worst, f"{part}_rel"), rel_err))
    return worst


def export_onnx(weights: str | Path, imgsz: int = 640, dynamic: bool = False, half: bool = False, opset: int = 17,
                simplify: bool = True, out: str | Path | None = None) -> tuple[Path, Parity]:
    """Export a checkpoint to ONNX through Ultralytics, add our metadata, and verify parity with torch."""
    from . import ultralytics_adapter as adapter

    model, _ = adapter.load_checkpoint(weights)
    weights = Path(weights)
    with tempfile.TemporaryDirectory() as scratch:  # Ultralytics writes next to the checkpoint: keep that clean
        link = Path(scratch) / weights.name
        link.symlink_to(weights.resolve())
        exported = adapter.export(link, format="onnx", imgsz=imgsz, dynamic=dynamic, half=half, opset=opset,
                                  simplify=simplify, device="cpu", verbose=False)
        path = Path(shutil.move(exported, out or weights.with_suffix(".onnx")))
    add_metadata(path, architecture_metadata(model))
    parity = check_parity(model.float().eval(), path, parity_inputs(imgsz, dynamic, adapter.max_stride(model)))
    precision = "fp16" if half else "fp32"
    print(f"parity torch vs ONNX Runtime ({precision}, {'dynamic' if dynamic else 'static'} {imgsz}): {parity}")
    if max(parity.box_rel, parity.score_rel) > TOLERANCE[precision]:
        raise ExportError(f"{path}: ONNX output differs from torch beyond {TOLERANCE[precision]:g} ({parity})")
    return path, parity


def calibration_images(data: str | Path, count: int) -> list[Path]:
    """Up to ``count`` training images of a dataset, evenly spaced over the sorted list (deterministic)."""
    from .data import DatasetError
    from .data.datayaml import entry_images, read_data_yaml
    from .train import check_data

    spec = read_data_yaml(check_data(data, splits=("train",)))
    images = sorted({image for entry in spec.entries("train") for image in entry_images(entry, problems=[])})
    if not images:
        raise DatasetError(f"{data}: no training images to calibrate INT8 quantization with")
    step = max(len(images) // count, 1)
    return images[::step][:count]


def quantize_int8(fp32: Path, data: str | Path, count: int = 64, out: Path | None = None) -> Path:
    """ONNX Runtime static quantization (QDQ, per-channel INT8 weights, UINT8 activations) calibrated on dataset
    images. The detection head's decoding (everything after its last convolutions, DFL included) stays in floating
    point: it concatenates pixel coordinates with 0..1 scores, which one INT8 scale cannot hold."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from engine import Detector

    from . import ultralytics_adapter as adapter

    detector = Detector(fp32)
    prepared = [detector.prepare(p).tensor for p in calibration_images(data, count)]
    input_name = detector.info.input_name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(prepared)

        def get_next(self):
            tensor = next(self.items, None)
            return None if tensor is None else {input_name: tensor}

    out = out or fp32.with_name(f"{fp32.stem}-int8.onnx")
    preprocessed = out.with_name(f"{out.stem}-pre.onnx")
    quant_pre_process(str(fp32), str(preprocessed), skip_symbolic_shape=True)
    nodes = onnx.load(str(preprocessed)).graph.node
    head = max(layer for n in nodes if (layer := adapter.onnx_node_layer(n.name)) is not None)
    excluded = [n.name for n in nodes
                if adapter.onnx_node_layer(n.name) == head and (n.op_type != "Conv" or adapter.onnx_dfl_node(n.name))]
    quantize_static(str(preprocessed), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded)
    preprocessed.unlink()
    return out


def median_latency_ms(model: Path, images: list[Path], runs: int = 20) -> float:
    """Median end-to-end engine latency over ``runs`` passes of ``images``."""
    from engine import Detector

    detector = Detector(model)
    data = [p.read_bytes() for p in images]
    detector.predict(data[0])
    times = []
    for _ in range(runs):
        for blob in data:
            start = time.perf_counter()
            detector.predict(blob)
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def compare_int8(fp32: Path, int8: Path, data: str | Path, imgsz: int) -> dict:
    """mAP50-95 on val and engine latency of the INT8 model next to the FP32 one, measured in this run."""
    from . import ultralytics_adapter as adapter
    from .train import check_data

    images = calibration_images(data, 8)
    val_data = str(check_data(data, splits=("val",)))
    result = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        metrics = adapter.validate(path, data=val_data, imgsz=imgsz, batch=1, split="val")
        result[name] = {"map50_95": metrics["map50_95"], "map50": metrics["map50"],
                        "latency_ms": median_latency_ms(path, images)}
    return result


def triton_config(name: str, info, max_batch: int) -> str:
    """Triton ``config.pbtxt`` for an ONNX detection model with dynamic batch and image size: `engine.triton`'s
    configuration (the service's too), written as protobuf text through Triton's ``ModelConfig`` message."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from engine import triton

    outputs = 6 if info.end2end else 4 + info.num_classes
    config = triton.model_config(name, info, [-1, 3, -1, -1], [-1, outputs, -1], max_batch)
    return text_format.MessageToString(json_format.ParseDict(config, model_config_pb2.ModelConfig()))


def export_triton(weights: Path, repository: Path, name: str | None, imgsz: int, max_batch: int) -> Path:
    """``repository/NAME/1/model.onnx`` (dynamic batch and size) and ``repository/NAME/config.pbtxt``."""
    from engine import Detector

    name = name or weights.stem
    version = repository / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    onnx_path, _ = export_onnx(weights, imgsz=imgsz, dynamic=True, out=version / "model.onnx")
    info = Detector(onnx_path).info
    (repository / name / "config.pbtxt").write_text(triton_config(name, info, max_batch))
    return repository / name


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", type=Path,
                        help="checkpoint to export (e.g. runs/detect/yolo11n-cbam/weights/best.pt)")
    parser.add_argument("--format", choices=("onnx", "triton"), default="onnx",
                        help="onnx: one .onnx file; triton: a Triton model repository (default: onnx)")
    parser.add_argument("--imgsz", type=int, default=640, help="export image size (default: 640)")
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic batch, height and width: enables batching and rect inference (default: static)")
    parser.add_argument("--half", action="store_true", help="FP16 weights and activations (default: FP32)")
    parser.add_argument("--int8", action="store_true",
                        help="also write an INT8 model (ONNX Runtime static QDQ quantization calibrated on --data) "
                             "and print its mAP and latency next to FP32 (default: off)")
    parser.add_argument("--data", default=None, help="dataset YAML for INT8 calibration and evaluation")
    parser.add_argument("--calib", type=int, default=64, help="number of INT8 calibration images (default: 64)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output .onnx file, or the model repository folder for triton "
                             "(default: next to the weights; model_repository/ for triton)")
    parser.add_argument("--name", default=None, help="Triton model name (default: the weights' file stem)")
    parser.add_argument("--max-batch", type=int, default=16, help="Triton max_batch_size (default: 16)")


def run(args: argparse.Namespace) -> int:
    from .cli import UsageError
    from .train import check_data

    if args.weights.suffix != ".pt":
        raise UsageError(f"weights {args.weights}: expected a checkpoint (.pt) to export")
    if args.int8 and not args.data:
        raise UsageError("--int8 needs --data: calibration images come from the dataset's training split")
    if args.format == "triton":
        if args.int8 or args.half:
            raise UsageError("--format triton exports the FP32 model; --int8 and --half apply to --format onnx")
        repo = export_triton(args.weights, args.out or Path("model_repository"), args.name, args.imgsz, args.max_batch)
        print(f"wrote {repo}/config.pbtxt and {repo}/1/model.onnx")
        return 0
    data = check_data(args.data, splits=("train", "val")) if args.int8 else None  # before the export, not after
    path, _ = export_onnx(args.weights, args.imgsz, args.dynamic, args.half, args.opset, out=args.out)
    print(f"wrote {path}")
    if data is not None:
        int8 = quantize_int8(path, data, args.calib)
        result = compare_int8(path, int8, data, args.imgsz)
        fp, q = result["fp32"], result["int8"]
        print(f"wrote {int8}\n{'':6}{'mAP50-95':>9}{'mAP50':>8}{'latency ms':>12}")
        for name, r in result.items():
            print(f"{name:6}{r['map50_95']:9.4f}{r['map50']:8.4f}{r['latency_ms']:12.2f}")
        print(f"INT8 vs FP32: mAP50-95 {q['map50_95'] - fp['map50_95']:+.4f}, "
              f"latency x{q['latency_ms'] / fp['latency_ms']:.2f}"
              + ("" if q["latency_ms"] < fp["latency_ms"] else " (INT8 is not faster on this CPU)"))
    return 0
