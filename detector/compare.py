"""``python -m detector compare``: attention variants against the baseline YOLO, same budget, several seeds.

Every model trains with the same data, hyperparameters, budget and seeds (deterministic where torch allows), all
from scratch or all from the same baseline checkpoint. Each finished run leaves ``runs/<model>/seed<k>/result.json``;
an interrupted compare resumes the unfinished run from its last epoch and skips finished ones. Latency is measured
for all models at the end, in one process, interleaved, so the ratios between them are comparable.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .argtypes import non_negative_int, positive_int
from .train import add_attention_args
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
    from .cli import UsageError

    specs = [parse_name(name) for name in requested]
    baselines = [f"yolo11{scale}" for scale in dict.fromkeys(s.scale for s in specs)]
    names = [s.name for s in specs]
    ordered = list(dict.fromkeys([*baselines, *names, *(parse_name(r).name for r in references)]))
    for name in ordered:
        spec = parse_name(name)
        if spec.attention is not None and spec.family != "yolo11" and name not in references:
            raise UsageError(f"{name}: compare attention variants of yolo11 (YOLO12 can be added with --reference)")
    return ordered


def run_dir(out: Path, model: str, seed: int) -> Path:
    return out / "runs" / model / f"seed{seed}"


class Progress:
    """One line per epoch: model, seed, epoch, metric, and the ETA of the whole compare.

    The ETA counts the epochs left and, for every run left, the final validation and test that follow its last epoch
    (timed on the first finished run; until then estimated as one epoch each), so it does not run out early. With
    ``total_epochs=None`` (a run of ``--jobs``) the line ends after the metric: the parent adds the compare's ETA.
    """

    def __init__(self, total_epochs: int | None, total_runs: int) -> None:
        self.total_epochs, self.done_epochs, self.seconds = total_epochs, 0, 0.0
        self.total_runs, self.done_runs, self.tail_seconds = total_runs, 0, 0.0
        self.epoch_start = self.train_seconds = self.tail_start = 0.0
        self.images = 0
        self.device: str | None = None  # of the current run, as the trainer resolved it

    def eta_seconds(self) -> float:
        per_epoch = self.seconds / self.done_epochs if self.done_epochs else 0.0
        per_tail = self.tail_seconds / self.done_runs if self.done_runs else per_epoch
        return per_epoch * (self.total_epochs - self.done_epochs) + per_tail * (self.total_runs - self.done_runs)

    def start_tail(self) -> None:
        self.tail_start = time.perf_counter()

    def end_run(self) -> None:
        self.done_runs += 1
        self.tail_seconds += time.perf_counter() - self.tail_start

    def callbacks(self, label: str) -> dict:
        from . import ultralytics_adapter as adapter

        def epoch_start(trainer) -> None:
            self.epoch_start = time.perf_counter()

        def epoch_end(trainer) -> None:  # training part of the epoch only: images/s excludes validation
            elapsed = time.perf_counter() - self.epoch_start
            self.train_seconds += elapsed
            self.images += adapter.epoch_images(trainer)
            self.device = adapter.trainer_device(trainer)

        def fit_epoch_end(trainer) -> None:
            if adapter.is_final_validation(trainer):  # of the best checkpoint, not an epoch
                return
            self.done_epochs += 1
            self.seconds += time.perf_counter() - self.epoch_start
            score = adapter.epoch_map50_95(trainer)
            epoch, epochs = adapter.trainer_epoch(trainer)
            line = f"[compare] {label} epoch {epoch + 1}/{epochs} mAP50-95 {score:.4f}"
            if self.total_epochs is not None:
                line += f" {eta_text(self.done_epochs, self.total_epochs, self.eta_seconds())}"
            print(line, flush=True)

        return adapter.EpochEvents(start=epoch_start, trained=epoch_end, validated=fit_epoch_end).callbacks()


EPOCH_LINE = re.compile(r"\[compare\] .+ epoch \d+/\d+ mAP50-95 ")
"""The start of the line `Progress` prints for an epoch (without its ETA, a run of ``--jobs`` prints only that)."""


def eta_text(done_epochs: int, total_epochs: int, eta_seconds: float) -> str:
    return f"| {done_epochs}/{total_epochs} epochs, ETA {eta_seconds / 60:.1f} min (then the latency phase)"


def train_one(plan: Plan, model: str, seed: int, directory: Path, data: Path, progress: Progress) -> dict:
    """Train (or resume) one model with one seed, validate it, and record the result next to the run."""
    from . import ultralytics_adapter as adapter
    from .gates import gate_table
    from .train import prepare_model

    last = adapter.last_checkpoint(directory)
    progress.train_seconds, progress.images, progress.device = 0.0, 0, None
    callbacks = progress.callbacks(f"{model} seed {seed}")
    if last.exists():  # interrupted: Ultralytics resumes from the last epoch with the run's own arguments
        if len(adapter.training_curve(directory)) < plan.train_args["epochs"]:
            adapter.train(last, callbacks=callbacks, resume=True)
    else:
        start = prepare_model(model, plan.weights, directory.parent / "_models")
        adapter.train(
            start, callbacks=callbacks, data=str(data), seed=seed, deterministic=True,
            project=str(directory.parent), name=directory.name, exist_ok=True, **plan.train_args,
        )
    progress.start_tail()
    best = adapter.best_checkpoint(directory)
    split_args = {"data": str(data), "imgsz": plan.train_args["imgsz"], "batch": plan.train_args.get("batch", 16)}
    result = {
        "model": model,
        "seed": seed,
        "val": adapter.validate(best, split="val", **split_args),
        "train_images_per_s": progress.images / progress.train_seconds if progress.train_seconds else None,
        "curve": adapter.training_curve(directory),
        "gates": [g.to_dict() for g in gate_table(adapter.load_checkpoint(best)[0])],
        "device": progress.device,
        "ultralytics": adapter.ULTRALYTICS_VERSION,
    }
    if has_test_split(data):
        result["test"] = adapter.validate(best, split="test", **split_args)
    (directory / RESULT).write_text(json.dumps(result, indent=1))
    progress.end_run()
    return result


def train_safely(plan: Plan, model: str, seed: int, out: Path, data: Path, progress: Progress) -> dict | None:
    """:func:`train_one`, with a failure (an exception, e.g. out of memory) recorded in ``failed.json`` and returned
    instead of ending the compare; an interrupt (Ctrl-C) still ends it."""
    from .compare_parallel import FAILED, record_failure

    directory = run_dir(out, model, seed)
    (directory / FAILED).unlink(missing_ok=True)
    try:
        train_one(plan, model, seed, directory, data, progress)
    except Exception as error:  # noqa: BLE001  # any failure of one run is reported; the others go on
        import traceback

        traceback.print_exc()
        return record_failure(directory, model, seed, f"{type(error).__name__}: {error}".splitlines()[0])
    return None


def has_test_split(data: Path) -> bool:
    import yaml

    return bool((yaml.safe_load(data.read_text()) or {}).get("test"))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset YAML (see `python -m detector data import`); required")
    parser.add_argument("--models",
                        help="required: comma-separated model names, e.g. yolo11n,yolo11n-cbam,yolo11n-eca; the "
                             "baseline YOLO11 "
                             "of each scale is added when missing")
    parser.add_argument("--reference", default="",
                        help="comma-separated reference models shown in the table, e.g. yolo12n (default: none)")
    parser.add_argument("--epochs", type=positive_int, default=100, help="training epochs for every run (default: 100)")
    parser.add_argument("--imgsz", type=positive_int, default=640,
                        help="training, validation and latency image size (default: 640)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default: 16)")
    parser.add_argument("--seeds", type=positive_int, default=3, help="number of seeds per model: 0..N-1 (default: 3)")
    parser.add_argument("--device", default=None, help="cpu, 0, 0,1... (default: first GPU if any, else cpu)")
    parser.add_argument("--workers", type=non_negative_int, default=8, help="dataloader workers (default: 8)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="baseline checkpoint every model starts from (variants through weight transfer); "
                             "default: every model from scratch")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="ONNX Runtime intra-op threads for the latency column; on a machine whose cores are "
                             "busy or shared, 1 gives far steadier figures (default: physical cores)")
    parser.add_argument("--latency-runs", type=positive_int, default=50,
                        help="timed ONNX Runtime runs per model, interleaved across models (default: 50)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"),
                        help="output directory (default: runs/compare)")
    parser.add_argument("--jobs", type=positive_int, default=1,
                        help="trainings at once, each in its own process: on GPUs each sees one device of --device "
                             "0,1,2,3 (round robin); on CPU each gets cores/jobs compute threads (default: 1, "
                             "sequential, in this process)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run each (model, seed) as a Ray task: on the cluster at ADDRESS (e.g. ray://head:10001 "
                             "or auto), or on a local Ray instance when ADDRESS is left out; needs the cluster extra")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render OUT/compare.json with the current statistics (paired Δ, CI, Holm, MDE, "
                             "warnings) without training or measuring anything; --data and --models are not needed")
    add_attention_args(parser)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="other Ultralytics train arguments applied to every run, e.g. lr0=0.01 mosaic=0.5")


def run(args: argparse.Namespace) -> int:
    from .cli import UsageError
    from .compare_parallel import run_jobs, run_ray
    from .compare_report import collect, command_line, measure_latency, rerender, write_report
    from .train import check_data, parse_overrides
    from .ultralytics_adapter import ATTENTION_TRAIN_ARGS, best_checkpoint

    if args.report_only:
        report = args.out / "compare.json"
        if not report.is_file():
            raise FileNotFoundError(f"--report-only: {report} not found (run the compare first)")
        rerender(args.out, rendered_by=f"python -m detector compare --report-only --out {args.out}")
        print((args.out / "compare.md").read_text())
        return 0
    if args.ray is not None and args.jobs > 1:
        raise UsageError("--ray and --jobs both schedule the runs: Ray decides how many run at once; drop --jobs")
    missing = [f"--{name}" for name in ("data", "models") if not getattr(args, name)]
    if missing:
        raise UsageError(f"compare needs {' and '.join(missing)} (only --report-only does without)")
    data = check_data(args.data)
    train_args = {"epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch, "workers": args.workers,
                  **{k: getattr(args, k) for k in ATTENTION_TRAIN_ARGS}}
    if args.device is not None:
        train_args["device"] = args.device
    train_args.update(parse_overrides(args.overrides))
    references = [r for r in args.reference.split(",") if r]
    if references and args.weights:
        raise UsageError("--reference models train from scratch, --weights starts every model from a checkpoint: "
                         "a table must not mix the two; drop one of them")
    plan = Plan(plan_models(args.models.split(","), references), list(range(args.seeds)), train_args, args.weights,
                references)
    args.out.mkdir(parents=True, exist_ok=True)
    options = {k: v for k, v in vars(args).items() if not callable(v)}
    (args.out / "plan.json").write_text(json.dumps({**options, "models": plan.models, "data": str(data)}, default=str,
                                                   indent=1))
    pending = [(m, s) for m, s in plan.runs() if not (run_dir(args.out, m, s) / RESULT).exists()]
    print(f"[compare] {len(plan.models)} models x {len(plan.seeds)} seeds: {len(pending)} runs to do, "
          f"{len(plan.runs()) - len(pending)} already done")
    if args.ray is not None and pending:
        failures = run_ray(plan, pending, args.out, data, args.ray or None, run_dir)
    elif args.jobs > 1 and pending:
        failures = run_jobs(plan, pending, args.out, data, args.jobs, run_dir)
    else:
        progress = Progress(len(pending) * args.epochs, len(pending))
        failures = [f for model, seed in pending if (f := train_safely(plan, model, seed, args.out, data, progress))]
    for failure in failures:
        print(f"[compare] {failure['model']} seed {failure['seed']} failed: {failure['reason']}")
    checkpoints = {m: best_checkpoint(run_dir(args.out, m, done[0])) for m in plan.models
                   if (done := [s for s in plan.seeds if (run_dir(args.out, m, s) / RESULT).exists()])}
    if not checkpoints:
        raise SystemExit("every run of the compare failed; see the failed.json and compare.log files under "
                         f"{args.out / 'runs'}")
    latency = measure_latency(args.out, checkpoints, args.imgsz, args.latency_runs, args.threads)
    report = collect(args.out, plan, latency)
    report["command"], report["data"] = command_line(options), str(args.data)  # the paths as the user gave them
    write_report(args.out, report)
    print((args.out / "compare.md").read_text())
    return 0
