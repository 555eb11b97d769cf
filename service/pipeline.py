"""Request processing shared by every API: prepare in threads, infer in the model's worker, finish in threads.

Nothing CPU-bound runs on the event loop: decoding and letterboxing (`Detector.prepare`) and NMS
(`Detector.finish`) run in the thread pool, inference in the model's `BatchWorker` thread. The images of a
request are checked against the pixel limits from their headers, then decoded one after the other in one thread,
with at most one decoding per core at a time (which bounds the memory of decoded images). The whole processing of a
request is bounded by `request_timeout_s` (504); a request that is over stops its decoding and its model run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import anyio
import numpy as np

from engine import (
    Detector,
    ImageError,
    InvalidParameter,
    Letterbox,
    Prediction,
    Prepared,
    RawOutput,
    decode_image,
    physical_cores,
)

from .batching import QueueFull, QueuePlace, WorkerStopped
from .errors import ServiceError, from_engine_error
from .limits import check_image_pixels
from .metrics import Metrics
from .registry import ModelEntry
from .settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class ImageInput:
    """Encoded image bytes from a request and how to name the image in error messages."""

    data: bytes
    label: str


@dataclass(frozen=True)
class DetectOptions:
    """Postprocessing parameters of one request, already validated against the model."""

    conf: float = 0.25
    iou: float = 0.7
    imgsz: int | None = None
    max_det: int = 300
    classes: list[int] | None = None


@dataclass(frozen=True)
class DetectedImage:
    """The result for one image; `image` is the decoded BGR image when the caller asked to keep it."""

    prediction: Prediction
    decode_ms: float
    total_ms: float
    image: np.ndarray | None


def _shutting_down(error: WorkerStopped) -> ServiceError:
    return ServiceError(503, f"{error}; retry later", type="shutting_down", headers={"Retry-After": "1"})


async def _in_thread(function: Callable[..., T], *args: object) -> T:
    """Run `function` in the thread pool; a timeout abandons the thread instead of waiting for it."""
    return await anyio.to_thread.run_sync(function, *args, abandon_on_cancel=True)


class Pipeline:
    """Runs requests through a model with the settings' limits, timeout, queue and metrics."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._decoding = anyio.CapacityLimiter(physical_cores())

    async def detect(
        self,
        entry: ModelEntry,
        detector: Detector,
        images: Sequence[ImageInput],
        options: DetectOptions,
        keep_images: bool = False,
    ) -> list[DetectedImage]:
        """Detect objects in `images` with `detector` (the version of `entry` chosen when the request began)."""
        started = time.perf_counter()
        over = threading.Event()
        with self._reserve(entry) as place:
            try:
                async with self._deadline(entry):
                    prepared = await anyio.to_thread.run_sync(
                        self._prepare_all,
                        detector,
                        images,
                        options.imgsz,
                        keep_images,
                        over,
                        abandon_on_cancel=True,
                        limiter=self._decoding,
                    )
                    items = [item for item, _, _ in prepared]
                    raw = await self._infer(place, detector, items)
                    predictions = await _in_thread(self._finish, detector, raw, items, options)
            except BaseException:
                prepared = items = []  # the traceback keeps this frame: not its network inputs (33 MB at 1920)
                raise
            finally:
                over.set()
        total_ms = (time.perf_counter() - started) * 1e3
        return [
            DetectedImage(prediction, decode_ms, total_ms, image)
            for prediction, (_, image, decode_ms) in zip(predictions, prepared, strict=True)
        ]

    async def infer_tensor(self, entry: ModelEntry, detector: Detector, batch: np.ndarray) -> list[RawOutput]:
        """Run the model on a ready network input (N, 3, H, W) through the model's queue; one output per image."""
        with self._reserve(entry) as place:
            height, width = batch.shape[2:]
            box = Letterbox(width, height, width, height, 0, 0, width, height)
            items = [Prepared(batch[index : index + 1], box, 0.0, 0.0) for index in range(batch.shape[0])]
            async with self._deadline(entry):
                return await self._infer(place, detector, items)

    def _reserve(self, entry: ModelEntry) -> QueuePlace:
        """A place in the model's queue, taken before any work: 503 at once when the queue is full."""
        try:
            return entry.worker.reserve()
        except QueueFull as error:
            self.metrics.rejected.labels(entry.name, "queue_full").inc()
            raise ServiceError(503, f"{error}; retry later", type="queue_full", headers={"Retry-After": "1"}) from None
        except WorkerStopped as error:
            raise _shutting_down(error) from None

    @asynccontextmanager
    async def _deadline(self, entry: ModelEntry) -> AsyncIterator[None]:
        """The request's processing time limit; on expiry a 504 (and the timeout metric)."""
        seconds = self.settings.request_timeout_s
        try:
            with anyio.fail_after(seconds):
                yield
        except TimeoutError:
            self.metrics.rejected.labels(entry.name, "timeout").inc()
            raise ServiceError(
                504,
                f"the request took longer than {seconds:g} s (DETECT_REQUEST_TIMEOUT_S) and was abandoned",
                type="timeout",
            ) from None

    @staticmethod
    async def _infer(place: QueuePlace, detector: Detector, items: list[Prepared]) -> list[RawOutput]:
        try:
            future = place.submit(detector, items)
        except WorkerStopped as error:
            raise _shutting_down(error) from None
        try:
            return await asyncio.wrap_future(future)
        except Exception as error:  # the batch's model run failed (the worker logged it); the worker serves on
            raise ServiceError(
                500,
                f"the model run of this request's batch failed ({type(error).__name__}); other requests are "
                "unaffected and the request can be retried",
                type="inference_failed",
            ) from None

    def _prepare_all(
        self,
        detector: Detector,
        images: Sequence[ImageInput],
        imgsz: int | None,
        keep_images: bool,
        over: threading.Event,
    ) -> list[tuple[Prepared, np.ndarray | None, float]]:
        """Check the images' headers against the pixel limits, then prepare them in order until the request is over
        (the first bad image fails the request)."""
        check_image_pixels(((image.label, image.data) for image in images), self.settings)
        prepared = []
        for image in images:
            if over.is_set():  # the request timed out or was cancelled: nobody waits for the rest
                break
            prepared.append(self._prepare(detector, image, imgsz, keep_images))
        return prepared

    @staticmethod
    def _prepare(
        detector: Detector, image: ImageInput, imgsz: int | None, keep_image: bool
    ) -> tuple[Prepared, np.ndarray | None, float]:
        """Decode and letterbox one image; keeps the decoded image when asked (to draw on it)."""
        try:
            if not keep_image:
                prepared = detector.prepare(image.data, imgsz)
                return prepared, None, prepared.decode_ms
            began = time.perf_counter()
            decoded = decode_image(image.data, detector.max_pixels)
            decode_ms = (time.perf_counter() - began) * 1e3
            return detector.prepare(decoded, imgsz), decoded, decode_ms
        except InvalidParameter as error:
            raise ServiceError(422, str(error), field="imgsz") from None
        except ImageError as error:
            raise from_engine_error(error, image.label) from None

    @staticmethod
    def _finish(
        detector: Detector, raw: list[RawOutput], items: list[Prepared], options: DetectOptions
    ) -> list[Prediction]:
        try:
            return [
                detector.finish(output, item, options.conf, options.iou, options.max_det, options.classes)
                for output, item in zip(raw, items, strict=True)
            ]
        except InvalidParameter as error:
            raise ServiceError(422, str(error)) from None
