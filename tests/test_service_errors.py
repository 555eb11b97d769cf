"""Every error the service answers, each as JSON saying what was wrong, none of them a 500: authentication,
limits (413 from Content-Length, while streaming, and for pixels), image types, parameters, corrupt images,
unknown routes, a full queue (503 at once), timeouts (504) and models that cannot be loaded."""

from __future__ import annotations

import base64
import json
import select
import socket
import threading
import time
import zlib

import cv2
import httpx
import numpy as np
import pytest
from service_fixtures import metric_value, servers  # noqa: F401  # fixtures

KEYS = ("key-one", "key-two")
UPLOAD_LIMIT = 1_000_000
PIXEL_LIMIT = 1_000_000


@pytest.fixture(scope="module")
def server(servers, trained_onnx_dynamic):  # noqa: F811
    return servers(
        {
            "MODELS": str(trained_onnx_dynamic),
            "API_KEYS": ",".join(KEYS),
            "MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
            "MAX_PIXELS": str(PIXEL_LIMIT),
            "CORS_ORIGINS": "http://demo.example",
        }
    )


@pytest.fixture(scope="module")
def client(server):
    with server.client(headers={"X-API-Key": KEYS[1]}) as http:
        yield http


@pytest.fixture(scope="module")
def photo(real_photos) -> bytes:
    return real_photos[0].read_bytes()  # bus.jpg, 810x1080 (under the pixel limit)


def _png(width: int, height: int) -> bytes:
    return cv2.imencode(".png", np.full((height, width, 3), 90, np.uint8))[1].tobytes()


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


# ---------------------------------------------------------------------------------------------- 401


def test_api_keys(server, photo):
    files = {"image": ("bus.jpg", photo)}
    with server.client() as anonymous:
        missing = anonymous.post("/v1/detect", files=files)
        assert "API key is required" in _error(missing, 401)["message"]
        assert missing.headers["www-authenticate"] == "Bearer"
        assert (
            "not valid"
            in _error(anonymous.post("/v1/detect", files=files, headers={"X-API-Key": "key"}), 401)["message"]
        )
        assert anonymous.post("/v1/detect", files=files, headers={"X-API-Key": KEYS[0]}).status_code == 200
        bearer = {"Authorization": f"Bearer {KEYS[1]}"}
        assert anonymous.post("/v1/detect", files=files, headers=bearer).status_code == 200
        assert anonymous.get("/v1/models").status_code == 401
        assert anonymous.post("/v1/models/bccd/reload").status_code == 401
        assert anonymous.get("/v2/models/bccd/config").json() == {
            "error": "an API key is required: send it as X-API-Key or Authorization: Bearer"
        }
        deepstack = anonymous.post("/v1/vision/detection", files=files)
        assert deepstack.status_code == 401 and deepstack.json()["success"] is False
        assert anonymous.post("/v1/vision/detection", files=files, data={"api_key": KEYS[0]}).status_code == 200
        assert anonymous.post("/v1/vision/custom/list", data={"api_key": KEYS[0]}).status_code == 200
        assert anonymous.get("/v1/vision/custom/list").status_code == 401
        for open_path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", "/", "/docs"):
            assert anonymous.get(open_path).status_code == 200, open_path


def test_deepstack_client_with_api_key(server, photo):
    from deepstack.core import DeepstackException, DeepstackObject

    predictions = DeepstackObject("127.0.0.1", server.port, api_key=KEYS[0], min_confidence=0.05).detect(photo)
    assert predictions and {"label", "confidence", "x_min", "y_min", "x_max", "y_max"} <= set(predictions[0])
    with pytest.raises(DeepstackException, match="401"):
        DeepstackObject("127.0.0.1", server.port, api_key="wrong").detect(photo)


def test_tritonclient_with_api_key(server):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live()  # health is open
        with pytest.raises(InferenceServerException, match="API key is required"):
            client.get_model_metadata("bccd")
        assert client.get_model_metadata("bccd", headers={"X-API-Key": KEYS[0]})["name"] == "bccd"
    finally:
        client.close()


