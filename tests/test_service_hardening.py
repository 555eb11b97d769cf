"""No single client can stall the server, exhaust its memory or skip its keys (issue 13): a real `python -m service`
attacked over loopback as a client would. Every attack is refused fast with the JSON error of its API naming the limit
and the setting that raises it, /healthz answers within 1 s while it runs, the resident memory (/proc) stays bounded,
and the next normal request is served.

1. many tiny JSON images   2. imgsz over the cap, a run whose request timed out   3. HTTP heads, slow and idle
connections, the connection cap   4. a keyless DeepStack upload   5. decoded pixels per request   6. shutdown past
the graceful timeout   7. a huge classes list   8. training-machine metadata   and memory after the largest run and
after reloads.
"""

from __future__ import annotations

import ast
import base64
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest
from service_fixtures import HealthProbe, metric_value, raw_exchange, resident_mb, servers  # noqa: F401  # fixture

KEY = "hardening-key"
HEADERS = {"X-API-Key": KEY}
HEAD_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 24
REQUEST_TIMEOUT_S = 1.5
SLACK_S = 1.5
"""How much later than its timeout a refusal may come on the shared, loaded machine."""


@pytest.fixture(scope="module")
def server(servers, trained_onnx_dynamic):  # noqa: F811
    return servers(
        {
            "MODELS": str(trained_onnx_dynamic),
            "API_KEYS": KEY,
            "HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S),
            "BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        }
    )


@pytest.fixture(scope="module")
def photo(real_photos) -> bytes:
    return real_photos[0].read_bytes()  # bus.jpg, 810x1080


def _post(server, path: str = "/v1/detect", **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, headers=kwargs.pop("headers", HEADERS), timeout=30, **kwargs)


def _error(response: httpx.Response, status: int) -> dict:
    """The native error of `response`, which must be a JSON `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


def _json_wire(document: object) -> bytes:
    """A POST /v1/detect of `document` as raw bytes: sent with one sendall, the time measured is the server's."""
    body = json.dumps(document).encode()
    head = f"POST /v1/detect HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _serves_normally(server, photo: bytes) -> None:
    response = _post(server, files={"image": ("bus.jpg", photo)})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["detections"]


# ------------------------------------------------------------------------------------------ 1. images


def test_1_many_tiny_json_images_are_refused_before_any_work(server, photo):
    flood = _json_wire({"images": ["aGk="] * 500_000})  # 4 MB
    before = resident_mb(server)
    with HealthProbe(server) as probe:
        answer = raw_exchange(server, [flood])
    assert answer is not None and answer.status == 413 and answer.elapsed < 1.0
    error = answer.json()["error"]
    assert error["type"] == "too_many_values" and "at most 16 images (DETECT_MAX_IMAGES)" in error["message"]
    probe.assert_healthy()
    assert resident_mb(server) - before < 30

    encoded = base64.b64encode(photo).decode()
    error = _error(_post(server, json={"images": [encoded] * 17}), 413)
    assert error["type"] == "too_many_images"
    assert "17 images; the limit is 16 per request (DETECT_MAX_IMAGES)" in error["message"]
    error = _error(_post(server, files=[("image", ("bus.jpg", photo))] * 17), 413)
    assert error["type"] == "too_many_images" and "more than 16 images" in error["message"]
    _serves_normally(server, photo)


# --------------------------------------------------------------------------------------- 2. inference


def test_2_imgsz_over_the_cap_is_refused_and_a_timed_out_model_run_stops(server, photo):
    for imgsz in ("7680", "3840"):
        started = time.monotonic()
        error = _error(_post(server, files={"image": ("bus.jpg", photo)}, data={"imgsz": imgsz}), 422)
        assert error["field"] == "imgsz" and f"at most 1920 (DETECT_MAX_IMGSZ), got {imgsz}" in error["message"]
        assert time.monotonic() - started < 1.0

    before = resident_mb(server)
    stop_line = "model run of 'bccd' stopped: every request of its batch gave up"
    with HealthProbe(server) as probe:
        # six model runs at 1920 (0.3-1.5 s each, by the threads and the machine), under a 1.5 s request timeout
        slow = _post(server, files=[("image", ("bus.jpg", photo))] * 6, data={"imgsz": "1920"})
        assert _error(slow, 504)["type"] == "timeout"
        started = time.monotonic()
        while stop_line not in server.log():  # the worker gives up the batch's run as its requests gave up
            assert time.monotonic() - started < 1.0, "the timed-out model run went on"
            time.sleep(0.01)
        time.sleep(0.2)
        # the six inputs (33 MB each) and what the runs took (about 400 MB) are given back, without waiting for
        # another request: 60-80 MB stay (the arenas' share); when the worker held its last batch, 200 MB more
        assert resident_mb(server) - before < 100
        _serves_normally(server, photo)
    probe.assert_healthy()


# ------------------------------------------------------------------------------------------ 3. HTTP


def test_3_oversized_heads_are_refused_at_the_limit(server, photo):
    headers = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"j" * 2**20 + b"\r\n\r\n"
    request_line = b"GET /v1/models/" + b"m" * 2**20 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    before = resident_mb(server)
    with HealthProbe(server) as probe, ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda wire: raw_exchange(server, [wire]), [headers] * 9 + [request_line]))
    probe.assert_healthy()
    assert resident_mb(server) - before < 20
    for answer in answers[:9]:
        assert answer is not None and answer.status == 431 and answer.elapsed < 1.0
        error = answer.json()["error"]
        assert (
            error["type"] == "headers_too_large" and "over 16,384 bytes (DETECT_MAX_HEADER_BYTES)" in error["message"]
        )
        assert answer.headers["x-request-id"] == answer.json()["request_id"]
    assert answers[9] is not None and answers[9].status == 400
    assert "request line is over 16,384 bytes" in answers[9].json()["error"]["message"]
    deepstack = raw_exchange(server, [headers.replace(b"/v1/models", b"/v1/vision/detection")])
    assert deepstack is not None and deepstack.json()["success"] is False and deepstack.json()["code"] == 431
    _serves_normally(server, photo)


