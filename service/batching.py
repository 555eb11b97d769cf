"""Micro-batching as Triton's dynamic batcher does it: worker threads, one per model instance, take jobs from a
bounded queue and run them together.

A job is the prepared images of one request and the `Detector` that prepared them. A free worker takes the first
waiting job and every job of the same detector that has queued up behind it, up to `max_batch` images (the model's
fixed batch size when its batch axis is static), runs `Detector.infer` on its own instance (session), and hands every
job its own outputs. So a batch is whatever queued while the instances were busy; `max_wait_s` (default 0, like
Triton's ``max_queue_delay_microseconds``) makes the first job wait for company, trading latency for batch size.
One batch forms at a time; the instances run theirs at once. Where the detector has a solo session (more intra-op
threads than an instance's), a run that starts while no other run goes and no request waits takes it, counting
every model that shares the cores (`CoreUse`): a lone request uses every core, and under load each run keeps to its
own instance's core. A request takes its place
in the queue (`reserve`) before its images are prepared, so a full queue refuses it before any work
(`QueueFull`). A request that gives up (timeout, shutdown) abandons its job: a waiting job is skipped, and a
model run whose requests have all given up is stopped (ONNX Runtime's `RunOptions.terminate`).

Memory: one `session.run` takes at most `max_image_pixels` input pixels (or a full batch at the model's own
size), so batching never multiplies the memory of a large inference size; a run at a size larger than the
model's own releases ONNX Runtime's arena and the freed heap afterwards.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Self

import onnxruntime as ort

from engine import Detector, Prepared, RawOutput

from .memory import release_free_memory
from .metrics import Metrics
from .priority import lower_thread_priority

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
    abandoned: bool = False  # its request gave up


_STOP = object()


@dataclass(eq=False)
class CoreUse:
    """The `BatchWorker`s that share the cores (all the models of a service) and the one lock that guards their
    state, so that a run takes the solo session only when it is the one run going and no request waits, whatever
    the model."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    workers: list[BatchWorker] = field(default_factory=list)


@dataclass(eq=False)
class QueuePlace:
    """A place in a worker's queue, held from before a request's images are prepared until the worker takes its
    job. Used as a context manager: leaving it without `submit` (a bad image, a timeout) frees the place, leaving it
    before the job's result (a timeout, a shutdown) abandons the job."""

    worker: BatchWorker
    job: _Job | None = None

    def submit(self, detector: Detector, items: list[Prepared]) -> Future[list[RawOutput]]:
        """Queue `items` (prepared by `detector`); the future gets one RawOutput per item, in order.

        Raises:
            WorkerStopped: the worker is shutting down.
        """
        job = _Job(detector, items)
        future = self.worker._put(job)
        self.job = job
        return future

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        job, self.job = self.job, None  # a place left holds no images
        if job is None:
            self.worker._release_place()
        elif not job.future.done():
            self.worker._abandon(job)


def _runs(items: list[Prepared], limit: int, pixel_budget: float) -> Iterator[list[Prepared]]:
    """`items` in consecutive runs of at most `limit` images and `pixel_budget` input pixels (at least one image)."""
    run: list[Prepared] = []
    pixels = 0
    for item in items:
        height, width = item.input_shape
        if run and (len(run) == limit or pixels + height * width > pixel_budget):
            yield run
            run, pixels = [], 0
        run.append(item)
        pixels += height * width
    if run:
        yield run


def _shrink_arenas_after(options: ort.RunOptions, detector: Detector) -> None:
    """Let the run of `options` give back, as it ends, the arena memory that it took beyond what is in use."""
    _, _, index = detector.device.partition(":")
    arenas = "cpu:0" if detector.device == "cpu" else f"cpu:0;gpu:{index or 0}"
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)


