#!/usr/bin/env bash
# GPU check: the engine and the service on an NVIDIA GPU, tested and benchmarked in one go, in at most 10 minutes.
#
# What it does, each step time-limited with `timeout` (seconds, budgeted for a 16-core machine with one H200), one
# failed step recorded and the next one run all the same:
#   venv                 create (or reuse) a virtual environment with the system's site packages   (install: 225 s
#   install              pip install -e ".[test,gpu]"                                               in all, these
#   onnxruntime-gpu      pip uninstall onnxruntime(-gpu), then pip install onnxruntime-gpu          three)
#   cuda-provider        onnxruntime offers CUDAExecutionProvider and the engine starts a CUDA session   20
#                        (failing that, once more with the NVIDIA libraries of pip's nvidia-* packages on
#                        LD_LIBRARY_PATH: cuda-provider-pip-libs, 20); without CUDA the GPU steps are skipped
#   nvidia-smi           the GPU, its driver and CUDA version                                           10
#   versions             Python, onnxruntime, numpy, torch, ultralytics...; pip freeze to pip-freeze.txt 15
#   tests                python -m pytest -q -m cuda tests/test_cuda.py, each test at most 45 s        90
#                        (JUnit report pytest-cuda.xml)
#   tests-ran            every CUDA test ran (none skipped); their parity figures to cuda-parity.json     10
#   engine               benchmarks/engine.py --device cuda (with the Ultralytics predictor)             40
#                        (failing that: engine-no-ultralytics, 20; the service step then skips it too)
#   engine-640           benchmarks/engine.py --device cuda --imgsz 640 --no-ultralytics                 20
#   service              benchmarks/service.py --device cuda --concurrency 1,4,8,16,32 --duration 10     165
#                        --warmup 3 (its batch table is on by default on CUDA), GPU use sampled each
#                        second by nvidia-smi into nvidia-smi-service.csv
# 595 s if every step took all its time; no step starts after GPU_CHECK_TOTAL_S (default 600) seconds, and none
# runs past it.
#
# How to run it, from anywhere, on a Linux machine with an NVIDIA GPU, its driver and Python >= 3.11:
#   bash benchmarks/gpu_check.sh [OUTPUT_DIR]
# Environment:
#   GPU_CHECK_VENV=DIR         the virtual environment (default: ~/.cache/attention-yolo/gpu-venv, outside the
#                              repository; reused when it exists)
#   GPU_CHECK_PYTHON=PYTHON    the Python that creates it (default: python3)
#   GPU_CHECK_SKIP_INSTALL=1   install nothing: run with GPU_CHECK_PYTHON as it is
#   GPU_CHECK_PIP_ARGS="..."   more pip install arguments, e.g. "--no-index --find-links wheels/" offline
#   GPU_CHECK_TOTAL_S=SECONDS  the time limit of the whole check (default: 600)
#   GPU_CHECK_DRY_RUN=1        print each step's command and time limit, run nothing (exits 0)
#
# Results: every log and result goes to OUTPUT_DIR (default: gpu-results/, relative to the current directory):
#   summary.txt (each step: ok / FAILED / timed out / skipped, and its seconds), STEP.log for each step,
#   pytest-cuda.xml and cuda-parity.json (CPU vs CUDA differences), engine-gpu.json, engine-gpu-640.json,
#   service-gpu.json, nvidia-smi-service.csv, pip-freeze.txt. It exits non-zero when a step failed.
# The figures (engine and service latencies and throughput, the batch table, the CPU vs CUDA parity) go to
# docs/BENCHMARKS.md.

set -euo pipefail

OUT_DIR=$(realpath -m -- "${1:-gpu-results}")
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
VENV=${GPU_CHECK_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/attention-yolo/gpu-venv}
BASE_PYTHON=${GPU_CHECK_PYTHON:-python3}
SKIP_INSTALL=${GPU_CHECK_SKIP_INSTALL:-0}
TOTAL_S=${GPU_CHECK_TOTAL_S:-600}
read -r -a PIP_ARGS <<<"${GPU_CHECK_PIP_ARGS:-}"
MODEL=weights/bccd.onnx
INSTALL_BUDGET_S=225
ONNXRUNTIME_GPU_RESERVE_S=45 # of the install budget, kept for the onnxruntime-gpu swap