def test_3_idle_and_slow_connections_are_closed_at_their_timeouts(server, photo):
    body_head = (
        b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n"
    )
    attacks = {
        "idle": ([], 0.0),
        "trickled head": ([b"GET /healthz HTTP/1.1\r\n", *[b"X-Slow: 1\r\n"] * 100], 0.1),
        "trickled body": ([body_head + b"{", *[b" "] * 100], 0.1),
        "stalled body": ([body_head + b'{"images": ['], 0.0),
    }
    with HealthProbe(server) as probe, ThreadPoolExecutor(len(attacks)) as pool:
        futures = {name: pool.submit(raw_exchange, server, pieces, pause) for name, (pieces, pause) in attacks.items()}
        answers = {name: future.result() for name, future in futures.items()}
    probe.assert_healthy()
    assert answers["idle"] is None  # closed without a word: nothing was asked
    head = answers["trickled head"]
    assert head is not None and head.status == 408 and HEAD_TIMEOUT_S - 0.1 < head.elapsed < HEAD_TIMEOUT_S + SLACK_S
    assert f"did not arrive within {HEAD_TIMEOUT_S:g} s (DETECT_HEADER_TIMEOUT_S)" in head.json()["error"]["message"]
    for name in ("trickled body", "stalled body"):
        answer = answers[name]
        assert answer is not None and answer.status == 408, name
        assert BODY_TIMEOUT_S - 0.1 < answer.elapsed < BODY_TIMEOUT_S + SLACK_S, (name, answer.elapsed)
        message = answer.json()["error"]["message"]
        assert f"did not arrive within {BODY_TIMEOUT_S:g} s (DETECT_BODY_TIMEOUT_S)" in message
    _serves_normally(server, photo)


def test_3_connections_over_the_cap_get_a_fast_503_and_probes_still_pass(server, photo):
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(MAX_CONNECTIONS + 10)]
    try:
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends
        started = time.monotonic()
        refused = _post(server, files={"image": ("bus.jpg", photo)})
        elapsed = time.monotonic() - started
        error = _error(refused, 503)
        assert error["type"] == "too_many_connections" and "DETECT_MAX_CONNECTIONS" in error["message"]
        assert refused.headers["retry-after"] == "1" and elapsed < 0.5
        deepstack = _post(server, "/v1/vision/detection", files={"image": ("bus.jpg", photo)})
        assert deepstack.status_code == 503 and deepstack.json()["code"] == 503
        probe_started = time.monotonic()
        assert httpx.get(server.url + "/healthz").status_code == 200  # the probes are served over the cap
        assert time.monotonic() - probe_started < 1.0
        deadline = time.monotonic() + HEAD_TIMEOUT_S + SLACK_S
        for sock in held:  # the server closes every one of them at its head timeout
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            assert b"408 Request Timeout" in sock.recv(65536)
    finally:
        for sock in held:
            sock.close()
    _serves_normally(server, photo)


