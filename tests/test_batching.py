"""Which session the batch worker runs a batch on: a run that has the cores to itself takes the solo session (every
core for a lone request); a run beside another, or with requests waiting, of any model, takes its own instance's."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from engine import Detector, Prepared, RawOutput
from service.batching import BatchWorker, CoreUse
from service.metrics import Metrics


class RecordingDetector(Detector):
    """A Detector that records, for every `infer`, whether it ran on the solo session, and signals its start."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.solo_runs: list[bool] = []
        self.started = threading.Event()

    def infer(self, prepared, run_options=None, instance=0, solo=False) -> list[RawOutput]:  # noqa: ANN001
        self.solo_runs.append(solo and self.has_solo_session)
        self.started.set()
        return super().infer(prepared, run_options, instance, solo)


@pytest.fixture(scope="module")
def detector(trained_onnx_dynamic: Path) -> RecordingDetector:
    return RecordingDetector(trained_onnx_dynamic, threads=1, instances=2, spinning=False, solo_threads=2)


@pytest.fixture
def worker(detector: RecordingDetector):
    detector.solo_runs.clear()
    worker = BatchWorker("cells", 8, 0.0, 8, 1920 * 1920, Metrics(8), instances=2)
    yield worker
    worker.stop(30)


def _detect(worker: BatchWorker, detector: Detector, data: bytes, imgsz: int | None = None) -> list[RawOutput]:
    with worker.reserve() as place:
        prepared: Prepared = detector.prepare(data, imgsz)
        return place.submit(detector, [prepared]).result(timeout=120)


def test_a_lone_request_runs_on_the_solo_session_with_the_same_outputs(
    worker: BatchWorker, detector: RecordingDetector, real_photos: list[Path]
):
    data = real_photos[0].read_bytes()
    answers = [_detect(worker, detector, data) for _ in range(3)]
    assert detector.solo_runs == [True, True, True]
    on_instance = detector.infer([detector.prepare(data)], instance=1)
    for [answer] in answers:
        np.testing.assert_allclose(answer.output, on_instance[0].output, atol=1e-3)


def test_a_run_beside_another_or_with_requests_waiting_keeps_to_its_instance(
    worker: BatchWorker, detector: RecordingDetector, real_photos: list[Path]
):
    data = real_photos[0].read_bytes()
    detector.started.clear()
    slow = threading.Thread(target=_detect, args=(worker, detector, data, 1920))  # about a second on one core
    slow.start()
    assert detector.started.wait(60)
    _detect(worker, detector, data)  # while the slow run goes on
    slow.join()
    assert detector.solo_runs == [True, False]  # the slow run started alone; the other ran beside it

    with worker.reserve():  # a request being prepared: the run leaves it its core
        _detect(worker, detector, data)
    assert detector.solo_runs[-1] is False
    _detect(worker, detector, data)
    assert detector.solo_runs[-1] is True


def test_the_models_of_a_service_share_the_cores_for_the_solo_decision(
    detector: RecordingDetector, trained_onnx_dynamic: Path, real_photos: list[Path]
):
    """Two models, one worker each, sharing a `CoreUse` as the registry's do: a run of one model beside a run of the
    other, or while a request of the other waits, keeps to its instance."""
    data = real_photos[0].read_bytes()
    other = RecordingDetector(trained_onnx_dynamic, threads=1, instances=2, spinning=False, solo_threads=2)
    cores = CoreUse()
    workers = [BatchWorker(name, 8, 0.0, 8, 1920 * 1920, Metrics(8), instances=2, cores=cores) for name in "ab"]
    detector.solo_runs.clear()
    try:
        slow = threading.Thread(target=_detect, args=(workers[1], other, data, 1920))
        slow.start()
        assert other.started.wait(60)
        _detect(workers[0], detector, data)  # while the other model's run goes on
        slow.join()
        assert (detector.solo_runs, other.solo_runs) == ([False], [True])

        with workers[1].reserve():  # a request of the other model being prepared
            _detect(workers[0], detector, data)
        _detect(workers[0], detector, data)
    finally:
        for worker in workers:
            worker.stop(30)
    assert detector.solo_runs == [False, False, True]


def test_without_a_solo_session_every_run_is_on_an_instance(trained_onnx_dynamic: Path, real_photos: list[Path]):
    detector = RecordingDetector(trained_onnx_dynamic, threads=1, instances=2, spinning=False)
    worker = BatchWorker("cells", 8, 0.0, 8, 1920 * 1920, Metrics(8), instances=2)
    try:
        _detect(worker, detector, real_photos[0].read_bytes())
    finally:
        worker.stop(30)
    assert not detector.has_solo_session and detector.solo_runs == [False]