def test_cors_allows_only_the_configured_origins(server):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    allowed = httpx.options(server.url + "/v1/detect", headers={"Origin": "http://demo.example", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://demo.example"
    assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
    refused = httpx.options(server.url + "/v1/detect", headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers
    simple = httpx.get(server.url + "/healthz", headers={"Origin": "http://demo.example"})
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


# ---------------------------------------------------------------------------------------------- 413


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


_MULTIPART_HEAD = (
    b"POST /v1/detect HTTP/1.1\r\nHost: test\r\nX-API-Key: key-one\r\n"
    b"Content-Type: multipart/form-data; boundary=XyZ\r\n"
)
_FILE_PART = (
    b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
)


def test_413_at_once_from_content_length(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(_MULTIPART_HEAD + b"Content-Length: 5000000000\r\n\r\n")  # 5 GB announced, nothing sent
        status, headers, body = _read_response(sock)
        elapsed = time.monotonic() - started
    assert status == 413 and elapsed < 1.0
    assert "5,000,000,000 bytes" in json.loads(body)["error"]["message"]
    assert headers["x-request-id"]


def test_413_while_the_body_streams_in(server):
    chunk = b"\xff" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(_MULTIPART_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"%x\r\n%s\r\n" % (len(_FILE_PART), _FILE_PART))
        try:
            while sent < 20 * UPLOAD_LIMIT and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, body = _read_response(sock)
    assert status == 413
    assert "more than 1,000,000 bytes" in json.loads(body)["error"]["message"]
    assert sent < 10 * UPLOAD_LIMIT  # answered while the client was still sending


def test_413_for_too_many_pixels(client):
    big = _png(1200, 1000)  # a few KB, 1.2 megapixels
    message = _error(client.post("/v1/detect", files={"image": ("big.png", big)}), 413)["message"]
    assert "1200x1000 = 1,200,000 pixels; the limit is 1,000,000" in message
    bomb = _png(1, 1)[:16] + (100_000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00" + b"\x00" * 4
    assert (
        "10,000,000,000 pixels"
        in _error(client.post("/v1/detect", files={"image": ("bomb.png", bomb)}), 413)["message"]
    )
    assert client.post("/v1/vision/detection", files={"image": ("big.png", big)}).json()["success"] is False


def test_an_image_in_another_field_says_which_field_takes_images(client, photo):
    error = _error(client.post("/v1/detect", files={"file": ("photo.jpg", photo)}), 422)
    assert error["field"] == "file" and "send images in the field 'image'" in error["message"], error


# ---------------------------------------------------------------------------------------------- 415, 400


def test_415_image_type_is_sniffed_from_the_bytes(client, photo):
    gif = (  # a complete 1x1 GIF
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
        b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    )
    error = _error(client.post("/v1/detect", files={"image": ("photo.jpg", gif, "image/jpeg")}), 415)
    assert error["type"] == "unsupported_image_type" and "GIF" in error["message"]
    named_wrong = client.post("/v1/detect", files={"image": ("animation.gif", photo, "image/gif")})
    assert named_wrong.status_code == 200  # a JPEG is a JPEG whatever its name says
    assert (
        "Content-Type text/plain"
        in _error(client.post("/v1/detect", content=b"hi", headers={"Content-Type": "text/plain"}), 415)["message"]
    )
    deepstack = client.post("/v1/vision/detection", files={"image": ("a.jpg", gif)})
    assert deepstack.status_code == 415 and deepstack.json()["code"] == 415


def test_400_for_corrupt_images_and_bad_bodies(client, photo):
    truncated = photo[: len(photo) // 2]
    message = _error(
        client.post("/v1/detect", files=[("image", ("ok.jpg", photo)), ("image", ("cut.jpg", truncated))]), 400
    )["message"]
    assert message.startswith("image 2 ('cut.jpg'): ") and "truncated" in message
    assert (
        "not a recognised image"
        in _error(client.post("/v1/detect", files={"image": ("x.jpg", b"hello world" * 9)}), 400)["message"]
    )
    assert "empty" in _error(client.post("/v1/detect", files={"image": ("x.jpg", b"")}), 400)["message"]
    assert (
        "images[0] is not valid base64" in _error(client.post("/v1/detect", json={"images": ["***"]}), 400)["message"]
    )
    assert (
        "never fetches URLs"
        in _error(client.post("/v1/detect", json={"images": ["https://example.com/a.jpg"]}), 400)["message"]
    )
    assert (
        "not valid JSON"
        in _error(client.post("/v1/detect", content=b"{not json", headers={"Content-Type": "application/json"}), 400)[
            "message"
        ]
    )
    broken_multipart = client.post("/v1/detect", content=b"garbage", headers={"Content-Type": "multipart/form-data"})
    assert broken_multipart.status_code == 400 and "boundary" in broken_multipart.json()["error"]["message"].lower()
    assert client.post("/v1/vision/detection", files={"image": ("c.jpg", truncated)}).json() == {
        "success": False,
        "code": 400,
        "error": "image 1 ('c.jpg'): JPEG is truncated: its image data has no end-of-image marker",
    }


# ---------------------------------------------------------------------------------------------- 422


INVALID_PARAMETERS = [
    ({"conf": "2"}, "conf", "less than or equal to 1"),
    ({"conf": "high"}, "conf", "valid number"),
    ({"iou": "-0.1"}, "iou", "greater than or equal to 0"),
    ({"max_det": "0"}, "max_det", "greater than or equal to 1"),
    ({"imgsz": "100"}, "imgsz", "multiple of 32"),
    ({"imgsz": "333"}, "imgsz", "between 32 and 1920"),  # the service's DETECT_MAX_IMGSZ, not the engine's ceiling
    ({"imgsz": "1e9"}, "imgsz", "valid integer"),
    ({"classes": "RBC,Neutrophil"}, "classes", "['Neutrophil']; this model has 0: Platelets, 1: RBC, 2: WBC"),
    ({"classes": "7"}, "classes", "unknown classes [7]"),
    ({"normalize": "maybe"}, "normalize", "valid boolean"),
    ({"confidence": "0.5"}, "confidence", "unknown parameter; the parameters are conf, iou"),
    ({"format": "png"}, "format", "unknown parameter"),
]


@pytest.mark.parametrize(("params", "field", "reason"), INVALID_PARAMETERS)
def test_422_names_the_field_and_why(client, photo, params, field, reason):
    error = _error(client.post("/v1/detect", files={"image": ("bus.jpg", photo)}, data=params), 422)
    assert error["field"] == field and reason in error["message"], error


def test_422_for_missing_or_misplaced_inputs(client, photo):
    assert (
        _error(client.post("/v1/detect", data={"conf": "0.5"}, files={"other": ("a.jpg", photo)}), 422)["field"]
        == "other"
    )
    assert _error(client.post("/v1/detect", files={"image": (None, "text")}, data={}), 422)["field"] == "image"
    no_image = _error(client.post("/v1/detect", json={"images": []}), 422)
    assert no_image["field"] == "images" and "at least 1" in no_image["message"]
    twice = _error(client.post("/v1/detect?conf=0.3", files={"image": ("a.jpg", photo)}, data={"conf": "0.4"}), 422)
    assert twice["field"] == "conf" and "both" in twice["message"]
    assert _error(client.post("/v1/detect", json=[1, 2]), 422)["message"].startswith("the JSON body must be an object")
    several = client.post("/v1/detect/annotated", files=[("image", ("a.jpg", photo)), ("image", ("b.jpg", photo))])
    assert "exactly one image" in _error(several, 422)["message"]
    assert (
        _error(client.post("/v1/detect/annotated", files={"image": ("a.jpg", photo)}, data={"format": "gif"}), 422)[
            "field"
        ]
        == "format"
    )
    deepstack = client.post("/v1/vision/detection", files={"image": ("a.jpg", photo)}, data={"min_confidence": "abc"})
    assert deepstack.status_code == 422 and "min_confidence" in deepstack.json()["error"]


def test_unknown_routes_and_methods_are_json(client):
    assert "no endpoint GET /v1/nothing" in _error(client.get("/v1/nothing"), 404)["message"]
    assert _error(client.get("/v1/detect"), 405)["type"] == "method_not_allowed"
    assert client.get("/v2/nothing").json() == {"error": "no endpoint GET /v2/nothing; see /docs"}


def test_gzip_bomb_is_refused(client):
    header = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0]}]})
    bomb = zlib.compress(header.encode() + b" " * (5 * UPLOAD_LIMIT))  # a valid JSON document, 5 MB inflated
    response = client.post("/v2/models/bccd/infer", content=bomb, headers={"Content-Encoding": "deflate"})
    assert response.status_code == 413 and "decompressed body" in response.json()["error"]


def _bad_requests(photo: bytes) -> list[tuple[str, str, dict]]:
    """(method, path, httpx arguments) of a request of each kind refused above: every one must get a 4xx."""
    gif = (
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
        b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    )
    truncated = photo[: len(photo) // 2]
    detect = [
        {"files": {"image": ("cut.jpg", truncated)}},
        {"files": {"image": ("x.jpg", b"hello world" * 9)}},
        {"files": {"image": ("x.jpg", b"")}},
        {"files": {"image": ("a.gif", gif)}},
        {"files": {"image": ("big.png", _png(1200, 1000))}},
        {"json": {"images": ["***"]}},
        {"json": [1, 2]},
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        {"content": b"garbage", "headers": {"Content-Type": "multipart/form-data"}},
        {"content": b"hi", "headers": {"Content-Type": "text/plain"}},
        *({"files": {"image": ("bus.jpg", photo)}, "data": params} for params, _, _ in INVALID_PARAMETERS),
    ]
    header = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0]}]})
    return [
        *(("POST", "/v1/detect", kwargs) for kwargs in detect),
        *(("POST", "/v1/vision/detection", kwargs) for kwargs in detect[:5]),
        ("POST", "/v1/detect/annotated", {"files": [("image", ("a.jpg", photo)), ("image", ("b.jpg", photo))]}),
        ("POST", "/v2/models/bccd/infer", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
        ("POST", "/v2/models/bccd/infer", {"content": zlib.compress(header.encode() + b" " * (5 * UPLOAD_LIMIT)),
                                           "headers": {"Content-Encoding": "deflate"}}),
        ("GET", "/v1/nothing", {}),
        ("GET", "/v1/detect", {}),
    ]


def test_no_request_above_was_a_server_error(client, photo):
    """Self-contained (it passes alone or in any order): sends one request of each refused kind itself."""
    for method, path, kwargs in _bad_requests(photo):
        response = client.request(method, path, **kwargs)
        assert 400 <= response.status_code < 500, (method, path, response.status_code, response.text[:300])
    text = client.get("/metrics").text
    assert 'status="500"' not in text
    assert 'status="400"' in text and 'status="422"' in text  # the metrics did count the refusals


# ------------------------------------------------------------------------------------------ 503, 504


@pytest.fixture(scope="module")
def slow_server(servers, trained_onnx_dynamic):  # noqa: F811
    """One worker slot and a one-request queue; inference of bus.jpg at imgsz 2560 takes 1-2.5 s on one thread."""
    return servers(
        {
            "MODELS": str(trained_onnx_dynamic),
            "QUEUE_SIZE": "1",
            "MAX_BATCH": "1",
            "INSTANCES": "1",
            "THREADS": "1",
            "REQUEST_TIMEOUT_S": "6",
            "MAX_IMGSZ": "2560",
        }
    )


def test_full_queue_is_503_at_once_and_a_slow_request_504(slow_server, real_photos):
    photo = real_photos[0].read_bytes()
    outcomes: dict[str, httpx.Response] = {}

    def send(name: str, images: int = 1, **params: str) -> None:
        with slow_server.client() as http:
            outcomes[name] = http.post("/v1/detect", files=[("image", ("bus.jpg", photo))] * images, data=params)

    def send_once_there_is_room(name: str) -> None:
        send(name)
        while outcomes[name].status_code == 503:
            time.sleep(0.1)
            send(name)

    def metrics() -> str:
        return httpx.get(slow_server.url + "/metrics").text

    # ten model runs at 2560 of 1-2.5 s each on one thread (by the machine): twice the timeout or more; their
    # preparation (2 s here, more on a busy machine) holds the only place in the queue until the worker takes them
    running = threading.Thread(target=send, args=("running", 10), kwargs={"imgsz": "2560"})
    running.start()
    time.sleep(0.5)  # a head start: sent together, the waiting request could take the queue's one place first
    waiting = threading.Thread(target=send_once_there_is_room, args=("waiting",))
    waiting.start()
    deadline = time.monotonic() + 5.5
    while metric_value(metrics(), "detect_queue_depth", model="bccd") != 1:
        assert time.monotonic() < deadline, "the second request never queued"
        time.sleep(0.05)

    with slow_server.client() as http:
        started = time.monotonic()
        refused = http.post("/v1/detect", files={"image": ("bus.jpg", photo)})
        elapsed = time.monotonic() - started
    error = _error(refused, 503)
    assert error["type"] == "queue_full" and "1 requests waiting" in error["message"]
    assert refused.headers["retry-after"] == "1"
    assert elapsed < 0.1, f"503 took {elapsed * 1e3:.0f} ms"

    running.join()
    waiting.join()
    error = _error(outcomes["running"], 504)
    assert error["type"] == "timeout" and "longer than 6 s" in error["message"]
    # its model run is stopped at its deadline, which frees the worker for the waiting request in time
    assert outcomes["waiting"].status_code == 200, outcomes["waiting"].text
    assert "model run of 'bccd' stopped: every request of its batch gave up" in slow_server.log()
    text = metrics()
    assert (metric_value(text, "detect_rejected_requests_total", model="bccd", reason="queue_full") or 0) >= 1
    assert metric_value(text, "detect_rejected_requests_total", model="bccd", reason="timeout") == 1

    assert httpx.post(slow_server.url + "/v1/detect", files={"image": ("bus.jpg", photo)}).status_code == 200
    assert metric_value(metrics(), "detect_images_total", model="bccd") == 2  # none of the stopped request's images


# ------------------------------------------------------------------------------ models that do not load


def test_starts_with_missing_and_broken_models(servers, trained_onnx_dynamic, tmp_path, real_photos):  # noqa: F811
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX model")
    server = servers(
        {"MODELS": f"missing={tmp_path / 'gone.onnx'},broken={broken},good={trained_onnx_dynamic}"}, wait_ready=False
    )
    assert httpx.get(server.url + "/healthz").status_code == 200
    deadline = time.monotonic() + 30
    while (ready := httpx.get(server.url + "/readyz")).json()["models"]["good"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ready.status_code == 503
    assert ready.json()["models"] == {"missing": "failed", "broken": "failed", "good": "ready"}
    reasons = " | ".join(ready.json()["reasons"])
    assert "gone.onnx does not exist" in reasons and "broken.onnx is not a loadable ONNX model" in reasons
    assert httpx.get(server.url + "/v2/health/ready").status_code == 400

    photo = real_photos[0].read_bytes()
    refused = httpx.post(server.url + "/v1/detect", files={"image": ("a.jpg", photo)})  # the default model: missing
    error = _error(refused, 503)
    assert error["type"] == "model_unavailable" and "'missing' could not be loaded" in error["message"]
    assert "does not exist" in error["message"]
    assert httpx.post(server.url + "/v1/detect?model=good", files={"image": ("a.jpg", photo)}).status_code == 200
    log = server.log()
    assert "model 'missing' could not be loaded from" in log and "model 'broken' could not be loaded" in log
    assert server.process.poll() is None


def test_server_with_no_model_at_all_stays_up(servers, tmp_path):  # noqa: F811
    server = servers({"MODELS": str(tmp_path / "nothing.onnx")}, wait_ready=False)
    time.sleep(0.5)
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 503
    assert server.process.poll() is None
    payload = base64.b64encode(b"\xff\xd8\xff").decode()
    assert httpx.post(server.url + "/v1/detect", json={"images": [payload]}).status_code == 503
