"""The Detector: decode -> letterbox -> ONNX Runtime -> NMS, as one call or as three separate stages.

The stages exist so a server can micro-batch requests that carry different parameters:
`prepare` each request's image, `infer` all of them together (same-shape inputs are stacked
into one `session.run`), then `finish` each with its own thresholds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import InvalidImage, InvalidParameter
from .images import DEFAULT_MAX_PIXELS, DecodedImage, decode_image, decode_image_at_least, inspect_image
from .model import ModelInfo, create_session, read_model_info
from .postprocess import scale_boxes, select_boxes
from .preprocess import MAX_IMGSZ, PAD_VALUE, Letterbox, letterbox, to_input_tensor, valid_imgsz
from .results import Prediction, Timing

ImageSource = bytes | bytearray | memoryview | str | Path | np.ndarray
"""Encoded image bytes, a path to an image file, or a decoded BGR uint8 array of shape (H, W, 3)."""


@dataclass(frozen=True, eq=False)
class Prepared:
    """One image decoded and letterboxed, ready for `Detector.infer`."""

    tensor: np.ndarray  # (1, 3, H, W) network input
    letterbox: Letterbox
    decode_ms: float
    preprocess_ms: float

    @property
    def input_shape(self) -> tuple[int, int]:
        """(height, width) of the network input; inputs of equal shape can share a batch."""
        return self.letterbox.input_height, self.letterbox.input_width


@dataclass(frozen=True, eq=False)
class RawOutput:
    """The model output for one image, before NMS."""

    output: np.ndarray  # (4 + nc, anchors), or (N, 6) for end-to-end models; float32
    inference_ms: float  # this image's share of the session.run that produced it
    batch_size: int  # how many images that session.run processed


class Detector:
    """Object detector over an Ultralytics detection ONNX. Safe to share between threads.

    Args:
        path: the ONNX file.
        device: "cpu", "cuda" or "cuda:N".
        threads: ONNX Runtime intra-op threads (default: physical cores available to the process).
        max_pixels: images whose header declares more pixels are refused with ImageTooLarge.
        instances: sessions of the model, so that `instances` runs (`infer(..., instance=i)`) go at once.
        spinning: ONNX Runtime's intra-op spinning (see `create_session`).
        solo_threads: intra-op threads of one more, spinning session for runs that have the machine to themselves
            (`infer(..., solo=True)`); 0: none.
        max_imgsz: the largest `imgsz` accepted (at most `MAX_IMGSZ`).
        reduced_decoding: decode a JPEG at 1/2, 1/4 or 1/8 scale in libjpeg when it stays at least as large as
            the model input needs (`decode_image_at_least`): a 4K frame decodes in half the time; boxes are in the
            original's pixels still. Off, every image is decoded in full, as Ultralytics does.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        instances: int = 1,
        spinning: bool = True,
        max_imgsz: int = MAX_IMGSZ,
        reduced_decoding: bool = False,
        solo_threads: int = 0,
    ) -> None:
        if instances < 1:
            raise InvalidParameter(f"instances must be >= 1, got {instances}")
        self._sessions = [create_session(path, device, threads, spinning) for _ in range(instances)]
        self._solo_session = create_session(path, device, solo_threads, spinning=True) if solo_threads else None
        self.info: ModelInfo = read_model_info(self._sessions[0], path)
        self.device = device
        self.max_pixels = max_pixels
        self.max_imgsz = min(max_imgsz, MAX_IMGSZ)
        self.reduced_decoding = reduced_decoding
        self._input_dtype = np.float16 if self.info.input_dtype == "float16" else np.float32

    def warmup(self) -> RawOutput:
        """Run every session once at the default input size, so that no request pays for initialisation; the
        output of that run (its shape is the model's output shape at its default size)."""
        height, width = self.info.imgsz
        blank = self.prepare(np.full((height, width, 3), PAD_VALUE, np.uint8))
        if self.has_solo_session:
            self.infer([blank], solo=True)
        return [self.infer([blank], instance=instance)[0] for instance in range(self.instances)][0]

    def predict(
        self,
        images: ImageSource | Sequence[ImageSource],
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int | None = None,
        max_det: int = 300,
        classes: Iterable[int] | None = None,
        agnostic: bool = False,
    ) -> list[Prediction]:
        """Detect objects in one image or a list of images (one Prediction per image, in order)."""
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        classes = None if classes is None else list(classes)  # an iterator would be used up by the first image
        self._check_thresholds(conf, iou, max_det, classes)
        prepared = [self.prepare(image, imgsz) for image in batch]
        raw_outputs = self.infer(prepared)
        return [
            self.finish(raw, item, conf, iou, max_det, classes, agnostic)
            for raw, item in zip(raw_outputs, prepared, strict=True)
        ]

    def prepare(self, image: ImageSource, imgsz: int | None = None) -> Prepared:
        """Decode (bytes or path) and letterbox one image.

        Args:
            imgsz: inference size (long side) for models with dynamic height/width; default the
                export size. Must be a multiple of the stride. Fixed-size models accept only None
                or their own size.
        """
        target, rect = self._target_size(imgsz)
        start = time.perf_counter()
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise InvalidImage(f"arrays must be BGR uint8 of shape (H, W, 3), got {image.dtype} {image.shape}")
            decoded = DecodedImage(image, image.shape[0], image.shape[1])
        else:
            data = Path(image).read_bytes() if isinstance(image, (str, Path)) else image
            decoded = self._decode(data, target, rect)
        decoded_at = time.perf_counter()
        box = letterbox(decoded.height, decoded.width, target, self.info.stride, rect)
        tensor = to_input_tensor(decoded.pixels, box, self._input_dtype)
        done = time.perf_counter()
        return Prepared(tensor, box, (decoded_at - start) * 1e3, (done - decoded_at) * 1e3)

    def _decode(self, data: bytes | bytearray | memoryview, target: tuple[int, int], rect: bool) -> DecodedImage:
        if not self.reduced_decoding:
            pixels = decode_image(data, self.max_pixels)
            return DecodedImage(pixels, pixels.shape[0], pixels.shape[1])
        data = bytes(data) if isinstance(data, memoryview) else data  # copied once, not again by the decoder
        header = inspect_image(data)
        stored = letterbox(header.height, header.width, target, self.info.stride, rect)
        turned = letterbox(header.width, header.height, target, self.info.stride, rect)  # EXIF may swap the sides
        min_height = max(stored.resized_height, turned.resized_width)
        min_width = max(stored.resized_width, turned.resized_height)
        return decode_image_at_least(data, min_height, min_width, self.max_pixels, header)

    @property
    def instances(self) -> int:
        """Sessions of the model: runs on different instances go at once."""
        return len(self._sessions)

    @property
    def has_solo_session(self) -> bool:
        """Whether `infer(..., solo=True)` has a session of its own (`solo_threads`)."""
        return self._solo_session is not None

    def infer(
        self,
        prepared: Sequence[Prepared],
        run_options: ort.RunOptions | None = None,
        instance: int = 0,
        solo: bool = False,
    ) -> list[RawOutput]:
        """Run the model on prepared images, stacking same-shape inputs into one run where the batch axis allows.

        Models with a dynamic batch axis get one run per input shape; static-batch models get runs of
        their fixed batch size (a short last run is padded with zeros). Outputs keep the input order.
        `run_options` go to every run (e.g. `terminate` set from another thread stops them); `instance`
        picks the session (0 .. instances - 1); `solo` takes the solo session instead where there is one.
        """
        session = self._solo_session if solo and self._solo_session is not None else self._sessions[instance]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item.input_shape, []).append(index)
        outputs: dict[int, RawOutput] = {}
        for indices in groups.values():
            run_size = len(indices) if self.info.dynamic_batch else self.info.batch
            for start in range(0, len(indices), run_size):
                chunk = indices[start : start + run_size]
                tensors = [prepared[index].tensor for index in chunk]
                if len(tensors) < run_size:  # static batch larger than what is left
                    tensors.append(np.zeros((run_size - len(tensors), *tensors[0].shape[1:]), tensors[0].dtype))
                batch = tensors[0] if len(tensors) == 1 else np.concatenate(tensors)
                began = time.perf_counter()
                (result,) = session.run([self.info.output_name], {self.info.input_name: batch}, run_options)
                share_ms = (time.perf_counter() - began) * 1e3 / len(chunk)
                result = result.astype(np.float32, copy=False)
                for row, index in enumerate(chunk):
                    outputs[index] = RawOutput(result[row], share_ms, len(chunk))
        return [outputs[index] for index in range(len(prepared))]

    def finish(
        self,
        raw: RawOutput,
        prepared: Prepared,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        classes: Iterable[int] | None = None,
        agnostic: bool = False,
    ) -> Prediction:
        """NMS and scaling back to original pixels for one image (defaults are Ultralytics' predict defaults)."""
        class_filter = self._check_thresholds(conf, iou, max_det, classes)
        start = time.perf_counter()
        boxes, scores, class_ids = select_boxes(
            raw.output, conf, iou, max_det, class_filter, agnostic, self.info.end2end
        )
        scale_boxes(boxes, prepared.letterbox)
        timing = Timing(
            decode=prepared.decode_ms,
            preprocess=prepared.preprocess_ms,
            inference=raw.inference_ms,
            postprocess=(time.perf_counter() - start) * 1e3,
        )
        box = prepared.letterbox
        return Prediction(box.width, box.height, boxes, scores, class_ids, self.info.names, timing)

    def _target_size(self, imgsz: int | None) -> tuple[tuple[int, int], bool]:
        """Letterbox target (height, width) and whether to pad only to the stride (rect inference)."""
        if not self.info.dynamic_hw:
            if imgsz is not None and (imgsz, imgsz) != self.info.imgsz:
                height, width = self.info.imgsz
                raise InvalidParameter(f"this model has a fixed {height}x{width} input; imgsz={imgsz} is not possible")
            return self.info.imgsz, False
        size = self.info.imgsz[0] if imgsz is None else imgsz
        stride = self.info.stride
        if not valid_imgsz(size, stride, self.max_imgsz):
            raise InvalidParameter(
                f"imgsz must be a multiple of {stride} between {stride} and {self.max_imgsz}, got {size!r}"
            )
        return (size, size), True

    def _check_thresholds(
        self, conf: float, iou: float, max_det: int, classes: Iterable[int] | None
    ) -> np.ndarray | None:
        """Validate the postprocess parameters; returns `classes` as an array."""
        if not 0.0 <= conf <= 1.0:
            raise InvalidParameter(f"conf must be between 0 and 1, got {conf}")
        if not 0.0 <= iou <= 1.0:
            raise InvalidParameter(f"iou must be between 0 and 1, got {iou}")
        if isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 1:
            raise InvalidParameter(f"max_det must be a positive integer, got {max_det!r}")
        if classes is None:
            return None
        class_ids = list(classes)
        unknown = [
            c for c in class_ids if isinstance(c, bool) or not isinstance(c, Integral) or c not in self.info.names
        ]
        if unknown:
            raise InvalidParameter(
                f"classes {unknown} are not class ids of this model (0..{self.info.num_classes - 1})"
            )
        return np.asarray(class_ids, dtype=np.int64)