export PYTHONUNBUFFERED=1 YOLO_OFFLINE=True YOLO_AUTOINSTALL=False PIP_DISABLE_PIP_VERSION_CHECK=1

if [[ $SKIP_INSTALL == 1 ]]; then
    PY=$BASE_PYTHON
else
    PY=$VENV/bin/python
fi

mkdir -p -- "$OUT_DIR"
SUMMARY=$OUT_DIR/summary.txt
: >"$SUMMARY"
FAILED=()
START=$SECONDS
DRY_ELAPSED=0 # a dry run counts each step as taking all its time
sampler=
trap '[[ -z $sampler ]] || kill "$sampler" 2>/dev/null || true' EXIT

show() { # show ARGS...: the command line, each argument quoted only where the shell needs it
    local arg line=
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
            line+="$arg "
        else
            line+="${arg@Q} "
        fi
    done
    echo "${line% }"
}

elapsed() {
    echo $((SECONDS - START + DRY_ELAPSED))
}

note() {
    echo "gpu_check: $*"
}

record() { # record STEP STATUS SECONDS
    printf '%-24s %-10s %5ss\n' "$1" "$2" "$3" >>"$SUMMARY"
    if [[ $2 == FAILED || $2 == "timed-out" || $2 == no-time ]]; then
        FAILED+=("$1")
    fi
}

# step NAME LIMIT_S COMMAND...: run COMMAND for at most LIMIT_S seconds (less when the check's own limit comes
# first), its output to the terminal and to NAME.log; record ok / FAILED / timed-out. Never fails itself.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((TOTAL_S - $(elapsed)))
    if ((left < limit)); then
        limit=$left
    fi
    echo
    echo "=== $name (at most ${limit} s): $(show "$@")"
    if [[ $DRY_RUN == 1 ]]; then
        record "$name" dry-run "$limit"
        DRY_ELAPSED=$((DRY_ELAPSED + limit))
        return 0
    fi
    if ((limit < 5)); then
        note "no time left for $name (GPU_CHECK_TOTAL_S=$TOTAL_S)"
        record "$name" no-time 0
        return 1
    fi
    local began=$SECONDS status
    set +e
    {
        echo "\$ $(show "$@")"
        timeout --kill-after=5 "$limit" "$@" 2>&1
        echo "exit status $?"
    } | tee "$OUT_DIR/$name.log"
    set -e
    status=$(tail -n 1 "$OUT_DIR/$name.log")
    status=${status##* }
    if [[ $status == 0 ]]; then
        record "$name" ok $((SECONDS - began))
        return 0
    elif [[ $status == 124 || $status == 137 ]]; then
        record "$name" timed-out $((SECONDS - began))
    else
        record "$name" FAILED $((SECONDS - began))
    fi
    return 1
}

unfail() { # unfail NAME: NAME's failure was worked around (summary.txt still shows it)
    local kept=() name
    for name in "${FAILED[@]}"; do
        [[ $name == "$1" ]] || kept+=("$name")
    done
    FAILED=("${kept[@]}")
}

skip() { # skip NAME REASON
    echo
    echo "=== $1: skipped ($2)"
    record "$1" skipped 0
}

install_left() { # seconds of the install budget left, at least 30, less RESERVE_S when given
    local left=$((INSTALL_BUDGET_S - $(elapsed) - ${1:-0}))
    echo $((left < 30 ? 30 : left))
}

# --------------------------------------------------------------------------------------------------- install

if [[ $SKIP_INSTALL == 1 ]]; then
    skip venv "GPU_CHECK_SKIP_INSTALL=1: $PY as it is"
    skip install "GPU_CHECK_SKIP_INSTALL=1"
    skip onnxruntime-gpu "GPU_CHECK_SKIP_INSTALL=1"
