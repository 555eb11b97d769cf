"""Aggregate a compare's runs: mean ± sd over seeds, paired Δ vs the baseline with CI, power and Holm's correction,
the attention gates, warnings, latency, plots."""

from __future__ import annotations

import csv
import json
import math
import platform
import re
import statistics
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np

from .compare_stats import ALPHA, POWER, Paired, holm, paired, verdict
from .gates import CLOSED
from .variants import parse_name

METRICS = ("map50_95", "map50", "precision", "recall")
LABELS = {"map50_95": "mAP50-95", "map50": "mAP50", "precision": "precision", "recall": "recall"}
LEARNED_FLOOR = 0.01  # a model whose best val mAP50-95 stays below this did not learn
STILL_LEARNING = 0.05  # a mean val mAP50-95 that rose by more than this share over the last quarter of its epochs
MIN_SEEDS = 3


def summarise(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "seeds": values,
    }


def measure_latency(out: Path, checkpoints: dict[str, Path], imgsz: int, runs: int, threads: int | None = None,
                    warmup: int = 5) -> dict:
    """Median ONNX Runtime latency (ms) of each model's checkpoint (its first finished seed) at ``imgsz``, on CPU and
    on CUDA when available, with ``threads`` intra-op threads (default: physical cores). Models are timed
    round-robin, so drifting machine load hits them all alike."""
    from engine.model import create_session

    from . import ultralytics_adapter as adapter

    onnx_dir = out / "onnx"
    onnx_dir.mkdir(exist_ok=True)
    models, paths = list(checkpoints), {}
    for model, checkpoint in checkpoints.items():
        paths[model] = onnx_dir / f"{model}.onnx"
        if not paths[model].exists():
            exported = adapter.export(checkpoint, format="onnx", imgsz=imgsz, dynamic=False, opset=17, verbose=False)
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
    """The report of a compare: per-model summary rows (baselines first) from the runs' result.json files, with
    paired statistics, gates and warnings."""
    import yaml

    from .info import measure
    from .models import build_model

    data = json.loads((out / "plan.json").read_text())["data"]
    nc = len((yaml.safe_load(Path(data).read_text()))["names"])
    imgsz = plan.train_args["imgsz"]
    results, failed = {}, []
    for model in plan.models:
        for seed in plan.seeds:
            run = out / "runs" / model / f"seed{seed}"
            if (run / "result.json").exists():
                results.setdefault(model, []).append(json.loads((run / "result.json").read_text()))
            elif (run / "failed.json").exists():
                failed.append(json.loads((run / "failed.json").read_text()))
    splits = [s for s in ("val", "test") if s in next(iter(results.values()))[0]]
    rows = []
    for model in results:
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
            "seed_ids": [r["seed"] for r in results[model]],
            "best_map50_95": [max(r["curve"], default=0.0) for r in results[model]],
            "gates": mean_gates([r.get("gates") for r in results[model]]),
        }
        for split in splits:
            row[split] = {k: summarise([r[split][k] for r in results[model]]) for k in METRICS}
        row["pr_curve"] = mean_curve([r["val"]["pr_curve"] for r in results[model]])
        row["training_curve"] = np.mean([r["curve"] for r in results[model]], axis=0).round(5).tolist()
        rows.append(row)
    report = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "seeds": plan.seeds,
        "train_args": plan.train_args,
        "weights": str(plan.weights) if plan.weights else None,
        "splits": splits,
        "data": data,
        "rows": rows,
        "failed": failed,
    }
    report["run_warnings"] = consistency_warnings(results)
    return add_statistics(report)


def mean_gates(per_seed: list[list[dict] | None]) -> list[dict] | None:
    """Mean |γ| per attention layer over the seeds (None when the runs did not record their gates)."""
    if not per_seed or any(g is None for g in per_seed):
        return None
    return [
        {**{k: layer[k] for k in ("layer", "mechanism", "level")},
         "mean_abs_gamma": statistics.fmean(abs(s[i]["gamma"]) for s in per_seed),
         "seeds": [s[i]["gamma"] for s in per_seed]}
        for i, layer in enumerate(per_seed[0]) if layer["gamma"] is not None
    ]


