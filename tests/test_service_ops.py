"""Operating the service: micro-batching, hot reload (good and bad, by request and by file watch), graceful
SIGTERM drain, JSON logs, the command line, settings validation, and no torch/ultralytics in the service."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto, helper
from service_fixtures import REPO, cell_photo, metric_value, servers  # noqa: F401  # fixtures

from service.settings import Settings

RENAMED = {0: "platelet", 1: "red cell", 2: "white cell"}


def _renamed_copy(source: Path, target: Path, names: dict[int, str]) -> None:
    """The same network with other class names in its metadata, written atomically (as a deploy would)."""
    model = onnx.load(source)
    for prop in model.metadata_props:
        if prop.key == "names":
            prop.value = repr(names)
    partial = target.with_suffix(".partial")
    onnx.save(model, partial)
    os.replace(partial, target)


def _not_a_detector(target: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), target)


def _post_concurrently(url: str, requests: list[dict]) -> list[httpx.Response]:
    """Send the requests at the same moment from separate connections; responses in request order."""
    responses: list[httpx.Response | None] = [None] * len(requests)
    clients = [httpx.Client(base_url=url, timeout=60) for _ in requests]
    barrier = threading.Barrier(len(requests))

    def send(index: int) -> None:
        barrier.wait()
        responses[index] = clients[index].post("/v1/detect", **requests[index])

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    return responses  # type: ignore[return-value]


def test_concurrent_requests_are_micro_batched(servers, trained_onnx_dynamic, cell_photo):  # noqa: F811
    server = servers({"MODELS": str(trained_onnx_dynamic), "MAX_BATCH": "8", "MAX_BATCH_WAIT_MS": "500"})
    data, conf = cell_photo
    thresholds = [conf, conf, conf, 0.6, 0.6, 0.6]  # different parameters share a batch
    with server.client() as http:
        alone = {
            threshold: http.post("/v1/detect", files={"image": ("c.jpg", data)}, data={"conf": threshold}).json()
            for threshold in set(thresholds)
        }
    before = httpx.get(server.url + "/metrics").text
    runs_before = metric_value(before, "detect_batch_size_count", model="bccd")
    responses = _post_concurrently(
        server.url, [{"files": {"image": ("c.jpg", data)}, "data": {"conf": threshold}} for threshold in thresholds]
    )
    for response, threshold in zip(responses, thresholds, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["detections"] == alone[threshold]["results"][0]["detections"]
    text = httpx.get(server.url + "/metrics").text
    runs = metric_value(text, "detect_batch_size_count", model="bccd") - runs_before
    images = metric_value(text, "detect_batch_size_sum", model="bccd") - metric_value(
        before, "detect_batch_size_sum", model="bccd"
    )
    assert images == 6 and runs < 6, f"{images} images in {runs} runs"
    assert images / runs > 1  # the batch-size histogram saw batches larger than one


def test_requests_queued_behind_a_busy_instance_share_one_run(
    servers, trained_onnx_dynamic, cell_photo, real_photos  # noqa: F811
):
    """With the default batching (no wait, like Triton's), a batch is what queued while the instance was busy."""
    server = servers({"MODELS": str(trained_onnx_dynamic), "MAX_BATCH": "8", "INSTANCES": "1"})
    data, conf = cell_photo
    big = real_photos[0].read_bytes()
    before = httpx.get(server.url + "/metrics").text
    slow = threading.Thread(  # about a second of model run at 1920 on this CPU: the others queue behind it
        target=httpx.post,
        args=(server.url + "/v1/detect",),
        kwargs={"files": {"image": ("bus.jpg", big)}, "data": {"imgsz": "1920"}, "timeout": 60},
    )
    slow.start()
    time.sleep(0.3)  # its upload and decoding take a few tens of milliseconds: it runs now
    responses = _post_concurrently(server.url, [{"files": {"image": ("c.jpg", data)}, "data": {"conf": conf}}] * 6)
    slow.join()
    assert [response.status_code for response in responses] == [200] * 6
    text = httpx.get(server.url + "/metrics").text
    runs = metric_value(text, "detect_batch_size_count", model="bccd") - (
        metric_value(before, "detect_batch_size_count", model="bccd") or 0
    )
    assert runs < 7, f"7 requests in {runs} runs: none shared a run"


def _thread_priorities(pid: int) -> dict[int, int]:
    """The nice value of every thread of process `pid`, by thread id."""
    return {
        int(task.name): int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])  # stat field 19: nice
        for task in Path(f"/proc/{pid}/task").iterdir()
    }


