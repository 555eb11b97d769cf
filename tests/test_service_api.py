"""The service's APIs against a real server (uvicorn subprocess, ONNX Runtime, real photos): native, annotated,
models, DeepStack through its Python client, KServe v2 through tritonclient, request ids, metrics, OpenAPI."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from service_fixtures import cell_photo, metric_value, servers  # noqa: F401  # fixtures

from engine import Detector, Prepared, decode_image
from engine.draw import annotate
from service.schemas import DetectResponse, ModelConfig, ModelsResponse


@pytest.fixture(scope="module")
def server(servers, trained_onnx_dynamic, trained_onnx_static):  # noqa: F811
    # Every image decoded in full, as the engine's default and Ultralytics do, so that answers match them exactly
    # (reduced decoding, the service's default, is tested in test_reduced_decoding.py and by the proof tests).
    models = f"bccd={trained_onnx_dynamic},static={trained_onnx_static}"
    return servers({"MODELS": models, "THREADS": "1", "REDUCED_DECODING": "false"})


@pytest.fixture(scope="module")
def client(server):
    with server.client() as http:
        yield http


@pytest.fixture(scope="module")
def detector(trained_onnx_dynamic) -> Detector:
    return Detector(trained_onnx_dynamic, threads=1)


def _boxes(detections: list[dict]) -> np.ndarray:
    return np.array([[d["box"][k] for k in ("x1", "y1", "x2", "y2")] for d in detections])


def test_detect_multipart_matches_the_engine(client, detector, cell_photo):  # noqa: F811
    data, conf = cell_photo
    response = client.post("/v1/detect", files={"image": ("cells.jpg", data, "image/jpeg")}, data={"conf": str(conf)})
    assert response.status_code == 200, response.text
    document = DetectResponse.model_validate(response.json())
    assert document.model == "bccd"
    [result] = response.json()["results"]
    [expected] = detector.predict(data, conf=conf)
    assert len(expected) >= 3  # the photo really has cells in it
    assert (result["width"], result["height"]) == (expected.width, expected.height)
    assert [d["name"] for d in result["detections"]] == [d["name"] for d in expected.summary()]
    np.testing.assert_allclose(_boxes(result["detections"]), _boxes(expected.summary()), atol=0.05)
    confidences = [d["confidence"] for d in result["detections"]]
    assert confidences == sorted(confidences, reverse=True)
    assert set(result["timing_ms"]) == {"decode", "preprocess", "inference", "postprocess", "total"}
    assert result["timing_ms"]["total"] >= result["timing_ms"]["inference"] > 0


def test_detect_several_images_multipart_and_base64_agree(client, cell_photo, real_photos):  # noqa: F811
    data, conf = cell_photo
    zidane = real_photos[1].read_bytes()
    multipart = client.post(
        "/v1/detect",
        files=[("image", ("a.jpg", data, "image/jpeg")), ("image", ("b.jpg", zidane, "image/jpeg"))],
        params={"conf": conf},
    )
    as_json = client.post(
        "/v1/detect",
        json={"images": [base64.b64encode(data).decode(), base64.b64encode(zidane).decode()], "conf": conf},
    )
    assert multipart.status_code == as_json.status_code == 200, (multipart.text, as_json.text)
    first, second = multipart.json()["results"]
    assert (second["width"], second["height"]) == (1280, 720)
    assert first["width"] != 1280
    for from_form, from_json in zip(multipart.json()["results"], as_json.json()["results"], strict=True):
        assert from_form["detections"] == from_json["detections"]
    data_url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    response = client.post("/v1/detect", json={"images": [data_url], "conf": conf})
    assert response.json()["results"][0]["detections"] == first["detections"]


def test_detect_parameters(client, cell_photo):  # noqa: F811
    data, conf = cell_photo
    files = {"image": ("cells.jpg", data, "image/jpeg")}

    def detect(**params) -> list[dict]:
        response = client.post("/v1/detect", files=files, data={k: str(v) for k, v in params.items()})
        assert response.status_code == 200, response.text
        return response.json()["results"][0]["detections"]

    everything = detect(conf=conf)
    names = {d["name"] for d in everything}
    assert "RBC" in names
    assert {d["name"] for d in detect(conf=conf, classes="RBC,WBC")} <= {"RBC", "WBC"}
    only_rbc = detect(conf=conf, classes="1")
    assert only_rbc and {d["name"] for d in only_rbc} == {"RBC"}
    assert len(detect(conf=conf, max_det=2)) == 2
    assert len(detect(conf=0.9)) < len(everything)
    normalized = detect(conf=conf, normalize="true")
    image = decode_image(data)
    for item in normalized:
        assert item["box_normalized"]["x2"] == pytest.approx(item["box"]["x2"] / image.shape[1], abs=1e-4)
        assert item["box_normalized"]["y2"] == pytest.approx(item["box"]["y2"] / image.shape[0], abs=1e-4)
    assert "box_normalized" not in everything[0]
    assert detect(conf=conf, imgsz=640) != everything  # a larger input gives other boxes
    static = client.post("/v1/detect", files=files, data={"model": "static", "conf": str(conf)})
    assert static.status_code == 200 and static.json()["model"] == "static"
    assert static.json()["results"][0]["detections"]


def test_annotated_image_is_the_engine_drawing(client, cell_photo, trained_onnx_dynamic):  # noqa: F811
    data, conf = cell_photo
    png = client.post(
        "/v1/detect/annotated", files={"image": ("c.jpg", data, "image/jpeg")}, data={"conf": conf, "format": "png"}
    )
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    detector = Detector(trained_onnx_dynamic, threads=1)
    [prediction] = detector.predict(data, conf=conf)
    assert int(png.headers["x-detection-count"]) == len(prediction) > 0
    drawn = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)
    expected = annotate(data, prediction)
    assert drawn.shape == expected.shape
    assert np.mean(drawn != expected) < 0.01  # the same drawing, up to box coordinates within rounding
    assert np.mean(drawn != decode_image(data)) > 0.01  # and boxes really were drawn
    jpeg = client.post("/v1/detect/annotated", json={"images": [base64.b64encode(data).decode()], "conf": conf})
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert jpeg.content[:3] == b"\xff\xd8\xff"


def test_models_list_and_description(client, trained_onnx_static):
    response = client.get("/v1/models")
    assert response.status_code == 200
    listing = ModelsResponse.model_validate(response.json())
    assert listing.default_model == "bccd"
    by_name = {model.name: model for model in listing.models}
    assert set(by_name) == {"bccd", "static"}
    dynamic, static = by_name["bccd"], by_name["static"]
    assert dynamic.default and not static.default
    assert dynamic.ready and dynamic.state == "ready" and dynamic.loaded_at is not None
    assert dynamic.classes == static.classes == ["Platelets", "RBC", "WBC"]
    assert dynamic.imgsz == static.imgsz == [320, 320]
    assert dynamic.dynamic.batch and dynamic.dynamic.height_width
    assert not static.dynamic.batch and not static.dynamic.height_width
    assert dynamic.precision == "fp32" and dynamic.architecture == "yolo11n"
    assert static.path == str(trained_onnx_static)
    one = client.get("/v1/models/static")
    assert one.status_code == 200 and one.json()["name"] == "static"


def test_unknown_model_is_404_listing_the_models(client, cell_photo):  # noqa: F811
    data, _ = cell_photo
    native = client.post("/v1/detect", files={"image": ("c.jpg", data)}, data={"model": "nope"})
    assert native.status_code == 404
    assert native.json()["error"]["models"] == ["bccd", "static"]
    assert "nope" in native.json()["error"]["message"]
    deepstack = client.post("/v1/vision/custom/nope", files={"image": ("c.jpg", data)})
    assert deepstack.status_code == 404
    assert deepstack.json()["success"] is False and "bccd, static" in deepstack.json()["error"]
    kserve = client.get("/v2/models/nope")
    assert kserve.status_code == 404 and "bccd, static" in kserve.json()["error"]
    assert client.get("/v1/models/nope").status_code == 404
    assert client.post("/v1/models/nope/reload").status_code == 404


def test_deepstack_python_client(server, cell_photo, detector):  # noqa: F811
    from deepstack.core import DeepstackException, DeepstackObject

    data, conf = cell_photo
    min_confidence = max(conf, 0.05)
    [expected] = detector.predict(data, conf=min_confidence)
    for custom_model in ("", "bccd"):  # /v1/vision/detection, /v1/vision/custom/bccd
        client = DeepstackObject("127.0.0.1", server.port, min_confidence=min_confidence, custom_model=custom_model)
        predictions = client.detect(data)
        assert len(predictions) == len(expected) > 0
        assert [p["label"] for p in predictions] == [d.name for d in expected.detections]
        assert all(isinstance(p[key], int) for p in predictions for key in ("x_min", "y_min", "x_max", "y_max"))
        first = expected.detections[0]
        assert (predictions[0]["x_min"], predictions[0]["y_max"]) == (round(first.x1), round(first.y2))
        confidences = [p["confidence"] for p in predictions]
        assert confidences == sorted(confidences, reverse=True)
    with pytest.raises(DeepstackException, match="404"):
        DeepstackObject("127.0.0.1", server.port, custom_model="nope").detect(data)


def test_deepstack_default_confidence_and_model_list(client, cell_photo, detector):  # noqa: F811
    data, _ = cell_photo
    response = client.post("/v1/vision/detection", files={"image": ("c.jpg", data)})
    assert response.status_code == 200 and response.json()["success"] is True
    assert len(response.json()["predictions"]) == len(detector.predict(data, conf=0.4)[0])
    assert isinstance(response.json()["duration"], float)
    for method in ("GET", "POST"):
        listing = client.request(method, "/v1/vision/custom/list")
        assert listing.json() == {"success": True, "models": ["bccd", "static"]}


def test_kserve_with_tritonclient_binary_and_json(server, cell_photo, detector):  # noqa: F811
    import tritonclient.http as triton

    data, _ = cell_photo
    tensor = detector.prepare(data).tensor
    batch = np.concatenate([tensor, tensor[:, :, :, ::-1].copy()])
    expected = np.stack([raw.output for raw in detector.infer([detector.prepare(data)] * 1)])
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("bccd") and not client.is_model_ready("nope")
        assert client.get_server_metadata()["extensions"] == ["binary_tensor_data", "model_configuration"]
        metadata = client.get_model_metadata("bccd")
        assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
        assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
        assert metadata["outputs"] == [{"name": "output0", "datatype": "FP32", "shape": [-1, 7, -1]}]
        config = client.get_model_config("bccd")
        ModelConfig.model_validate(config)
        assert config["max_batch_size"] == 8 and config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
        assert config["input"][0]["dims"] == [3, -1, -1] and config["output"][0]["dims"] == [7, -1]
        assert config["parameters"]["names"]["string_value"] == "{0: 'Platelets', 1: 'RBC', 2: 'WBC'}"

        for binary in (True, False):  # the client's default (binary tensors) and plain JSON tensors
            request = triton.InferInput("images", list(tensor.shape), "FP32")
            request.set_data_from_numpy(tensor, binary_data=binary)
            result = client.infer(
                "bccd", [request], outputs=[triton.InferRequestedOutput("output0", binary_data=binary)]
            )
            np.testing.assert_allclose(result.as_numpy("output0"), expected, rtol=1e-4, atol=2e-3)

        request = triton.InferInput("images", list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)
        result = client.infer("bccd", [request], request_compression_algorithm="gzip")  # no outputs: all, binary
        output = result.as_numpy("output0")
        height, width = tensor.shape[2:]
        assert output.shape == (2, 7, height * width * 21 // 1024)  # anchors at strides 8, 16, 32: HW/64+HW/256+HW/1024
        np.testing.assert_allclose(output[:1], expected, rtol=1e-4, atol=2e-3)
        assert not np.allclose(output[1], output[0])  # the mirrored image is a different input
    finally:
        client.close()


def test_kserve_static_model_config_and_infer(server, trained_onnx_static):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        config = client.get_model_config("static")
        assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
        assert config["input"][0]["dims"] == [1, 3, 320, 320] and config["output"][0]["dims"] == [1, 7, 2100]
        tensor = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
        request = triton.InferInput("images", [1, 3, 320, 320], "FP32")
        request.set_data_from_numpy(tensor)
        output = client.infer("static", [request], outputs=[triton.InferRequestedOutput("output0")]).as_numpy("output0")
        detector = Detector(trained_onnx_static, threads=1)
        prepared = detector.prepare(np.zeros((320, 320, 3), np.uint8))
        [raw] = detector.infer([Prepared(tensor, prepared.letterbox, 0.0, 0.0)])
        np.testing.assert_allclose(output[0], raw.output, rtol=1e-4, atol=2e-3)
        with pytest.raises(triton.InferenceServerException, match="fixed 320x320|320x320"):
            wrong = triton.InferInput("images", [1, 3, 256, 320], "FP32")
            wrong.set_data_from_numpy(np.zeros((1, 3, 256, 320), np.float32))
            client.infer("static", [wrong])
    finally:
        client.close()


@pytest.mark.parametrize("model", ["bccd", "static"])
def test_ultralytics_triton_client_gets_the_names_size_and_boxes(server, client, cell_photo, tmp_path, model):  # noqa: F811
    """`YOLO("http://host:port/MODEL", task="detect")`: Ultralytics' own Triton client reads the class names and the
    input size from the model configuration; its boxes are the native endpoint's (the same pixels for the fixed-size
    model; for the dynamic one the client pads to a square, the service only to the stride)."""
    from ultralytics import YOLO

    data, conf = cell_photo
    image = tmp_path / "cell.jpg"
    image.write_bytes(data)
    remote = YOLO(f"http://127.0.0.1:{server.port}/{model}", task="detect")
    [result] = remote.predict(str(image), conf=conf, verbose=False)
    native = client.post("/v1/detect", files={"image": ("c.jpg", data)}, data={"conf": conf, "model": model}).json()
    assert native["model"] == model
    [expected] = native["results"]
    assert result.names == {0: "Platelets", 1: "RBC", 2: "WBC"}
    assert list(remote.predictor.imgsz) == client.get(f"/v1/models/{model}").json()["imgsz"]
    def by_place(classes: np.ndarray, boxes: np.ndarray) -> np.ndarray:  # near-equal scores may swap the order
        return np.column_stack([classes, boxes])[np.lexsort((boxes[:, 1], boxes[:, 0], classes))]

    tolerance = 0.5 if model == "static" else 4.0
    np.testing.assert_allclose(
        by_place(result.boxes.cls.numpy(), result.boxes.xyxy.numpy()),
        by_place(np.array([d["class"] for d in expected["detections"]]), _boxes(expected["detections"])),
        atol=tolerance,
    )


def test_kserve_bad_requests_are_400_with_a_reason(client):
    def infer(document: dict, **headers) -> dict:
        response = client.post("/v2/models/bccd/infer", json=document, headers=headers)
        assert response.status_code == 400, response.text
        return response.json()["error"]

    good = {"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.5] * 3072}
    assert client.post("/v2/models/bccd/infer", json={"inputs": [good]}).status_code == 200
    assert "unexpected input 'x'" in infer({"inputs": [good | {"name": "x"}]})
    assert "must be FP32" in infer({"inputs": [good | {"datatype": "INT8"}]})
    assert "multiples of 32" in infer({"inputs": [good | {"shape": [1, 3, 30, 32], "data": [0.5] * 2880}]})
    assert "3072" in infer({"inputs": [good | {"data": [0.5] * 10}]})
    assert "max_batch_size" in infer({"inputs": [good | {"shape": [9, 3, 32, 32], "data": [0.5] * 9 * 3072}]})
    assert (
        "NaN"
        in client.post(
            "/v2/models/bccd/infer",
            content=b'{"inputs": [{"name": "images", "shape": [1,3,32,32], "datatype": "FP32",'
            b' "data": [NaN' + b", 0" * 3071 + b"]}]}",
        ).json()["error"]
    )
    assert "unknown output" in infer({"inputs": [good], "outputs": [{"name": "boxes"}]})
    assert "inputs" in infer({"outputs": []})
    response = client.post("/v2/models/bccd/infer", content=b"{}", headers={"Inference-Header-Content-Length": "999"})
    assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]
    assert client.get("/v2/models/bccd/versions/2").status_code == 404
    assert client.get("/v2/models/bccd/versions/1/ready").status_code == 200


def test_request_id_is_echoed_or_generated(client, server):
    response = client.get("/v1/models", headers={"X-Request-ID": "trace-42.a"})
    assert response.headers["x-request-id"] == "trace-42.a"
    generated = client.get("/v1/models").headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    replaced = client.get("/v1/models", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert replaced != "bad id\twith spaces" and len(replaced) == 32
    error = client.post("/v1/detect", headers={"X-Request-ID": "err-7"}, json={"images": ["!!"]})
    assert error.status_code == 400 and error.json()["request_id"] == "err-7"
    assert "[err-7] POST /v1/detect 400" in server.log()


def test_metrics(client, cell_photo):  # noqa: F811
    data, _ = cell_photo
    for _ in range(2):
        assert client.post("/v1/detect", files={"image": ("c.jpg", data)}).status_code == 200
    text = client.get("/metrics").text
    assert metric_value(text, "detect_http_requests_total", route="/v1/detect", method="POST", status="200") >= 2
    assert metric_value(text, "detect_http_request_duration_seconds_count", route="/v1/detect", method="POST") >= 2
    assert metric_value(text, "detect_queue_depth", model="bccd") == 0
    assert metric_value(text, "detect_model_ready", model="static") == 1
    assert metric_value(text, "detect_batch_size_count", model="bccd") >= 2
    assert metric_value(text, "detect_inference_seconds_sum", model="bccd") > 0
    assert metric_value(text, "detect_images_total", model="bccd") >= 2
    assert metric_value(text, "detect_model_loads_total", model="bccd", result="ok") == 1
    [info] = [line for line in text.splitlines() if line.startswith("detect_model_info{") and 'model="bccd"' in line]
    assert 'classes="Platelets,RBC,WBC"' in info and 'architecture="yolo11n"' in info and info.endswith(" 1.0")
    assert metric_value(text, "detect_http_requests_in_flight") == 1  # the scrape itself
    assert "process_resident_memory_bytes" in text
    assert 'route="/v1/models/{name}"' in text  # route templates, not raw paths (bounded label values)


def test_openapi_documents_every_api(client):
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/detect",
        "/v1/detect/annotated",
        "/v1/models",
        "/v1/models/{name}/reload",
        "/v1/vision/detection",
        "/v1/vision/custom/{model}",
        "/v1/vision/custom/list",
        "/v2",
        "/v2/health/ready",
        "/v2/models/{model}/infer",
        "/v2/models/{model}/config",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["type"] == "array"
    assert body["application/json"]["schema"]["properties"]["images"]["type"] == "array"
    assert spec["paths"]["/v1/detect"]["post"]["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    schemas = spec["components"]["schemas"]
    for name in (
        "DetectResponse",
        "DetectionResult",
        "ErrorResponse",
        "ModelsResponse",
        "DeepStackResponse",
        "InferResponse",
        "ModelConfig",
        "ModelMetadata",
        "ReadyResponse",
    ):
        assert name in schemas, name
    assert "class" in schemas["DetectionResult"]["properties"]
    docs = client.get("/docs").text
    assert "cdn." not in docs and "/static-offline-docs/swagger-ui-bundle.js" in docs
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_demo_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/static/app.js" in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "/v1/detect" in script.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN or other outside resource
