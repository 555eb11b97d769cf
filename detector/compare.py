"""``python -m detector compare``: attention variants against the baseline YOLO, same budget, several seeds.

Every model trains with the same data, hyperparameters, budget and seeds (deterministic where torch allows), all
from scratch or all from the same baseline checkpoint. Each finished run leaves ``runs/<model>/seed<k>/result.json``;
an interrupted compare resumes the unfinished run from its last epoch and skips finished ones. Latency is measured
for all models at the end, in one process, interleaved, so the ratios between them are comparable.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .variants import parse_name

RESULT = "result.json"


@dataclass
class Plan:
    """What a compare runs: models (baselines first), seeds and the shared training arguments."""

    models: list[str]
    seeds: list[int]
    train_args: dict
    weights: Path | None = None
    references: list[str] = field(default_factory=list)

    def runs(self) -> list[tuple[str, int]]:
        return [(model, seed) for seed in self.seeds for model in self.models]


def plan_models(requested: list[str], references: list[str]) -> list[str]:
    """Requested models with the baseline YOLO11 of each scale added (first) when missing, then reference models."""
    specs = [parse_name(name) for name in requested]
    baselines = [f"yolo11{scale}" for scale in dict.fromkeys(s.scale for s in specs)]
    names = [s.name for s in specs]
    ordered = list(dict.fromkeys([*baselines, *names, *(parse_name(r).name for r in references)]))
    for name in ordered:
        spec = parse_name(name)
        if spec.attention is not None and spec.family != "yolo11" and name not in references:
            raise ValueError(f"{name}: compare attention variants of yolo11 (YOLO12 can be added with --reference)")
    return ordered


def run_dir(out: Path, model: str, seed: int) -> Path:
    return out / "runs" / model / f"seed{seed}"


class Progress:
    """One line per epoch: model, seed, epoch, metric, and the ETA of the whole compare."""

    def __init__(self, total_epochs: int) -> None:
        self.total_epochs, self.done_epochs, self.seconds = total_epochs, 0, 0.0
        self.epoch_start = self.train_seconds = 0.0
        self.images = 0

    def callbacks(self, label: str) -> dict:
        def epoch_start(trainer) -> None:
            self.epoch_start = time.perf_counter()

        def epoch_end(trainer) -> None:  # training part of the epoch only: images/s excludes validation
            elapsed = time.perf_counter() - self.epoch_start
            self.train_seconds += elapsed
            self.images += len(trainer.train_loader.dataset)

        def fit_epoch_end(trainer) -> None:
            if trainer.epoch >= trainer.epochs:  # Ultralytics' final validation of best.pt, not an epoch
                return
            self.done_epochs += 1
            self.seconds += time.perf_counter() - self.epoch_start
            eta = self.seconds / self.done_epochs * (self.total_epochs - self.done_epochs)
            score = trainer.metrics.get("metrics/mAP50-95(B)", float("nan"))
            print(
                f"[compare] {label} epoch {trainer.epoch + 1}/{trainer.epochs} mAP50-95 {score:.4f} "
                f"| {self.done_epochs}/{self.total_epochs} epochs, ETA {eta / 60:.1f} min",
                flush=True,
            )

        return {"on_train_epoch_start": epoch_start, "on_train_epoch_end": epoch_end, "on_fit_epoch_end": fit_epoch_end}


def train_one(plan: Plan, model: str, seed: int, directory: Path, data: Path, progress: Progress) -> dict:
    """Train (or resume) one model with one seed, validate it, and record the result next to the run."""
    from . import ultralytics_adapter as adapter
    from .train import prepare_model

    last = directory / "weights" / "last.pt"
    progress.train_seconds, progress.images = 0.0, 0
    callbacks = progress.callbacks(f"{model} seed {seed}")
    if last.exists():  # interrupted: Ultralytics resumes from the last epoch with the run's own arguments
        if len(training_curve(directory / "results.csv")) < plan.train_args["epochs"]:
            adapter.train(last, callbacks=callbacks, resume=True)
    else:
        start = prepare_model(model, plan.weights, directory.parent / "_models")
        adapter.train(
            start, callbacks=callbacks, data=str(data), seed=seed, deterministic=True,
            project=str(directory.parent), name=directory.name, exist_ok=True, **plan.train_args,
        )
    best = directory / "weights" / "best.pt"
    split_args = {"data": str(data), "imgsz": plan.train_args["imgsz"], "batch": plan.train_args.get("batch", 16)}
    result = {
        "model": model,
        "seed": seed,
        "val": adapter.validate(best, split="val", **split_args),
        "train_images_per_s": progress.images / progress.train_seconds if progress.train_seconds else None,
        "curve": training_curve(directory / "results.csv"),
    }
    if has_test_split(data):
        result["test"] = adapter.validate(best, split="test", **split_args)
    (directory / RESULT).write_text(json.dumps(result, indent=1))
    return result


def has_test_split(data: Path) -> bool:
    import yaml

    return bool((yaml.safe_load(data.read_text()) or {}).get("test"))


def training_curve(results_csv: Path) -> list[float]:
    """Validation mAP50-95 after each epoch, from Ultralytics' results.csv."""
    import csv

    with results_csv.open() as f:
        return [float(row["metrics/mAP50-95(B)"]) for row in csv.DictReader(f, skipinitialspace=True)]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset YAML (see `python -m detector data import`)")
    parser.add_argument("--models", required=True,
                        help="comma-separated model names, e.g. yolo11n,yolo11n-cbam,yolo11n-eca; the baseline YOLO11 "
                             "of each scale is added when missing")
    parser.add_argument("--reference", default="",
                        help="comma-separated reference models shown in the table, e.g. yolo12n (default: none)")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs for every run (default: 100)")
    parser.add_argument("--imgsz", type=int, default=640, help="training, validation and latency image size (default: 640)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default: 16)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds per model: 0..N-1 (default: 3)")
    parser.add_argument("--device", default=None, help="cpu, 0, 0,1... (default: first GPU if any, else cpu)")
    parser.add_argument("--workers", type=int, default=8, help="dataloader workers (default: 8)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="baseline checkpoint every model starts from (variants through weight transfer); "
                             "default: every model from scratch")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads for the latency column; on a machine whose cores are "
                             "busy or shared, 1 gives far steadier figures (default: physical cores)")
    parser.add_argument("--latency-runs", type=int, default=50,
                        help="timed ONNX Runtime runs per model, interleaved across models (default: 50)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="output directory (default: runs/compare)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="other Ultralytics train arguments applied to every run, e.g. lr0=0.01 mosaic=0.5")


