"""Helpers of the proof tests (load, hostile input, faults): a 640x480 test photo and its reference detections,
an HTTP load generator that runs in its own process, latency statistics, and a server inside the test process.

The load generator is this file run as a script (`python tests/proof_fixtures.py --url ...`): asyncio streams,
closed loop (N clients, each sends its next request when the previous one is answered) or open loop (requests
start at a fixed rate whatever the answers), every request recorded as one JSON object in the `--out` file.
It runs in a separate process so that the clients' CPU time and event loop do not share the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import pytest

SCRIPT = Path(__file__).resolve()
PHOTO_SIZE = (640, 480)  # width, height
DETECTION_TOLERANCE = 1e-3
"""Largest difference of a confidence or a box coordinate (pixels) between two answers for the same image.

The server and the engine give bit-identical model outputs for an image whatever the batch it shares
(checked on this machine), so equal answers are what is expected; the tolerance only absorbs the 5-decimal
rounding of the JSON and kernels that could order float additions differently on another CPU."""


# ------------------------------------------------------------------------------------------- the photo


@dataclass(frozen=True)
class ProofPhoto:
    """A real 640x480 JPEG, the confidence threshold to use on it and what the engine detects there."""

    data: bytes
    conf: float
    reference: list[dict[str, Any]]  # Prediction.summary() of the engine decoding as the service does by default


def _photo_bytes(real_photos: list[Path]) -> tuple[bytes, float]:
    """A BCCD blood-smear photo when the shared datasets are present, else bus.jpg cut to 4:3 and resized to 640x480
    (with a low threshold: the cell model sees "cells" in the street scene only with little confidence)."""
    import cv2
    from service_fixtures import bccd_image

    path = bccd_image()
    if path is not None:
        return path.read_bytes(), 0.25
    bus = cv2.imread(str(real_photos[0]))  # 810x1080, portrait
    height, width = bus.shape[:2]
    crop_height = width * PHOTO_SIZE[1] // PHOTO_SIZE[0]
    top = (height - crop_height) // 2
    resized = cv2.resize(bus[top : top + crop_height], PHOTO_SIZE, interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), 0.05


@pytest.fixture(scope="session")
def proof_photo(real_photos, trained_onnx_dynamic) -> ProofPhoto:
    from engine import Detector, decode_image

    data, conf = _photo_bytes(real_photos)
    assert decode_image(data).shape == (PHOTO_SIZE[1], PHOTO_SIZE[0], 3)
    from service.settings import Settings

    decoding = Settings.model_fields["reduced_decoding"].default  # the service's, which the proof tests run with
    [prediction] = Detector(trained_onnx_dynamic, threads=1, reduced_decoding=decoding).predict(data, conf=conf)
    reference = prediction.summary()
    assert reference, "the reference photo must give detections, or comparing answers proves nothing"
    return ProofPhoto(data, conf, reference)


def detections_match(answer: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]]) -> bool:
    """Whether two `detections` lists hold the same objects: same count, and each reference detection paired with
    its own answer detection of the same class whose confidence and box agree within DETECTION_TOLERANCE."""
    if len(answer) != len(reference):
        return False
    unused = list(answer)
    for expected in reference:
        for candidate in unused:
            if (
                candidate["class"] == expected["class"]
                and candidate["name"] == expected["name"]
                and abs(candidate["confidence"] - expected["confidence"]) <= DETECTION_TOLERANCE
                and all(
                    abs(candidate["box"][key] - expected["box"][key]) <= DETECTION_TOLERANCE
                    for key in ("x1", "y1", "x2", "y2")
                )
            ):
                unused.remove(candidate)
                break
        else:
            return False
    return True


# ------------------------------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in 0-1) of a non-empty sample."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def resident_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", line
            return int(value) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


# ------------------------------------------------------------------------------------- load generator


@dataclass(frozen=True)
class RequestRecord:
    """One request of a load run. Times are time.monotonic() seconds: CLOCK_MONOTONIC, the same in every process
    of the machine, so they compare with the test's own clock (e.g. the moment a signal was sent)."""

    request_id: str
    started: float
    latency: float
    status: int | None  # None: no HTTP answer (see `error`)
    error: str | None  # no HTTP answer: "refused" (connection), "disconnected" (closed without one), "timeout"
    matched: bool | None  # 200 only: the detections equal the reference
    error_type: str | None  # error answers: the native error `type` (None when the body is not the JSON error)
    retry_after: str | None


