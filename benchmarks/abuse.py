"""Abuse benchmark of the REST service: the attacks of issue 13, in one run, against a real `python -m service` on a
free loopback port (with an API key, the service's limits at their defaults unless given). For every attack: the
server's answer and how long it took, the slowest /healthz answer while the attack ran (probed every 50 ms on a new
connection), the server's RSS before and after it, and a normal request right after (which must be served).

  json-images       POST /v1/detect {"images": ["aGk="] x --json-images} (500,000: 4 MB)
  imgsz-over-cap    imgsz=7680
  timed-out-run     --timed-out-images images at the imgsz cap under the request timeout (the run must stop)
  huge-heads        --head-connections connections at once, each a --head-mb MB header
  slow-connections  --slow-connections connections, each a head that never ends: a normal request meanwhile, and
                    the time until the server has closed them all
  idle, trickled head, trickled body, stalled body: the time until each is answered or closed
  deepstack-keyless a --upload-mb MB keyless multipart upload to /v1/vision/detection, of which 64 KB are sent
  pixels            8 PNGs of 7000x7000 (49 MP each, 150 KB) in one request
  classes           a JSON classes list of --classes entries (6,000,000: 18 MB)
  config-leak       GET /v2/models/M/config: the metadata keys a client gets
  largest-run       one image at the imgsz cap (RSS before and after is the point)
  reloads           --reloads reloads of the model
  shutdown          on a second server: SIGTERM with requests still open after --graceful-timeout-s; the time from
                    the signal to their answers (no health probe: the server stops listening)

An attack is "ok" when its answer is the expected one, /healthz always answered 200 within 1 s, and the next normal
request got a 200. MB are 10^6 bytes, as in the other benchmarks.

    python benchmarks/abuse.py --out abuse.json
"""

from __future__ import annotations

import argparse
import base64
import json
import select
import selectors
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `service` is the package, `benchmarks` the folder of these scripts

from benchmarks.engine import machine, write_report
from benchmarks.loadgen import (
    BenchmarkError,
    ServiceProcess,
    ServiceSettings,
    add_model_and_image_arguments,
    default_image,
    positive_float,
    positive_int,
    require_device,
    require_files,
)
from engine import physical_cores
from service.settings import Settings

KEY = "abuse-benchmark-key"
HEALTH_LIMIT_S = 1.0


@dataclass(frozen=True)
class AbuseSettings(ServiceSettings):
    """The service's settings in this benchmark: those of the load benchmarks, an API key and the limits it varies."""

    request_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    graceful_timeout_s: float = 30.0
    max_imgsz: int = 1920

    def environment(self) -> dict[str, str]:
        return {
            **super().environment(),
            "DETECT_API_KEYS": KEY,
            "DETECT_REQUEST_TIMEOUT_S": str(self.request_timeout_s),
            "DETECT_HEADER_TIMEOUT_S": str(self.header_timeout_s),
            "DETECT_BODY_TIMEOUT_S": str(self.body_timeout_s),
            "DETECT_GRACEFUL_TIMEOUT_S": str(self.graceful_timeout_s),
            "DETECT_MAX_IMGSZ": str(self.max_imgsz),
        }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    service = parser.add_argument_group("service")
    add_model_and_image_arguments(service)
    service.add_argument("--device", default="cpu", help="DETECT_DEVICE: cpu, cuda or cuda:N (default: cpu)")
    service.add_argument("--threads", type=positive_int, help="DETECT_THREADS (default: the physical cores available)")
    service.add_argument(
        "--request-timeout-s", type=positive_float, default=5.0, help="DETECT_REQUEST_TIMEOUT_S (default: 5)"
    )
    service.add_argument(
        "--header-timeout-s",
        type=positive_float,
        default=10.0,
        help="DETECT_HEADER_TIMEOUT_S (default: 10, the service's)",
    )
    service.add_argument(
        "--body-timeout-s", type=positive_float, default=60.0, help="DETECT_BODY_TIMEOUT_S (default: 60, the service's)"
    )
    service.add_argument(
        "--graceful-timeout-s",
        type=positive_float,
        default=1.0,
        help="DETECT_GRACEFUL_TIMEOUT_S of the shutdown server (default: 1)",
    )
    service.add_argument(
        "--max-imgsz", type=positive_int, default=1920, help="DETECT_MAX_IMGSZ (default: 1920, the service's)"
    )
    attacks = parser.add_argument_group("attacks")
    attacks.add_argument("--json-images", type=positive_int, default=500_000, help="tiny JSON images (500,000)")
    attacks.add_argument(
        "--timed-out-images",
        type=positive_int,
        default=16,
        help="images at the imgsz cap in the timed-out run (16, the most a request may have): their runs must "
        "take longer than --request-timeout-s",
    )
    attacks.add_argument("--head-connections", type=positive_int, default=10, help="connections with huge heads (10)")
    attacks.add_argument("--head-mb", type=positive_int, default=32, help="MB of header each sends (32)")
    attacks.add_argument("--slow-connections", type=positive_int, default=3000, help="never-ending heads (3000)")
    attacks.add_argument("--upload-mb", type=positive_int, default=20, help="MB the keyless upload announces (20)")
    attacks.add_argument("--classes", type=positive_int, default=6_000_000, help="entries of the classes list")
    attacks.add_argument("--reloads", type=positive_int, default=100, help="model reloads (100)")
    parser.add_argument("--out", type=Path, help="write everything measured to this JSON file")
    return parser


