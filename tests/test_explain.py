"""`python -m detector explain`: per-layer maps from forward hooks, the figure, the gate table, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detector import ultralytics_adapter as adapter
from detector.cli import main
from detector.explain import (
    DPI,
    PANEL_INCHES,
    AttentionHooks,
    attention_received,
    draw,
    explain_image,
    load_checkpoint,
    query_cells,
)
from detector.gates import gate_table
from detector.models import build_model, transfer_weights, variant_from_checkpoint
from engine.images import read_image
from modules import ATTENTION, AreaAttention

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "weights" / "bccd.pt"
BCCD_IMAGE = REPO.parent / "shared" / "datasets" / "bccd-voc" / "JPEGImages" / "BloodImage_00007.jpg"  # test split
CHANNEL_ONLY = {"se", "eca"}
SELF_ATTENTION = {"mhsa", "area"}


def set_gammas(model: torch.nn.Module, *gammas: float) -> None:
    for gate, gamma in zip(gate_table(model), gammas, strict=True):
        adapter.layers(model)[gate.layer].gamma.data.fill_(gamma)


@pytest.fixture(scope="module")
def bccd() -> tuple[torch.nn.Module, np.ndarray]:
    """The shipped BCCD model and a BCCD test image (BGR)."""
    if not BASELINE.exists() or not BCCD_IMAGE.exists():
        pytest.skip("weights/bccd.pt or ../shared/datasets/bccd-voc is not present")
    return load_checkpoint(BASELINE), read_image(BCCD_IMAGE)


@pytest.fixture(scope="module")
def identity_variant(bccd, tmp_path_factory) -> Path:
    """yolo11n-cbam built from the shipped BCCD model, as fine-tuning starts: every gate at 0."""
    variant, _ = variant_from_checkpoint("yolo11n-cbam", BASELINE, verbose=False)
    return adapter.save_checkpoint(variant, tmp_path_factory.mktemp("explain") / "yolo11n-cbam.pt")


@pytest.mark.parametrize("mechanism", sorted(ATTENTION))
def test_hooks_map_every_mechanism_at_every_level(bccd, mechanism):
    baseline, image = bccd
    torch.manual_seed(0)
    model = build_model(f"yolo11n-{mechanism}-neck", nc=3).eval()
    transfer_weights(baseline, model)  # trained features: a fresh model's vanish by P5 and leave nothing to weigh
    gates = gate_table(model)
    two_input = getattr(ATTENTION[mechanism], "inputs", 1) == 2  # P5 is the context of the P3 and P4 layers
    levels = ["P3", "P4"] if two_input else ["P3", "P4", "P5"]
    assert [g.level for g in gates] == levels
    layers = adapter.layers(model)
    sizes = {}
    probes = [layers[g.layer].register_forward_hook(lambda m, i, o, k=g.layer: sizes.__setitem__(k, o.shape[-2:]))
              for g in gates]
    x = torch.from_numpy(cv2.resize(image, (128, 96))[None, ..., ::-1].transpose(0, 3, 1, 2) / 255).float()
    for gammas in ((0.0, 0.0, 0.0), (0.5, -0.5, 1.0)):
        set_gammas(model, *gammas[: len(gates)])
        with AttentionHooks(model, gates) as hooks, torch.no_grad():
            model(x)
        maps = hooks.maps(torch.tensor([[8.0, 8.0, 40.0, 56.0]]), (96, 128))
        expected = [(12, 16), (6, 8), (3, 4)][: len(gates)]  # a swapped height and width would show
        assert [m.change.shape for m in maps] == [tuple(sizes[g.layer]) for g in gates] == expected
        for layer in maps:
            if mechanism in CHANNEL_ONLY:
                assert layer.applied is None
                assert layer.channel_weights.shape == (layers[layer.gate.layer].channels,)
                assert layer.channel_weights.mean() == pytest.approx(1, abs=1e-5)
            else:  # what the mechanism applies, whatever its gate
                assert layer.applied.shape == layer.change.shape and np.isfinite(layer.applied).all()
                assert layer.applied.std() > 0, layer.applied_label
            if mechanism in SELF_ATTENTION:  # weights sum to 1 over each window (area: strip of ceil(h / 4) rows)
                rows = layer.applied.shape[0] if mechanism == "mhsa" else -(-layer.applied.shape[0] // 4)
                sums = [layer.applied[r : r + rows].sum() for r in range(0, layer.applied.shape[0], rows)]
                windows = np.round(sums)  # 1 where a window holds a box query, else 0
                assert np.allclose(sums, windows, atol=1e-4) and windows.max() == 1 and windows.min() >= 0, sums
                assert "in 1 boxes" in layer.applied_label
        if any(gammas):
            assert all(layer.change.max() > 1e-3 for layer in maps)
        else:  # identity start: the layers change nothing, exactly
            assert all((layer.change == 0).all() for layer in maps)
    for probe in probes:
        probe.remove()


def test_area_attention_map_rows_are_the_strips():
    torch.manual_seed(0)
    layer = AreaAttention(64).eval()
    x = torch.rand(1, 64, 7, 5)  # 4 areas of 2 rows, the last one padded
    record = AttentionHooks.measure(layer, x, layer(x))
    [(q, k, mask)] = record.attention_calls
    queries = torch.zeros(7, 5, dtype=torch.bool)
    queries[2, 3] = True  # in the second strip, rows 2-3
    received = attention_received(q, k, mask, queries)
    assert received.sum() == pytest.approx(1) and (received[2:4] > 0).all()
    assert (received[:2] == 0).all() and (received[4:] == 0).all()
    # the same weights as scaled_dot_product_attention itself uses: its output for identity values
    values = torch.eye(k.shape[2]).expand(*k.shape[:2], -1, -1)
    weights = F.scaled_dot_product_attention(q, k, values, attn_mask=mask).mean(1)  # (strips, L, L)
    torch.testing.assert_close(received[2:4].flatten(), weights[1, 3])  # row 2, column 3: token 3 of strip 1


def test_query_cells_inside_boxes_and_at_their_centres():
    cells = query_cells(torch.tensor([[0.0, 0.0, 64.0, 32.0], [100.0, 70.0, 104.0, 74.0]]), (96, 128), (3, 4))
    expected = torch.zeros(3, 4, dtype=torch.bool)
    expected[0, :2] = True  # the centres (16, 16) and (48, 16) lie in the first box
    expected[2, 3] = True  # the small box contains no cell centre: the cell of its own centre
    assert torch.equal(cells, expected)
    assert query_cells(torch.zeros(0, 4), (96, 128), (3, 4)).all()


def test_figure_has_a_panel_per_attention_layer_plus_detections_and_eigencam(bccd, identity_variant, tmp_path,
                                                                            capsys):
    baseline, image = bccd
    models = [load_checkpoint(identity_variant), baseline]
    explanations = [explain_image(m, image, gate_table(m), imgsz=128, conf=0.1) for m in models]
    variant, baseline = explanations
    # a variant at identity start detects exactly what its baseline detects, and its layers change nothing
    assert len(baseline.detections) > 0
    np.testing.assert_allclose(variant.detections, baseline.detections, atol=1e-4)
    assert all(not layer.change.any() for layer in variant.layers)
    assert variant.eigencam.shape == variant.image.shape[:2] == (96, 128)  # BCCD is 640x480 wide: a 128x96 input

    figure = draw(explanations, "test")
    rows = [[panel.get_suptitle() for panel in leaves(row) if panel.get_suptitle()] for row in figure.subfigs]
    assert [len(row) for row in rows] == [2 + 3, 2]
    for row in rows:
        assert row[0].startswith("detections") and row[1].startswith("EigenCAM")
    assert [title.split("\n")[0] for title in rows[0][2:]] == [f"layer {i} · cbam · P{p}" for i, p in
                                                              ((17, 3), (21, 4), (25, 5))]
    assert all(title.endswith("gate closed") for title in rows[0][2:])

    out = tmp_path / "figures"
    assert main(["explain", str(identity_variant), str(BCCD_IMAGE), "--out", str(out), "--imgsz", "128",
                 "--compare", str(BASELINE), "--layers", "17,25"]) == 0
    written = out / f"{BCCD_IMAGE.stem}.png"
    assert capsys.readouterr().out.split() == [str(written)]
    assert cv2.imread(str(written)).shape[1] == round(3 * PANEL_INCHES * DPI)  # --layers 17,25: 1 + 2 columns


def leaves(figure) -> list:
    """The subfigures of ``figure`` that hold no further subfigures: the panels."""
    return [leaf for sub in figure.subfigs for leaf in (leaves(sub) if sub.subfigs else [sub])]


def test_gate_table_printed_and_written(identity_variant, tmp_path, capsys):
    model = load_checkpoint(identity_variant)
    set_gammas(model, 0.2, 0.0, -0.05)
    checkpoint = adapter.save_checkpoint(model, tmp_path / "opened.pt")
    assert main(["explain", str(checkpoint), "--gates", "--json", str(tmp_path / "gates.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["17", "cbam", "P3", "0.2000"]
    assert lines[2].split() == ["21", "cbam", "P4", "0.0000", "gate", "closed"]
    assert lines[3].split() == ["25", "cbam", "P5", "0.0500"]
    table = json.loads((tmp_path / "gates.json").read_text())
    assert [g["abs_gamma"] for g in table["gates"]] == pytest.approx([0.2, 0.0, 0.05])
    assert [g["closed"] for g in table["gates"]] == [False, True, False]


def explain_in_subprocess(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_AUTOINSTALL": "False", "YOLO_OFFLINE": "True"}
    return subprocess.run([sys.executable, "-m", "detector", "explain", *argv], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300, check=False)


@pytest.mark.parametrize(
    ("model", "image", "message"),
    [
        (str(BASELINE), "notes.jpg", "notes.jpg: not an image"),
        ("missing.pt", "photo.jpg", "checkpoint 'missing.pt' not found"),
        ("model.onnx", "photo.jpg",
         "model.onnx: explain needs the PyTorch checkpoint: the ONNX graph no longer has per-layer outputs"),
    ],
    ids=["non-image", "missing-checkpoint", "onnx"],
)
def test_a_bad_input_is_one_error_line(tmp_path, model, image, message):
    (tmp_path / "notes.jpg").write_text("not an image")
    cv2.imwrite(str(tmp_path / "photo.jpg"), np.full((64, 64, 3), 128, np.uint8))  # a real image: the model is at fault
    (tmp_path / "model.onnx").write_bytes(b"an ONNX model")
    result = explain_in_subprocess(model, image, "--out", "figures", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "figures").exists()


def test_bad_options_are_one_error_line(identity_variant, capsys):
    def error(*argv: str) -> str:
        assert main(["explain", *argv]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        return line

    assert "--layers 5: not an attention layer" in error(str(identity_variant), str(BCCD_IMAGE), "--out", "x",
                                                         "--layers", "5,17")
    assert "explain needs IMAGE... and --out DIR" in error(str(identity_variant))
    assert "use it with --gates" in error(str(identity_variant), "--json", "gates.json")
