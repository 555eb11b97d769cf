#!/usr/bin/env bash
# GPU study: a larger version of the CPU attention studies (docs/ATTENTION.md) on one NVIDIA GPU, in at most 10 min.
#
# It runs `python -m detector compare` from scratch, every run of it at once on the one GPU (`--jobs`, each run its
# own process on `--device`), at 640 px and more epochs than a 2-core CPU allows, then prints the report. The compare
# keeps finished runs: when the time limit stops it, the same command finishes the rest (and writes the report).
#
# How to run it, from anywhere, with a Python whose torch sees the GPU and that has this project installed
# (pip install -e ".[test]"; the GPU machine may have no network, so nothing is installed here):
#   bash benchmarks/gpu_study.sh DATA_YAML [OUT_DIR]
# e.g. after `python -m detector data import ../shared/datasets/neu-det --format voc --out datasets/neu-det`:
#   bash benchmarks/gpu_study.sh datasets/neu-det/data.yaml docs/results/neu-det-gpu
# Environment (defaults in brackets):
#   GPU_STUDY_PYTHON [python3]   GPU_STUDY_MODELS [yolo11n-eca,yolo11n-cbam]   GPU_STUDY_SEEDS [3]
#   GPU_STUDY_EPOCHS [30]        GPU_STUDY_IMGSZ [640]     GPU_STUDY_BATCH [32]    GPU_STUDY_DEVICE [0]
#   GPU_STUDY_JOBS [all runs: (models + baseline) x seeds]  GPU_STUDY_WORKERS [CPU cores / jobs, at least 1]
#   GPU_STUDY_TOTAL_S [540]: the time limit of the compare (training, validation, export and latency)
#   GPU_STUDY_DRY_RUN=1: print the command and run nothing
# The report (compare.md, .csv, .json, plots) goes to OUT_DIR [docs/results/gpu-study]; commit it beside the CPU
# reports. Not run yet: no GPU was lent to this project so far.

set -euo pipefail

DATA=${1:?usage: bash benchmarks/gpu_study.sh DATA_YAML [OUT_DIR]}
OUT_DIR=${2:-docs/results/gpu-study}
PY=${GPU_STUDY_PYTHON:-python3}
MODELS=${GPU_STUDY_MODELS:-yolo11n-eca,yolo11n-cbam}

for name in GPU_STUDY_SEEDS GPU_STUDY_EPOCHS GPU_STUDY_IMGSZ GPU_STUDY_BATCH GPU_STUDY_JOBS GPU_STUDY_WORKERS \
    GPU_STUDY_TOTAL_S; do
    if [[ -n ${!name:-} && ! ${!name} =~ ^[1-9][0-9]*$ ]]; then
        echo "gpu_study: $name=${!name}: must be a positive whole number" >&2
        exit 2
    fi
done
SEEDS=${GPU_STUDY_SEEDS:-3}
IFS=, read -r -a VARIANTS <<<"$MODELS"
JOBS=${GPU_STUDY_JOBS:-$(((${#VARIANTS[@]} + 1) * SEEDS))}
CORES=$(nproc)
WORKERS=${GPU_STUDY_WORKERS:-$((CORES / JOBS > 0 ? CORES / JOBS : 1))}
TOTAL_S=${GPU_STUDY_TOTAL_S:-540}

if [[ ! -f $DATA ]]; then
    echo "gpu_study: $DATA: no such data YAML (python -m detector data import SRC --out DIR makes one)" >&2
    exit 2
fi

command=("$PY" -m detector compare --data "$DATA" --models "$MODELS" --seeds "$SEEDS"
    --epochs "${GPU_STUDY_EPOCHS:-30}" --imgsz "${GPU_STUDY_IMGSZ:-640}" --batch "${GPU_STUDY_BATCH:-32}"
    --device "${GPU_STUDY_DEVICE:-0}" --jobs "$JOBS" --workers "$WORKERS" --out "$OUT_DIR" cache=ram plots=False)
echo "gpu_study: at most ${TOTAL_S} s: ${command[*]}"
if [[ ${GPU_STUDY_DRY_RUN:-0} == 1 ]]; then
    exit 0
fi
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=True YOLO_AUTOINSTALL=False
status=0
# timeout signals its whole process group: the training processes of --jobs and their data loaders stop too
timeout --kill-after=10 "$TOTAL_S" "${command[@]}" || status=$?
if ((status == 124 || status == 137)); then
    echo "gpu_study: stopped after ${TOTAL_S} s; the finished runs are kept: run the same command to finish the rest" >&2
fi
exit "$status"