# ------------------------------------------------------------------------------------------ 4. keys


def test_4_deepstack_refuses_a_keyless_upload_before_reading_it(server, photo):
    boundary = b"hardening"
    file_head = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
    )
    request_head = (
        b"POST /v1/vision/detection HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=" + boundary
    )
    declared = b"\r\nContent-Length: 15000000\r\n"  # 15 MB announced; only the first 64 KB are ever sent
    keyless = raw_exchange(server, [request_head + declared + b"\r\n" + file_head + photo[:65536]])
    assert keyless is not None and keyless.status == 401 and keyless.elapsed < 1.0
    assert keyless.json() == {
        "success": False,
        "error": "an API key is required: send it as X-API-Key or Authorization: Bearer",
        "code": 401,
    }
    wrong = raw_exchange(server, [request_head + declared + b"X-API-Key: wrong\r\n\r\n"])  # no body at all
    assert wrong is not None and wrong.status == 401 and wrong.elapsed < 1.0

    key_after_the_image = [("image", ("bus.jpg", photo)), ("api_key", (None, KEY))]
    assert _post(server, "/v1/vision/detection", files=key_after_the_image, headers={}).status_code == 401
    long_field = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="note"\r\n\r\n' + b"n" * 200_000
    no_key_yet = raw_exchange(server, [request_head + declared + b"\r\n" + long_field])  # the rest never comes
    assert no_key_yet is not None and no_key_yet.status == 401 and no_key_yet.elapsed < 1.0  # past 64 KiB
    early_key = _post(server, "/v1/vision/detection", files={"image": ("bus.jpg", photo)}, data={"api_key": KEY})
    assert early_key.status_code == 200 and early_key.json()["success"] is True
    assert _post(server, "/v1/vision/custom/list", data={"api_key": KEY}, headers={}).status_code == 200
    _serves_normally(server, photo)


# ---------------------------------------------------------------------------------------- 5. pixels


def test_5_decoded_pixels_are_budgeted_per_request(server, photo):
    huge = cv2.imencode(".png", np.zeros((7000, 7000, 3), np.uint8))[1].tobytes()  # 49 MP in 150 KB
    before = resident_mb(server)
    with HealthProbe(server) as probe:
        started = time.monotonic()
        response = _post(server, files=[("image", (f"{index}.png", huge)) for index in range(8)])
        elapsed = time.monotonic() - started
    error = _error(response, 413)
    assert error["type"] == "too_many_pixels" and elapsed < 1.0
    assert "392,000,000 pixels in all; the limit is 100,000,000 (DETECT_MAX_REQUEST_PIXELS)" in error["message"]
    probe.assert_healthy()
    assert resident_mb(server) - before < 30  # not one of the 8 x 147 MB was decoded
    _serves_normally(server, photo)


# -------------------------------------------------------------------------------------- 6. shutdown


