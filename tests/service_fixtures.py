"""Real servers for the service tests: `python -m service` in a subprocess on a free loopback port."""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
BCCD_IMAGES = REPO.parent / "shared" / "datasets" / "bccd-voc" / "JPEGImages"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    """Status and body of `GET path` on a loopback port, with the standard library only."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_until_ready(service: subprocess.Popen, port: int, log_path: Path, timeout: float, poll: float) -> None:
    """Wait until the service process on `port` answers /readyz with 200; fail with its log's tail if it exits or
    is not ready within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        assert service.poll() is None, f"the service exited:\n{log_path.read_text()[-4000:]}"
        try:
            if get(port, "/readyz")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"not ready after {timeout:g} s:\n{log_path.read_text()[-4000:]}"
        time.sleep(poll)


def detect_served_photo(port: int, photo: Path, request_id: str) -> dict[str, Any]:
    """A deployed service on `port` serves only the model `bccd` and answers `photo` on /v1/detect (conf 0.01),
    echoing `request_id`; its JSON answer."""
    status, body = get(port, "/v1/models")
    assert status == 200 and [model["name"] for model in json.loads(body)["models"]] == ["bccd"], body
    response = httpx.post(
        f"http://127.0.0.1:{port}/v1/detect",
        files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        data={"conf": "0.01"},
        headers={"X-Request-ID": request_id},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id
    return response.json()


@dataclass
class Server:
    """A running `python -m service`; its log goes to a file (read with `log()`)."""

    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), **kwargs)

    def wait(self, path: str, status: int = 200, timeout: float = 30) -> httpx.Response:
        """Poll `path` until it answers `status` (fails with the server log otherwise)."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                response = httpx.get(self.url + path, timeout=2)
                if response.status_code == status:
                    return response
                last = response
            except httpx.TransportError as error:
                last = error
            time.sleep(0.05)
        pytest.fail(f"{path} did not answer {status} within {timeout}s (last: {last}):\n{self.log()}")

    def stop(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    workdir: Path, settings: dict[str, str], wait_ready: bool = True, args: tuple[str, ...] = ()
) -> Server:
    """Start `python -m service` in `workdir` (not the repository: paths must not depend on the cwd).

    `settings` are DETECT_* variables without the prefix (e.g. {"QUEUE_SIZE": "1"}); the port is chosen here.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("DETECT_")}
    env.update({f"DETECT_{key}": value for key, value in settings.items()})
    env.setdefault("DETECT_THREADS", "1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port), *args],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, log_path)
    server.wait("/healthz")
    if wait_ready:
        server.wait("/readyz")
    return server


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator:
    """A factory `servers(settings, wait_ready=True)` whose servers are stopped at the end of the module."""
    started: list[Server] = []

    def start(settings: dict[str, str], wait_ready: bool = True, args: tuple[str, ...] = ()) -> Server:
        server = start_server(tmp_path_factory.mktemp("server"), settings, wait_ready, args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def bccd_image() -> Path | None:
    """A BCCD blood-smear photo (640x480) when the shared datasets are present."""
    path = BCCD_IMAGES / "BloodImage_00000.jpg"
    return path if path.exists() else None


@pytest.fixture(scope="session")
def cell_photo(real_photos) -> tuple[bytes, float]:
    """A real photo the BCCD model finds cells in, and a confidence threshold that gives boxes on it.

    A BCCD image when the shared data exists, else bus.jpg with a low threshold (the model sees "cells" there)."""
    path = bccd_image()
    return (path.read_bytes(), 0.25) if path else (real_photos[0].read_bytes(), 0.05)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly `labels` in Prometheus text format (None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def resident_mb(server: Server) -> float:
    """The server process's resident memory (VmRSS of /proc/PID/status) in MiB."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {server.process.pid}")


class HealthProbe:
    """GET /healthz on a new connection every `interval` seconds in a thread, while an attack runs.

    `worst` is the slowest answer in seconds (a probe that got no answer within `timeout` counts as `timeout`),
    `statuses` the status of every probe (None for no answer)."""

    def __init__(self, server: Server, interval: float = 0.05, timeout: float = 5.0) -> None:
        self.server = server
        self.interval = interval
        self.timeout = timeout
        self.latencies: list[float] = []
        self.statuses: list[int | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status: int | None = httpx.get(self.server.url + "/healthz", timeout=self.timeout).status_code
            except httpx.HTTPError:
                status = None
            self.latencies.append(time.monotonic() - started)
            self.statuses.append(status)
            self._stop.wait(self.interval)

    @property
    def worst(self) -> float:
        return max(self.latencies)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 1)

    def assert_healthy(self, within: float = 1.0) -> None:
        """Every probe answered 200, each within `within` seconds."""
        assert self.latencies, "no probe ran"
        assert set(self.statuses) == {200}, self.statuses
        assert self.worst < within, f"/healthz took {self.worst:.2f} s"


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float  # from the start of sending to the end of the answer

    def json(self) -> Any:
        return json.loads(self.body)


def _read_answer(sock: socket.socket) -> bytes:
    """One HTTP response (its head and Content-Length bytes of body), or what came before the server closed."""
    data = b""
    try:
        while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
            0,
        )
        while len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
            data += chunk
    except ConnectionResetError:
        pass
    return data


def raw_exchange(server: Server, pieces: list[bytes], pause: float = 0.0, timeout: float = 15.0) -> RawAnswer | None:
    """Send `pieces` over a new raw connection, `pause` seconds apart (stopping once the server answers or closes),
    then read one answer. None when the server closed without one."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        started = time.monotonic()
        try:
            for index, piece in enumerate(pieces):
                if index and pause and select.select([sock], [], [], pause)[0]:  # answered or closed meanwhile
                    break
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = _read_answer(sock)
        elapsed = time.monotonic() - started
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return RawAnswer(int(status_line.split()[1]), headers, body, elapsed)