def consistency_warnings(results: dict[str, list[dict]]) -> list[str]:
    """Runs whose number of epochs, device or Ultralytics version differs from the other runs of the compare."""
    warnings = []
    for key, what in (("epochs", "number of epochs"), ("device", "device"), ("ultralytics", "Ultralytics version")):
        seen = defaultdict(list)
        for model, runs in results.items():
            for r in runs:
                value = len(r["curve"]) if key == "epochs" else r.get(key)
                if value is not None:
                    seen[value].append(f"{model} seed {r['seed']}")
        if len(seen) > 1:
            detail = "; ".join(f"{value}: {', '.join(runs)}" for value, runs in seen.items())
            warnings.append(f"runs differ in their {what} ({detail}): their differences are not only the attention")
    return warnings


def add_statistics(report: dict) -> dict:
    """Paired Δ to the baseline for every row, split and metric; Holm's correction across the variants of each
    table (split x metric); latency and training-speed ratios; warnings. Works on a report read back from
    compare.json too, so a finished compare can be re-rendered without retraining."""
    rows, splits = report["rows"], report["splits"]
    by_name = {r["model"]: r for r in rows}
    tables: dict[str, list[Paired]] = defaultdict(list)
    for row in rows:
        base = by_name.get(row["baseline"])
        row["delta"] = {}
        for split in splits:
            for k in METRICS:
                if base is None or row is base:
                    row["delta"][f"{split}_{k}"] = None
                    continue
                comparison = paired(*same_seeds(row, base, report["seeds"], split, k))
                tables[f"{split}_{k}"].append(comparison)
                row["delta"][f"{split}_{k}"] = comparison
        base = base or {"latency_ms": {}, "train_images_per_s": None}
        row["latency_ratio"] = {d: row["latency_ms"][d] / base["latency_ms"][d] for d in row["latency_ms"]
                                if d in base["latency_ms"]}
        row["train_speed_ratio"] = (
            row["train_images_per_s"] / base["train_images_per_s"]
            if row["train_images_per_s"] and base["train_images_per_s"] else None
        )
    for comparisons in tables.values():
        holm(comparisons)
    for row in rows:
        row["delta"] = {k: c and c.to_dict() for k, c in row["delta"].items()}
    report["warnings"] = [*report.get("run_warnings", []), *row_warnings(report)]
    return report


def same_seeds(row: dict, base: dict, seeds: list[int], split: str, metric: str) -> tuple[list[float], list[float]]:
    """The row's and its baseline's values of ``metric`` on the seeds both finished, in the same order."""
    values = dict(zip(row.get("seed_ids", seeds), row[split][metric]["seeds"], strict=True))
    base_values = dict(zip(base.get("seed_ids", seeds), base[split][metric]["seeds"], strict=True))
    common = [s for s in values if s in base_values]
    return [values[s] for s in common], [base_values[s] for s in common]


