"""Load generator for the REST service, and the helpers the service benchmarks share.

Run as its own process (so that the client's CPU work and GIL stay out of the measured process), it sends
`POST /v1/detect` (or --path, e.g. another server's route) with one image as a multipart upload (the request is
built once, as wrk sends it) from asyncio, through a lean HTTP/1.1 keep-alive client (default; about 0.2 ms of
client CPU per request) or httpx (about 2 ms: a cross-check), and writes one JSON record per request:

  closed   --concurrency C: C workers; each sends its next request as soon as its last one is answered.
           Latency: from sending to the end of the response.
  open     --rate R: Poisson arrivals at R requests/s whatever the answers (overload). Latency: from the
           scheduled arrival to the end of the response, so a client that falls behind cannot hide queueing
           (its lag is recorded too). --probe-seconds then runs a 1-request closed loop while the backlog
           drains, to see when the service answers normally again.

    python benchmarks/loadgen.py closed --url http://127.0.0.1:8000 --image a.jpg --concurrency 8 \\
        --warmup 2 --duration 10 --out run.json

Only loopback addresses are accepted, so that a benchmark never floods another machine by mistake.
The helpers below (`ServiceProcess`, `run_load`, `summarize`, ...) are what benchmarks/service.py and
benchmarks/soak.py import.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import mimetypes
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
LOADGEN = Path(__file__).resolve()
BCCD_IMAGE = REPO.parent / "shared" / "datasets" / "bccd-voc" / "JPEGImages" / "BloodImage_00000.jpg"
DETECT_PATH = "/v1/detect"
RECORD_FIELDS = ("phase", "sent_s", "latency_ms", "status", "lag_ms")
TRANSPORT_ERROR = 0
"""The status recorded for a request that got no HTTP answer (connection refused, reset, client timeout)."""
MB = 1e6
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
STATUS_LINE = re.compile(r"^HTTP/1\.[01] (\d{3})(?: |$)")


class BenchmarkError(RuntimeError):
    """The service or the load generator failed; the message says how (with the service's log tail)."""


# --------------------------------------------------------------------------------------------------------------
# The load-generator process
# --------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", required=True, help="service base URL on a loopback address, e.g. http://127.0.0.1:8000"
    )
    common.add_argument("--image", type=Path, required=True, help="image file sent as the multipart field 'image'")
    common.add_argument("--out", type=Path, required=True, help="JSON file to write the per-request records to")
    common.add_argument("--duration", type=positive_float, required=True, help="seconds of measured load")
    common.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="raw",
        help="HTTP client: raw (lean asyncio keep-alive client, like wrk) or httpx (cross-check) (default: raw)",
    )
    common.add_argument(
        "--timeout", type=positive_float, default=60.0, help="client timeout of one request in seconds (default: 60)"
    )
    common.add_argument(
        "--path",
        default=DETECT_PATH,
        help=f"path the multipart POST goes to, e.g. another server's detection route (default: {DETECT_PATH})",
    )
    modes = parser.add_subparsers(dest="mode", required=True, metavar="{closed,open}")
    closed = modes.add_parser("closed", parents=[common], help="fixed number of requests in flight")
    closed.add_argument("--concurrency", type=positive_int, required=True, help="requests in flight at all times")
    closed.add_argument(
        "--warmup",
        type=non_negative_float,
        default=0.0,
        help="seconds of load before the measurement, tagged 'warmup' (default: 0)",
    )
    opened = modes.add_parser("open", parents=[common], help="Poisson arrivals at a fixed rate")
    opened.add_argument("--rate", type=positive_float, required=True, help="mean arrivals per second")
    opened.add_argument(
        "--probe-seconds",
        type=non_negative_float,
        default=0.0,
        help="after the arrivals stop, seconds of one-at-a-time probe requests, tagged 'probe' (default: 0)",
    )
    opened.add_argument(
        "--max-connections", type=positive_int, default=512, help="most simultaneous connections (default: 512)"
    )
    opened.add_argument("--seed", type=int, default=0, help="seed of the arrival times (default: 0)")
    return parser