class BatchWorker:
    """The inference thread of one model, fed through a bounded queue.

    Args:
        model: model name (thread name and metric label).
        max_batch: most images in one run for models with a dynamic batch axis.
        max_wait_s: how long the first job of a batch waits for others to join (0: not at all).
        queue_size: requests that may wait (being prepared or queued); `reserve` raises `QueueFull` beyond it.
        max_image_pixels: input pixels of the largest image a request may ask for; the pixel budget of one run.
        metrics: where runs are recorded.
        instances: worker threads; thread i runs its batches on the detector's instance i.
        nice: how much lower the CPU priority of the worker threads is (see `lower_thread_priority`).
        cores: what the workers sharing these cores are doing (one per service); default: this worker's own.
    """

    def __init__(
        self,
        model: str,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        max_image_pixels: int,
        metrics: Metrics,
        instances: int = 1,
        nice: int = 0,
        cores: CoreUse | None = None,
    ) -> None:
        self.model = model
        self._cores = cores or CoreUse()
        self.nice = nice
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.max_image_pixels = max_image_pixels
        self._places_taken = 0  # requests being prepared or queued; the worker frees a place per job it takes
        self._queue: queue.Queue[_Job | object] = queue.Queue()  # never over queue_size jobs: each holds a place
        self._carried: _Job | object | None = None  # taken from the queue but left for the next batch
        self._metrics = metrics
        self._stopping = False
        self._lock = self._cores.lock  # guards `_places_taken`, `_running` and the jobs' `abandoned`, of every worker
        self._gathering = threading.Lock()  # one batch forms at a time (it guards `_carried`)
        self._running: dict[int, tuple[list[_Job], ort.RunOptions]] = {}  # per instance: its batch and run options
        with self._lock:
            self._cores.workers.append(self)  # complete: other workers' `_alone` reads its state
        self._threads = [
            threading.Thread(target=self._serve, args=(instance,), name=f"infer-{model}-{instance}", daemon=True)
            for instance in range(instances)
        ]
        for thread in self._threads:
            thread.start()

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
        with self._lock:
            if self._places_taken >= self.queue_size:
                raise QueueFull(f"model {self.model!r} has {self.queue_size} requests waiting")
            self._places_taken += 1
        return QueuePlace(self)

    def _release_place(self) -> None:
        with self._lock:
            self._places_taken -= 1

    def _put(self, job: _Job) -> Future[list[RawOutput]]:
        if self._stopping:
            raise WorkerStopped(f"model {self.model!r} is shutting down")
        self._queue.put_nowait(job)
        return job.future

    def _abandon(self, job: _Job) -> None:
        """The request of `job` gave up: skip the job if it waits, stop its run if no other request needs that."""
        job.future.cancel()  # only a job that is not running yet can be cancelled
        with self._lock:
            job.abandoned = True
            for jobs, options in self._running.values():
                if job in jobs and all(other.abandoned for other in jobs):
                    options.terminate = True

    def _start_run(self, batch: list[_Job], options: ort.RunOptions, instance: int) -> bool:
        """Record the run about to start for `_abandon`; False when every request of the batch gave up already."""
        with self._lock:
            if all(job.abandoned for job in batch):
                return False
            self._running[instance] = batch, options
            return True

    def _alone(self, instance: int) -> bool:
        """Whether the run of `instance` is the only one going and no request waits (being prepared or queued), in
        any worker sharing the cores: it may then use the solo session's threads, which would otherwise take cores
        from the other runs."""
        with self._lock:
            return all(
                worker._running.keys() == ({instance} if worker is self else set()) and not worker._places_taken
                for worker in self._cores.workers
            )

    def stop(self, timeout: float) -> None:
        """Run what is queued, then end the threads (waiting at most `timeout` seconds in all)."""
        self._stopping = True
        self._queue.put_nowait(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        if any(thread.is_alive() for thread in self._threads):
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
            self._release_place()  # out of the queue: its place is free for another request
        return job

    def _serve(self, instance: int) -> None:
        lower_thread_priority(self.nice)
        while True:
            with self._gathering:
                batch = self._gather()
            if batch is None:
                return
            give_back = bool(batch) and self._run(batch, self._batch_limit(batch[0].detector), instance)
            del batch  # its images, which would stay in memory while the next batch forms
            if give_back:
                release_free_memory()

    def _gather(self) -> list[_Job] | None:
        """The next batch: the first waiting job and those that queued behind it (waiting up to `max_wait_s` for
        more); empty when that job's request gave up, None when the worker stops."""
        job = self._next(None)
        if job is _STOP:
            self._carried = job  # the next thread to gather stops too
            return None
        assert isinstance(job, _Job)
        if not job.future.set_running_or_notify_cancel():  # its request gave up while it waited
            return []
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
        return batch

    def _run(self, batch: list[_Job], limit: int, instance: int) -> bool:
        """Run the batch and answer its requests; True when the memory the runs took should be given back to the
        system once the batch is dropped (larger inputs than the model's default, or a stopped run)."""
        detector = batch[0].detector
        items = [item for job in batch for item in job.items]
        height, width = detector.info.imgsz
        pixel_budget = max(self.max_image_pixels, limit * height * width) if detector.info.dynamic_batch else math.inf
        larger = max(max(item.input_shape) for item in items) > max(height, width)
        options = None
        try:
            outputs: list[RawOutput] = []
            for run in _runs(items, limit, pixel_budget):
                options = ort.RunOptions()
                if max(max(item.input_shape) for item in run) > max(height, width):
                    _shrink_arenas_after(options, detector)  # what the larger input took goes back as the run ends
                if not self._start_run(batch, options, instance):
                    options.terminate = True
                    raise RuntimeError("every request of the batch gave up before its run")
                solo = detector.has_solo_session and self._alone(instance)
                outputs.extend(detector.infer(run, options, instance % detector.instances, solo))
        except Exception as error:  # every waiting request must learn about it
            stopped = options is not None and options.terminate
            if stopped:
                logger.info("model run of %r stopped: every request of its batch gave up", self.model)
            else:
                logger.exception("model run of %r failed", self.model)
            error.__traceback__ = None  # it holds this frame, so the batch's images (a cycle through the futures)
            for job in batch:
                job.future.set_exception(error)
            return stopped or larger
        finally:
            with self._lock:
                self._running.pop(instance, None)
        self._observe(outputs)
        offset = 0
        for job in batch:
            job.future.set_result(outputs[offset : offset + len(job.items)])
            offset += len(job.items)
        return larger

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
