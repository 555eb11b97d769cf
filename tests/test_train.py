"""Real (tiny) Ultralytics training of attention variants through `python -m detector train`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detector.cli import main
from detector.models import build_model
from detector.ultralytics_adapter import load_checkpoint, save_checkpoint
from detector.variants import inserted_indices

# nbs=batch: an optimizer step per batch
TINY = ["--epochs", "2", "--imgsz", "64", "--batch", "4", "--workers", "0", "plots=False", "val=False", "nbs=4"]


@pytest.mark.slow
def test_gamma_and_attention_learn_in_the_ultralytics_trainer(tmp_path, shapes_data):
    assert main(["train", "yolo11n-cbam", "--data", str(shapes_data), "--project", str(tmp_path), *TINY]) == 0
    model, ckpt = load_checkpoint(tmp_path / "yolo11n-cbam" / "weights" / "last.pt")
    layers = [model.model[i] for i in inserted_indices(model.yaml)]
    assert len(layers) == 3
    fresh = build_model("yolo11n-cbam", nc=2)
    for layer in layers:
        assert float(layer.gamma.abs()) > 0, "gamma never left 0"
        initial = fresh.model[layer.i]
        moved = [not torch.equal(a, b) for a, b in zip(layer.parameters(), initial.parameters(), strict=True)
                 if a is not layer.gamma]
        assert any(moved), f"attention parameters of layer {layer.i} did not change"


@pytest.mark.slow
def test_train_from_baseline_weights_starts_as_the_baseline(tmp_path, shapes_data, capsys):
    baseline = build_model("yolo11n", nc=2)
    weights = save_checkpoint(baseline, tmp_path / "yolo11n-shapes.pt")
    args = ["train", "yolo11n-eca", "--data", str(shapes_data), "--weights", str(weights), "--project", str(tmp_path)]
    assert main([*args, *TINY, "epochs=1"]) == 0
    assert "transferred 499/499" in capsys.readouterr().out
    # the checkpoint the trainer started from is the variant with every baseline tensor
    start, _ = load_checkpoint(tmp_path / "_models" / "yolo11n-eca-init.pt")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(start(x)[0], baseline.eval()(x)[0], atol=1e-5)


@pytest.mark.slow
def test_trained_variant_resumes_training_in_a_fresh_process(tmp_path, shapes_data):
    assert main(["train", "yolo11n-simam", "--data", str(shapes_data), "--project", str(tmp_path), *TINY]) == 0
    best = tmp_path / "yolo11n-simam" / "weights" / "last.pt"
    code = [sys.executable, "-m", "detector", "train", str(best), "--data", str(shapes_data), "--project",
            str(tmp_path), "--name", "again", *TINY]
    out = subprocess.run(code, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "again" / "weights" / "last.pt").exists()


@pytest.mark.slow
def test_same_seed_same_data_gives_the_same_weights(tmp_path, shapes_data):
    """What the model card's reproduction rests on: two trainings with one seed on one machine end bit-identical
    (two workers: their augmentation is seeded too); another seed does not."""
    final = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        args = ["train", "yolo11n-eca", "--data", str(shapes_data), "--project", str(tmp_path), "--name", name,
                "--seed", seed, *TINY, "--workers", "2"]
        assert main(args) == 0
        final[name] = load_checkpoint(tmp_path / name / "weights" / "last.pt")[0].state_dict()
    assert all(torch.equal(final["a"][k], final["b"][k]) for k in final["a"])
    assert not all(torch.equal(final["a"][k], final["c"][k]) for k in final["a"])


def test_data_yaml_paths_resolve_like_ultralytics(tmp_path, shapes_data, monkeypatch):
    """Split paths resolve from the yaml's folder whatever the working directory (here another one)."""
    import yaml

    from detector.train import check_data

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    relative = Path(os.path.relpath(shapes_data, elsewhere))
    assert check_data(relative).name == "data.yaml"  # no `path:` key: relative to the yaml's folder
    nested = tmp_path / "configs" / "data.yaml"  # a relative `path:` key: also relative to the yaml's folder
    nested.parent.mkdir()
    nested.write_text(f"path: {os.path.relpath(shapes_data.parent, nested.parent)}\n{shapes_data.read_text()}")
    given = check_data(Path("..") / "configs" / "data.yaml")
    assert Path(yaml.safe_load(given.read_text())["path"]) == shapes_data.parent.resolve()


def test_missing_data_and_weights_fail_clearly(tmp_path, capsys):
    def one_line_error(argv: list[str]) -> str:
        assert main(argv) == 2
        [line] = capsys.readouterr().err.splitlines()
        return line

    assert "Nothing is downloaded" in one_line_error(["train", "yolo11n", "--data", "coco8.yaml"])
    data = tmp_path / "data.yaml"
    data.write_text("train: images/train\nval: images/val\nnames: {0: a}\n")
    assert "does not exist" in one_line_error(["train", "yolo11n", "--data", str(data)])
    data.write_text("train: [unclosed\n")
    assert re.search(r"data.yaml:\d+: not valid YAML", one_line_error(["train", "yolo11n", "--data", str(data)]))
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "val").mkdir(parents=True)
    data.write_text("train: images/train\nval: images/val\nnames: {0: a}\n")
    line = one_line_error(["train", "yolo11n-se", "--data", str(data), "--weights", "yolo11n.pt"])
    assert "yolo11n.pt' not found" in line


@pytest.mark.slow
def test_relative_project_is_relative_to_the_working_directory(tmp_path, shapes_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "yolo11n", "--data", str(shapes_data), "--project", "runs", *TINY, "epochs=1"]) == 0
    assert (tmp_path / "runs" / "yolo11n" / "weights" / "best.pt").exists()


def test_ddp_worker_rebuilds_our_trainer_and_layers_in_a_fresh_process(tmp_path, shapes_data):
    """Multi-GPU training can't run here; what can break is the worker's start: Ultralytics pickles the trainer
    (class by reference) and the model for each DDP worker process, which never ran `import detector`."""
    from ultralytics.utils.dist import generate_ddp_file

    from detector import ultralytics_adapter as adapter
    from detector.models import write_yaml

    yaml_path = write_yaml("yolo11n-cbam", tmp_path / "yolo11n-cbam.yaml", nc=2)
    trainer = adapter.AttentionTrainer(overrides={"model": str(yaml_path), "data": str(shapes_data), "epochs": 1,
                                                  "imgsz": 64, "project": str(tmp_path), "name": "ddp"})
    trainer.model = trainer.get_model(cfg=str(yaml_path), verbose=False)
    script = Path(generate_ddp_file(trainer))
    try:
        # the generated worker script, up to (not including) trainer.train(); then rebuild the model from its YAML
        worker = script.read_text().replace("trainer.train()", (
            "rebuilt = trainer.get_model(cfg=trainer.model.yaml, verbose=False)\n"
            "    print('WORKER', type(trainer).__name__, type(trainer.model.model[17]).__name__, "
            "type(rebuilt.model[21]).__name__)"))
        out = subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True, timeout=120)
    finally:
        script.unlink()
        script.with_suffix(".pt").unlink(missing_ok=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "WORKER AttentionTrainer CBAM CBAM" in out.stdout