else
    if [[ -x $VENV/bin/python && $DRY_RUN != 1 ]]; then
        echo
        echo "=== venv: reusing $VENV"
        record venv reused 0
    else
        step venv 30 "$BASE_PYTHON" -m venv --system-site-packages "$VENV" || true
    fi
    step install "$(install_left "$ONNXRUNTIME_GPU_RESERVE_S")" \
        "$PY" -m pip install "${PIP_ARGS[@]}" -e ".[test,gpu]" || true
    # Both packages install the module `onnxruntime`: whichever came last wins, and uninstalling either breaks the
    # other; so both go, then onnxruntime-gpu alone comes back (with NVIDIA's CUDA and cuDNN libraries from pip).
    # shellcheck disable=SC2016  # $1 and $@ are bash -c's arguments
    step onnxruntime-gpu "$(install_left)" bash -c \
        '"$1" -m pip uninstall -y onnxruntime onnxruntime-gpu && "$1" -m pip install "${@:2}"' \
        _ "$PY" "${PIP_ARGS[@]}" "onnxruntime-gpu[cuda,cudnn]>=1.20" || true
fi

# ------------------------------------------------------------------------------------------ the CUDA provider

CUDA_CHECK='
import sys

import onnxruntime as ort

available = ort.get_available_providers()
print("onnxruntime", ort.__version__, "offers", ", ".join(available))
if "CUDAExecutionProvider" not in available:
    sys.exit(
        "FAIL: this onnxruntime has no CUDAExecutionProvider: onnxruntime-gpu is not the onnxruntime installed "
        "(pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu)"
    )
from engine import Detector, DeviceError

try:
    detector = Detector("'"$MODEL"'", device="cuda")
except DeviceError as error:
    sys.exit(f"FAIL: the engine cannot start a CUDA session: {error}")
detector.warmup()
print("CUDA session of the engine: providers", ", ".join(detector.info.providers))
'
NVIDIA_LIBS='
import importlib.util
from pathlib import Path

spec = importlib.util.find_spec("nvidia")
roots = spec.submodule_search_locations if spec and spec.submodule_search_locations else []
print(":".join(str(path) for root in roots for path in sorted(Path(root).glob("*/lib")) if path.is_dir()))
'

CUDA_OK=0
if step cuda-provider 20 "$PY" -c "$CUDA_CHECK"; then
    CUDA_OK=1
else
    pip_libs=
    if grep -q "cannot start a CUDA session" "$OUT_DIR/cuda-provider.log"; then # offered, but its libraries?
        pip_libs=$(timeout 30 "$PY" -c "$NVIDIA_LIBS" 2>/dev/null || true)
    fi
    if [[ -n $pip_libs ]]; then
        export LD_LIBRARY_PATH=$pip_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        note "retrying with pip's NVIDIA libraries on LD_LIBRARY_PATH: $pip_libs"
        if step cuda-provider-pip-libs 20 "$PY" -c "$CUDA_CHECK"; then
            CUDA_OK=1
            unfail cuda-provider # it works, with LD_LIBRARY_PATH set (as summary.txt says)
            echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >>"$SUMMARY"
        fi
    fi
fi
if [[ $DRY_RUN == 1 ]]; then
    echo "(only if cuda-provider fails: cuda-provider-pip-libs, the same with pip's nvidia-*/lib on LD_LIBRARY_PATH)"
fi

# ----------------------------------------------------------------------------------------- machine and versions

VERSIONS='
import importlib
import sys

print("python", sys.version.split()[0], sys.executable)
for name in ("onnxruntime", "numpy", "cv2", "torch", "ultralytics", "fastapi", "uvicorn", "pydantic"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "(no version)"))
    except Exception as error:  # noqa: BLE001
        print(name, "not importable:", error)
import onnxruntime

print("onnxruntime device", onnxruntime.get_device(), "providers", onnxruntime.get_available_providers())
try:
    import torch

    print("torch CUDA", torch.version.cuda, "available", torch.cuda.is_available())
except ImportError:
    pass
'
step nvidia-smi 10 nvidia-smi || true
# shellcheck disable=SC2016  # $1, $2 and $3 are bash -c's arguments
step versions 15 bash -c '"$1" -c "$2" && "$1" -m pip freeze >"$3"' _ "$PY" "$VERSIONS" "$OUT_DIR/pip-freeze.txt" || true

# ----------------------------------------------------------------------------------------------------- tests