def require_loopback(url: str) -> None:
    """Refuse a URL that is not http:// on a loopback address (checked without any name resolution)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"{url!r} is not an http://host:port URL")
    host = parts.hostname
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{url!r}: the load generator only targets loopback addresses (127.0.0.0/8, ::1, localhost)"
        ) from None
    if not address.is_loopback:
        raise ValueError(f"{url!r}: {host} is not a loopback address; the load generator only targets this machine")


def multipart_body(image: bytes, filename: str, field: str = "image") -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + image + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class RawClient:
    """A lean HTTP/1.1 keep-alive client over asyncio streams that sends one prebuilt request, as wrk does.

    It costs about a tenth of httpx's client CPU per request, so that the client's own work stays out of the
    measured latency. Connections are reused; a reused one that the server has closed is replaced once.
    """

    def __init__(
        self, url: str, body: bytes, content_type: str, timeout: float, max_connections: int, path: str = DETECT_PATH
    ) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.timeout = timeout
        self.errors: Counter[str] = Counter()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def send(self) -> int:
        """Send the request; its HTTP status, or TRANSPORT_ERROR when no answer came."""
        async with self._slots:
            try:
                if self._idle:
                    try:
                        return await self._use(self._idle.pop())
                    except (EOFError, ConnectionError):
                        pass  # the server had closed this idle keep-alive connection: retry once on a new one
                connection = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
                return await self._use(connection)
            except (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError) as error:
                self.errors[f"{type(error).__name__}: {error}"[:200]] += 1
                return TRANSPORT_ERROR

    async def _use(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> int:
        """One request-response exchange on `connection`, kept for the next request when the server allows."""
        reader, writer = connection
        try:
            status, keep_alive = await asyncio.wait_for(self._exchange(reader, writer), self.timeout)
        except BaseException:
            writer.close()
            raise
        if keep_alive:
            self._idle.append(connection)
        else:
            writer.close()
        return status

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bool]:
        writer.write(self.request)
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status_line = STATUS_LINE.match(head[0])
        if status_line is None:
            raise ValueError(f"not an HTTP/1.x status line: {head[0][:80]!r}")
        status = int(status_line.group(1))
        headers = {
            name.strip().lower(): value.strip().lower() for name, _, value in (line.partition(":") for line in head[1:])
        }
        if "chunked" in headers.get("transfer-encoding", ""):
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
        elif "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
        else:  # the body ends with the connection
            await reader.read()
            return status, False
        return status, headers.get("connection") != "close"

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


class HttpxClient:
    """The same request through httpx (a cross-check of RawClient; about 2 ms more client CPU per request)."""

    def __init__(
        self, url: str, body: bytes, content_type: str, timeout: float, max_connections: int, path: str = DETECT_PATH
    ) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client = httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits)
        self.body, self.headers, self.path = body, {"Content-Type": content_type}, path
        self.errors: Counter[str] = Counter()

    async def send(self) -> int:
        """Send the request; its HTTP status, or TRANSPORT_ERROR when no answer came."""
        try:
            response = await self.client.post(self.path, content=self.body, headers=self.headers)
        except httpx.HTTPError as error:
            self.errors[f"{type(error).__name__}: {error}"[:200]] += 1
            return TRANSPORT_ERROR
        return response.status_code

    async def aclose(self) -> None:
        await self.client.aclose()


CLIENTS = {"raw": RawClient, "httpx": HttpxClient}
Sender = Callable[[], Awaitable[int]]


async def closed_loop(
    send: Sender, concurrency: int, seconds: float, t0: float, phase_of: Callable[[float], str]
) -> list[list[Any]]:
    """`concurrency` workers sending back to back until `seconds` after `t0`; records as in RECORD_FIELDS."""
    records: list[list[Any]] = []
    end = t0 + seconds

    async def worker() -> None:
        while (sent := time.monotonic()) < end:
            status = await send()
            done = time.monotonic()
            records.append([phase_of(sent - t0), sent - t0, (done - sent) * 1e3, status, 0.0])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


async def open_loop(send: Sender, rate: float, seconds: float, seed: int, probe_seconds: float) -> dict[str, Any]:
    """Poisson arrivals for `seconds`, then one-at-a-time probes for `probe_seconds` while the backlog drains."""
    rng = random.Random(seed)
    records: list[list[Any]] = []
    tasks: list[asyncio.Task[None]] = []
    t0 = time.monotonic()

    async def arrival(scheduled: float) -> None:
        sent = time.monotonic() - t0
        status = await send()
        done = time.monotonic() - t0
        records.append(["load", scheduled, (done - scheduled) * 1e3, status, (sent - scheduled) * 1e3])

    due = rng.expovariate(rate)
    while due < seconds:
        delay = t0 + due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(arrival(due)))
        due += rng.expovariate(rate)
    arrivals_end = max(time.monotonic() - t0, seconds)
    if probe_seconds > 0:
        probe_start = t0 + arrivals_end
        probes = await closed_loop(send, 1, probe_seconds, probe_start, lambda _: "probe")
        records.extend(
            [phase, sent + arrivals_end, latency, status, lag] for phase, sent, latency, status, lag in probes
        )
    await asyncio.gather(*tasks)
    return {"t0_monotonic": t0, "arrivals_end_s": arrivals_end, "records": records}


async def generate(args: argparse.Namespace) -> dict[str, Any]:
    body, content_type = multipart_body(args.image.read_bytes(), args.image.name)
    connections = args.concurrency if args.mode == "closed" else args.max_connections
    client = CLIENTS[args.client](args.url, body, content_type, args.timeout, connections, args.path)
    cpu_start = time.process_time()
    try:
        if args.mode == "closed":
            t0 = time.monotonic()
            warmup = args.warmup
            records = await closed_loop(
                client.send,
                args.concurrency,
                warmup + args.duration,
                t0,
                lambda at: "warmup" if at < warmup else "load",
            )
            result: dict[str, Any] = {"t0_monotonic": t0, "records": records}
        else:
            result = await open_loop(client.send, args.rate, args.duration, args.seed, args.probe_seconds)
    finally:
        await client.aclose()
    records = sorted(result.pop("records"), key=lambda record: record[1])
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    return {
        **settings,
        **result,
        "client_cpu_s": time.process_time() - cpu_start,
        "errors": dict(client.errors),
        "fields": list(RECORD_FIELDS),
        "records": records,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        require_loopback(args.url)
    except ValueError as error:
        parser.error(str(error))
    require_files(parser, ("--image", args.image))
    report = asyncio.run(generate(args))
    args.out.write_text(json.dumps(report))
    return 0


# --------------------------------------------------------------------------------------------------------------
# Helpers for the benchmarks: the image, the service process, running this script, statistics
# --------------------------------------------------------------------------------------------------------------


DEFAULT_MODEL = REPO / "weights" / "bccd.onnx"


def add_model_and_image_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--model` (the ONNX the service serves) and `--image` (sent in every request), as the benchmarks take them."""
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help=f"detection ONNX to serve (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--image",
        type=Path,
        help="image sent in every request (default: a 640x480 BCCD photo from the shared datasets, else "
        "ultralytics' bus.jpg resized to 640x480)",
    )