@pytest.mark.skipif(sys.platform != "linux", reason="thread priorities are set on Linux only")
def test_model_runs_have_a_lower_priority_than_http(servers, trained_onnx_dynamic):  # noqa: F811
    """Every thread that runs the model (each instance's worker, which takes part in its runs, and the intra-op pools
    of ONNX Runtime, the solo session's too) has the lower priority; the event loop and the rest keep theirs, so that
    answers and 503s do not wait for the model."""
    settings = {"INSTANCES": "2", "THREADS": "3", "SOLO_THREADS": "4", "INFERENCE_NICE": "7"}
    server = servers({"MODELS": str(trained_onnx_dynamic), **settings})
    nice = _thread_priorities(server.process.pid)
    # 2 instances x (their worker + 2 pool threads), and the solo session's 3 pool threads (a worker joins them)
    assert sorted(nice.values()).count(7) == 2 * 3 + 3, nice
    assert nice[server.process.pid] == 0 and set(nice.values()) == {0, 7}, nice  # the main thread: the event loop


@pytest.fixture(scope="module")
def reload_server(servers, trained_onnx_dynamic, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("models")
    shutil.copy(trained_onnx_dynamic, folder / "cells.onnx")
    return servers({"MODELS": str(folder / "cells.onnx"), "LOG_FORMAT": "json"}), folder / "cells.onnx"


def _describe(server) -> dict:
    return httpx.get(server.url + "/v1/models/cells").json()


def _detected_names(server, data: bytes, conf: float) -> set[str]:
    response = httpx.post(server.url + "/v1/detect", files={"image": ("c.jpg", data)}, data={"conf": conf}, timeout=30)
    assert response.status_code == 200, response.text
    return {item["name"] for item in response.json()["results"][0]["detections"]}


def test_hot_reload_swaps_a_good_model(reload_server, trained_onnx_dynamic, cell_photo):  # noqa: F811
    server, path = reload_server
    data, conf = cell_photo
    before = _describe(server)
    assert before["classes"] == ["Platelets", "RBC", "WBC"]
    _renamed_copy(trained_onnx_dynamic, path, RENAMED)
    response = httpx.post(server.url + "/v1/models/cells/reload", timeout=30)
    assert response.status_code == 200, response.text
    after = response.json()
    assert after["classes"] == list(RENAMED.values()) and after["ready"] and after["error"] is None
    assert after["loaded_at"] > before["loaded_at"]
    assert _detected_names(server, data, conf) <= set(RENAMED.values())


@pytest.mark.parametrize("damage", ["corrupt", "not a detector", "deleted"])
def test_failed_reload_keeps_the_old_model_serving(reload_server, cell_photo, damage):  # noqa: F811
    server, path = reload_server
    data, conf = cell_photo
    before = _describe(server)
    if damage == "corrupt":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "not a detector":
        _not_a_detector(path)
    else:
        path.unlink()
    response = httpx.post(server.url + "/v1/models/cells/reload", timeout=30)
    assert response.status_code == 409
    error = response.json()["error"]
    reason = {
        "corrupt": "is not a loadable ONNX model",
        "not a detector": "has no 'names' metadata",
        "deleted": "does not exist",
    }[damage]
    assert error["type"] == "reload_failed" and reason in error["message"]
    assert (
        f"the version loaded at {before['loaded_at'][:19]}" in error["message"] and "keeps serving" in error["message"]
    )
    after = _describe(server)
    assert after["ready"] and after["state"] == "ready" and after["loaded_at"] == before["loaded_at"]
    assert reason in after["error"]
    assert _detected_names(server, data, conf)  # still detecting with the old version
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_json_logs_carry_request_ids(reload_server):
    server, _ = reload_server
    httpx.get(server.url + "/v1/models", headers={"X-Request-ID": "json-log-1"})
    time.sleep(0.1)
    records = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    [access] = [record for record in records if record.get("request_id") == "json-log-1"]
    assert access["logger"] == "service.access" and access["message"].startswith("GET /v1/models 200 ")
    assert access["client"] == "127.0.0.1" and access["level"] == "INFO" and access["time"].endswith("+00:00")
    assert any(record["logger"] == "service.models" and "loaded from" in record["message"] for record in records)


def test_watch_reloads_a_changed_file(servers, trained_onnx_dynamic, tmp_path):  # noqa: F811
    path = tmp_path / "watched.onnx"
    shutil.copy(trained_onnx_dynamic, path)
    server = servers({"MODELS": str(path), "WATCH": "true"})
    first = httpx.get(server.url + "/v1/models/watched").json()
    _renamed_copy(trained_onnx_dynamic, path, RENAMED)
    deadline = time.monotonic() + 20
    while (now := httpx.get(server.url + "/v1/models/watched").json())["classes"] != list(RENAMED.values()):
        assert time.monotonic() < deadline, "the changed file was not reloaded"
        time.sleep(0.1)
    assert now["loaded_at"] > first["loaded_at"]
    path.write_bytes(b"broken")  # a bad file is refused and the renamed version keeps serving
    deadline = time.monotonic() + 20
    while (now := httpx.get(server.url + "/v1/models/watched").json())["error"] is None:
        assert time.monotonic() < deadline, "the broken file was not noticed"
        time.sleep(0.1)
    assert now["ready"] and now["classes"] == list(RENAMED.values())


def test_sigterm_drains_in_flight_requests(servers, trained_onnx_dynamic, real_photos):  # noqa: F811
    server = servers(  # one instance: one request runs, the others wait
        {"MODELS": str(trained_onnx_dynamic), "MAX_BATCH": "1", "INSTANCES": "1", "GRACEFUL_TIMEOUT_S": "30"}
    )
    photo = real_photos[0].read_bytes()
    results: list[httpx.Response | Exception] = []

    def send() -> None:
        try:
            with server.client(timeout=60) as http:
                results.append(http.post("/v1/detect", files={"image": ("bus.jpg", photo)}, data={"imgsz": "1280"}))
        except httpx.HTTPError as error:
            results.append(error)

    threads = [threading.Thread(target=send) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10  # one request running, two waiting
    while (metric_value(httpx.get(server.url + "/metrics").text, "detect_queue_depth", model="bccd") or 0) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):  # no new connections once shutting down
        httpx.get(server.url + "/healthz", timeout=2)
    for thread in threads:
        thread.join()
    assert [getattr(result, "status_code", result) for result in results] == [200, 200, 200]
    # uvicorn re-raises the signal once it has shut down cleanly, so the exit status is SIGTERM's (143 in a shell)
    assert server.process.wait(timeout=30) == -signal.SIGTERM
    log = server.log()
    assert "Shutting down" in log and "INFO service stopped" in log and "Finished server process" in log


def test_a_server_bug_is_a_logged_json_500(caplog):
    """Only a real bug gives a 500: the traceback is logged with the request id, the client gets JSON."""
    from service.app import create_app
    from service.logs import _RequestIdFilter

    app = create_app(Settings(models=[]))

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    caplog.handler.addFilter(_RequestIdFilter())

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.get("/broken", headers={"X-Request-ID": "bug-1"})

    response = asyncio.run(call())
    assert response.status_code == 500 and response.headers["x-request-id"] == "bug-1"
    assert response.json()["error"] == {
        "status": 500,
        "type": "internal_error",
        "message": "internal server error (request id bug-1); see the server log",
    }
    [record] = [r for r in caplog.records if r.name == "service" and r.exc_info]
    assert record.request_id == "bug-1" and "GET /broken" in record.getMessage()
    assert record.exc_info[1].args == ("a bug",)


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DETECT_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_documents_every_setting():
    result = _run_cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text and f"env DETECT_{name.upper()};" in text, name
    for documented in (
        "default: 127.0.0.1",
        "default: 8000",
        "default: 8",
        "default: 0.0",
        "default: 32",
        "default: 20971520",
        "default: 50000000",
        "default: text",
        "default: False",
        f"every *.onnx in {REPO / 'weights'}",
        "default: the first model",
    ):  # whole values: "default: 8000" must not pass for "default: 8"
        assert re.search(rf"{re.escape(documented)}(?![\w.])", text), documented


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--default-model", "nope"), {}, "default_model 'nope' is not one of the models (bccd)"),
        ((), {"DETECT_PORT": "eighty"}, "--port (DETECT_PORT): Input should be a valid integer, unable to parse "
         "string as an integer (given: 'eighty')"),
        (("--models", "a=x.onnx,a=y.onnx"), {}, "model name 'a' is used twice"),
        (("--device", "tpu"), {}, "device must be cpu, cuda or cuda:N"),
        (("--log-format", "xml"), {}, "--log-format (DETECT_LOG_FORMAT): Input should be 'text' or 'json' "
         "(given: 'xml')"),
    ],
)
def test_invalid_settings_exit_with_the_reason(args, env, message):
    result = _run_cli(*args, env=env)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_service_and_engine_never_import_torch_or_ultralytics():
    code = (
        "import importlib, pkgutil, sys\n"
        "import engine, service\n"
        "for package in (engine, service):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        "create_app(Settings())\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'torchvision', 'ultralytics')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_weights_folder_is_found_from_any_working_directory(tmp_path):
    code = "from service.settings import Settings; print([str(s.path) for s in Settings().models])"
    env = {key: value for key, value in os.environ.items() if not key.startswith("DETECT_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert str(REPO / "weights" / "bccd.onnx") in result.stdout
