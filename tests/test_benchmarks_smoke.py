"""Smoke tests of the benchmarks (benchmarks/engine.py, attention_cost.py, service.py, soak.py, loadgen.py).

Each script runs end to end with tiny settings against a real `python -m service` and the shipped model, and the
JSON it writes is checked for its fields and for figures that agree with each other. The load generator's HTTP
client is checked against a hand-written server (keep-alive, chunked bodies, closed connections), its loopback
guard without any network use; --help must explain every option, and --device cuda must say clearly when CUDA is
unavailable. The figures themselves are not judged: this machine is shared and busy.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import cv2
import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
SCRIPTS = (
    "engine.py", "attention_cost.py", "service.py", "soak.py", "loadgen.py", "compare_jobs.py", "peers.py",
    "reduced_decoding.py",
)  # fmt: skip


def load_script(name: str) -> ModuleType:
    """Import a benchmark script as a module (under a name that cannot shadow the `service` package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{Path(name).stem}", BENCHMARKS / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "YOLO_AUTOINSTALL": "False", "YOLO_OFFLINE": "True"}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def assert_ordered_latencies(row: dict) -> None:
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"], row


def test_service_benchmark_writes_its_report(tmp_path, trained_onnx_dynamic):
    out = tmp_path / "service.json"
    result = run_script(
        "service.py",
        "--model", str(trained_onnx_dynamic), "--threads", "1", "--instances", "2", "--solo-threads", "2",
        "--concurrency", "1,2", "--batch-sizes", "1,2", "--duration", "1.5", "--warmup", "0.3",
        "--reference-runs", "4", "--reference-warmup", "1", "--sweep-seconds", "0.2", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())

    sweep = report["raw_sweep"]
    assert {row["batch"] for row in sweep} == {1, 8} and all(row["images_per_s"] > 0 for row in sweep)
    assert (1, 1, 1) in {(row["instances"], row["threads"], row["batch"]) for row in sweep}
    assert (report["image"]["width"], report["image"]["height"]) == (640, 480)
    assert report["input_shape"] == [1, 3, 256, 320]  # the engine's rect letterbox of a 4:3 photo at 320
    assert (report["service_settings"]["threads"], report["service_settings"]["solo_threads"]) == (1, 2)
    assert report["machine"]["onnxruntime"] == ort.__version__
    for case in ("raw", "raw_solo", "ultralytics"):
        reference = report["references"][case]
        assert reference["runs"] == 4 and len(reference["samples_ms"]) == 4
        assert_ordered_latencies(reference)
        assert reference["after_over_before"] > 0
    assert report["references"]["lone"] == "raw_solo"  # a lone request runs on the solo session: the c1 limit
    lone_p50 = report["references"]["raw_solo"]["p50_ms"]
    assert report["raw_single_stream_rate"] == pytest.approx(1e3 / lone_p50)

    levels = {level["concurrency"]: level for level in report["service"]}
    assert sorted(levels) == [1, 2]
    for level in levels.values():
        assert level["failed"] == 0 and level["ok"] == level["requests"] > 0, level
        assert level["statuses"] == {"200": level["ok"]}
        assert level["throughput_rps"] == pytest.approx(level["ok"] / 1.5)
        assert_ordered_latencies(level)
        assert level["client_cpu_ms_per_request"] > 0

    assert [row["batch"] for row in report["batches"]] == [1, 2]
    for row in report["batches"]:
        assert row["raw_images_per_s"] == pytest.approx(row["batch"] * 1e3 / row["raw_p50_ms"])
        assert row["service_throughput_rps"] == levels[row["batch"]]["throughput_rps"]

    ratios = report["ratios"]
    assert ratios["p50_c1_over_raw"] == pytest.approx(levels[1]["p50_ms"] / lone_p50)
    assert ratios["p50_c1_over_ultralytics"] == pytest.approx(
        levels[1]["p50_ms"] / report["references"]["ultralytics"]["p50_ms"]
    )
    assert ratios["throughput_c8_over_raw_rate"] is None  # concurrency 8 was not measured
    assert ratios["throughput_c8_over_best_raw"] is None
    goals = {row["goal"]: row for row in report["goals"]}
    assert len(goals) == 4
    for row in goals.values():
        if row["value"] is None:
            assert row["met"] is None
        else:
            assert row["met"] == (row["value"] <= row["limit"] if row["at_most"] else row["value"] >= row["limit"])
    assert [row["met"] is None for row in report["goals"]] == [False, True, True, False]
    assert "goals:" in result.stdout and "not measured" in result.stdout


def test_soak_writes_its_report(tmp_path, trained_onnx_dynamic):
    out = tmp_path / "soak.json"
    result = run_script(
        "soak.py",
        "--model", str(trained_onnx_dynamic), "--threads", "1", "--concurrency", "4", "--queue-size", "4",
        "--baseline-seconds", "1", "--warmup", "0.5", "--duration", "3", "--window", "1",
        "--overload-seconds", "2", "--recovery-seconds", "2", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["baseline"]["ok"] > 0 and report["warmup"]["requests"] > 0
    soak = report["soak"]
    assert soak["failed"] == 0 and soak["ok"] > 0, soak  # 4 clients never fill a queue of 4
    assert_ordered_latencies(soak)
    windows = soak["windows"]
    assert [(window["start_s"], window["end_s"]) for window in windows] == [(0, 1), (1, 2), (2, 3)]
    assert sum(window["requests"] for window in windows) == soak["requests"]
    assert set(soak["p99_stability"]) == {"spread", "drift"} and soak["p99_stability"]["spread"] >= 1

    rss = report["rss_mb"]
    assert all(rss[key] > 0 for key in ("ready", "after_warmup", "end_of_soak", "soak_peak", "end"))
    assert rss["growth"] == pytest.approx(rss["end_of_soak"] - rss["after_warmup"])
    assert rss["soak_peak"] >= rss["end_of_soak"] and rss["soak_timeline"]

    overload = report["overload"]
    assert overload["target_rate_rps"] == pytest.approx(4 * soak["throughput_rps"])
    assert sum(overload["statuses"].values()) == overload["sent"] > 0
    assert overload["rejected_503"] > 0, overload  # 4x capacity against a queue of 4
    assert overload["accepted"] == overload["sent"] - overload["rejected_503"]
    assert 0 < overload["rejected_latency"]["p50_ms"] <= overload["rejected_latency_from_schedule"]["p50_ms"]
    recovery = report["recovery"]
    assert recovery["probes"] > 0
    assert recovery["normal_latency_limit_ms"] == pytest.approx(1.5 * report["baseline"]["p50_ms"])

    goals = [row["goal"] for row in report["goals"]]
    assert len(goals) == 5 and all(row["met"] in (True, False) for row in report["goals"])
    assert "overload at" in result.stdout and "goals:" in result.stdout


def test_service_settings_fit_the_levels(trained_onnx_dynamic):
    benchmark = load_script("service.py")
    parser = benchmark.build_parser()
    model = ["--model", str(trained_onnx_dynamic), "--threads", "1"]

    defaults = benchmark.service_settings(parser.parse_args(model), [], [1, 4, 8, 16])
    assert (defaults.max_batch, defaults.queue_size, defaults.threads) == (8, 32, 1)
    large = benchmark.service_settings(parser.parse_args(model), [1, 64], [1, 64])
    assert (large.max_batch, large.queue_size) == (64, 64)  # a batch of 64 and 64 clients never meet a full queue
    given = benchmark.service_settings(parser.parse_args([*model, "--max-batch", "2", "--queue-size", "3"]), [64], [64])
    assert (given.max_batch, given.queue_size) == (2, 3)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_option_is_explained(script):
    parser = load_script(script).build_parser()
    subparsers = [
        choice
        for action in parser._actions
        if action.choices and isinstance(action.choices, dict)
        for choice in action.choices.values()
    ]
    for each in [parser, *subparsers]:
        rendered = "".join(each.format_help().split())  # without whitespace: wrapping may split anywhere
        for action in each._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 10, f"{script} {action.option_strings} has no help"
                explained = "".join(each._get_formatter()._expand_help(action).split())
                assert action.option_strings[-1] in rendered and explained in rendered, (
                    f"{script} {action.option_strings}: its help is not in --help"
                )
                assert_states_its_default(script, action)
    result = run_script(script, "--help", timeout=60)
    assert result.returncode == 0 and "usage:" in result.stdout


def assert_states_its_default(script: str, action: argparse.Action) -> None:
    """An option that takes a value and has a default says which, as ``(default: VALUE...)``, and VALUE is the
    real one (a copy of another program's default, e.g. the service's, goes stale)."""
    if action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
        return
    value = action.default
    if isinstance(value, float):
        shown = {f"{value:g}", str(value)}
    elif isinstance(value, (list, tuple)):
        shown = {",".join(map(str, value)), " ".join(map(str, value))}
    else:
        shown = {str(value) or "none"}
    stated = re.search(r"\(default:? ([^)]*)\)", " ".join(action.help.split()))
    assert stated and any(re.search(rf"(?<![\w.]){re.escape(v)}(?![\w.])", stated[1]) for v in shown), (
        f"{script} {action.option_strings}: its help does not state its default {value!r}"
    )


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available on this machine"
)
@pytest.mark.parametrize("script", ["service.py", "soak.py"])
def test_cuda_unavailable_is_said_clearly(script):
    result = run_script(script, "--device", "cuda", timeout=60)
    assert result.returncode != 0
    assert "CUDA is unavailable" in result.stderr and "onnxruntime-gpu" in result.stderr


def test_loadgen_targets_only_loopback_addresses():
    loadgen = load_script("loadgen.py")
    for url in ("http://127.0.0.1:8000", "http://127.8.9.10:1", "http://localhost:8000", "http://[::1]:8000"):
        loadgen.require_loopback(url)
    for url in ("http://10.0.0.1:8000", "http://192.168.1.1", "http://8.8.8.8", "http://example.invalid"):
        with pytest.raises(ValueError, match="loopback"):
            loadgen.require_loopback(url)


def test_default_image_falls_back_to_bus_at_640x480(tmp_path, monkeypatch):
    loadgen = load_script("loadgen.py")
    monkeypatch.setattr(loadgen, "BCCD_IMAGE", tmp_path / "missing.jpg")
    path = loadgen.default_image(tmp_path)
    assert path.parent == tmp_path and cv2.imread(str(path)).shape == (480, 640, 3)


@pytest.fixture
def scripted_server() -> Iterator[tuple[asyncio.AbstractEventLoop, str, list[int]]]:
    """A loopback server answering requests with scripted responses, each then keeping or closing the connection.

    Yields its event loop, its URL and a one-item list counting the connections it accepted."""
    script = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", False),
        # chunked, with a chunk extension and a trailer; then the connection is closed without notice
        (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nTrailer: 1\r\n\r\n", True),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx", True),
        (b"HTTP/1.1 202 Accepted\r\n\r\nno length: the body ends with the connection", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    ]
    connections = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        while script:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"Content-Length")
            )
            await reader.readexactly(length)
            response, close = script.pop(0)
            writer.write(response)
            await writer.drain()
            if close:
                break
        writer.close()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    yield loop, f"http://127.0.0.1:{port}", connections
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()