def require_files(parser: argparse.ArgumentParser, *named: tuple[str, Path | None]) -> None:
    """`parser.error` naming the first (option, path) given whose path is not a file."""
    for option, path in named:
        if path is not None and not path.is_file():
            parser.error(f"{option} {path} is not a file")


def default_image(workdir: Path) -> Path:
    """A 640x480 JPEG: the BCCD photo from the shared datasets, else bus.jpg resized to 640x480 into `workdir`."""
    if BCCD_IMAGE.is_file():
        return BCCD_IMAGE
    import cv2

    sys.path.insert(0, str(REPO))
    from benchmarks.engine import default_images

    bus = default_images()[0]
    resized = cv2.resize(cv2.imread(str(bus)), (640, 480), interpolation=cv2.INTER_AREA)
    path = workdir / "bus-640x480.jpg"
    if not cv2.imwrite(str(path), resized):
        raise OSError(f"could not write {path}")
    return path


def describe_image(path: Path) -> dict[str, Any]:
    """Path, format, size and bytes of an image (from its header), for the reports."""
    from engine import inspect_image

    data = path.read_bytes()
    header = inspect_image(data)
    return {
        "path": str(path),
        "format": header.format,
        "width": header.width,
        "height": header.height,
        "bytes": len(data),
    }


