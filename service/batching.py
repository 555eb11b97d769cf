"""Micro-batching: one worker thread per model takes jobs from a bounded queue and runs them together.

A job is the prepared images of one request and the `Detector` that prepared them. The worker takes
the first waiting job, then waits up to `max_wait_s` for more jobs of the same detector until the
batch holds `max_batch` images (the model's fixed batch size when its batch axis is static), runs
`Detector.infer` once on all of them, and hands every job its own outputs. A request takes its place
in the queue (`reserve`) before its images are prepared, so a full queue refuses it before any work
(`QueueFull`); a job cancelled while waiting (its request timed out) is skipped.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Self

from .engine import Detector, Prepared, RawOutput
from .metrics import Metrics

logger = logging.getLogger("service.batching")


class QueueFull(Exception):
    """The model's queue holds `queue_size` requests already."""


class WorkerStopped(Exception):
    """The worker is shutting down and takes no more jobs."""


@dataclass(eq=False)
class _Job:
    detector: Detector
    items: list[Prepared]
    future: Future[list[RawOutput]] = field(default_factory=Future)


_STOP = object()


@dataclass(eq=False)
class QueuePlace:
    """A place in a worker's queue, held from before a request's images are prepared until the worker takes its
    job. Used as a context manager: leaving it without `submit` (a bad image, a timeout) frees the place."""

    worker: BatchWorker
    submitted: bool = False

    def submit(self, detector: Detector, items: list[Prepared]) -> Future[list[RawOutput]]:
        """Queue `items` (prepared by `detector`); the future gets one RawOutput per item, in order.

        Raises:
            WorkerStopped: the worker is shutting down.
        """
        future = self.worker._put(_Job(detector, items))
        self.submitted = True
        return future

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.submitted:
            self.worker._places.release()


class BatchWorker:
    """The inference thread of one model, fed through a bounded queue.

    Args:
        model: model name (thread name and metric label).
        max_batch: most images in one run for models with a dynamic batch axis.
        max_wait_s: how long the first job of a batch waits for others to join.
        queue_size: requests that may wait (being prepared or queued); `reserve` raises `QueueFull` beyond it.
    """

    def __init__(self, model: str, max_batch: int, max_wait_s: float, queue_size: int, metrics: Metrics) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self._places = threading.BoundedSemaphore(queue_size)  # free places; the worker frees one per job it takes
        self._queue: queue.Queue[_Job | object] = queue.Queue()  # never over queue_size jobs: each holds a place
        self._carried: _Job | object | None = None  # taken from the queue but left for the next batch
        self._metrics = metrics
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=f"infer-{model}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting for a model run."""
        return self._queue.qsize() + (self._carried is not None)

    def reserve(self) -> QueuePlace:
        """A place in the queue for a request about to prepare its images.

        Raises:
            QueueFull: `queue_size` requests are waiting already (being prepared or queued).
            WorkerStopped: the worker is shutting down.
        """
        if self._stopping:
            raise WorkerStopped(f"model {self.model!r} is shutting down")
        if not self._places.acquire(blocking=False):
            raise QueueFull(f"model {self.model!r} has {self.queue_size} requests waiting")
        return QueuePlace(self)

    def _put(self, job: _Job) -> Future[list[RawOutput]]:
        if self._stopping:
            raise WorkerStopped(f"model {self.model!r} is shutting down")
        self._queue.put_nowait(job)
        return job.future

    def stop(self, timeout: float) -> None:
        """Run what is queued, then end the thread (waiting at most `timeout` seconds)."""
        self._stopping = True
        self._queue.put_nowait(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("inference queue of %r did not drain before shutdown", self.model)

    def _batch_limit(self, detector: Detector) -> int:
        return self.max_batch if detector.info.dynamic_batch else detector.info.batch

    def _next(self, timeout: float | None) -> _Job | object:
        """The carried-over job if any, else the next one from the queue (raises queue.Empty after `timeout`)."""
        if self._carried is not None:
            job, self._carried = self._carried, None
            return job
        job = self._queue.get(timeout=timeout)
        if job is not _STOP:
            self._places.release()  # out of the queue: its place is free for another request
        return job

    def _serve(self) -> None:
        while True:
            job = self._next(None)
            if job is _STOP:
                return
            assert isinstance(job, _Job)
            if not job.future.set_running_or_notify_cancel():  # its request gave up while it waited
                continue
            batch, size = [job], len(job.items)
            limit = self._batch_limit(job.detector)
            deadline = time.monotonic() + self.max_wait_s
            while size < limit:
                try:
                    candidate = self._next(max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    break
                if not isinstance(candidate, _Job):  # the stop sentinel
                    self._carried = candidate
                    break
                if candidate.detector is not job.detector or size + len(candidate.items) > limit:
                    self._carried = candidate  # another model version, or too big: it starts the next batch
                    break
                if candidate.future.set_running_or_notify_cancel():
                    batch.append(candidate)
                    size += len(candidate.items)
            self._run(batch, limit)

    def _run(self, batch: list[_Job], limit: int) -> None:
        detector = batch[0].detector
        items = [item for job in batch for item in job.items]
        try:
            outputs: list[RawOutput] = []
            for start in range(0, len(items), limit):
                outputs.extend(detector.infer(items[start : start + limit]))
        except Exception as error:  # every waiting request must learn about it
            logger.exception("model run of %r failed", self.model)
            for job in batch:
                job.future.set_exception(error)
            return
        self._observe(outputs)
        offset = 0
        for job in batch:
            job.future.set_result(outputs[offset : offset + len(job.items)])
            offset += len(job.items)

    def _observe(self, outputs: list[RawOutput]) -> None:
        """Record one batch-size and one duration sample per session run.

        The images of one run share its batch size and its per-image time, so a run of size b
        accounts for b outputs with the same (batch_size, inference_ms).
        """
        runs = collections.Counter((output.batch_size, output.inference_ms) for output in outputs)
        for (batch_size, share_ms), count in runs.items():
            for _ in range(count // batch_size):
                self._metrics.batch_size.labels(self.model).observe(batch_size)
                self._metrics.inference_seconds.labels(self.model).observe(share_ms * batch_size / 1e3)
        self._metrics.images.labels(self.model).inc(len(outputs))
