"""Deployment files: Dockerfile, .dockerignore, docker-compose.yml, deploy/nginx.conf and deploy/healthcheck.py.

No Docker engine runs here, so the images are never built: the files are parsed and checked against each other and
against the service's settings; the nginx config is checked by Debian's nginx (`nginx -t`) and run in front of
stub replicas; and a slow test installs the service's dependencies into a fresh virtual environment and runs the
service there with the container's environment and file layout.
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from service_fixtures import detect_served_photo, free_port, get, wait_until_ready

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_FILE = REPO / "docker-compose.yml"
NGINX_CONF = REPO / "deploy" / "nginx.conf"
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"

DETECTION_SERVICES = ("detect", "detect-gpu", "detect-replica")
FINAL_STAGES = ("cpu", "gpu")
TRAINING_PACKAGES = ("torch", "torchvision", "ultralytics")
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


# ------------------------------------------------------------------------------------------------ Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped (as Docker does)."""
    instructions, pending = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        if logical:
            keyword, _, args = logical.partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name, in order."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for instruction in dockerfile_instructions(text):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: FROM {instruction.args}"
            current = stages[words[2]] = Stage(words[2], words[0])
        elif current is None:
            assert instruction.keyword == "ARG", f"{instruction.keyword} before the first FROM"
            name, _, default = instruction.args.partition("=")
            global_args[name] = default
        else:
            current.instructions.append(instruction)
    return global_args, stages


def stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, base first."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def effective(stages: dict[str, Stage], name: str, keyword: str) -> list[str]:
    """Arguments of every `keyword` instruction that applies to the image of stage `name`, in order."""
    return [i.args for stage in stage_chain(stages, name) for i in stage.instructions if i.keyword == keyword]


