"""A tiny two-model, two-seed compare on generated data: report files, statistics, resume."""

from __future__ import annotations

import csv
import json

import pytest

from detector.cli import main
from detector.compare import plan_models
from detector.compare_report import pareto_front
from detector.compare_stats import paired


def test_baseline_is_always_in_the_table():
    assert plan_models(["yolo11n-cbam", "yolo11s-eca"], []) == ["yolo11n", "yolo11s", "yolo11n-cbam", "yolo11s-eca"]
    assert plan_models(["yolo11n", "yolo11n-se"], ["yolo12n"]) == ["yolo11n", "yolo11n-se", "yolo12n"]
    with pytest.raises(ValueError, match="--reference"):
        plan_models(["yolo12n-se"], [])


def test_welch_and_pareto():
    assert paired([0.50, 0.51, 0.49], [0.60, 0.61, 0.58]).welch_p < 0.01
    assert paired([0.50, 0.52, 0.48], [0.51, 0.49, 0.50]).welch_p > 0.5
    assert paired([0.5], [0.6]).welch_p is None
    assert pareto_front([(2.0, 0.5), (1.0, 0.4), (3.0, 0.45), (4.0, 0.6)]) == [(1.0, 0.4), (2.0, 0.5), (4.0, 0.6)]


@pytest.mark.slow
def test_tiny_compare_writes_report_and_resumes(tmp_path, shapes_data, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--data", str(shapes_data), "--models", "yolo11n-se", "--epochs", "2", "--imgsz", "64",
            "--batch", "4", "--seeds", "2", "--workers", "0", "--latency-runs", "3", "--threads", "1",
            "--out", str(out),
            "plots=False", "nbs=4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[compare] yolo11n-se seed 1 epoch 2/2" in printed and "ETA" in printed
    report = json.loads((out / "compare.json").read_text())
    assert [r["model"] for r in report["rows"]] == ["yolo11n", "yolo11n-se"]
    for row in report["rows"]:
        assert len(row["val"]["map50_95"]["seeds"]) == 2
        assert row["latency_ms"]["cpu"] > 0 and row["params"] > 0 and row["gflops"] > 0
        assert row["train_images_per_s"] > 0
        assert len(row["training_curve"]) == 2
    assert report["rows"][0]["latency_ratio"]["cpu"] == 1.0
    with (out / "compare.csv").open() as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["yolo11n", "yolo11n-se"]
    markdown = (out / "compare.md").read_text()
    assert "Welch" in markdown and "| yolo11n-se |" in markdown
    assert "## Attention gates" in markdown and "| yolo11n-se | 17 | se | P3 |" in markdown
    assert "only 2 seed(s)" in markdown  # the report warns, not only the log
    assert "<function" not in (out / "plan.json").read_text()
    result = json.loads((out / "runs" / "yolo11n-se" / "seed0" / "result.json").read_text())
    assert [g["layer"] for g in result["gates"]] == [17, 21, 25] and result["device"] == "cpu"
    assert report["command"].startswith("python -m detector compare --data") and "nbs=4" in report["command"]
    delta = report["rows"][1]["delta"]["val_map50_95"]
    assert {"ci95", "p", "p_holm", "welch_p", "mde", "significant"} <= set(delta)
    for plot in ("pareto.png", "pr_curves.png", "training_curves.png"):
        assert (out / plot).stat().st_size > 1000

    # resume: a lost result is redone, finished runs are not
    (out / "runs" / "yolo11n-se" / "seed1" / "result.json").unlink()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "1 runs to do, 3 already done" in printed
    assert "[compare] yolo11n seed" not in printed


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_last_epoch(tmp_path, shapes_data, monkeypatch, capsys):
    from detector import compare

    out = tmp_path / "cmp"
    args = ["compare", "--data", str(shapes_data), "--models", "yolo11n", "--epochs", "2", "--imgsz", "64",
            "--batch", "4", "--seeds", "1", "--workers", "0", "--latency-runs", "2", "--out", str(out),
            "plots=False", "nbs=4"]
    original = compare.Progress.callbacks

    def interrupt_after_first_epoch(self, label):
        callbacks = original(self, label)

        def fit_epoch_end(trainer):
            raise KeyboardInterrupt

        return {**callbacks, "on_fit_epoch_end": fit_epoch_end}

    monkeypatch.setattr(compare.Progress, "callbacks", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    assert (out / "runs" / "yolo11n" / "seed0" / "weights" / "last.pt").exists()
    monkeypatch.setattr(compare.Progress, "callbacks", original)
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and "epoch 1/2" not in printed  # continued, not restarted
    assert len(json.loads((out / "runs" / "yolo11n" / "seed0" / "result.json").read_text())["curve"]) == 2