def row_warnings(report: dict) -> list[str]:
    """Too few seeds, models that did not learn or were still learning, variants whose gates stayed closed."""
    warnings = [f"{f['model']} seed {f['seed']} failed ({f['reason']}): left out of the statistics; the next "
                "compare retries it" for f in report.get("failed", [])]
    names = {r["model"] for r in report["rows"]}
    warnings += [f"{r['model']}: its baseline {r['baseline']} has no finished run, so no Δ" for r in report["rows"]
                 if r["baseline"] not in names]
    if len(report["seeds"]) < MIN_SEEDS:
        warnings.append(f"only {len(report['seeds'])} seed(s): fewer than {MIN_SEEDS} gives too little power to "
                        "detect any realistic difference (see the MDE column)")
    rising = []
    for row in report["rows"]:
        best = row.get("best_map50_95") or [row["val"]["map50_95"]["mean"]]
        if max(best) < LEARNED_FLOOR:
            warnings.append(f"{row['model']} did not learn: its best val mAP50-95 is {max(best):.4f} "
                            f"(below {LEARNED_FLOOR}); train longer before comparing")
        if rise := still_learning(row.get("training_curve") or []):
            rising.append(f"{row['model']} {rise}")
        gates = row.get("gates")
        if gates and all(g["mean_abs_gamma"] < CLOSED for g in gates):
            warnings.append(f"{row['model']}: every attention gate stayed closed (mean |γ| < {CLOSED}): the variant "
                            "is the baseline plus under 1% of attention; see docs/ATTENTION.md")
    if rising:
        warnings.append(f"training had not converged: mean val mAP50-95 still rose over the last quarter of the "
                        f"epochs ({'; '.join(rising)}), so Δ measures how fast the models learn as much as how well; "
                        "train longer (a new --out) before concluding about accuracy at convergence")
    return warnings