def run(args: argparse.Namespace) -> int:
    from .compare_report import collect, measure_latency, write_report
    from .train import check_data, parse_overrides

    data = check_data(args.data)
    train_args = {"epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch, "workers": args.workers}
    if args.device is not None:
        train_args["device"] = args.device
    train_args.update(parse_overrides(args.overrides))
    references = [r for r in args.reference.split(",") if r]
    if references and args.weights:
        raise SystemExit("--reference models train from scratch, --weights starts every model from a checkpoint: "
                         "a table must not mix the two; drop one of them")
    plan = Plan(plan_models(args.models.split(","), references), list(range(args.seeds)), train_args, args.weights,
                references)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plan.json").write_text(json.dumps({**vars(args), "models": plan.models, "data": str(data)}, default=str, indent=1))
    pending = [(m, s) for m, s in plan.runs() if not (run_dir(args.out, m, s) / RESULT).exists()]
    print(f"[compare] {len(plan.models)} models x {len(plan.seeds)} seeds: {len(pending)} runs to do, "
          f"{len(plan.runs()) - len(pending)} already done")
    progress = Progress(len(pending) * args.epochs)
    for model, seed in pending:
        train_one(plan, model, seed, run_dir(args.out, model, seed), data, progress)
    latency = measure_latency(args.out, plan.models, args.imgsz, args.latency_runs, args.threads)
    report = collect(args.out, plan, latency)
    write_report(args.out, report, command=vars(args))
    print((args.out / "compare.md").read_text())
    return 0