TESTS_RAN='
import json
import sys
import xml.etree.ElementTree as ElementTree

root = ElementTree.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
print(counts)
figures = {}
for case in suite.iter("testcase"):
    for prop in case.iter("property"):
        figures[prop.get("name")] = json.loads(prop.get("value"))
    for skipped in case.iter("skipped"):
        print("skipped:", case.get("name"), "-", skipped.get("message"))
with open(sys.argv[2], "w") as out:
    json.dump(figures, out, indent=1)
print(json.dumps(figures, indent=1))
if not counts["tests"] or counts["skipped"]:
    sys.exit("FAIL: on a GPU every CUDA test must run; some were skipped")
sys.exit(1 if counts["failures"] or counts["errors"] else 0)
'
if [[ $CUDA_OK == 1 ]]; then
    step tests 90 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider -o timeout=45 -o junit_family=legacy \
        --junitxml="$OUT_DIR/pytest-cuda.xml" || true
    step tests-ran 10 "$PY" -c "$TESTS_RAN" "$OUT_DIR/pytest-cuda.xml" "$OUT_DIR/cuda-parity.json" || true
else
    skip tests "no working CUDAExecutionProvider"
    skip tests-ran "no working CUDAExecutionProvider"
fi

# ------------------------------------------------------------------------------------------------ benchmarks

SERVICE_EXTRA=()
if [[ $CUDA_OK == 1 ]]; then
    if ! step engine 40 "$PY" benchmarks/engine.py --model "$MODEL" --device cuda --runs 50 --warmup 10 \
        --out "$OUT_DIR/engine-gpu.json"; then
        if [[ $DRY_RUN != 1 ]]; then
            note "the engine benchmark failed (the Ultralytics predictor on CUDA?): once more without it"
            SERVICE_EXTRA=(--no-ultralytics)
            unfail engine # if the retry passes: summary.txt keeps engine's FAILED, engine.log says why
            step engine-no-ultralytics 20 "$PY" benchmarks/engine.py --model "$MODEL" --device cuda --runs 50 \
                --warmup 10 --no-ultralytics --out "$OUT_DIR/engine-gpu.json" || true
        fi
    fi
    if [[ $DRY_RUN == 1 ]]; then
        echo "(only if engine fails: engine-no-ultralytics, the same with --no-ultralytics, then service too)"
    fi
    step engine-640 20 "$PY" benchmarks/engine.py --model "$MODEL" --device cuda --imgsz 640 --runs 50 \
        --warmup 10 --no-ultralytics --out "$OUT_DIR/engine-gpu-640.json" || true

    if [[ $DRY_RUN != 1 ]] && command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -l 1 \
            >"$OUT_DIR/nvidia-smi-service.csv" 2>&1 &
        sampler=$!
    fi
    step service 165 "$PY" benchmarks/service.py --model "$MODEL" --device cuda --concurrency 1,4,8,16,32 \
        --duration 10 --warmup 3 "${SERVICE_EXTRA[@]}" --out "$OUT_DIR/service-gpu.json" || true
    if [[ -n $sampler ]]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        sampler=
    fi
else
    for name in engine engine-640 service; do
        skip "$name" "no working CUDAExecutionProvider"
    done
fi

# -------------------------------------------------------------------------------------------------- summary

if [[ $CUDA_OK != 1 ]]; then
    FAILED+=(no-cuda)
fi
if [[ $DRY_RUN == 1 ]]; then
    echo "total at most $(elapsed)s (each step taking all its time), results in $OUT_DIR" >>"$SUMMARY"
else
    echo "total $(elapsed)s, results in $OUT_DIR" >>"$SUMMARY"
fi
echo
echo "=== summary ($SUMMARY)"
cat "$SUMMARY"
if [[ $DRY_RUN == 1 ]]; then
    note "dry run: nothing was run"
    exit 0
fi
if ((${#FAILED[@]})); then
    note "FAILED: ${FAILED[*]}"
    if [[ $CUDA_OK != 1 ]]; then
        note "no working CUDAExecutionProvider: see cuda-provider.log (onnxruntime-gpu, CUDA and cuDNN libraries)"
    fi
    exit 1
fi
note "every step passed"