def still_learning(curve: list[float]) -> str | None:
    """How much the mean val mAP50-95 `curve` rose over its last quarter of epochs (at least one), as text, when
    that is more than STILL_LEARNING of its last value; else None."""
    if len(curve) < 2 or curve[-1] <= 0:
        return None
    start = curve[-1 - max(1, len(curve) // 4)]
    rise = curve[-1] - start
    return f"{start:.3f} → {curve[-1]:.3f}" if rise > STILL_LEARNING * curve[-1] else None


def mean_curve(curves: list[dict]) -> dict:
    precision = np.mean([c["precision"] for c in curves], axis=0).round(4).tolist()
    return {"recall": curves[0]["recall"], "precision": precision}


def machine() -> str:
    import onnxruntime as ort
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {gpu}; "
            f"torch {torch.__version__}, onnxruntime {ort.__version__}")


def fixed(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals, never ``-0.000``."""
    return f"{round(value, digits) + 0.0:.{digits}f}"


def fmt(summary: dict, digits: int = 3) -> str:
    return f"{fixed(summary['mean'], digits)} ± {fixed(summary['sd'], digits)}"


def fmt_delta(c: dict | None) -> str:
    """``+0.0123 [−0.004, +0.029] **``: paired Δ, its 95% CI, and ``**`` when significant after Holm."""
    if c is None:
        return "—"
    ci = "" if c["ci95"] is None else f" [{signed(c['ci95'][0])}, {signed(c['ci95'][1])}]"
    return f"{signed(c['delta'])}{ci}{' **' if c['significant'] else ''}"


def signed(value: float, digits: int = 4) -> str:
    return f"{round(value, digits) + 0.0:+.{digits}f}"


def fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3f}"


def markdown(report: dict) -> str:
    rows, splits = report["rows"], report["splits"]
    devices = list(rows[0]["latency_ms"])
    lines = [
        "# Attention variants vs baseline",
        "",
        f"- data: `{report['data']}`; seeds: {report['seeds']}; training: "
        + ", ".join(f"{k}={v}" for k, v in report["train_args"].items())
        + (f"; all models start from `{report['weights']}`" if report["weights"] else "; all models from scratch"),
        f"- machine: {report['machine']}; date: {report['date']}",
        f"- command: `{report.get('command') or 'not recorded'}`",
        *([f"- re-rendered with the current statistics by `{report['rendered_by']}`"]
          if report.get("rendered_by") else []),
        "",
    ]
    if report["warnings"]:
        lines += ["## Warnings", "", *(f"- {w}" for w in report["warnings"]), ""]
    lines += [
        ("Mean ± sd over seeds. **Δ** is the mean over seeds of the paired difference variant − baseline (same seed, "
         "so same data order and augmentation), with its 95% confidence interval (t, n−1) in brackets; **p** is the "
         "two-sided paired t-test, **Holm** the same p after Holm's correction across the variants of the table, and "
         f"`**` marks Δ significant after that correction (α={ALPHA}); Welch's two-sample p is a secondary figure. "
         f"**MDE**: the smallest true |Δ| that this many seeds would detect with {POWER:.0%} power at α={ALPHA}, "
         "given the observed sd of the paired differences. Latency: median ONNX Runtime time of one image at the "
         "compare imgsz (seed-0 model, models timed interleaved in one process); ratios are to the baseline measured "
         "in the same run."),
        "",
    ]
    for split in splits:
        header = ["model", *(LABELS[k] for k in METRICS), "Δ mAP50-95 [95% CI]", "p", "Holm", "Welch p", "MDE",
                  "Δ mAP50 [95% CI]", "p (Holm)"]
        lines += [f"## {split}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        failed_seeds = defaultdict(list)
        for f in report.get("failed", []):
            failed_seeds[f["model"]].append(str(f["seed"]))
        for r in rows:
            name = f"{r['model']} (reference)" if r["reference"] else r["model"]
            if failed_seeds[r["model"]]:
                name += f" (failed: seed {', '.join(failed_seeds[r['model']])})"
            main, m50 = r["delta"][f"{split}_map50_95"], r["delta"][f"{split}_map50"]
            stats = ["—"] * 4 if main is None else [
                fmt_p(main["p"]), fmt_p(main["p_holm"]), fmt_p(main["welch_p"]),
                "n/a" if main["mde"] is None else f"±{main['mde']:.4f}"]
            cells = [name, *(fmt(r[split][k]) for k in METRICS), fmt_delta(main), *stats, fmt_delta(m50),
                     "—" if m50 is None else f"{fmt_p(m50['p'])} ({fmt_p(m50['p_holm'])})"]
            lines.append("| " + " | ".join(cells) + " |")
        for model in [m for m in failed_seeds if m not in {r["model"] for r in rows}]:
            lines.append(f"| {model} (every run failed, see Warnings) |" + " — |" * (len(header) - 1))
        lines += ["", f"What {len(report['seeds'])} seeds can tell on {split} (mAP50-95, in points = ×100):", ""]
        for r in rows:
            if (d := r["delta"][f"{split}_map50_95"]) is not None:
                paired = Paired(**{**d, "ci95": d["ci95"] and tuple(d["ci95"])})
                lines.append(f"- {verdict(r['model'], f'{split} mAP50-95', paired)}")
        lines.append("")
    lines += gate_lines(rows)
    header = ["model", "params", "GFLOPs", *(f"{d.upper()} latency ms (× baseline)" for d in devices),
              "train img/s (× baseline)"]
    lines += ["## Cost", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        speed = (f"{r['train_images_per_s']:.1f} (×{r['train_speed_ratio']:.2f})" if r["train_speed_ratio"] else "—")
        cells = [r["model"], f"{r['params']:,}", f"{r['gflops']:.2f}",
                 *(f"{r['latency_ms'][d]:.2f} (×{r['latency_ratio'][d]:.2f})" for d in devices), speed]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![accuracy vs latency](pareto.png)", "", "![precision-recall](pr_curves.png)", "",
              "![training curves](training_curves.png)", ""]
    return "\n".join(lines)


def gate_lines(rows: list[dict]) -> list[str]:
    """The gate table: mean |γ| per attention layer of each variant (see detector.gates)."""
    variants = [r for r in rows if r["model"] != r["baseline"]]
    if not variants:
        return []
    lines = ["## Attention gates", "",
             f"|γ| per attention layer after training (mean over seeds; per-seed γ in brackets). A gate below {CLOSED} "
             "is closed: training left the baseline's function there (y = x + γ (A(x) − x)).", "",
             "| model | layer | mechanism | level | mean abs(γ) | γ per seed |", "|---|---|---|---|---|---|"]
    for r in variants:
        if r.get("gates") is None:
            lines.append(f"| {r['model']} | — | — | — | not recorded (runs made before gates were recorded) | — |")
            continue
        for g in r["gates"]:
            closed = " (closed)" if g["mean_abs_gamma"] < CLOSED else ""
            lines.append(f"| {r['model']} | {g['layer']} | {g['mechanism']} | {g['level']} | "
                         f"{g['mean_abs_gamma']:.4f}{closed} | {', '.join(f'{x:+.4f}' for x in g['seeds'])} |")
    return [*lines, ""]


def write_csv(path: Path, report: dict) -> None:
    fields = ("delta", "ci_low", "ci_high", "p", "p_holm", "welch_p", "mde", "significant")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        devices = list(report["rows"][0]["latency_ms"])
        header = ["model", "baseline", "params", "gflops", *(f"latency_{d}_ms" for d in devices), "train_images_per_s"]
        for split in report["splits"]:
            for k in METRICS:
                header += [f"{split}_{k}_mean", f"{split}_{k}_sd", *(f"{split}_{k}_{x}" for x in fields)]
        writer.writerow(header)
        for r in report["rows"]:
            row = [r["model"], r["baseline"], r["params"], round(r["gflops"], 4),
                   *(round(r["latency_ms"][d], 3) for d in devices), r["train_images_per_s"]]
            for split in report["splits"]:
                for k in METRICS:
                    row += [round(r[split][k]["mean"], 5), round(r[split][k]["sd"], 5)]
                    c = r["delta"][f"{split}_{k}"]
                    if c is None:
                        row += [""] * len(fields)
                        continue
                    low, high = c["ci95"] or ("", "")
                    row += [*(round(v, 5) if isinstance(v, float) else v
                              for v in (c["delta"], low, high, c["p"], c["p_holm"], c["welch_p"], c["mde"])),
                            c["significant"]]
            writer.writerow(["" if v is None else v for v in row])


def plot(out: Path, report: dict) -> None:
    """pareto.png (accuracy vs latency), pr_curves.png and training_curves.png, one line or point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

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
    if len(front) > 1:  # one point is no front to draw
        ax.plot(*zip(*front, strict=True), "k--", lw=0.8, label="Pareto front")
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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save(fig, ax, "training_curves.png", xlabel="epoch", ylabel="val mAP50-95 (seed mean)", title="Training curves")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another that is both faster and more accurate, by increasing latency."""
    front, best = [], -math.inf
    for latency, score in sorted(points):
        if score > best:
            front.append((latency, score))
            best = score
    return front


def command_line(options: dict) -> str:
    """The ``python -m detector compare ...`` line that reproduces a compare, from its parsed options."""
    return "python -m detector compare " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in options.items()
        if k not in ("command", "run", "overrides", "report_only", "debug") and v not in (None, "")
    ) + "".join(f" {o}" for o in options.get("overrides", []))


def write_report(out: Path, report: dict) -> None:
    """compare.json, compare.csv, compare.md and the plots, in ``out``."""
    (out / "compare.json").write_text(json.dumps(report, indent=1))
    write_csv(out / "compare.csv", report)
    plot(out, report)
    (out / "compare.md").write_text(markdown(report))


def rerender(out: Path, rendered_by: str) -> dict:
    """Recompute the statistics of ``out/compare.json`` (e.g. one written by an older version) and rewrite the
    report, without retraining or re-measuring anything."""
    report = json.loads((out / "compare.json").read_text())
    for row in report["rows"]:
        row.setdefault("gates", None)
    if not report.get("command") and (out / "compare.md").is_file():  # older reports kept it in the markdown only
        found = re.search(r"^- command: `(python -m detector compare [^`]+)`$", (out / "compare.md").read_text(), re.M)
        report["command"] = found and found.group(1)
    report["rendered_by"] = rendered_by
    write_report(out, add_statistics(report))
    return report