def test_raw_client_reads_every_response_framing(scripted_server):
    loop, url, connections = scripted_server
    loadgen = load_script("loadgen.py")

    async def send_all() -> tuple[list[int], dict[str, int]]:
        client = loadgen.RawClient(url, b"body", "text/plain", timeout=10, max_connections=1)
        statuses = [await client.send() for _ in range(5)]
        await client.aclose()
        return statuses, dict(client.errors)

    # The 503 goes out on the connection closed without notice, is retried once on a new one and answered there.
    assert loop.run_until_complete(send_all()) == ([200, 201, 503, 202, 200], {})
    assert connections[0] == 4


def test_engine_benchmark_writes_its_report(tmp_path, trained_onnx_dynamic):
    out = tmp_path / "engine.json"
    result = run_script(
        "engine.py", "--model", str(trained_onnx_dynamic), "--runs", "2", "--warmup", "1", "--threads", "1",
        "--out", str(out),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["threads"] == 1 and report["machine"]["onnxruntime"] == ort.__version__
    assert {row["image"] for row in report["results"]} == {"bus.jpg", "zidane.jpg"}, report["results"]


def test_engine_benchmark_names_a_missing_or_unreadable_image(tmp_path, trained_onnx_dynamic):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a JPEG")
    for image, said in ((tmp_path / "absent.jpg", "is not a file"), (not_an_image, "not a recognised image")):
        result = run_script("engine.py", "--model", str(trained_onnx_dynamic), "--images", str(image), "--runs", "1")
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert f"--images {image}" in result.stderr and said in result.stderr, result.stderr


def test_attention_cost_benchmark_writes_its_report(tmp_path):
    out = tmp_path / "cost.json"
    result = run_script(
        "attention_cost.py", "--scales", "n", "--modules", "eca", "--imgsz", "64", "--runs", "2", "--warmup", "0",
        "--threads", "1", "--train-imgsz", "64", "--train-batch", "1", "--train-steps", "1", "--out", str(out),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = {row["model"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"yolo11n", "yolo11n-eca"}, rows
    assert rows["yolo11n"]["latency_ratio"] == 1.0 and rows["yolo11n-eca"]["params"] > rows["yolo11n"]["params"]
    assert rows["yolo11n-eca"]["latency_ratio"] > 0 and rows["yolo11n-eca"]["train_ratio"] > 0


@pytest.mark.slow
def test_compare_jobs_benchmark_writes_its_report(tmp_path, shapes_data):
    out = tmp_path / "jobs.json"
    result = run_script("compare_jobs.py", "--data", str(shapes_data), "--models", "yolo11n-se", "--seeds", "1",
                        "--epochs", "1", "--imgsz", "64", "--out", str(out), timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["runs"] == 2 and report["sequential_s"] > 0 and report["parallel_s"] > 0
    assert report["speedup"] == pytest.approx(report["sequential_s"] / report["parallel_s"])


def test_gpu_check_dry_run_names_every_step_and_fits_ten_minutes(tmp_path):
    """benchmarks/gpu_check.sh with GPU_CHECK_DRY_RUN=1: each step's command and time limit, nothing run or installed,
    a summary in the output folder (relative to the current directory), at most 600 s if every step took all its."""
    script = BENCHMARKS / "gpu_check.sh"
    assert os.access(script, os.X_OK)
    venv = tmp_path / "venv"
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_VENV": str(venv)}
    result = subprocess.run(
        ["bash", str(script), "results"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    steps = ["venv", "install", "onnxruntime-gpu", "cuda-provider", "nvidia-smi", "versions", "tests", "tests-ran",
             "engine", "engine-640", "service"]  # fmt: skip
    announced = re.findall(r"^=== ([\w-]+) \(at most (\d+) s\): (.*)$", result.stdout, re.MULTILINE)
    assert [name for name, _, _ in announced] == steps, result.stdout
    commands = {name: command for name, _, command in announced}
    assert commands["venv"].endswith(f"-m venv --system-site-packages {venv}")
    assert commands["install"].endswith("-m pip install -e '.[test,gpu]'")
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && " in commands["onnxruntime-gpu"]
    assert "'onnxruntime-gpu[cuda,cudnn]>=1.20'" in commands["onnxruntime-gpu"]
    assert "CUDAExecutionProvider" in commands["cuda-provider"]
    out = tmp_path / "results"
    assert "-m pytest -q -m cuda tests/test_cuda.py" in commands["tests"] and f"--junitxml={out}/" in commands["tests"]
    assert "benchmarks/engine.py --model weights/bccd.onnx --device cuda" in commands["engine"]
    assert f"--out {out}/engine-gpu.json" in commands["engine"] and "--imgsz 640" in commands["engine-640"]
    assert commands["service"].endswith(
        "benchmarks/service.py --model weights/bccd.onnx --device cuda --concurrency 1,4,8,16,32 --duration 10 "
        f"--warmup 3 --out {out}/service-gpu.json"
    )
    assert "only if cuda-provider fails" in result.stdout and "only if engine fails" in result.stdout
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in summary[:-1]] == [[name, "dry-run"] for name in steps]
    assert sum(int(limit) for _, limit, _ in announced) <= 600 and "total at most" in summary[-1]
    assert not venv.exists() and sorted(path.name for path in out.iterdir()) == ["summary.txt"]


def test_gpu_study_runs_every_run_at_once_on_the_gpu_and_refuses_missing_data(tmp_path):
    """benchmarks/gpu_study.sh: one compare from scratch with every run in its own process on the GPU (baseline and
    variants x seeds), dataloader workers sharing the cores, under a time limit; a missing data YAML or a bad number
    is one line."""
    script = BENCHMARKS / "gpu_study.sh"
    assert os.access(script, os.X_OK)
    data = tmp_path / "data.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames: {0: a}\n")
    env = {**os.environ, "GPU_STUDY_DRY_RUN": "1", "GPU_STUDY_MODELS": "yolo11n-se,yolo11n-cbam,yolo11n-mhsa",
           "GPU_STUDY_SEEDS": "2", "GPU_STUDY_PYTHON": sys.executable}  # fmt: skip
    result = subprocess.run(["bash", str(script), str(data), str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=30, env=env, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    workers = max(1, len(os.sched_getaffinity(0)) // 8)
    assert result.stdout.strip() == (
        f"gpu_study: at most 540 s: {sys.executable} -m detector compare --data {data} --models "
        "yolo11n-se,yolo11n-cbam,yolo11n-mhsa --seeds 2 --epochs 30 --imgsz 640 --batch 32 --device 0 --jobs 8 "
        f"--workers {workers} --out {tmp_path / 'out'} cache=ram plots=False"
    )
    missing = subprocess.run(["bash", str(script), str(tmp_path / "none.yaml")], capture_output=True, text=True,
                             timeout=30, env=env, check=False)  # fmt: skip
    assert missing.returncode == 2 and not missing.stdout
    assert missing.stderr.strip().startswith(f"gpu_study: {tmp_path / 'none.yaml'}: no such data YAML")
    bad = subprocess.run(["bash", str(script), str(data)], capture_output=True, text=True, timeout=30,
                         env={**env, "GPU_STUDY_SEEDS": "three"}, check=False)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr == "gpu_study: GPU_STUDY_SEEDS=three: must be a positive whole number\n"
