"""Every route's real responses against the schema it declares in the OpenAPI document.

Most routes build their JSON by hand (a dict in a JSONResponse: the fast path), so FastAPI never checks them against
their ``response_model``. Here a real server answers one request of each kind, successes and errors, and each JSON
body is validated against the pydantic model that the app's /openapi.json names for that route and status:
``model_validate`` in strict mode (no silent coercion of a wrong type), and the validated document must dump back
to the very body (a misspelt or extra key, which pydantic would drop, fails too).
"""

from __future__ import annotations

import base64
import re

import cv2
import numpy as np
import pytest
from pydantic import BaseModel
from service_fixtures import cell_photo, servers  # noqa: F401  # fixtures

import service.schemas as schemas

KEY = "schema-key"
PIXEL_LIMIT = 1_000_000


@pytest.fixture(scope="module")
def server(servers, trained_onnx_dynamic, trained_onnx_static):  # noqa: F811
    return servers(
        {
            "MODELS": f"bccd={trained_onnx_dynamic},static={trained_onnx_static}",
            "API_KEYS": KEY,
            "MAX_PIXELS": str(PIXEL_LIMIT),
        }
    )


@pytest.fixture(scope="module")
def client(server):
    with server.client(headers={"X-API-Key": KEY}, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def openapi(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _operation(openapi: dict, method: str, path: str) -> dict | None:
    """The OpenAPI operation serving ``method path`` (path templates like ``/v2/models/{model}`` match)."""
    for template, operations in openapi["paths"].items():
        pattern = "^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            return operations[method.lower()]
    if "/versions/" in path:  # KServe's versioned paths, left out of the document, are the unversioned routes
        return _operation(openapi, method, re.sub(r"/versions/[^/]+", "", path))
    return None


def _family_error(path: str) -> type[BaseModel]:
    """The error document of the API a path belongs to (for requests that reach no route)."""
    if path.startswith("/v2"):
        return schemas.KServeError
    if path.startswith("/v1/vision"):
        return schemas.DeepStackError
    return schemas.ErrorResponse


def declared_model(openapi: dict, method: str, path: str, status: int) -> type[BaseModel] | None:
    """The pydantic model of ``service.schemas`` that the OpenAPI document declares for the response; None when it
    declares a response without a JSON body (KServe's empty 200s)."""
    operation = _operation(openapi, method, path)
    if operation is None:  # unknown route or method: the API's error document
        return _family_error(path)
    responses = operation["responses"]
    entry = responses.get(str(status), responses.get("default"))
    assert entry is not None, f"{method} {path} answered {status}, which its OpenAPI entry does not declare"
    schema = entry.get("content", {}).get("application/json", {}).get("schema")
    if not schema:
        return None
    ref = schema.get("$ref")
    assert ref, f"{method} {path} {status}: expected a named schema, got {schema}"
    name = ref.rsplit("/", 1)[-1]
    model = getattr(schemas, name, None)
    assert isinstance(model, type) and issubclass(model, BaseModel), f"{name} is not a model of service.schemas"
    return model


def check(openapi: dict, response, expected_status: int) -> BaseModel | None:
    """Validate a response against its declared model; returns the validated document."""
    method, path = response.request.method, response.request.url.path
    assert response.status_code == expected_status, (method, path, response.status_code, response.text[:500])
    model = declared_model(openapi, method, path, response.status_code)
    if model is None:
        assert response.content == b"", f"{method} {path}: a body where the schema declares none"
        return None
    assert response.headers["content-type"].startswith("application/json"), (method, path)
    body = response.json()
    document = model.model_validate_json(response.content, strict=True)
    dumped = document.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert _normalised(dumped) == _normalised(body), f"{method} {path} {response.status_code}: not a {model.__name__}"
    return document


def _normalised(value):
    """JSON value with timestamps in one form (pydantic writes ``Z`` where isoformat writes ``+00:00``)."""
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    if isinstance(value, str) and re.match(r"^\d{4}-\d\d-\d\dT", value):
        return value.replace("+00:00", "Z")
    return value


def _png(width: int, height: int) -> bytes:
    return cv2.imencode(".png", np.full((height, width, 3), 90, np.uint8))[1].tobytes()


def test_native_detect_responses(client, openapi, cell_photo, real_photos):  # noqa: F811
    data, conf = cell_photo
    zidane = real_photos[1].read_bytes()
    one = check(openapi, client.post("/v1/detect", files={"image": ("c.jpg", data)}, data={"conf": str(conf)}), 200)
    assert one.results[0].detections, "the photo has cells: the detections' schema is exercised"
    batch = client.post(
        "/v1/detect",
        files=[("image", ("c.jpg", data)), ("image", ("z.jpg", zidane))],
        data={"conf": str(conf), "normalize": "true"},
    )
    assert len(check(openapi, batch, 200).results) == 2
    encoded = [base64.b64encode(data).decode(), base64.b64encode(zidane).decode()]
    check(openapi, client.post("/v1/detect", json={"images": encoded, "model": "static", "classes": "RBC"}), 200)
    for response, status in (
        (client.post("/v1/detect", files={"image": ("x.jpg", b"not an image at all")}), 400),
        (client.post("/v1/detect", files={"image": ("c.jpg", data)}, headers={"X-API-Key": "wrong"}), 401),
        (client.post("/v1/detect", files={"image": ("c.jpg", data)}, data={"model": "nope"}), 404),
        (client.post("/v1/detect", files={"image": ("big.png", _png(1200, 1000))}), 413),
        (client.post("/v1/detect", content=b"hi", headers={"Content-Type": "text/plain"}), 415),
        (client.post("/v1/detect", files={"image": ("c.jpg", data)}, data={"conf": "2"}), 422),
        (client.post("/v1/detect", files={"image": ("c.jpg", data)}, data={"imgsz": "100"}), 422),
    ):
        assert check(openapi, response, status).error.status == status


def test_native_annotate_json_responses(client, openapi, cell_photo):  # noqa: F811
    """The annotated image is not JSON; everything else the route answers is."""
    data, _ = cell_photo
    image = client.post("/v1/detect/annotated", files={"image": ("c.jpg", data)}, data={"format": "png"})
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    for response, status in (
        (client.post("/v1/detect/annotated", files=[("image", ("a.jpg", data)), ("image", ("b.jpg", data))]), 422),
        (client.post("/v1/detect/annotated", files={"image": ("c.jpg", data)}, data={"format": "gif"}), 422),
        (client.post("/v1/detect/annotated", files={"image": ("x.jpg", b"")}), 400),
        (client.post("/v1/detect/annotated", json={"images": [base64.b64encode(data).decode()], "model": "x"}), 404),
    ):
        check(openapi, response, status)


def test_models_health_and_ready_responses(client, openapi):
    models = check(openapi, client.get("/v1/models"), 200)
    assert {m.name for m in models.models} == {"bccd", "static"}
    assert check(openapi, client.get("/v1/models/bccd"), 200).ready
    check(openapi, client.get("/v1/models/nope"), 404)
    check(openapi, client.get("/v1/models", headers={"X-API-Key": "wrong"}), 401)
    check(openapi, client.get("/healthz"), 200)
    assert check(openapi, client.get("/readyz"), 200).ready
    check(openapi, client.get("/v1/nothing"), 404)
    check(openapi, client.get("/v1/detect"), 405)


def test_deepstack_responses(client, openapi, cell_photo):  # noqa: F811
    data, _ = cell_photo
    found = check(openapi, client.post("/v1/vision/detection", files={"image": ("c.jpg", data)},
                                       data={"min_confidence": "0.2"}), 200)
    assert found.predictions, "the photo has cells: the predictions' schema is exercised"
    check(openapi, client.post("/v1/vision/custom/static", files={"image": ("c.jpg", data)}), 200)
    assert check(openapi, client.post("/v1/vision/custom/list"), 200).models == ["bccd", "static"]
    check(openapi, client.get("/v1/vision/custom/list"), 200)
    for response, status in (
        (client.post("/v1/vision/detection", files={"image": ("x.jpg", b"garbage" * 9)}), 400),
        (client.post("/v1/vision/detection", files={"image": ("c.jpg", data)}, headers={"X-API-Key": "no"}), 401),
        (client.post("/v1/vision/custom/nope", files={"image": ("c.jpg", data)}), 404),
        (client.post("/v1/vision/detection", files={"image": ("big.png", _png(1200, 1000))}), 413),
        (client.post("/v1/vision/detection", files={"image": ("c.jpg", data)}, data={"min_confidence": "x"}), 422),
    ):
        assert check(openapi, response, status).code == status


def test_kserve_responses(client, openapi):
    check(openapi, client.get("/v2"), 200)
    check(openapi, client.get("/v2/health/live"), 200)
    check(openapi, client.get("/v2/health/ready"), 200)
    metadata = check(openapi, client.get("/v2/models/bccd"), 200)
    check(openapi, client.get("/v2/models/bccd/ready"), 200)
    check(openapi, client.get("/v2/models/bccd/config"), 200)
    check(openapi, client.get("/v2/models/static/config"), 200)
    [tensor] = metadata.inputs
    shape = [1, 3, 64, 64]
    request = {"id": "r1", "inputs": [{"name": tensor.name, "shape": shape, "datatype": tensor.datatype,
                                       "data": [0.5] * int(np.prod(shape))}]}
    inferred = check(openapi, client.post("/v2/models/bccd/infer", json=request), 200)
    assert inferred.id == "r1" and inferred.outputs[0].data
    check(openapi, client.post("/v2/models/bccd/versions/1/infer", json=request), 200)
    for response, status in (
        (client.post("/v2/models/bccd/infer", json={"inputs": []}), 400),
        (client.post("/v2/models/bccd/infer", content=b"{no", headers={"Content-Type": "application/json"}), 400),
        (client.get("/v2/models/nope"), 404),
        (client.get("/v2", headers={"X-API-Key": "wrong"}), 401),
        (client.get("/v2/nothing"), 404),
    ):
        check(openapi, response, status)
