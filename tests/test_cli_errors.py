"""The CLI's error boundary: a user mistake is one line on stderr and exit code 2, a bug keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detector.cli import main

REPO = Path(__file__).resolve().parents[1]


def detector(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_AUTOINSTALL": "False", "YOLO_OFFLINE": "True"}
    command = [sys.executable, "-m", "detector", *argv]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False)


def one_error_line(stderr: str) -> str:
    """The single ``error:`` line a user mistake leaves on stderr."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["info", "missing.pt"], "missing.pt"),
        (["build", "yolo11n-cbam", "--weights", "missing.pt"], "missing.pt"),
        (["data", "import", "missing", "--format", "voc", "--out", "out"], "missing"),
        (["train", "yolo11n", "--data", "missing.yaml"], "missing.yaml"),
        (["compare", "--data", "missing.yaml", "--models", "yolo11n,yolo11n-cbam"], "missing.yaml"),
        (["export", "missing.pt"], "missing.pt"),
        (["predict", "missing.jpg", "--model", "missing.onnx"], "missing.jpg"),
        (["predict", "images", "--model", "missing.onnx"], "missing.onnx"),
        (["val", "missing.onnx", "--data", "missing.yaml"], "missing.yaml"),
    ],
    ids=["info", "build", "data-import", "train", "compare", "export", "predict-image", "predict-model", "val"],
)
def test_every_command_on_a_missing_input(tmp_path, argv, named):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"\xff\xd8\xff")  # predict checks its images before the model
    result = detector(*argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert named in one_error_line(result.stderr)


def run_main(capsys, *argv: str) -> str:
    """Run ``python -m detector`` in this process; assert exit code 2 and return its one error line."""
    assert main(list(argv)) == 2
    return one_error_line(capsys.readouterr().err)


def test_wrong_model_types_and_names(tmp_path, capsys):
    checkpoint, onnx = tmp_path / "model.pt", tmp_path / "model.onnx"
    checkpoint.write_bytes(b"not really a checkpoint")
    onnx.write_bytes(b"not really an ONNX model")
    image = tmp_path / "a.jpg"
    image.write_bytes(b"\xff\xd8\xff")
    line = run_main(capsys, "predict", str(image), "--model", str(checkpoint))
    assert f"--model {checkpoint}: expected an ONNX model (.onnx)" in line
    assert f"weights {onnx}: expected a checkpoint (.pt)" in run_main(capsys, "export", str(onnx))
    assert f"{onnx} is not a loadable ONNX model" in run_main(capsys, "predict", str(image), "--model", str(onnx))
    data = tmp_path / "data.yaml"
    data.write_text("train: .\nval: .\nnames: [a]\n")
    assert "expected an ONNX model (.onnx) or a checkpoint (.pt)" in run_main(
        capsys, "val", str(data), "--data", str(data)
    )
    assert "cannot parse model name 'yolo11q'" in run_main(capsys, "info", "yolo11q")
    assert "unknown attention module 'foo'" in run_main(capsys, "build", "yolo11n-foo")
    assert f"{checkpoint}: not a loadable Ultralytics checkpoint" in run_main(capsys, "info", str(checkpoint))


def test_bad_options(tmp_path, capsys):
    line = run_main(capsys, "train", "yolo11n", "--data", "d.yaml", "--epochs", "many")
    assert "argument --epochs: invalid int value: 'many' (see python -m detector train --help)" in line
    assert "unrecognized arguments: --colour" in run_main(capsys, "val", "m.onnx", "--data", "d.yaml", "--colour")
    assert "invalid choice: 'pascal'" in run_main(capsys, "data", "import", "x", "--format", "pascal")
    assert "arguments are required: COMMAND" in run_main(capsys)
    assert "--int8 needs --data" in run_main(capsys, "export", str(tmp_path / "m.pt"), "--int8")
    image = tmp_path / "a.jpg"
    image.write_bytes(b"")
    line = run_main(capsys, "predict", str(image), "--model", "m.onnx", "--classes", "cats")
    assert "--classes 'cats': expected comma-separated class ids" in line
    weights = tmp_path / "yolo11n.pt"
    weights.write_bytes(b"")
    assert "--nc cannot be combined with --weights" in run_main(  # raise SystemExit("...") in a command
        capsys, "build", "yolo11n-cbam", "--weights", str(weights), "--nc", "3"
    )


def test_bad_data_yaml(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data" / "data.yaml"
    data.parent.mkdir()
    data.write_text("train: [unclosed\n")
    assert f"{data}:2: not valid YAML" in run_main(capsys, "train", "yolo11n", "--data", str(data))
    data.write_text("train: images/train\nval: images/val\nnames: {0: a}\n")
    line = run_main(capsys, "train", "yolo11n", "--data", "data/data.yaml")
    assert f"train path {data.parent / 'images' / 'train'} does not exist" in line
    data.write_text("train: images/train\nnames: {0: a}\n")
    assert "has no 'val' entry" in run_main(capsys, "compare", "--data", str(data), "--models", "yolo11n")


def test_val_checks_only_the_split_it_evaluates(tmp_path, capsys):
    (tmp_path / "images" / "val").mkdir(parents=True)
    data = tmp_path / "data.yaml"
    data.write_text("train: images/train\nval: images/val\nnames: {0: a}\n")  # no train images: val does not care
    assert "missing.pt' not found" in run_main(capsys, "val", str(tmp_path / "missing.pt"), "--data", str(data))
    line = run_main(capsys, "val", "missing.pt", "--data", str(data), "--split", "test")
    assert "has no 'test' entry" in line


def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, capsys, monkeypatch):
    assert main(["--debug", "train", "yolo11n", "--data", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "FileNotFoundError" in err and err.splitlines()[-1].startswith("error: ")
    assert main(["export", "x.pt", "--debug", "--int8"]) == 2  # --debug anywhere
    assert "Traceback" in capsys.readouterr().err

    import detector.info

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(detector.info, "run", bug)
    with pytest.raises(KeyError, match="a bug"):
        main(["info", "yolo11n"])


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["compare", "--data", "d.yaml", "--models", "yolo11n-eca", "--seeds", "0"], "--seeds: must be at least 1"),
        (["compare", "--data", "d.yaml", "--models", "yolo11n-eca", "--epochs", "0"], "--epochs: must be at least 1"),
        (["compare", "--data", "d.yaml", "--models", "yolo11n-eca", "--jobs", "0"], "--jobs: must be at least 1"),
        (["compare", "--data", "d.yaml", "--models", "yolo11n-eca", "--latency-runs", "0"], "--latency-runs"),
        (["train", "yolo11n", "--data", "d.yaml", "--epochs", "0"], "--epochs: must be at least 1, got 0"),
        (["train", "yolo11n", "--data", "d.yaml", "--imgsz", "-32"], "--imgsz: must be at least 1, got -32"),
        (["train", "yolo11n", "--data", "d.yaml", "--workers", "-1"], "--workers: must be 0 or more, got -1"),
        (["train", "yolo11n", "--data", "d.yaml", "--imgsz", "abc"], "--imgsz: invalid int value: 'abc'"),
    ],
)
def test_counts_no_run_could_use_are_refused_before_any_work(capsys, argv, named):
    assert named in run_main(capsys, *argv)
