"""Aggregate a compare's runs: mean ± sd over seeds, Δ vs the baseline with a significance test, latency, plots."""

from __future__ import annotations

import csv
import json
import math
import platform
import statistics
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from .variants import parse_name

METRICS = ("map50_95", "map50", "precision", "recall")
LABELS = {"map50_95": "mAP50-95", "map50": "mAP50", "precision": "precision", "recall": "recall"}
ALPHA = 0.05


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch's t-test p-value, or None when either side has fewer than 2 seeds or no spread at all."""
    from scipy.stats import ttest_ind

    if len(a) < 2 or len(b) < 2 or (statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0):
        return None
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def summarise(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "seeds": values,
    }


def measure_latency(out: Path, models: list[str], imgsz: int, runs: int, threads: int | None = None,
                    warmup: int = 5) -> dict:
    """Median ONNX Runtime latency (ms) of each model's seed-0 checkpoint at ``imgsz``, on CPU and on CUDA when
    available, with ``threads`` intra-op threads (default: physical cores). Models are timed round-robin, so
    drifting machine load hits them all alike."""
    from service.engine.model import create_session

    from . import ultralytics_adapter as adapter

    onnx_dir = out / "onnx"
    onnx_dir.mkdir(exist_ok=True)
    paths = {}
    for model in models:
        paths[model] = onnx_dir / f"{model}.onnx"
        if not paths[model].exists():
            exported = adapter.export(out / "runs" / model / "seed0" / "weights" / "best.pt", format="onnx",
                                      imgsz=imgsz, dynamic=False, opset=17, verbose=False)
            exported.replace(paths[model])
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    import onnxruntime as ort

    devices = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])
    latency: dict = {}
    for device in devices:
        sessions = {m: create_session(p, device=device, threads=threads) for m, p in paths.items()}
        feeds = {m: {s.get_inputs()[0].name: x} for m, s in sessions.items()}
        times: dict[str, list[float]] = {m: [] for m in models}
        for i in range(warmup + runs):
            for model, session in sessions.items():
                start = time.perf_counter()
                session.run(None, feeds[model])
                if i >= warmup:
                    times[model].append(1e3 * (time.perf_counter() - start))
        latency[device] = {m: statistics.median(t) for m, t in times.items()}
    return latency


def collect(out: Path, plan, latency: dict) -> dict:
    """Per-model summary rows (baselines first) from the runs' result.json files."""
    import yaml

    from .info import measure
    from .models import build_model

    data = json.loads((out / "plan.json").read_text())["data"]
    nc = len((yaml.safe_load(Path(data).read_text()))["names"])
    imgsz = plan.train_args["imgsz"]
    results = {m: [json.loads((out / "runs" / m / f"seed{s}" / "result.json").read_text()) for s in plan.seeds]
               for m in plan.models}
    splits = [s for s in ("val", "test") if s in results[plan.models[0]][0]]
    rows = []
    for model in plan.models:
        spec = parse_name(model)
        params, gflops, _, _ = measure(build_model(model, nc=nc), (imgsz, imgsz))
        speeds = [r["train_images_per_s"] for r in results[model] if r["train_images_per_s"]]
        row = {
            "model": model,
            "baseline": f"yolo11{spec.scale}",
            "reference": model in plan.references,
            "params": params,
            "gflops": gflops,
            "latency_ms": {device: times[model] for device, times in latency.items()},
            "train_images_per_s": statistics.fmean(speeds) if speeds else None,
        }
        for split in splits:
            row[split] = {k: summarise([r[split][k] for r in results[model]]) for k in METRICS}
        row["pr_curve"] = mean_curve([r["val"]["pr_curve"] for r in results[model]])
        row["training_curve"] = np.mean([r["curve"] for r in results[model]], axis=0).round(5).tolist()
        rows.append(row)
    by_name = {r["model"]: r for r in rows}
    for row in rows:
        base = by_name[row["baseline"]]
        row["delta"] = {}
        for split in splits:
            for k in METRICS:
                a, b = row[split][k]["seeds"], base[split][k]["seeds"]
                p = welch_p(a, b) if row is not base else None
                row["delta"][f"{split}_{k}"] = {
                    "delta": statistics.fmean(a) - statistics.fmean(b),
                    "p": p,
                    "significant": p is not None and p < ALPHA,
                }
        row["latency_ratio"] = {d: row["latency_ms"][d] / base["latency_ms"][d] for d in row["latency_ms"]}
        row["train_speed_ratio"] = (
            row["train_images_per_s"] / base["train_images_per_s"]
            if row["train_images_per_s"] and base["train_images_per_s"] else None
        )
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "seeds": plan.seeds,
        "train_args": plan.train_args,
        "weights": str(plan.weights) if plan.weights else None,
        "splits": splits,
        "data": data,
        "rows": rows,
    }


def mean_curve(curves: list[dict]) -> dict:
    return {"recall": curves[0]["recall"], "precision": np.mean([c["precision"] for c in curves], axis=0).round(4).tolist()}


def machine() -> str:
    import onnxruntime as ort
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {gpu}; "
            f"torch {torch.__version__}, onnxruntime {ort.__version__}")


def fmt(summary: dict, digits: int = 3) -> str:
    return f"{summary['mean']:.{digits}f} ± {summary['sd']:.{digits}f}"


