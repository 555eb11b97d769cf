"""``compare --jobs``: the same runs in parallel processes give the same results; a failing run is reported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from detector.compare_parallel import gpu_devices

TINY = ["--models", "yolo11n-se", "--epochs", "1", "--imgsz", "64", "--batch", "4", "--seeds", "2", "--workers", "0",
        "--latency-runs", "2", "--threads", "1", "plots=False", "nbs=4"]


def compare(data, out, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "detector", "compare", "--data", str(data), "--out", str(out), *TINY, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the sequential run computes on one thread, like each job
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_gpu_devices_parse_the_device_option():
    assert gpu_devices("0,1,2,3") == ["0", "1", "2", "3"] and gpu_devices("cuda:1") == ["1"]
    assert gpu_devices(None) == [] and gpu_devices("cpu") == []


@pytest.fixture(scope="module")
def sequential(shapes_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    compare(shapes_data, out)
    return out


def with_a_broken_run(out):
    broken = out / "runs" / "yolo11n-se" / "seed1" / "weights"
    broken.mkdir(parents=True)
    (broken / "last.pt").write_bytes(b"not a checkpoint")  # resuming it fails: a real failure of one run
    return out


def check_same_results_and_the_failure(sequential, parallel):
    for model, seed in (("yolo11n", 0), ("yolo11n", 1), ("yolo11n-se", 0)):
        a, b = (json.loads((d / "runs" / model / f"seed{seed}" / "result.json").read_text())
                for d in (sequential, parallel))
        assert a["val"] == b["val"] and a["curve"] == b["curve"] and a["gates"] == b["gates"], (model, seed)
        files = {p.relative_to(sequential).as_posix() for p in (sequential / "runs" / model / f"seed{seed}").rglob("*")}
        assert all((parallel / f).exists() for f in files)
    failed = json.loads((parallel / "runs" / "yolo11n-se" / "seed1" / "failed.json").read_text())
    assert failed["seed"] == 1 and failed["reason"]
    report = json.loads((parallel / "compare.json").read_text())
    assert report["failed"] == [failed]
    se = next(r for r in report["rows"] if r["model"] == "yolo11n-se")
    assert se["seed_ids"] == [0] and se["delta"]["val_map50_95"]["n"] == 1
    assert "yolo11n-se (failed: seed 1)" in (parallel / "compare.md").read_text()


@pytest.mark.slow
def test_jobs_give_the_sequential_results_and_report_a_failed_run(sequential, shapes_data, tmp_path):
    printed = compare(shapes_data, with_a_broken_run(tmp_path), "--jobs", "2").stdout
    assert "[compare] yolo11n-se seed 1 FAILED" in printed and "[compare] yolo11n seed 0 epoch 1/1" in printed
    # the ETA is the whole compare's (4 runs x 1 epoch to do), not that of the run printing the line
    assert re.search(r"yolo11n seed 0 epoch 1/1 mAP50-95 \d\.\d{4} \| [1-4]/4 epochs, ETA \d+\.\d min", printed)
    check_same_results_and_the_failure(sequential, tmp_path)


@pytest.mark.slow
def test_ray_gives_the_sequential_results_and_reports_a_failed_run(sequential, shapes_data, tmp_path):
    pytest.importorskip("ray")
    printed = compare(shapes_data, with_a_broken_run(tmp_path), "--ray").stdout
    assert "[compare] yolo11n-se seed 1 FAILED on Ray" in printed and "yolo11n seed 0 finished on Ray" in printed
    check_same_results_and_the_failure(sequential, tmp_path)


def test_ray_and_jobs_exclude_each_other(shapes_data, tmp_path, capsys):
    from detector.cli import main

    assert main(["compare", "--data", str(shapes_data), "--models", "yolo11n", "--ray", "--jobs", "2"]) == 2
    assert "drop --jobs" in capsys.readouterr().err