@dataclass(frozen=True)
class LoadSettings:
    """What the load generator sends and how (see `python tests/proof_fixtures.py --help`)."""

    url: str
    photo: Path
    reference: Path
    conf: float
    out: Path
    concurrency: int = 0  # closed loop with this many clients (0: open loop at `rate`)
    rate: float = 0.0  # open loop: requests per second
    duration: float = 10.0
    fresh_connections: bool = False  # a new TCP connection for every request (no keep-alive)
    id_prefix: str = "load"
    timeout: float = 60.0  # of one request

    def command(self) -> list[str]:
        flags = [
            f"--url={self.url}",
            f"--photo={self.photo}",
            f"--reference={self.reference}",
            f"--conf={self.conf}",
            f"--out={self.out}",
            f"--concurrency={self.concurrency}",
            f"--rate={self.rate}",
            f"--duration={self.duration}",
            f"--id-prefix={self.id_prefix}",
            f"--timeout={self.timeout}",
        ]
        return [sys.executable, str(SCRIPT), *flags, *(["--fresh-connections"] if self.fresh_connections else [])]


def write_load_inputs(folder: Path, photo: ProofPhoto) -> tuple[Path, Path]:
    """The photo and its reference detections as files for the load generator."""
    folder.mkdir(parents=True, exist_ok=True)
    image, reference = folder / "photo.jpg", folder / "reference.json"
    image.write_bytes(photo.data)
    reference.write_text(json.dumps(photo.reference))
    return image, reference


