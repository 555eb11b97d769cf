"""The service image, built for real with buildah (deploy/build-image.sh) and run.

No Docker engine and no registry of base images are reachable here, so deploy/build-image.sh builds the Dockerfile's
CPU target with buildah (chroot isolation) on a base made from Debian packages. The image then runs
`python -m service` as its own non-root user (`buildah run`, which shares the host's loopback network), with
compose's environment and weights mount, and answers real photos on the native and DeepStack routes; the image has
no torch and no ultralytics; its configuration (user, port, command, healthcheck, stop signal) is what
docker-compose.yml relies on. Skips without root, buildah or debootstrap (`apt-get install buildah debootstrap`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from service_fixtures import detect_served_photo, free_port, get, wait_until_ready

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "deploy" / "build-image.sh"
COMPOSE_FILE = REPO / "docker-compose.yml"
BASE_IMAGE = "localhost/attention-yolo-base:bookworm"
IMAGE_NAME = "attention-yolo-service"
CPU_IMAGE = f"localhost/{IMAGE_NAME}:cpu"
DETECTION_SERVICES = ("detect", "detect-gpu", "detect-replica")
SIZE_GOAL_MB = 500


def _missing() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "building the image needs root (buildah's chroot isolation, debootstrap)"
    if shutil.which("buildah") is None:
        return "buildah is not installed (apt-get install --no-install-recommends buildah debootstrap)"
    if shutil.which("debootstrap") is None and not _image_exists(BASE_IMAGE):
        return "debootstrap is not installed (apt-get install --no-install-recommends debootstrap)"
    return None


def _image_exists(image: str) -> bool:
    inspected = subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True, check=False)
    return inspected.returncode == 0


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def buildah(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"buildah {' '.join(args)}:\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def cpu_image() -> dict[str, Any]:
    """Builds (or, with every layer cached, reuses) the CPU image; its name, config and the build's own report."""
    started = time.monotonic()
    build = subprocess.run([str(BUILD_SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
    assert build.returncode == 0, f"deploy/build-image.sh failed:\n{build.stderr[-6000:]}"
    [inspected] = [json.loads(buildah("inspect", "--type", "image", CPU_IMAGE))]
    return {
        "name": CPU_IMAGE,
        "config": inspected["Docker"]["config"],
        "size_mb": megabytes(buildah("images", "--format", "{{.Size}}", CPU_IMAGE).splitlines()[0]),
        "build_s": time.monotonic() - started,
        "report": [line for line in build.stderr.splitlines() if line.startswith(("base:", "cpu:", "pip"))],
    }


def megabytes(size: str) -> float:
    """buildah's image size ("412 MB": decimal units, the sum of the uncompressed layers, as `docker images`)."""
    number, unit = re.fullmatch(r"([\d.]+)\s*([kMG]?B)", size.strip()).groups()
    return float(number) * {"B": 1e-6, "kB": 1e-3, "MB": 1, "GB": 1e3}[unit]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture
def container(cpu_image) -> Iterator[str]:
    """A working container of the CPU image, removed afterwards."""
    name = buildah("from", "--pull=never", cpu_image["name"]).strip().splitlines()[-1]
    yield name
    subprocess.run(["buildah", "rm", name], capture_output=True, timeout=120, check=False)


def buildah_run(container: str, *command: str, user: str = "10001:10001", options: Sequence[str] = ()) -> list[str]:
    """The command line that runs `command` in `container` as `user` (chroot isolation, the host's network)."""
    return ["buildah", "run", "--isolation", "chroot", "--user", user, *options, container, "--", *command]


def run_in(container: str, *command: str, user: str = "10001:10001", timeout: float = 120):
    return subprocess.run(
        buildah_run(container, *command, user=user), capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_image_is_small_and_holds_no_training_stack(cpu_image, container, record_property):
    record_property("cpu_image_mb", round(cpu_image["size_mb"]))
    record_property("build_report", " | ".join(cpu_image["report"]))
    print(f"\nCPU image {cpu_image['name']}: {cpu_image['size_mb']:.0f} MB; " + " | ".join(cpu_image["report"]))
    assert cpu_image["size_mb"] <= SIZE_GOAL_MB, f"the CPU image is {cpu_image['size_mb']:.0f} MB"

    probe = run_in(
        container,
        "python",
        "-c",
        "import importlib.util, json, shutil, onnxruntime; print(json.dumps({"
        "'modules': [m for m in ('torch', 'torchvision', 'ultralytics', 'detector') if importlib.util.find_spec(m)],"
        "'tools': [t for t in ('gcc', 'cc', 'g++', 'make', 'curl') if shutil.which(t)],"
        "'providers': onnxruntime.get_available_providers()}))",
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["modules"] == [], f"the image has {found['modules']}"
    assert found["tools"] == [], f"the image has {found['tools']}"
    assert "CPUExecutionProvider" in found["providers"]
    # The build's pip settings and CA bundle were secrets of its RUN steps: none is left in the image, nor pip itself.
    leftovers = run_in(
        container,
        "sh",
        "-c",
        "ls -d /etc/pip.conf /opt/venv/pip.conf /run/secrets/* 2>/dev/null; command -v pip || true",
    )
    assert leftovers.stdout.split() == [], leftovers.stdout
    # Code and models belong to root: the service user cannot change them.
    writable = run_in(
        container,
        "python",
        "-c",
        "import os; print(os.access('/app/service', os.W_OK), "
        "os.access('/app/weights/bccd.onnx', os.W_OK), os.access('/tmp', os.W_OK))",
    )
    assert writable.stdout.split() == ["False", "False", "True"], writable.stdout + writable.stderr


def test_the_image_config_is_what_compose_relies_on(cpu_image, container, compose):
    """User, port, command, healthcheck and stop signal of the built image against docker-compose.yml."""
    config = cpu_image["config"]
    assert config["User"] == "10001:10001"
    passwd = run_in(container, "getent", "passwd", "10001", user="0:0")
    assert passwd.returncode == 0 and passwd.stdout.split(":")[0] == "detect", passwd.stdout + passwd.stderr
    assert not config.get("Entrypoint") and config["Cmd"] == ["python", "-m", "service"]
    assert config["WorkingDir"] == "/app" and config["StopSignal"] == "SIGTERM"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["DETECT_HOST"] == "0.0.0.0" and env["DETECT_DEVICE"] == "cpu"
    assert list(config["ExposedPorts"]) == [f"{env['DETECT_PORT']}/tcp"]
    healthcheck = config["Healthcheck"]

    services = compose["services"]
    assert services["detect"]["image"] == f"{IMAGE_NAME}:latest" and services["detect"]["build"]["target"] == "cpu"
    assert services["detect-gpu"]["image"] == f"{IMAGE_NAME}:gpu"
    assert buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", f"localhost/{IMAGE_NAME}:latest") == (
        buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", cpu_image["name"])
    )
    for name in DETECTION_SERVICES:
        service = services[name]
        # Nothing in compose replaces what the image runs, or as whom.
        assert not {"user", "command", "entrypoint", "working_dir"} & set(service), name
        assert service["stop_signal"] == config["StopSignal"], name
        assert service["environment"]["DETECT_PORT"] == env["DETECT_PORT"], name
        published = [str(port).rsplit(":", 1)[-1] for port in service.get("ports", [])] + [
            str(port) for port in service.get("expose", [])
        ]
        assert published == [env["DETECT_PORT"]], name
        check = service["healthcheck"]
        assert check["test"] == healthcheck["Test"], name
        assert check["retries"] == healthcheck["Retries"], name
        for key, image_key in (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod")):
            assert duration_ns(check[key]) == healthcheck[image_key], f"{name} {key}"
        [weights] = service["volumes"]
        assert weights["target"] == f"{config['WorkingDir']}/weights" and weights["read_only"], name
    # The image's probe is in the image, where compose's healthcheck runs it.
    assert run_in(container, "test", "-r", healthcheck["Test"][2]).returncode == 0


def duration_ns(text: str) -> int:
    """Compose duration ("15s", "1m30s", "500ms") in nanoseconds, the unit of the image's Healthcheck."""
    units = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    parts = re.findall(r"(\d+)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(int(number) * units[unit] for number, unit in parts)


def test_the_image_serves_real_photos_as_its_user(cpu_image, container, compose, real_photos, tmp_path):
    """`python -m service` in the image as uid 10001, with compose's environment and its read-only weights mount,
    on a free loopback port: ready, healthy by the image's own probe, and detecting on the native and DeepStack
    routes."""
    import httpx

    port = free_port()
    environment = {**compose["services"]["detect"]["environment"], "DETECT_HOST": "127.0.0.1", "DETECT_PORT": port}
    env_args = [arg for key, value in environment.items() for arg in ("--env", f"{key}={value}")]
    weights = compose["services"]["detect"]["volumes"][0]
    mount = f"{(REPO / weights['source']).resolve()}:{weights['target']}:ro"
    log_path = tmp_path / "service.log"
    with log_path.open("w") as log:
        service = subprocess.Popen(
            buildah_run(container, *cpu_image["config"]["Cmd"], options=["--volume", mount, *env_args]),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_ready(service, port, log_path, timeout=180, poll=0.5)

        probe = subprocess.run(
            buildah_run(
                container, *cpu_image["config"]["Healthcheck"]["Test"][1:], options=["--env", f"DETECT_PORT={port}"]
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert probe.returncode == 0, probe.stdout + probe.stderr

        photo = real_photos[0]
        [image] = detect_served_photo(port, photo, "image-test-1")["results"]
        assert (image["width"], image["height"]) == (810, 1080) and image["detections"], image

        deepstack = httpx.post(
            f"http://127.0.0.1:{port}/v1/vision/detection",
            files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
            data={"min_confidence": "0.01"},
            timeout=60,
        )
        assert deepstack.status_code == 200, deepstack.text
        answer = deepstack.json()
        assert answer["success"] is True and answer["predictions"], answer
        assert {"label", "confidence", "x_min", "y_min", "x_max", "y_max"} <= set(answer["predictions"][0])

        # Resident memory of the service after the requests, against compose's memory limit for this service.
        status, metrics = get(port, "/metrics")
        rss = [
            float(line.split()[-1])
            for line in metrics.decode().splitlines()
            if line.startswith("process_resident_memory_bytes")
        ]
        limit = compose["services"]["detect"]["deploy"]["resources"]["limits"]["memory"]
        if rss:
            assert rss[0] < memory_bytes(limit), f"{rss[0] / 1e6:.0f} MB resident, limit {limit}"
    finally:
        # SIGTERM as `docker stop` sends it, to the service itself: `buildah run` does not pass signals on (it kills
        # its command instead).
        stop = service_process(service.pid)
        os.kill(stop or service.pid, signal.SIGTERM)
        try:
            returncode = service.wait(timeout=float(environment["DETECT_GRACEFUL_TIMEOUT_S"]) + 15)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(timeout=30)
            raise
    log_text = log_path.read_text()
    records = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    assert "image-test-1" in {record.get("request_id") for record in records}, log_text[-4000:]
    assert "Application shutdown complete." in [record.get("message") for record in records], log_text[-4000:]
    # uvicorn re-raises SIGTERM on itself after a clean shutdown (Docker reports 143); buildah reports it as
    # "subprocess exited on terminated" and exits 1.
    assert returncode in (0, 143) or "subprocess exited on terminated" in log_text, log_text[-4000:]


def service_process(root: int) -> int | None:
    """The pid of `python -m service` among the descendants of `root` (the `buildah run` process)."""
    pending, seen = [root], set()
    while pending:
        pid = pending.pop()
        seen.add(pid)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if command[1:3] == [b"-m", b"service"] and Path(command[0].decode()).name.startswith("python"):
                return pid
            for task in Path(f"/proc/{pid}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children if int(child) not in seen)
        except OSError:
            continue
    return None


def memory_bytes(text: str) -> float:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = str(text).lower().rstrip("b")
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