def fmt_delta(delta: dict) -> str:
    if delta["p"] is None and delta["delta"] == 0:
        return "—"
    p = "n/a" if delta["p"] is None else f"{delta['p']:.3f}"
    return f"{delta['delta']:+.4f}{' **' if delta['significant'] else ''} (p={p})"


def markdown(report: dict, command: str) -> str:
    rows, splits = report["rows"], report["splits"]
    devices = list(rows[0]["latency_ms"])
    lines = [
        "# Attention variants vs baseline",
        "",
        f"- data: `{report['data']}`; seeds: {report['seeds']}; training: "
        + ", ".join(f"{k}={v}" for k, v in report["train_args"].items())
        + (f"; all models start from `{report['weights']}`" if report["weights"] else "; all models from scratch"),
        f"- machine: {report['machine']}; date: {report['date']}",
        f"- command: `{command}`",
        "",
        ("Mean ± sd over seeds. Δ is the difference of means to the YOLO11 baseline of the same scale; `**` marks a Δ "
        f"whose two-sided Welch's t-test over the seeds gives p < {ALPHA} (n/a: fewer than 2 seeds). Latency: median "
        "ONNX Runtime time of one image at the compare imgsz (seed-0 model, models timed interleaved in one process); "
        "ratios are to the baseline measured in the same run."),
        "",
    ]
    for split in splits:
        header = ["model", *(LABELS[k] for k in METRICS), "Δ mAP50-95", "Δ mAP50"]
        lines += [f"## {split}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            name = f"{r['model']} (reference)" if r["reference"] else r["model"]
            cells = [name, *(fmt(r[split][k]) for k in METRICS),
                     fmt_delta(r["delta"][f"{split}_map50_95"]), fmt_delta(r["delta"][f"{split}_map50"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    header = ["model", "params", "GFLOPs", *(f"{d.upper()} latency ms (× baseline)" for d in devices), "train img/s (× baseline)"]
    lines += ["## Cost", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        speed = (f"{r['train_images_per_s']:.1f} (×{r['train_speed_ratio']:.2f})" if r["train_speed_ratio"] else "—")
        cells = [r["model"], f"{r['params']:,}", f"{r['gflops']:.2f}",
                 *(f"{r['latency_ms'][d]:.2f} (×{r['latency_ratio'][d]:.2f})" for d in devices), speed]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![accuracy vs latency](pareto.png)", "", "![precision-recall](pr_curves.png)", "",
              "![training curves](training_curves.png)", ""]
    return "\n".join(lines)


def write_csv(path: Path, report: dict) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        devices = list(report["rows"][0]["latency_ms"])
        header = ["model", "baseline", "params", "gflops", *(f"latency_{d}_ms" for d in devices), "train_images_per_s"]
        for split in report["splits"]:
            for k in METRICS:
                header += [f"{split}_{k}_mean", f"{split}_{k}_sd", f"{split}_{k}_delta", f"{split}_{k}_p",
                           f"{split}_{k}_significant"]
        writer.writerow(header)
        for r in report["rows"]:
            row = [r["model"], r["baseline"], r["params"], round(r["gflops"], 4),
                   *(round(r["latency_ms"][d], 3) for d in devices), r["train_images_per_s"]]
            for split in report["splits"]:
                for k in METRICS:
                    d = r["delta"][f"{split}_{k}"]
                    row += [round(r[split][k]["mean"], 5), round(r[split][k]["sd"], 5), round(d["delta"], 5),
                            "" if d["p"] is None else round(d["p"], 4), d["significant"]]
            writer.writerow(row)


def plot(out: Path, report: dict) -> None:
    """pareto.png (accuracy vs latency), pr_curves.png and training_curves.png, one line or point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, ax, name: str, **labels) -> None:
        ax.set(**labels)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        m = r["val"]["map50_95"]
        ax.errorbar(r["latency_ms"]["cpu"], m["mean"], yerr=m["sd"], fmt="o", capsize=4, label=r["model"])
    front = pareto_front([(r["latency_ms"]["cpu"], r["val"]["map50_95"]["mean"]) for r in rows])
    ax.plot(*zip(*front), "k--", lw=0.8, label="Pareto front")
    save(fig, ax, "pareto.png", xlabel="ONNX Runtime CPU latency (ms)",
         ylabel="val mAP50-95 (mean ± sd over seeds)", title="Accuracy vs latency")

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        ax.plot(r["pr_curve"]["recall"], r["pr_curve"]["precision"], label=r["model"])
    save(fig, ax, "pr_curves.png", xlabel="recall", ylabel="precision (class mean, seed mean)",
         title="Precision-recall on val", xlim=(0, 1), ylim=(0, 1.02))

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        ax.plot(range(1, len(r["training_curve"]) + 1), r["training_curve"], label=r["model"])
    save(fig, ax, "training_curves.png", xlabel="epoch", ylabel="val mAP50-95 (seed mean)", title="Training curves")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another that is both faster and more accurate, by increasing latency."""
    front, best = [], -math.inf
    for latency, score in sorted(points):
        if score > best:
            front.append((latency, score))
            best = score
    return front


def write_report(out: Path, report: dict, command: dict) -> None:
    cli = "python -m detector compare " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in command.items()
        if k not in ("command", "run", "overrides") and v not in (None, "")
    ) + "".join(f" {o}" for o in command.get("overrides", []))
    (out / "compare.json").write_text(json.dumps(report, indent=1))
    write_csv(out / "compare.csv", report)
    plot(out, report)
    (out / "compare.md").write_text(markdown(report, cli))