def require_device(device: str) -> None:
    """Exit with a clear message when `device` is malformed, or CUDA that this ONNX Runtime cannot run."""
    if not DEVICE_PATTERN.match(device):
        raise SystemExit(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if device == "cpu":
        return
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise SystemExit(
            f"CUDA is unavailable: --device {device} needs onnxruntime-gpu and an NVIDIA GPU, but onnxruntime "
            f"{ort.__version__} here offers only {', '.join(available)}. On a GPU machine: "
            "`pip uninstall -y onnxruntime && pip install onnxruntime-gpu` (the [gpu] extra); else --device cpu."
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/{pid}/status has no VmRSS line")


@dataclass(frozen=True)
class ServiceSettings:
    """The DETECT_* settings a benchmark varies; None (and everything else) keeps the service's default."""

    model: Path
    device: str = "cpu"
    threads: int | None = None
    instances: int | None = None
    solo_threads: int | None = None
    max_batch: int | None = None
    max_batch_wait_ms: float | None = None
    queue_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model": str(self.model)}

    def environment(self) -> dict[str, str]:
        return {
            "DETECT_MODELS": str(self.model.resolve()),
            **{
                f"DETECT_{name.upper()}": str(value)
                for name, value in asdict(self).items()
                if name != "model" and value is not None
            },
        }


class ServiceProcess:
    """`python -m service` in a subprocess on a free loopback port, ready when entered, stopped on exit.

    Another server is run the same way by a subclass overriding `command`, `environment`, `cwd`, `name` and
    `ready_path` (GET answering 200 once it is ready)."""

    name = "the service"
    ready_path = "/readyz"

    def __init__(self, settings: ServiceSettings, log_path: Path, ready_timeout_s: float = 180.0) -> None:
        self.settings = settings
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.port = free_port()
        self.cwd = REPO
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the service is not started"
        return self.process.pid

    def rss_mb(self) -> float:
        return rss_bytes(self.pid) / MB

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def command(self) -> list[str]:
        return [sys.executable, "-m", "service", "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("DETECT_")}
        env.update(self.settings.environment())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def __enter__(self) -> Self:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=self.cwd, env=self.environment(), stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BenchmarkError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                response = httpx.get(self.url + self.ready_path, timeout=2)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.TransportError as error:
                last = str(error)
            time.sleep(0.1)
        raise BenchmarkError(f"{self.name} was not ready after {self.ready_timeout_s:g} s ({last}):\n{self.log_tail()}")

    def check_detect(self, image: Path) -> dict[str, Any]:
        """One request, checked: 200 with one result (so that a broken setup is not benchmarked)."""
        body, content_type = multipart_body(image.read_bytes(), image.name)
        response = httpx.post(self.url + DETECT_PATH, content=body, headers={"Content-Type": content_type}, timeout=120)
        if response.status_code != 200 or len(response.json().get("results", [])) != 1:
            raise BenchmarkError(f"POST {DETECT_PATH} answered {response.status_code}: {response.text[:500]}")
        return response.json()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass(frozen=True)
class Record:
    """One request: its phase, when it was sent (s from the load's start), latency, HTTP status, client lag."""

    phase: str
    sent_s: float
    latency_ms: float
    status: int
    lag_ms: float


@dataclass(frozen=True)
class LoadRun:
    """What one load-generator process measured."""

    records: list[Record]
    t0_monotonic: float  # CLOCK_MONOTONIC (shared by the processes of a Linux machine) at the load's start
    client_cpu_s: float
    errors: dict[str, int]
    arrivals_end_s: float | None  # open loop: when the arrivals stopped

    def phase(self, name: str) -> list[Record]:
        return [record for record in self.records if record.phase == name]


def run_load(
    mode: str,
    url: str,
    image: Path,
    out: Path,
    duration_s: float,
    timeout_s: float = 60.0,
    client: str = "raw",
    path: str = DETECT_PATH,
    **options: float,
) -> LoadRun:
    """Run this script in its own process (`mode` "closed" or "open"; options are its flags, e.g. concurrency=8)."""
    command = [
        sys.executable, str(LOADGEN), mode,
        "--url", url, "--image", str(image), "--out", str(out),
        "--duration", str(duration_s), "--timeout", str(timeout_s), "--client", client, "--path", path,
    ]  # fmt: skip
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    budget = duration_s + float(options.get("warmup", 0)) + float(options.get("probe_seconds", 0)) + timeout_s + 60
    finished = subprocess.run(command, check=False, capture_output=True, text=True, timeout=budget)
    if finished.returncode != 0:
        raise BenchmarkError(f"the load generator failed ({finished.returncode}):\n{finished.stderr[-3000:]}")
    report = json.loads(out.read_text())
    return LoadRun(
        records=[Record(*values) for values in report["records"]],
        t0_monotonic=report["t0_monotonic"],
        client_cpu_s=report["client_cpu_s"],
        errors=report["errors"],
        arrivals_end_s=report.get("arrivals_end_s"),
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/mean/max in ms (None each when there is no latency)."""
    if not latencies_ms:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    return {
        "p50_ms": percentile(latencies_ms, 50),
        "p95_ms": percentile(latencies_ms, 95),
        "p99_ms": percentile(latencies_ms, 99),
        "mean_ms": sum(latencies_ms) / len(latencies_ms),
        "max_ms": max(latencies_ms),
    }


def summarize(records: Sequence[Record], duration_s: float) -> dict[str, Any]:
    """Counts, throughput (successful requests per second of `duration_s`) and latency of the 200s."""
    statuses = Counter(record.status for record in records)
    ok = [record.latency_ms for record in records if record.status == 200]
    return {
        "requests": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "duration_s": duration_s,
        "throughput_rps": len(ok) / duration_s,
        **latency_stats(ok),
    }


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_ints(text: str) -> list[int]:
    """argparse type: '1,4,8' -> [1, 4, 8], every item an integer >= 1."""
    values = [positive_int(item.strip()) for item in text.split(",") if item.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _number(text: str, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a {'positive' if positive else 'non-negative'} number, got {text!r}"
        )
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, positive=True)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, positive=False)


def format_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def goal(name: str, value: float | None, limit: float, at_most: bool, unit: str = "x") -> dict[str, Any]:
    """A goal row: `value` compared with `limit` (met is None when the value was not measured)."""
    met = None if value is None else (value <= limit if at_most else value >= limit)
    return {"goal": name, "value": value, "limit": limit, "at_most": at_most, "unit": unit, "met": met}


def print_goals(goals: Sequence[dict[str, Any]]) -> None:
    """One line per goal: the goal, the measured figure, met / NOT met / not measured."""
    for row in goals:
        if row["met"] is None:
            verdict, figure = "not measured", "-"
        else:
            verdict = "met" if row["met"] else "NOT met"
            figure = f"{row['value']:.3f}x" if row["unit"] == "x" else f"{row['value']:.4g} {row['unit']}"
        print(f"  {row['goal']:<52}{figure:>16}   {verdict}")


if __name__ == "__main__":
    sys.exit(main())