def start_load(settings: LoadSettings) -> subprocess.Popen:
    """Start the load generator; `finish_load` waits for it and reads its records."""
    return subprocess.Popen(settings.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish_load(process: subprocess.Popen, settings: LoadSettings, timeout: float) -> list[RequestRecord]:
    """Wait for a load generator started by `start_load` and read its records (fails when it runs past `timeout`)."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"the load generator ran past {timeout:.0f} s:\n{output.decode(errors='replace')}")
    assert process.returncode == 0, output.decode(errors="replace")
    return [RequestRecord(**json.loads(line)) for line in settings.out.read_text().splitlines()]


def run_load(settings: LoadSettings) -> list[RequestRecord]:
    """Run the load generator to the end (its duration plus the time its last requests take)."""
    return finish_load(start_load(settings), settings, timeout=settings.duration + settings.timeout + 30)


def _parse_args(argv: list[str] | None) -> LoadSettings:
    parser = argparse.ArgumentParser(description="POST a photo to /v1/detect under load and record every request.")
    parser.add_argument("--url", required=True, help="server base URL")
    parser.add_argument("--photo", type=Path, required=True, help="the image to send")
    parser.add_argument("--reference", type=Path, required=True, help="JSON list of the expected detections")
    parser.add_argument("--conf", type=float, required=True, help="confidence threshold sent with each request")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file of the request records")
    parser.add_argument("--concurrency", type=int, default=0, help="closed loop with this many clients")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: requests started per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds during which requests start")
    parser.add_argument("--fresh-connections", action="store_true", help="no keep-alive: one connection a request")
    parser.add_argument("--id-prefix", default="load", help="X-Request-ID prefix (ids are PREFIX-N)")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout of one request")
    args = parser.parse_args(argv)
    if (args.concurrency > 0) == (args.rate > 0):
        parser.error("give either --concurrency (closed loop) or --rate (open loop)")
    return LoadSettings(**vars(args))


_BOUNDARY = "proof-load-7d1f0c"


def _multipart_body(image: bytes, conf: float) -> bytes:
    """A /v1/detect multipart body: the photo in the field `image` and the confidence threshold."""
    return (
        (
            f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="conf"\r\n\r\n{conf}\r\n'
            f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{_BOUNDARY}--\r\n".encode()
    )


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def _read_answer(reader: asyncio.StreamReader) -> _Answer:
    """One HTTP/1.1 response (the service always sends Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return _Answer(int(status_line.split()[1]), headers, body)


class _LoadClient:
    """Sends the prepared request over raw asyncio streams: the request bytes are built once, so a client costs
    a fraction of a millisecond of CPU per request and the load generator does not compete with the server."""

    def __init__(self, settings: LoadSettings) -> None:
        url = urlsplit(settings.url)
        self.host, self.port = url.hostname, url.port
        self.settings = settings
        self.reference = json.loads(settings.reference.read_text())
        self.body = _multipart_body(settings.photo.read_bytes(), settings.conf)
        self.records: list[RequestRecord] = []

    def _request(self, request_id: str, keep_alive: bool) -> bytes:
        head = (
            f"POST /v1/detect HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: multipart/form-data; boundary={_BOUNDARY}\r\nContent-Length: {len(self.body)}\r\n"
            f"X-Request-ID: {request_id}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        return head.encode() + self.body

    def _record(self, request_id: str, started: float, answer: _Answer | str) -> RequestRecord:
        latency = time.monotonic() - started
        if isinstance(answer, str):
            record = RequestRecord(request_id, started, latency, None, answer, None, None, None)
        else:
            try:
                document = json.loads(answer.body)
            except ValueError:
                document = None
            matched = error_type = None
            if answer.status == 200 and isinstance(document, dict):
                matched = detections_match(document["results"][0]["detections"], self.reference)
            elif isinstance(document, dict) and isinstance(document.get("error"), dict):
                error_type = document["error"].get("type")
            record = RequestRecord(
                request_id,
                started,
                latency,
                answer.status,
                None,
                matched,
                error_type,
                answer.headers.get("retry-after"),
            )
        self.records.append(record)
        return record

    async def send(
        self, sequence: int, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    ) -> tuple[RequestRecord, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
        """Send request `sequence`, on `connection` when given (keep-alive), else on a new one that is closed after.
        Returns its record and the connection to use next (None when there is none to keep)."""
        request_id = f"{self.settings.id_prefix}-{sequence}"
        keep_alive = not self.settings.fresh_connections and self.settings.concurrency > 0
        started = time.monotonic()
        try:
            if connection is None:
                connection = await asyncio.open_connection(self.host, self.port)
            reader, writer = connection
            writer.write(self._request(request_id, keep_alive))
            await writer.drain()
            answer: _Answer | str = await asyncio.wait_for(_read_answer(reader), self.settings.timeout)
        except ConnectionRefusedError:
            answer = "refused"
        except (ConnectionError, asyncio.IncompleteReadError):
            answer = "disconnected"
        except TimeoutError:
            answer = "timeout"
        record = self._record(request_id, started, answer)
        if connection is not None and (
            not keep_alive or isinstance(answer, str) or answer.headers.get("connection") == "close"
        ):
            connection[1].close()
            connection = None
        return record, connection


async def _generate(settings: LoadSettings) -> list[RequestRecord]:
    client = _LoadClient(settings)
    began = time.monotonic()
    end = began + settings.duration
    if settings.concurrency:
        counter = iter(range(10**9))

        async def client_loop() -> None:
            connection = None
            while time.monotonic() < end:
                record, connection = await client.send(next(counter), connection)
                if record.error == "refused":  # the server no longer listens: nothing more to learn
                    return
            if connection is not None:
                connection[1].close()

        await asyncio.gather(*(client_loop() for _ in range(settings.concurrency)))
    else:
        tasks = []
        for sequence in range(int(settings.rate * settings.duration)):
            await asyncio.sleep(max(0.0, began + sequence / settings.rate - time.monotonic()))
            tasks.append(asyncio.create_task(client.send(sequence)))
        await asyncio.gather(*tasks)
    return client.records


def main(argv: list[str] | None = None) -> int:
    settings = _parse_args(argv)
    records = asyncio.run(_generate(settings))
    settings.out.write_text("".join(json.dumps(asdict(record)) + "\n" for record in records))
    return 0


# ------------------------------------------------------------------------------- in-process server


class InProcessServer:
    """uvicorn serving `create_app(settings)` in a thread of the test process, so a test can reach into the
    running service (e.g. wrap a model's inference) while requests go through real HTTP and the real worker."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        self.app = app
        self.port = port
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
        self._thread = threading.Thread(target=self._server.run, name="in-process-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "the in-process server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(30)

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until /readyz answers 200 (every model loaded and warmed up)."""
        deadline = time.monotonic() + timeout
        while httpx.get(self.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the models did not load"
            time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
