"""Fault proofs: a model file damaged before a reload, a model run that fails in the middle of serving, SIGTERM
under load, and a server started before its model file exists.

Real servers (`python -m service` in a subprocess), except for the failing model run: there the server runs in
the test process (uvicorn in a thread) so that the test can make one batch of the real inference worker fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from proof_fixtures import (
    InProcessServer,
    LoadSettings,
    ProofPhoto,
    detections_match,
    finish_load,
    proof_photo,  # noqa: F401  # fixture
    start_load,
    write_load_inputs,
)
from service_fixtures import free_port, metric_value, servers  # noqa: F401  # fixture

from service.app import create_app
from service.settings import ModelSource, Settings


def _detect(url: str, photo: ProofPhoto, model: str | None = None) -> httpx.Response:
    params = {"model": model} if model else None
    return httpx.post(
        url + "/v1/detect", files={"image": ("p.jpg", photo.data)}, data={"conf": photo.conf}, params=params, timeout=30
    )


def _detections(url: str, photo: ProofPhoto, model: str | None = None) -> list[dict]:
    response = _detect(url, photo, model)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["detections"]


def _replace(path: Path, data: bytes) -> None:
    """Write a file atomically (write, then rename), as a deployment should."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


# ------------------------------------------------------------------------------ damaged model file


DAMAGES = {
    "deleted": ("does not exist", lambda path: path.unlink()),
    "half written": ("is not a loadable ONNX model", lambda path: path.write_bytes(path.read_bytes()[: 2**20])),
    "emptied": ("is not a loadable ONNX model", lambda path: path.write_bytes(b"")),
    "overwritten with text": ("is not a loadable ONNX model", lambda path: path.write_text("<html>502</html>")),
}


def test_a_damaged_model_file_keeps_the_old_version_serving(servers, trained_onnx_dynamic, proof_photo, tmp_path):  # noqa: F811
    path = tmp_path / "cells.onnx"
    shutil.copy(trained_onnx_dynamic, path)
    server = servers({"MODELS": f"cells={path}"})
    loaded_at = httpx.get(server.url + "/v1/models/cells").json()["loaded_at"]

    served: list[str] = []  # one client keeps detecting during every damaged reload
    stop = threading.Event()

    def keep_detecting() -> None:
        while not stop.is_set():
            response = _detect(server.url, proof_photo, "cells")
            good = response.status_code == 200 and detections_match(
                response.json()["results"][0]["detections"], proof_photo.reference
            )
            served.append("ok" if good else f"{response.status_code} {response.text[:200]}")

    client = threading.Thread(target=keep_detecting)
    client.start()
    try:
        for damage, (reason, apply) in DAMAGES.items():
            shutil.copy(trained_onnx_dynamic, path)
            apply(path)
            response = httpx.post(server.url + "/v1/models/cells/reload", timeout=30)
            error = response.json()["error"]
            assert response.status_code == 409 and error["type"] == "reload_failed", (damage, response.text)
            assert reason in error["message"] and "keeps serving" in error["message"], (damage, error)
            model = httpx.get(server.url + "/v1/models/cells").json()
            assert model["ready"] and model["loaded_at"] == loaded_at and reason in model["error"], (damage, model)
            ready = httpx.get(server.url + "/readyz")
            assert ready.status_code == 200 and ready.json()["ready"], (damage, ready.text)
    finally:
        stop.set()
        client.join()
    assert served and set(served) == {"ok"}, served
    metrics = httpx.get(server.url + "/metrics").text
    assert metric_value(metrics, "detect_model_loads_total", model="cells", result="failed") == len(DAMAGES)

    _replace(path, trained_onnx_dynamic.read_bytes())  # a good file again: the reload succeeds
    response = httpx.post(server.url + "/v1/models/cells/reload", timeout=30)
    assert response.status_code == 200 and response.json()["error"] is None
    assert response.json()["loaded_at"] > loaded_at
    assert detections_match(_detections(server.url, proof_photo, "cells"), proof_photo.reference)


# ------------------------------------------------------------------------------- failing model run


BATCH = 3
INJECTED = "injected fault: the model run failed"