def env_of(stages: dict[str, Stage], name: str) -> dict[str, str]:
    """The ENV of the image of stage `name` (`KEY=value` form only)."""
    env: dict[str, str] = {}
    for args in effective(stages, name, "ENV"):
        for token in shlex.split(args):
            key, separator, value = token.partition("=")
            assert separator, f"ENV must use KEY=value, got {token!r}"
            env[key] = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), ""), value)
    return env


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) CMD/HEALTHCHECK argument list."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), args
    return value


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_dockerfile_stages(dockerfile):
    global_args, stages = dockerfile
    assert global_args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert {"build", "build-gpu", "runtime", *FINAL_STAGES} <= set(stages)
    assert list(stages)[-1] == "cpu", "the CPU image must be the default target (the last stage)"
    for name in FINAL_STAGES:
        assert stage_chain(stages, name)[0].base == "${PYTHON_IMAGE}", f"{name} is not based on the slim Python image"


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_final_image_runs_the_service_as_a_non_root_user(dockerfile, stage):
    _, stages = dockerfile
    users = effective(stages, stage, "USER")
    assert users, "runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit(), f"USER {users[-1]}: want a numeric non-root uid:gid"
    created = " ".join(effective(stages, stage, "RUN"))
    assert re.search(rf"useradd\b[^&;]*--uid {uid}\b", created), f"uid {uid} has no user"
    assert re.search(rf"groupadd\b[^&;]*--gid {gid}\b", created), f"gid {gid} has no group"
    assert exec_form(effective(stages, stage, "CMD")[-1]) == ["python", "-m", "service"]


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_final_image_environment_port_healthcheck_and_stop_signal(dockerfile, stage):
    _, stages = dockerfile
    env = env_of(stages, stage)
    assert env["DETECT_HOST"] == "0.0.0.0" and env["DETECT_LOG_FORMAT"] == "json"
    assert env["DETECT_DEVICE"] == ("cuda" if stage == "gpu" else "cpu")
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    assert effective(stages, stage, "EXPOSE") == [env["DETECT_PORT"]]
    assert effective(stages, stage, "STOPSIGNAL") == ["SIGTERM"]

    [healthcheck] = effective(stages, stage, "HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert exec_form(command) == ["python", "/app/healthcheck.py", "/healthz"]
    assert "--start-period=" in options and "--timeout=" in options

    copies = effective(stages, stage, "COPY")
    assert "deploy/healthcheck.py /app/healthcheck.py" in copies
    assert "weights/*.onnx /app/weights/" in copies
    assert "service/ /app/service/" in copies
    assert any(copy.startswith("--from=build") and copy.endswith("/opt/venv /opt/venv") for copy in copies)


def test_images_install_no_training_stack_and_no_compilers(dockerfile):
    _, stages = dockerfile
    for stage in stages.values():
        for instruction in stage.instructions:
            if instruction.keyword != "RUN":
                continue
            words = set(re.findall(r"[\w.\-\[\]]+", instruction.args.lower()))
            assert not words & {*TRAINING_PACKAGES, "gcc", "g++", "build-essential", "make", "clang"}, instruction
            assert ".[" not in instruction.args, f"an extra of this repository is installed: {instruction.args}"
    # The CPU image gets pyproject's base dependencies and an editable install of /app (where the runtime stage puts
    # the code); the GPU image swaps onnxruntime for onnxruntime-gpu.
    build = " ".join(effective(stages, "build", "RUN"))
    assert "['project']['dependencies']" in build and "pip install -r /tmp/requirements.txt" in build
    assert "pip install --no-deps -e ." in build and effective(stages, "build", "WORKDIR") == ["/app"]
    [gpu_install] = stages["build-gpu"].instructions[-1:]
    assert gpu_install.keyword == "RUN"
    assert gpu_install.args.index("pip uninstall -y onnxruntime ") < gpu_install.args.index("onnxruntime-gpu")


def test_gpu_image_pins_an_onnxruntime_gpu_allowed_by_the_gpu_extra(dockerfile):
    from packaging.requirements import Requirement

    _, stages = dockerfile
    [pin] = [a for a in effective(stages, "build-gpu", "ARG") if a.startswith("ONNXRUNTIME_GPU_VERSION=")]
    version = pin.partition("=")[2]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    [requirement] = [Requirement(r) for r in extras if Requirement(r).name == "onnxruntime-gpu"]
    assert requirement.specifier.contains(version), f"onnxruntime-gpu {version} is outside {requirement}"


# ------------------------------------------------------------------------------------------------ .dockerignore


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(re-included?, regex) per pattern, in file order; `**` spans folders, `*` and `?` stay inside one."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex)))
    return rules


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def build_context(rules: list[tuple[bool, re.Pattern[str]]]) -> dict[str, int]:
    """Files the Docker client would send (relative path -> size), skipping folders nothing can re-include."""
    reincluded_prefixes = [regex.pattern.split("[")[0].split("(")[0] for negated, regex in rules if negated]
    context = {}
    for root, folders, files in os.walk(REPO):
        relative_root = Path(root).relative_to(REPO).as_posix()
        for folder in list(folders):
            relative = folder if relative_root == "." else f"{relative_root}/{folder}"
            escaped = re.escape(relative)
            if is_ignored(relative, rules) and not any(p.startswith(escaped + "/") for p in reincluded_prefixes):
                folders.remove(folder)
        for name in files:
            relative = name if relative_root == "." else f"{relative_root}/{name}"
            if not is_ignored(relative, rules):
                context[relative] = (Path(root) / name).stat().st_size
    return context


def test_docker_build_context_holds_exactly_what_the_dockerfile_copies(dockerfile):
    _, stages = dockerfile
    context = build_context(dockerignore_rules(DOCKERIGNORE.read_text()))
    sources = [
        source
        for stage in stages.values()
        for i in stage.instructions
        if i.keyword == "COPY" and not i.args.startswith("--from=")
        for source in i.args.split()[:-1]
    ]

    def copied(path: str, source: str) -> bool:
        return path.startswith(source) if source.endswith("/") else fnmatch.fnmatchcase(path, source)

    for source in sources:
        assert any(copied(path, source) for path in context), f"COPY {source}: nothing in the build context"
    unused = [path for path in context if not any(copied(path, source) for source in sources)]
    assert not unused, f"sent to the daemon but never copied: {unused}"
    expected = {"pyproject.toml", "engine/__init__.py", "service/__init__.py", "deploy/healthcheck.py",
                "weights/bccd.onnx"}
    assert expected <= set(context)
    assert not [path for path in context if "__pycache__" in path or path.endswith((".pt", ".pyc"))]
    assert sum(context.values()) < 64 * 2**20


def test_dockerignore_matching_follows_docker_semantics():
    rules = dockerignore_rules("*\n!service/\n!weights/*.onnx\n**/__pycache__\n")
    assert is_ignored(".venv/bin/python", rules) and is_ignored("runs/x/weights/best.pt", rules)
    assert not is_ignored("service/engine/model.py", rules) and is_ignored("service/__pycache__/a.pyc", rules)
    assert not is_ignored("weights/bccd.onnx", rules) and is_ignored("weights/bccd.pt", rules)
    assert is_ignored("weights/sub/x.onnx", rules)


# ------------------------------------------------------------------------------------------------ healthcheck


class StubHandler(BaseHTTPRequestHandler):
    """Answers with the status the server was created with; records the paths it was asked for."""

    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        body = b'{"status": "stub"}'
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    server.status, server.paths = 200, []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_healthcheck(port: int | str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DETECT_PORT": str(port)}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_healthcheck_exit_codes(stub_server):
    port = stub_server.server_address[1]
    healthy = run_healthcheck(port)
    assert healthy.returncode == 0 and "HTTP 200" in healthy.stdout
    assert run_healthcheck(port, "/readyz").returncode == 0
    assert stub_server.paths == ["/healthz", "/readyz"]

    stub_server.status = 503
    unhealthy = run_healthcheck(port)
    assert unhealthy.returncode == 1 and "HTTP 503" in unhealthy.stderr

    refused = run_healthcheck(free_port())
    assert refused.returncode == 1 and "refused" in refused.stderr.lower()
    bad_port = run_healthcheck("eighty")
    assert bad_port.returncode == 1 and "DETECT_PORT must be an integer" in bad_port.stderr
    assert run_healthcheck(port, "healthz").returncode == 1
    assert run_healthcheck(port, "/healthz", "/readyz").returncode == 1
    assert stub_server.paths == ["/healthz", "/readyz", "/healthz"]


# ------------------------------------------------------------------------------------------------ compose


def duration_s(text: str) -> float:
    """Compose duration ("1m30s", "35s", "500ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_services_and_profiles(compose, dockerfile):
    _, stages = dockerfile
    services = compose["services"]
    assert set(services) == {*DETECTION_SERVICES, "nginx"}
    assert "profiles" not in services["detect"], "`docker compose up` must start the CPU service"
    assert services["detect-gpu"]["profiles"] == ["gpu"]
    assert services["detect-replica"]["profiles"] == services["nginx"]["profiles"] == ["scaled"]
    assert services["detect"]["ports"] == ["8000:8000"]
    for name in DETECTION_SERVICES:
        service = services[name]
        assert service["build"]["context"] == "." and service["build"]["target"] in stages
        assert service["build"]["target"] == ("gpu" if name == "detect-gpu" else "cpu")
        assert service["restart"] in ("unless-stopped", "always", "on-failure")
    host_ports = [p.split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), f"two services publish the same host port: {host_ports}"


def test_compose_healthchecks_restart_and_graceful_stop(compose, dockerfile):
    _, stages = dockerfile
    for name, service in compose["services"].items():
        healthcheck = service["healthcheck"]
        assert healthcheck["test"][0] == "CMD" and duration_s(healthcheck["timeout"]) < duration_s(
            healthcheck["interval"]
        )
        assert service["restart"] == "unless-stopped"
        if name in DETECTION_SERVICES:
            image_check = exec_form(
                effective(stages, service["build"]["target"], "HEALTHCHECK")[-1].partition(" CMD ")[2]
            )
            assert healthcheck["test"][1:] == image_check
            grace = duration_s(service["stop_grace_period"])
            assert grace > float(service["environment"]["DETECT_GRACEFUL_TIMEOUT_S"]), name
            assert service["stop_signal"] == "SIGTERM" and service["init"] is True


def test_compose_environment_is_accepted_by_the_service_settings(compose, dockerfile, monkeypatch):
    from service.settings import Settings

    _, stages = dockerfile
    for name in DETECTION_SERVICES:
        service = compose["services"][name]
        environment = {**env_of(stages, service["build"]["target"]), **service["environment"]}
        detect = {key: str(value) for key, value in environment.items() if key.startswith("DETECT_")}
        unknown = {key.removeprefix("DETECT_").lower() for key in detect} - set(Settings.model_fields)
        assert not unknown, f"{name}: not service settings: {unknown}"
        for key in [k for k in os.environ if k.startswith("DETECT_")]:
            monkeypatch.delenv(key)
        for key, value in detect.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.host == "0.0.0.0" and settings.log_format == "json", name
        assert str(settings.port) == effective(stages, service["build"]["target"], "EXPOSE")[-1]


def test_compose_resources_threads_and_weights_volume(compose):
    for name in DETECTION_SERVICES:
        service = compose["services"][name]
        limits = service["deploy"]["resources"]["limits"]
        environment = service["environment"]
        cores = int(environment["DETECT_INSTANCES"]) * int(environment["DETECT_THREADS"])
        assert cores == float(limits["cpus"]), name
        assert int(environment.get("DETECT_SOLO_THREADS", "1")) <= cores, name  # a lone run: at most every core
        assert re.fullmatch(r"\d+[mg]", str(limits["memory"])), name
        [weights] = [v for v in service["volumes"] if v["target"] == "/app/weights"]
        assert weights["type"] == "bind" and weights["read_only"] is True
        assert (REPO / weights["source"]).resolve() == REPO / "weights"
        assert service["environment"]["DETECT_HOST"] == "0.0.0.0"
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
    assert float(compose["services"]["nginx"]["deploy"]["resources"]["limits"]["cpus"]) > 0


def test_compose_gpu_reservation(compose):
    service = compose["services"]["detect-gpu"]
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] >= 1
    assert service["environment"]["DETECT_DEVICE"] == "cuda"
    assert service["image"] != compose["services"]["detect"]["image"]


def test_compose_scaled_profile(compose):
    replica, nginx = compose["services"]["detect-replica"], compose["services"]["nginx"]
    assert replica["deploy"]["replicas"] >= 2
    assert "ports" not in replica, "replicas are reached only through nginx"
    assert nginx["depends_on"] == {"detect-replica": {"condition": "service_healthy"}}
    [config] = nginx["volumes"]
    assert (REPO / config["source"]).resolve() == NGINX_CONF and config["target"] == "/etc/nginx/nginx.conf"
    assert config["read_only"] is True
    assert duration_s(nginx["stop_grace_period"]) > nginx_seconds(nginx_directive("proxy_read_timeout"))


def test_docker_compose_config_validates():
    if shutil.which("docker") is None:
        pytest.skip("no docker client")
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60, check=False).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    for profiles in ([], ["--profile", "gpu"], ["--profile", "scaled"]):
        result = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), *profiles, "config", "--quiet"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------------ nginx


def nginx_text() -> str:
    return "\n".join(line.split("#", 1)[0] for line in NGINX_CONF.read_text().splitlines())


def nginx_directive(name: str) -> str:
    [value] = re.findall(rf"^\s*{name}\s+([^;]+);", nginx_text(), re.MULTILINE)
    return value.strip()


def nginx_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match, value
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match.group(2)]


def nginx_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, value
    return int(match.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2).lower()]


def upstream_servers() -> list[tuple[str, int, str]]:
    """(host, port, parameters) of the `server` lines of the upstream block."""
    [block] = re.findall(r"upstream\s+\w+\s*\{(.*?)\}", nginx_text(), re.DOTALL)
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)([^;]*);", block, re.MULTILINE)
    return [(host, int(port), parameters.strip()) for host, port, parameters in servers]


def test_nginx_agrees_with_the_compose_replicas(compose):
    replica = compose["services"]["detect-replica"]
    environment = replica["environment"]
    assert upstream_servers() == [("detect-replica", int(environment["DETECT_PORT"]), "max_fails=3 fail_timeout=10s")]
    assert "least_conn;" in nginx_text()
    assert nginx_bytes(nginx_directive("client_max_body_size")) == int(environment["DETECT_MAX_UPLOAD_BYTES"])
    assert nginx_seconds(nginx_directive("proxy_read_timeout")) > float(environment["DETECT_REQUEST_TIMEOUT_S"])
    listen = int(nginx_directive("listen"))
    assert compose["services"]["nginx"]["ports"] == [f"8080:{listen}"]
    assert "http://127.0.0.1/healthz" in compose["services"]["nginx"]["healthcheck"]["test"] and listen == 80


def localized_nginx_config(
    tmp_path: Path, servers: list[tuple[str, int]] | None = None, port: int | None = None
) -> Path:
    """deploy/nginx.conf runnable here: the upstream host names mapped to 127.0.0.1 (Docker's DNS is absent),
    temporary files kept under tmp_path. With `servers`, those replace the upstream's server (keeping its
    parameters); with `port`, nginx listens on 127.0.0.1:port. Everything else is the real config."""
    text = NGINX_CONF.read_text()
    for host, server_port, parameters in upstream_servers():
        original = f"server {host}:{server_port} {parameters};"
        assert original in text
        targets = servers or [("127.0.0.1", server_port)]
        text = text.replace(original, " ".join(f"server {h}:{p} {parameters};" for h, p in targets))
    if port is not None:
        text, count = re.subn(r"^(\s*)listen\s+\d+;", rf"\g<1>listen 127.0.0.1:{port};", text, flags=re.MULTILINE)
        assert count == 1
    temp_paths = "".join(
        f"    {kind}_temp_path {tmp_path / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n" + temp_paths, 1)
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


def nginx_command(config: Path, tmp_path: Path, *args: str) -> list[str]:
    assert NGINX is not None
    return [
        NGINX,
        "-c",
        str(config),
        "-p",
        str(tmp_path),
        "-e",
        "stderr",
        "-g",
        f"pid {tmp_path / 'nginx.pid'};",
        *args,
    ]


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
def test_nginx_config_syntax(tmp_path):
    result = subprocess.run(
        nginx_command(localized_nginx_config(tmp_path), tmp_path, "-t"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr


class ReplicaStub(BaseHTTPRequestHandler):
    """A stand-in replica: /slow takes 1 s, /busy answers 503 on the replica named "busy-on-503"; it records
    every request (path, headers, body size) and says which replica answered."""

    def _answer(self) -> None:
        server: Any = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body_size = len(self.rfile.read(length)) if length else 0
        server.requests.append({"path": self.path, "headers": dict(self.headers), "body_size": body_size})
        if self.path == "/slow":
            server.slow_started.set()
            time.sleep(1.0)
        status = 503 if self.path == "/busy" and server.name == "busy-on-503" else 200
        body = json.dumps({"replica": server.name}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-ID", "set-by-replica")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


def start_replica(name: str) -> ThreadingHTTPServer:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), ReplicaStub)
    server.name, server.requests, server.slow_started = name, [], threading.Event()
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    content_length: int | None = None,
) -> tuple[int, dict[str, list[str]], Any]:
    """One request to nginx; (status, headers by lower-case name, JSON body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path)
        for key, value in (headers or {}).items():
            connection.putheader(key, value)
        connection.putheader("Content-Length", str(len(body) if content_length is None else content_length))
        connection.endheaders(body or None)
        response = connection.getresponse()
        received: dict[str, list[str]] = {}
        for key, value in response.getheaders():
            received.setdefault(key.lower(), []).append(value)
        return response.status, received, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
def test_nginx_balances_limits_and_tags_requests(tmp_path):
    replicas = {name: start_replica(name) for name in ("busy-on-503", "steady")}
    port = free_port()
    config = localized_nginx_config(tmp_path, [("127.0.0.1", r.server_address[1]) for r in replicas.values()], port)
    access_log = tmp_path / "access.log"
    with access_log.open("w") as log, open(tmp_path / "error.log", "w") as errors:
        nginx = subprocess.Popen(nginx_command(config, tmp_path, "-g", "daemon off;"), stdout=log, stderr=errors)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert nginx.poll() is None, (tmp_path / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)

        # X-Request-ID: the client's is passed on; otherwise nginx makes one; the response carries exactly that one.
        status, headers, _ = request(port, "POST", "/v1/detect", b"x" * 1000, {"X-Request-ID": "client-id-1"})
        seen = [r for s in replicas.values() for r in s.requests]
        assert status == 200 and headers["x-request-id"] == ["client-id-1"]
        assert seen[-1]["headers"]["X-Request-ID"] == "client-id-1" and seen[-1]["body_size"] == 1000
        status, headers, _ = request(port, "GET", "/healthz")
        [generated] = headers["x-request-id"]
        assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", generated)
        assert generated in [r["headers"].get("X-Request-ID") for s in replicas.values() for r in s.requests]
        _, headers, _ = request(port, "GET", "/healthz", headers={"X-Request-ID": "not an id the service accepts"})
        assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"][0])

        # least_conn: while one replica is busy with a slow request, the next ones go to the other replica.
        slow = threading.Thread(target=request, args=(port, "GET", "/slow"))
        slow.start()
        deadline = time.monotonic() + 10
        while not any(r.slow_started.is_set() for r in replicas.values()):
            assert time.monotonic() < deadline, "the slow request never reached a replica"
            time.sleep(0.01)
        [busy] = [name for name, r in replicas.items() if r.slow_started.is_set()]
        answered = [request(port, "GET", "/v1/models")[2]["replica"] for _ in range(4)]
        slow.join()
        assert busy not in answered, f"sent to the busy replica {busy}: {answered}"

        # Bodies over DETECT_MAX_UPLOAD_BYTES never reach a replica; /metrics is not served through the balancer.
        before = sum(len(r.requests) for r in replicas.values())
        limit = nginx_bytes(nginx_directive("client_max_body_size"))
        status, _, error = request(port, "POST", "/v1/detect", content_length=limit + 1)
        assert status == 413 and error["error"]["type"] == "content_too_large" and error["request_id"]
        status, _, error = request(port, "POST", "/v2/models/bccd/infer", content_length=limit + 1)
        # KServe v2 shape:
        assert status == 413 and list(error) == ["error"] and f"{limit // 2**20} MiB" in error["error"]
        status, _, error = request(port, "POST", "/v1/vision/detection", content_length=limit + 1)
        assert status == 413 and error == {"success": False, "error": error["error"], "code": 413}  # DeepStack shape
        status, _, error = request(port, "GET", "/metrics")
        assert status == 404 and "replica" in error["error"]["message"]
        assert sum(len(r.requests) for r in replicas.values()) == before

        # A replica answering 503 (queue full, not ready) has the request retried on the other one.
        for _ in range(4):
            status, _, body = request(port, "POST", "/busy", b"{}")
            assert (status, body) == (200, {"replica": "steady"})
        assert any(r["path"] == "/busy" for r in replicas["busy-on-503"].requests)

        # No replica at all: nginx's own 502, in the service's JSON error shape.
        for replica in replicas.values():
            replica.shutdown()
            replica.server_close()
        status, headers, error = request(port, "GET", "/healthz")
        assert status == 502 and error["error"]["type"] == "bad_gateway"
        assert error["request_id"] == headers["x-request-id"][0]
    finally:
        nginx.terminate()
        nginx.wait(timeout=30)
        for replica in replicas.values():
            replica.shutdown()
            replica.server_close()
    lines = [json.loads(line) for line in access_log.read_text().splitlines()]
    assert {"client-id-1", generated} <= {line["request_id"] for line in lines}
    assert {line["status"] for line in lines} >= {200, 404, 413, 502}


# ---------------------------------------------------------------------------------------- the container's dependencies


def package_sources(destination: Path) -> Path:
    """A copy of what `pip install <repo>` reads: pyproject.toml, README.md and the packages it includes."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    destination.mkdir()
    for name in ("pyproject.toml", pyproject["project"].get("readme", "")):
        if name and (REPO / name).is_file():
            shutil.copy2(REPO / name, destination / name)
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for folder in REPO.iterdir():
        if folder.is_dir() and any(fnmatch.fnmatchcase(folder.name, p) for p in patterns):
            shutil.copytree(folder, destination / folder.name, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def container_app_folder(destination: Path) -> Path:
    """The image's /app, as the Dockerfile's COPY lines lay it out: pyproject.toml, engine/, service/,
    weights/*.onnx and healthcheck.py."""
    destination.mkdir()
    shutil.copy2(REPO / "pyproject.toml", destination / "pyproject.toml")
    for package in ("engine", "service"):
        shutil.copytree(REPO / package, destination / package, ignore=shutil.ignore_patterns("__pycache__"))
    (destination / "weights").mkdir()
    for model in sorted((REPO / "weights").glob("*.onnx")):
        (destination / "weights" / model.name).symlink_to(model)
    shutil.copy2(HEALTHCHECK, destination / "healthcheck.py")
    return destination


def pip(python: Path, *args: str) -> str:
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.slow
def test_the_service_runs_on_the_service_only_install(tmp_path, dockerfile, compose, real_photos):
    """A fresh venv (no system site-packages) + `pip install <repo>` without extras has no torch and no ultralytics,
    and is enough to run `python -m service` as the CPU image does: /app installed editable, the image's and
    compose's environment. The shipped model is found by default, /healthz and /readyz answer, bus.jpg is detected,
    the image's health probe passes, logs are JSON lines with the request id, and SIGTERM stops it cleanly."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pip(python, "install", "-q", str(package_sources(tmp_path / "src")))
    installed = {package["name"].lower() for package in json.loads(pip(python, "list", "--format=json"))}
    assert not installed & set(TRAINING_PACKAGES), (
        f"the service-only install pulled {installed & set(TRAINING_PACKAGES)}"
    )
    assert {"onnxruntime", "fastapi", "uvicorn", "opencv-python-headless"} <= installed

    # As the image's build stage: the project installed editable from /app, so the code runs from /app/service.
    app = container_app_folder(tmp_path / "app")
    pip(python, "install", "-q", "--no-deps", "-e", str(app))
    where = subprocess.run(
        [str(python), "-c", "import service.settings as s; print(s.WEIGHTS_DIR)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert Path(where.stdout.strip()) == (app / "weights").resolve()

    _, stages = dockerfile
    port = free_port()
    image_env = {**env_of(stages, "cpu"), **compose["services"]["detect"]["environment"]}
    env = {key: str(value) for key, value in image_env.items() if key.startswith(("DETECT_", "PYTHON"))}
    env.update(
        PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
        HOME=str(tmp_path),
        PYTHONNOUSERSITE="1",
        DETECT_HOST="127.0.0.1",
        DETECT_PORT=str(port),
        DETECT_THREADS="1",
    )
    log_path = tmp_path / "service.log"
    with log_path.open("w") as log:
        service = subprocess.Popen(
            [str(python), "-m", "service"], cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until_ready(service, port, log_path, timeout=120, poll=0.25)
        assert get(port, "/healthz")[0] == 200
        probe = subprocess.run(
            [str(python), str(app / "healthcheck.py"), "/healthz"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert probe.returncode == 0, probe.stderr

        result = detect_served_photo(port, real_photos[0], "deploy-test-1")
        [image] = result["results"]
        assert result["model"] == "bccd" and (image["width"], image["height"]) == (810, 1080) and image["detections"]
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            returncode = service.wait(timeout=float(env["DETECT_GRACEFUL_TIMEOUT_S"]) + 15)
        except subprocess.TimeoutExpired:
            service.kill()
            raise
    log_text = log_path.read_text()
    records = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    # uvicorn shuts down gracefully, then re-raises SIGTERM on itself (Docker reports exit code 143).
    assert returncode in (0, -signal.SIGTERM), log_text[-4000:]
    assert "Application shutdown complete." in [record["message"] for record in records], log_text[-4000:]
    assert "deploy-test-1" in {record.get("request_id") for record in records}, log_text[-4000:]
    refused = subprocess.run(
        [str(python), str(app / "healthcheck.py")], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert refused.returncode == 1