def test_6_shutdown_past_the_graceful_timeout_answers_json_503(servers, trained_onnx_dynamic, photo):  # noqa: F811
    stopping = servers(
        {
            "MODELS": str(trained_onnx_dynamic),
            "MAX_BATCH": "1",
            "INSTANCES": "1",
            "THREADS": "1",
            "GRACEFUL_TIMEOUT_S": "1",
        }
    )
    outcomes: dict[str, httpx.Response] = {}

    def send(name: str, **kwargs) -> None:
        outcomes[name] = httpx.post(stopping.url + "/v1/detect", timeout=30, **kwargs)

    # six runs of 0.5-1.5 s each (by the machine): whichever request runs first, the other waits
    long_request = {"files": [("image", ("b.jpg", photo))] * 6, "data": {"imgsz": "1920"}}
    threads = [threading.Thread(target=send, args=(name,), kwargs=long_request) for name in ("first", "second")]
    for thread in threads:
        thread.start()
        time.sleep(0.5)
    uploading = socket.create_connection(("127.0.0.1", stopping.port))
    uploading.sendall(
        b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    deadline = time.monotonic() + 10
    while (metric_value(httpx.get(stopping.url + "/metrics").text, "detect_queue_depth", model="bccd") or 0) < 1:
        assert time.monotonic() < deadline, "no request ever queued"
        time.sleep(0.02)

    signalled = time.monotonic()
    stopping.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join()
    uploading.settimeout(10)
    upload_answer = uploading.recv(65536)
    uploading.close()
    assert time.monotonic() - signalled < 1.0 + SLACK_S
    for name, response in outcomes.items():
        error = _error(response, 503)
        assert error["type"] == "shutting_down" and "retry" in error["message"], name
    assert upload_answer.startswith(b"HTTP/1.1 503 ") and b'"type":"shutting_down"' in upload_answer
    assert stopping.process.wait(timeout=30) == -signal.SIGTERM
    log = stopping.log()
    assert "timeout graceful shutdown exceeded" in log and "cut short by the shutdown" in log
    assert "Exception in ASGI application" not in log and "Traceback" not in log


# --------------------------------------------------------------------------------------- 7. classes


def test_7_a_huge_classes_list_is_refused_without_stalling(server, photo):
    encoded = base64.b64encode(photo).decode()
    flood = _json_wire({"images": [encoded], "classes": [0] * 6_000_000})  # 18 MB
    before = resident_mb(server)
    with HealthProbe(server) as probe:
        answer = raw_exchange(server, [flood])
    assert answer is not None and answer.status == 413 and answer.elapsed < 1.0
    error = answer.json()["error"]
    assert error["type"] == "too_many_values" and "1,000 classes (DETECT_MAX_CLASSES)" in error["message"]
    probe.assert_healthy()
    assert resident_mb(server) - before < 50  # the body itself, never parsed

    error = _error(_post(server, json={"images": [encoded], "classes": [0] * 1001}), 422)
    assert error["field"] == "classes" and "1,001 entries; the limit is 1,000 (DETECT_MAX_CLASSES)" in error["message"]
    error = _error(_post(server, files={"image": ("bus.jpg", photo)}, data={"classes": "0," * 2000}), 422)
    assert error["field"] == "classes" and "DETECT_MAX_CLASSES" in error["message"]
    _serves_normally(server, photo)


# -------------------------------------------------------------------------------------- 8. metadata


def test_8_model_metadata_tells_a_client_only_what_it_needs(server):
    config = httpx.get(server.url + "/v2/models/bccd/config", headers=HEADERS).json()
    parameters = config["parameters"]
    assert set(parameters) == {"names", "imgsz", "stride", "task", "version", "architecture", "metadata"}
    # what Ultralytics' own Triton client evaluates: how to run the model and name its classes, nothing more
    metadata = ast.literal_eval(parameters["metadata"]["string_value"])
    assert set(metadata) == {"task", "stride", "batch", "imgsz", "names", "end2end", "args"}
    assert set(metadata["args"]) == {"dynamic", "batch"}
    for path in ("/v2/models/bccd", "/v2/models/bccd/config", "/v1/models", "/v1/models/bccd", "/metrics"):
        text = httpx.get(server.url + path, headers=HEADERS).text
        assert "data.yaml" not in text and "trained on" not in text and "docs.ultralytics" not in text, path


# ---------------------------------------------------------------------------------------------- memory


@pytest.fixture(scope="module")
def memory_server(servers, trained_onnx_dynamic):  # noqa: F811
    return servers({"MODELS": str(trained_onnx_dynamic)})


def test_rss_returns_near_its_baseline_after_the_largest_run(memory_server, photo):
    for _ in range(3):
        _serves_normally(memory_server, photo)
    baseline = resident_mb(memory_server)
    response = _post(memory_server, files={"image": ("bus.jpg", photo)}, data={"imgsz": "1920"}, headers={})
    assert response.status_code == 200, response.text  # its run took about 400 MB
    assert resident_mb(memory_server) - baseline < 60


def test_a_reload_loop_keeps_rss_flat(memory_server, photo):
    """40 reloads (benchmarks/abuse.py does 100): RSS grows over the first few (thread arenas, caches), then levels
    off: the lowest RSS after reloads 31-40 is within 10 MB of the lowest after reloads 11-20. A replaced version that
    stays referenced (three ONNX Runtime sessions: two instances and the solo session) adds over 20 MB a reload, so
    200 MB over those reloads. (Seen here with the solo session: glibc's heap settles about 14 MB higher over some 30
    reloads, then stays or falls back; 4.4 MB between the two windows.)"""

    def reload() -> float:
        assert httpx.post(memory_server.url + "/v1/models/bccd/reload", timeout=30).status_code == 200
        return resident_mb(memory_server)

    rss = [reload() for _ in range(40)]
    assert min(rss[30:]) - min(rss[10:20]) < 10, rss
    _serves_normally(memory_server, photo)