def _kserve_binary(tensor: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A KServe binary-extension request body for `tensor`, and its header."""
    data = tensor.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def test_a_failing_model_run_fails_only_its_batch(trained_onnx_dynamic, proof_photo, caplog):  # noqa: F811
    """The model raises for one batch of the real worker: the requests of that batch get a JSON 500 in their
    API's dialect (a model that fails is a server fault, not the client's), the requests of the next batch,
    already waiting, succeed, and so does everything after."""
    from engine import Detector
    from service.logs import _RequestIdFilter

    caplog.handler.addFilter(_RequestIdFilter())
    settings = Settings(
        models=[ModelSource("bccd", trained_onnx_dynamic)], threads=1, max_batch=BATCH, max_batch_wait_ms=1000
    )
    app = create_app(settings)
    tensor = Detector(trained_onnx_dynamic, threads=1).prepare(proof_photo.data).tensor
    kserve_body, kserve_headers = _kserve_binary(tensor)
    upload = {"image": ("p.jpg", proof_photo.data)}
    requests: dict[str, tuple[str, dict]] = {  # five at once: a batch of BATCH (it fails), then one of the rest
        **{
            f"native-{index}": ("/v1/detect", {"files": upload, "data": {"conf": proof_photo.conf}})
            for index in range(3)
        },
        "deepstack": ("/v1/vision/detection", {"files": upload, "data": {"min_confidence": proof_photo.conf}}),
        "kserve": ("/v2/models/bccd/infer", {"content": kserve_body, "headers": kserve_headers}),
    }

    with InProcessServer(app, free_port()) as server:
        server.wait_ready()
        detector = app.state.service.registry.entries["bccd"].served.detector
        real_infer = detector.infer
        runs: list[tuple[int, bool]] = []  # (images, failed) of every model run from now on

        def infer_failing_once(prepared, *args, **kwargs):  # whatever else the worker passes goes on unchanged
            failing = not runs
            runs.append((len(prepared), failing))
            if failing:
                raise RuntimeError(INJECTED)
            return real_infer(prepared, *args, **kwargs)

        detector.infer = infer_failing_once  # the worker calls the served detector's infer
        responses: dict[str, httpx.Response] = {}
        barrier = threading.Barrier(len(requests))

        def send(name: str) -> None:
            path, arguments = requests[name]
            headers = {**arguments.get("headers", {}), "X-Request-ID": f"fault-{name}"}
            barrier.wait()
            responses[name] = httpx.post(server.url + path, **{**arguments, "headers": headers}, timeout=30)

        threads = [threading.Thread(target=send, args=(name,)) for name in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert runs == [(BATCH, True), (len(requests) - BATCH, False)], runs
        failed = {name: response for name, response in responses.items() if response.status_code != 200}
        assert len(failed) == BATCH, {name: response.status_code for name, response in responses.items()}
        for name, response in failed.items():
            message = (
                "the model run of this request's batch failed (RuntimeError); other requests are unaffected and "
                "the request can be retried"
            )
            assert response.status_code == 500 and response.headers["content-type"] == "application/json"
            if name.startswith("native"):
                expected: dict = {
                    "error": {"status": 500, "type": "inference_failed", "message": message},
                    "request_id": f"fault-{name}",
                }
            elif name == "deepstack":
                expected = {"success": False, "error": message, "code": 500}
            else:
                expected = {"error": message}
            assert response.json() == expected
        for name, response in responses.items():
            if name in failed:
                continue
            if name.startswith("native"):
                assert detections_match(response.json()["results"][0]["detections"], proof_photo.reference)
            elif name == "deepstack":
                assert len(response.json()["predictions"]) == len(proof_photo.reference)
            else:
                assert response.json()["outputs"][0]["shape"][0] == 1

        for _ in range(3):  # the worker lives on
            assert detections_match(_detections(server.url, proof_photo), proof_photo.reference)
        assert len(runs) == 5 and httpx.get(server.url + "/readyz").status_code == 200

    [run_failure] = [record for record in caplog.records if record.getMessage() == "model run of 'bccd' failed"]
    assert str(run_failure.exc_info[1]) == INJECTED
    # a handled fault, not a server bug: no "unhandled error" traceback per request
    assert not [record for record in caplog.records if record.getMessage().startswith("unhandled error in")]


# ---------------------------------------------------------------------------------- SIGTERM under load

SIGTERM_CLIENTS = 8
GRACEFUL_TIMEOUT_S = 10.0


def test_sigterm_under_load_finishes_what_was_accepted(servers, trained_onnx_dynamic, proof_photo, tmp_path):  # noqa: F811
    server = servers({"MODELS": str(trained_onnx_dynamic), "GRACEFUL_TIMEOUT_S": str(GRACEFUL_TIMEOUT_S)})
    image, reference = write_load_inputs(tmp_path, proof_photo)
    settings = LoadSettings(
        server.url,
        image,
        reference,
        proof_photo.conf,
        tmp_path / "sigterm.jsonl",
        concurrency=SIGTERM_CLIENTS,
        duration=30,  # the clients stop at their first refused connection, long before
        fresh_connections=True,  # a connection per request: "accepted" is a request the server has read
        id_prefix="sigterm",
    )
    load = start_load(settings)
    deadline = time.monotonic() + 30
    while (metric_value(httpx.get(server.url + "/metrics").text, "detect_images_total", model="bccd") or 0) < 40:
        assert time.monotonic() < deadline and load.poll() is None, "the load did not get going"
        time.sleep(0.1)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz", timeout=2)
    exit_status = server.process.wait(timeout=GRACEFUL_TIMEOUT_S + 5)
    exited_after = time.monotonic() - signalled
    records = finish_load(load, settings, timeout=60)

    log = server.log()
    handled = set(re.findall(r"\[(sigterm-\d+)\] POST /v1/detect", log))  # the access line of every request read
    answered = [record for record in records if record.status is not None]
    unanswered = [record for record in records if record.status is None]
    in_flight = [record for record in answered if record.started < signalled < record.started + record.latency]
    print(
        f"\nSIGTERM: {len(records)} requests, {len(in_flight)} in flight at the signal, "
        f"exit after {exited_after:.2f} s; "
        f"without an answer: {sorted(record.error for record in unanswered)}"
    )
    assert exit_status == -signal.SIGTERM and exited_after <= GRACEFUL_TIMEOUT_S
    assert all(record.status == 200 and record.matched for record in answered), [r for r in answered if r.status != 200]
    assert {record.request_id for record in answered} == handled  # every request the server read was answered, 200
    assert len(in_flight) >= SIGTERM_CLIENTS // 2, f"only {len(in_flight)} requests were in flight at the signal"
    refused = [record for record in unanswered if record.error == "refused"]
    assert refused and all(record.started > signalled for record in refused)  # no new connections after the signal
    for record in unanswered:  # a connection the server had not read a request from when it stopped listening
        assert record.error in ("refused", "disconnected") and record.request_id not in handled, record
    assert "Shutting down" in log and "INFO service stopped" in log and "Finished server process" in log


# -------------------------------------------------------------------------- starting without a model


def test_a_server_started_before_its_model_file_waits_for_it(servers, trained_onnx_dynamic, proof_photo, tmp_path):  # noqa: F811
    folder = tmp_path / "models"
    folder.mkdir()
    first, second = folder / "first.onnx", folder / "second.onnx"
    server = servers({"MODELS": f"first={first},second={second}", "WATCH": "true"}, wait_ready=False)
    pid = server.process.pid
    time.sleep(3)  # long enough for a crash loop, or a retry loop, to show
    assert server.process.poll() is None and server.process.pid == pid
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 503 and ready.json()["models"] == {"first": "failed", "second": "failed"}
    assert ready.json()["reasons"] == [
        f"model 'first' could not be loaded: model file {first} does not exist",
        f"model 'second' could not be loaded: model file {second} does not exist",
    ]
    log = server.log()
    for name, path in (("first", first), ("second", second)):  # one clear line each, not repeated
        line = f"ERROR service.models model {name!r} could not be loaded from {path}: model file {path} does not exist"
        assert log.count(line) == 1, log
    assert log.count("Started server process") == 1 and "Traceback" not in log
    refused = _detect(server.url, proof_photo, "first")
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "model_unavailable"
    still_missing = httpx.post(server.url + "/v1/models/first/reload", timeout=30)
    assert still_missing.status_code == 409 and "does not exist" in still_missing.json()["error"]["message"]

    _replace(first, trained_onnx_dynamic.read_bytes())  # the file appears: a reload makes it serve at once
    reloaded = httpx.post(server.url + "/v1/models/first/reload", timeout=30)
    assert reloaded.status_code == 200 and reloaded.json()["ready"], reloaded.text
    assert detections_match(_detections(server.url, proof_photo, "first"), proof_photo.reference)
    assert httpx.get(server.url + "/readyz").status_code == 503  # the second one is still missing

    _replace(second, trained_onnx_dynamic.read_bytes())  # the watch sees it appear and loads it
    deadline = time.monotonic() + 20
    while (ready := httpx.get(server.url + "/readyz")).status_code != 200:
        assert time.monotonic() < deadline, f"the watch did not load the new file: {ready.text}"
        time.sleep(0.1)
    assert ready.json() == {"ready": True, "models": {"first": "ready", "second": "ready"}, "reasons": []}
    assert detections_match(_detections(server.url, proof_photo, "second"), proof_photo.reference)
    assert server.process.poll() is None