# ------------------------------------------------------------------------------------------ measuring


class HealthProbe:
    """GET /healthz on a new connection every 50 ms in a thread; the slowest answer and the failures."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, name="health-probe", daemon=True)

    def _probe(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.failures += httpx.get(self.url + "/healthz", timeout=10).status_code != 200
            except httpx.HTTPError:
                self.failures += 1
            self.latencies.append(time.monotonic() - started)
            self._stop.wait(0.05)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Answer:
    """What the server answered on a raw connection: its status (None: it closed without one) and when."""

    status: int | None
    seconds: float
    body: bytes = b""


def exchange(port: int, pieces: Sequence[bytes], pause: float = 0.0, timeout: float = 120.0) -> Answer:
    """Send `pieces` over a new connection, `pause` seconds apart (stopping once the server answers or closes),
    then read one answer (or the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        started = time.monotonic()
        try:
            for index, piece in enumerate(pieces):
                if index and pause and select.select([sock], [], [], pause)[0]:
                    break
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0
            )
            while len(body) < length and (chunk := sock.recv(65536)):
                body += chunk
        except (ConnectionResetError, TimeoutError):
            body = b""
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None
    return Answer(status, time.monotonic() - started, body)


def _post_wire(path: str, body: bytes, content_type: str, key: bool = True, length: int | None = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
    head += f"X-API-Key: {KEY}\r\n" if key else ""
    return (head + f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Target:
    """The running server and what the attacks send."""

    server: ServiceProcess
    args: argparse.Namespace
    photo: bytes

    @property
    def model(self) -> str:
        """The model's name: the service names it by its file's stem."""
        return self.args.model.stem

    def post(self, path: str = "/v1/detect", **kwargs: Any) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = httpx.post(self.server.url + path, headers={"X-API-Key": KEY}, timeout=120, **kwargs)
        return response, time.monotonic() - started

    def detect(self, **data: str) -> tuple[httpx.Response, float]:
        return self.post(files={"image": ("photo.jpg", self.photo)}, data=data)


Outcome = dict[str, Any]
"""An attack's result: `status` (its answer), `seconds` (how long it took) and what else it measured."""


def _answered(response: httpx.Response, seconds: float) -> Outcome:
    body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    return {"status": response.status_code, "seconds": seconds, "error": error}


# -------------------------------------------------------------------------------------------- attacks


def json_images(target: Target) -> Outcome:
    document = json.dumps({"images": ["aGk="] * target.args.json_images}).encode()
    answer = exchange(target.server.port, [_post_wire("/v1/detect", document, "application/json")])
    return {"status": answer.status, "seconds": answer.seconds, "body_mb": len(document) / 1e6}


def imgsz_over_cap(target: Target) -> Outcome:
    return _answered(*target.detect(imgsz="7680"))


def timed_out_run(target: Target) -> Outcome:
    images = [("image", ("photo.jpg", target.photo))] * target.args.timed_out_images
    return _answered(*target.post(files=images, data={"imgsz": str(target.args.max_imgsz)}))


def huge_heads(target: Target) -> Outcome:
    wire = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"j" * (target.args.head_mb * 10**6) + b"\r\n\r\n"
    with ThreadPoolExecutor(target.args.head_connections) as pool:
        answers = list(pool.map(lambda _: exchange(target.server.port, [wire]), range(target.args.head_connections)))
    statuses = sorted({answer.status for answer in answers}, key=str)
    return {"status": statuses[0] if len(statuses) == 1 else statuses, "seconds": max(a.seconds for a in answers)}


def slow_connections(target: Target) -> Outcome:
    held = []
    started = time.monotonic()
    try:
        for _ in range(target.args.slow_connections):
            sock = socket.create_connection(("127.0.0.1", target.server.port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            held.append(sock)
        meanwhile, meanwhile_s = target.detect()
        deadline = time.monotonic() + target.args.header_timeout_s + 10
        open_left = set(held)
        with selectors.DefaultSelector() as selector:  # epoll: select() stops at descriptor 1024
            for sock in held:
                selector.register(sock, selectors.EVENT_READ)
            while open_left and time.monotonic() < deadline:
                for key, _ in selector.select(0.5):
                    try:
                        closed = not key.fileobj.recv(65536)
                    except ConnectionResetError:
                        closed = True
                    if closed:
                        open_left.discard(key.fileobj)
                        selector.unregister(key.fileobj)
    finally:
        for sock in held:
            sock.close()
    return {
        "status": meanwhile.status_code,
        "seconds": meanwhile_s,
        "all_closed_after_s": time.monotonic() - started if not open_left else None,
        "still_open": len(open_left),
    }


SLOW_PARTS = ("trickled head", "trickled body", "stalled body")


def slow_and_idle(target: Target) -> Outcome:
    body_head = _post_wire("/v1/detect", b"{", "application/json", length=10_000)
    heads = {
        "idle": ([], 0.0),
        "trickled head": ([b"GET /healthz HTTP/1.1\r\n", *[b"X-Slow: 1\r\n"] * 10_000], 0.2),
        "trickled body": ([body_head, *[b" "] * 10_000], 0.2),
        "stalled body": ([body_head], 0.0),
    }
    with ThreadPoolExecutor(len(heads)) as pool:
        futures = {
            name: pool.submit(exchange, target.server.port, pieces, pause) for name, (pieces, pause) in heads.items()
        }
        answers = {name: future.result() for name, future in futures.items()}
    return {
        "status": {name: answer.status for name, answer in answers.items()},
        "seconds": max(answer.seconds for answer in answers.values()),
        "each_s": {name: answer.seconds for name, answer in answers.items()},
    }


def deepstack_keyless(target: Target) -> Outcome:
    boundary = "abuse-benchmark"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + target.photo[:65536]
    content_type = f"multipart/form-data; boundary={boundary}"
    wire = _post_wire("/v1/vision/detection", part, content_type, key=False, length=target.args.upload_mb * 10**6)
    answer = exchange(target.server.port, [wire])
    return {"status": answer.status, "seconds": answer.seconds}


def pixels(target: Target) -> Outcome:
    import cv2
    import numpy as np

    huge = cv2.imencode(".png", np.zeros((7000, 7000, 3), np.uint8))[1].tobytes()
    return _answered(*target.post(files=[("image", (f"{index}.png", huge)) for index in range(8)]))


def classes(target: Target) -> Outcome:
    document = {"images": [base64.b64encode(target.photo).decode()], "classes": [0] * target.args.classes}
    body = json.dumps(document).encode()
    answer = exchange(target.server.port, [_post_wire("/v1/detect", body, "application/json")])
    return {"status": answer.status, "seconds": answer.seconds, "body_mb": len(body) / 1e6}


def config_leak(target: Target) -> Outcome:
    started = time.monotonic()
    response = httpx.get(f"{target.server.url}/v2/models/{target.model}/config", headers={"X-API-Key": KEY}, timeout=30)
    parameters = sorted(response.json().get("parameters", {}))
    return {"status": response.status_code, "seconds": time.monotonic() - started, "parameters": parameters}


def largest_run(target: Target) -> Outcome:
    return _answered(*target.detect(imgsz=str(target.args.max_imgsz)))


def reloads(target: Target) -> Outcome:
    started = time.monotonic()
    statuses = {
        httpx.post(
            f"{target.server.url}/v1/models/{target.model}/reload", headers={"X-API-Key": KEY}, timeout=60
        ).status_code
        for _ in range(target.args.reloads)
    }
    return {"status": statuses.pop() if len(statuses) == 1 else sorted(statuses), "seconds": time.monotonic() - started}


@dataclass(frozen=True)
class Attack:
    name: str
    run: Callable[[Target], Outcome]
    expected: object  # the status (or statuses) of a refusal done right


def attacks(args: argparse.Namespace) -> list[Attack]:
    """The attacks on the first server, in order, each with the answer it must get."""
    cap = Settings.model_fields["max_connections"].default
    return [
        Attack("json-images", json_images, 413),
        Attack("imgsz-over-cap", imgsz_over_cap, 422),
        Attack("timed-out-run", timed_out_run, 504),
        Attack("huge-heads", huge_heads, 431),
        Attack("slow-connections", slow_connections, 503 if args.slow_connections >= cap else 200),
        Attack("idle-and-slow", slow_and_idle, {"idle": None, **dict.fromkeys(SLOW_PARTS, 408)}),
        Attack("deepstack-keyless", deepstack_keyless, 401),
        Attack("pixels", pixels, 413),
        Attack("classes", classes, 413),
        Attack("config-leak", config_leak, 200),
        Attack("largest-run", largest_run, 200),
        Attack("reloads", reloads, 200),
    ]


def measure(target: Target, attack: Attack) -> dict[str, Any]:
    """One attack with the health probe running, then one normal request; RSS before the attack and after that
    request (which waits for what the attack left running, such as a model run being stopped)."""
    print(f"attack: {attack.name}", file=sys.stderr)
    before = target.server.rss_mb()
    with HealthProbe(target.server.url) as probe:
        outcome = attack.run(target)
    following, following_s = target.detect()
    after = target.server.rss_mb()
    health_worst = max(probe.latencies, default=None)
    ok = (
        outcome["status"] == attack.expected
        and probe.failures == 0
        and health_worst is not None
        and health_worst < HEALTH_LIMIT_S
        and following.status_code == 200
    )
    return {
        "attack": attack.name,
        **outcome,
        "expected": attack.expected,
        "health_worst_s": health_worst,
        "health_probes": len(probe.latencies),
        "health_failures": probe.failures,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "next_request": {"status": following.status_code, "seconds": following_s},
        "ok": ok,
    }


def shutdown(settings: AbuseSettings, args: argparse.Namespace, photo: bytes, workdir: Path) -> dict[str, Any]:
    """SIGTERM with a long request running, one queued and an upload stalled (none of them near its own timeout);
    each must get a JSON 503 once the graceful timeout is over."""
    print("attack: shutdown", file=sys.stderr)
    stopping = AbuseSettings(
        **{
            **asdict(settings),
            "max_batch": 1,
            "request_timeout_s": 120.0,
            "body_timeout_s": 120.0,
            "graceful_timeout_s": args.graceful_timeout_s,
        }
    )
    outcomes: dict[str, float | int | None] = {}
    with ServiceProcess(stopping, workdir / "shutdown.log") as server:
        target = Target(server, args, photo)
        signalled: list[float] = []

        def send(name: str, images: int, **data: str) -> None:
            response, _ = target.post(files=[("image", ("photo.jpg", photo))] * images, data=data)
            outcomes[name] = response.status_code
            outcomes[f"{name}_s"] = time.monotonic() - signalled[0] if signalled else None

        cap = {"imgsz": str(args.max_imgsz)}  # two long requests: whichever runs first, the other waits
        running = threading.Thread(target=send, args=("running", args.timed_out_images), kwargs=cap)
        queued = threading.Thread(target=send, args=("queued", args.timed_out_images), kwargs=cap)
        running.start()
        time.sleep(1.0)
        queued.start()
        time.sleep(1.0)
        uploading = socket.create_connection(("127.0.0.1", server.port))
        uploading.sendall(_post_wire("/v1/detect", b"{", "application/json", length=10_000))
        time.sleep(0.5)  # accepted and being read: a connection still in the listen backlog is reset on shutdown
        before = server.rss_mb()
        signalled.append(time.monotonic())
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        running.join()
        queued.join()
        uploading.settimeout(60)
        upload = uploading.recv(65536)
        outcomes["upload"] = int(upload.split(b" ", 2)[1]) if upload.startswith(b"HTTP/") else None
        outcomes["upload_s"] = time.monotonic() - signalled[0]
        uploading.close()
        exit_code = server.process.wait(60)
        log = server.log_path.read_text(errors="replace")
    statuses = {name: outcomes[name] for name in ("running", "queued", "upload")}
    return {
        "attack": "shutdown",
        "status": statuses,
        "seconds": max(value for name, value in outcomes.items() if name.endswith("_s") and value is not None),
        "expected": {"running": 503, "queued": 503, "upload": 503},
        "each_s": {name: outcomes[f"{name}_s"] for name in statuses},
        "exit_code": exit_code,
        "rss_before_mb": before,
        "traceback_in_log": "Traceback" in log,
        "ok": set(statuses.values()) == {503} and "Traceback" not in log,
    }


# --------------------------------------------------------------------------------------------- report


def _status_text(status: object) -> str:
    if isinstance(status, dict):
        return " ".join(f"{name}:{value or 'closed'}" for name, value in status.items())
    return str(status)


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{'attack':<18}{'answer':<58}{'time s':>8}{'health s':>10}{'RSS MB before -> after':>24}{'next':>6}  ok")
    for row in report["attacks"]:
        health = "-" if row.get("health_worst_s") is None else f"{row['health_worst_s']:.3f}"
        rss = f"{row['rss_before_mb']:.0f} -> {row['rss_after_mb']:.0f}" if "rss_after_mb" in row else "-"
        following = str(row["next_request"]["status"]) if "next_request" in row else "-"
        print(
            f"{row['attack']:<18}{_status_text(row['status']):<58}{row['seconds']:>8.3f}{health:>10}{rss:>24}"
            f"{following:>6}  {'yes' if row['ok'] else 'NO'}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_files(parser, ("--model", args.model))
    require_device(args.device)
    settings = AbuseSettings(
        model=args.model,
        device=args.device,
        threads=args.threads or physical_cores(),
        request_timeout_s=args.request_timeout_s,
        header_timeout_s=args.header_timeout_s,
        body_timeout_s=args.body_timeout_s,
        max_imgsz=args.max_imgsz,
    )
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
        workdir = Path(tmp)
        photo = (args.image or default_image(workdir)).read_bytes()
        try:
            with ServiceProcess(settings, workdir / "service.log") as server:
                target = Target(server, args, photo)
                for _ in range(3):
                    target.detect()  # warm, at the model's own size
                rows = [measure(target, attack) for attack in attacks(args)]
            rows.append(shutdown(settings, args, photo, workdir))
        except BenchmarkError as error:
            raise SystemExit(f"abuse benchmark failed: {error}") from None
    report = {
        "command": " ".join(sys.argv),
        "date": started,
        "machine": machine(),
        "model": str(args.model),
        "service_settings": {**settings.to_dict(), "api_keys": "one"},
        "attacks": rows,
    }
    print_report(report)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
