"""Real servers for the service tests: `python -m service` in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
BCCD_IMAGES = REPO.parent / "shared" / "datasets" / "bccd-voc" / "JPEGImages"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
