"""Variant building: names, placements, index rewriting, identity start, baseline weight transfer, YAML round trip."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import detector
from detector import TransferError, VariantError, build_model, parse_name, transfer_weights, write_yaml
from detector.models import load_model, max_abs_diff, model_cfg, variant_from_checkpoint
from detector.ultralytics_adapter import save_checkpoint
from detector.variants import Insertion, insert_attention, inserted_indices, placement_indices, placement_insertions
from modules import ATTENTION, TWO_INPUT

PLACEMENTS = ["neck", "backbone", "both", "p5"]
# Two-input layers: the P5 map is their context, so p5 has no finer map; p3 alone instead.
TWO_INPUT_PLACEMENTS = ["neck", "backbone", "both", "p3"]
CASES = [(a, p) for a in sorted(ATTENTION) for p in (TWO_INPUT_PLACEMENTS if a in TWO_INPUT else PLACEMENTS)]
SCALES = ["n", "s", "m", "l", "x"]


@pytest.fixture(scope="module")
def baselines() -> dict:
    """yolo11<scale> baselines, each built once for the module (building l and x takes a while)."""

    class Lazy(dict):
        def __missing__(self, name: str) -> torch.nn.Module:
            torch.manual_seed(0)
            self[name] = build_model(name).eval()
            return self[name]

    return Lazy()


def randomise_batchnorm(model: torch.nn.Module) -> None:
    """Give BN layers non-trivial statistics so 'identity' is checked against a model that is not near-constant."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("yolo11n", ("yolo11", "n", None, None)),
        ("yolo11n-cbam", ("yolo11", "n", "cbam", None)),
        ("YOLO11s-eca-backbone", ("yolo11", "s", "eca", "backbone")),
        ("yolo12m-mhsa-p5", ("yolo12", "m", "mhsa", "p5")),
        ("yolo26x-se-4-6", ("yolo26", "x", "se", (4, 6))),
        ("yolo11l-simam-both.yaml", ("yolo11", "l", "simam", "both")),
        ("yolo11n-cross", ("yolo11", "n", "cross", None)),
        ("yolo11s-cross-p3", ("yolo11", "s", "cross", "p3")),
        ("yolo11m-cross-16-19", ("yolo11", "m", "cross", (16, 19))),
        ("yolo11n-sparse-p4", ("yolo11", "n", "sparse", "p4")),
    ],
)
def test_parse_name(name, expected):
    spec = parse_name(name)
    assert (spec.family, spec.scale, spec.attention, spec.placement) == expected
    assert parse_name(spec.name) == spec


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("yolo11n-foo", "registered: se, "),
        ("yolo11q-se", "scale in"),
        ("yolov8n-se", "family in"),
        ("yolo11n-se-middle", "placement in"),
        ("yolo11n-se-24", "out of range"),
        ("yolo11n-cross-p5", "needs a finer map than its P5 context"),
        ("yolo11n-cross-10", "layer 10 is the P5 context of cross itself"),
        ("yolo11n-cross-2", "nothing after that reads layer 2"),
    ],
)
def test_bad_names_say_what_is_valid(name, message):
    with pytest.raises(VariantError, match=message):
        build_model(name)


def test_placements_follow_the_architecture():
    for family, neck, backbone in [("yolo11", [16, 19, 22], [4, 6, 10]), ("yolo12", [14, 17, 20], [4, 6, 8])]:
        cfg = model_cfg(f"{family}n")
        assert placement_indices(cfg, "neck") == neck
        assert placement_indices(cfg, "backbone") == backbone
        assert placement_indices(cfg, "both") == sorted(neck + backbone)
        assert placement_indices(cfg, "p5") == neck[-1:]
        assert placement_indices(cfg, "p3") == neck[:1] and placement_indices(cfg, "p4") == neck[1:2]
        # two-input layers: the fine maps of the neck query its P5 output, the backbone's its P5 output
        assert placement_insertions(cfg, "cross", "both") == [
            Insertion(backbone[0], backbone[2]), Insertion(backbone[1], backbone[2]),
            Insertion(neck[0], neck[2]), Insertion(neck[1], neck[2]),
        ]  # fmt: skip
        assert placement_insertions(cfg, "cross", (neck[0],)) == [Insertion(neck[0], backbone[2])]
        assert placement_insertions(cfg, "sparse", "p3") == [Insertion(neck[0])]


def test_from_indices_are_rewritten():
    cfg = model_cfg("yolo11n-se-both")
    layers = cfg["backbone"] + cfg["head"]
    assert inserted_indices(cfg) == [5, 8, 13, 20, 24, 28]
    # the neck concatenates the attended backbone outputs, and Detect takes the attended neck outputs
    assert layers[15][0] == [-1, 8] and layers[18][0] == [-1, 5]
    assert layers[-1][0] == [20, 24, -1]
    assert all(layers[i][0] == -1 for i in inserted_indices(cfg))


@pytest.mark.parametrize("scale", ["n", "s", "m", "l", "x"])
def test_channels_follow_width_scaling(scale):
    model = build_model(f"yolo11{scale}-se-both")
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 64, 96))  # each attention layer checks its input channels
    baseline = build_model(f"yolo11{scale}")
    expected = [baseline.model[i].cv2.conv.out_channels for i in (4, 6)]  # C3k2 outputs at P3, P4
    assert [model.model[i].channels for i in (5, 8)] == expected


@pytest.mark.parametrize(("attention", "placement"), CASES)
def test_transfer_and_identity_at_n(baselines, attention, placement):
    baseline = baselines["yolo11n"]
    randomise_batchnorm(baseline)
    variant = build_model(f"yolo11n-{attention}-{placement}")
    report = transfer_weights(baseline, variant)
    assert report.transferred == report.total == len(baseline.state_dict())
    x = torch.rand(1, 3, 96, 128)
    assert max_abs_diff(baseline, variant, x) <= 1e-5
    assert max_abs_diff(baseline, variant, torch.rand(2, 3, 64, 64)) <= 1e-5


def layer_rows(name: str) -> list[list]:
    cfg = model_cfg(name)
    return cfg["backbone"] + cfg["head"]


def test_cross_rows_take_the_fine_map_and_the_p5_context():
    # neck: placed after the neck's P5 output (22), P3 and P4 outputs query it; only Detect sees the attended maps
    rows = layer_rows("yolo11n-cross")
    assert [rows[i] for i in (23, 24)] == [[[16, -1], 1, "CrossScaleAttention", []],
                                           [[19, 22], 1, "CrossScaleAttention", []]]
    assert rows[-1][0] == [23, -1, 22] and rows[17][0] == -1 and rows[18][0] == [-1, 13]
    assert layer_rows("yolo11n-cross-p3")[-1][0] == [-1, 19, 22]
    assert layer_rows("yolo11n-cross-p4")[23][0] == [19, -1] and layer_rows("yolo11n-cross-p4")[-1][0] == [16, -1, 22]
    # backbone: after the backbone's P5 output (10, C2PSA); the neck upsamples 10 and concatenates the attended maps
    cfg = model_cfg("yolo11n-cross-backbone")
    rows = cfg["backbone"] + cfg["head"]
    assert len(cfg["backbone"]) == 13 and rows[11][0] == [4, -1] and rows[12][0] == [6, 10]
    assert rows[13][0] == 10 and rows[14][0] == [-1, 12] and rows[17][0] == [-1, 11]
    # indices: each listed layer queries the backbone's P5 output, right after itself ([-1, k], Ultralytics' form)
    rows = layer_rows("yolo11n-cross-16-19")
    assert [(i, rows[i][0]) for i in (17, 21)] == [(17, [-1, 10]), (21, [-1, 10])]
    assert inserted_indices(model_cfg("yolo11n-cross-16-19")) == [17, 21]
    assert rows[18][0] == -1 and rows[-1][0] == [17, 21, -1]


def test_insertions_must_match_the_layers_inputs():
    cfg = model_cfg("yolo11n")
    with pytest.raises(VariantError, match="cross takes two inputs"):
        insert_attention(cfg, "cross", [16])
    with pytest.raises(VariantError, match="se takes one input"):
        insert_attention(cfg, "se", [Insertion(16, 22)])


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("attention", ["cross", "sparse"])
def test_new_mechanisms_transfer_and_start_as_identity_at_every_scale(baselines, scale, attention):
    baseline = baselines[f"yolo11{scale}"]
    randomise_batchnorm(baseline)
    variant = build_model(f"yolo11{scale}-{attention}-both")
    report = transfer_weights(baseline, variant)
    assert report.transferred == report.total == len(baseline.state_dict()) and len(report.attention_layers) >= 4
    assert max_abs_diff(baseline, variant, torch.rand(1, 3, 64, 96)) <= 1e-5


@pytest.mark.parametrize("name", ["yolo11s-cbam", "yolo11s-mhsa", "yolo11s-ema-backbone"])
def test_transfer_and_identity_at_s(baselines, name):
    baseline = baselines["yolo11s"]
    variant = build_model(name)
    assert transfer_weights(baseline, variant).transferred == len(baseline.state_dict())
    assert max_abs_diff(baseline, variant, torch.rand(1, 3, 96, 96)) <= 1e-5


def test_transfer_refuses_other_scale_or_family(baselines):
    with pytest.raises(TransferError, match="shape"):
        transfer_weights(baselines["yolo11s"], build_model("yolo11n-se"))
    with pytest.raises(TransferError, match="layer 6"):
        transfer_weights(build_model("yolo12n"), build_model("yolo11n-se"))
    with pytest.raises(TransferError, match="already holds attention"):
        transfer_weights(build_model("yolo11n-se"), build_model("yolo11n-eca"))


def test_transfer_from_checkpoint_file(tmp_path, baselines, capsys):
    path = save_checkpoint(baselines["yolo11n"], tmp_path / "yolo11n.pt")
    variant, report = variant_from_checkpoint("yolo11n-cbam", path)
    assert f"transferred {report.total}/{report.total}" in capsys.readouterr().out
    assert max_abs_diff(baselines["yolo11n"], variant, torch.rand(1, 3, 64, 64)) <= 1e-5
    with pytest.raises(TransferError, match="scale 'n' but yolo11s-cbam is scale 's'"):
        variant_from_checkpoint("yolo11s-cbam", path)
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        variant_from_checkpoint("yolo11n-cbam", tmp_path / "yolo11n-missing.pt")


def test_module_argument_errors_at_build_time():
    with pytest.raises(ValueError, match="cannot build yolo11n-mhsa"):
        build_model("yolo11n-mhsa", args=[7])  # 7 heads cannot divide 256 channels


def test_written_yaml_builds_in_ultralytics_at_its_scale(tmp_path):
    from ultralytics import YOLO

    for name in ("yolo11n-cbam", "yolo11s-eca-backbone"):
        path = write_yaml(name, tmp_path / f"{name}.yaml")
        ours, theirs = build_model(name), YOLO(path).model
        assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
        assert [type(m).__name__ for m in theirs.model] == [type(m).__name__ for m in ours.model]
    # one YAML serves every scale, like Ultralytics' own yolo11.yaml
    generic = (tmp_path / "yolo11n-cbam.yaml").read_text()
    (tmp_path / "yolo11m-cbam.yaml").write_text(generic)
    assert sum(p.numel() for p in YOLO(tmp_path / "yolo11m-cbam.yaml").model.parameters()) == sum(
        p.numel() for p in build_model("yolo11m-cbam").parameters()
    )


def test_variant_checkpoint_reloads_in_fresh_process_without_pip(tmp_path):
    model = build_model("yolo11n-coordatt")
    path = save_checkpoint(model, tmp_path / "variant.pt")
    code = (
        "import sys, detector, ultralytics.utils.checks as c\n"
        "c.check_requirements = lambda *a, **k: sys.exit('tried to pip-install ' + str(a))\n"
        f"from ultralytics import YOLO\nm = YOLO({str(path)!r}).model\n"
        "print(type(m.model[17]).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("CoordAtt")


def test_load_model_accepts_names_yaml_and_checkpoints(tmp_path):
    yaml_path = write_yaml("yolo11n-simam", tmp_path / "yolo11n-simam.yaml")
    pt_path = save_checkpoint(build_model("yolo11n-simam"), tmp_path / "simam.pt")
    for ref in ("yolo11n-simam", yaml_path, pt_path):
        assert inserted_indices(load_model(ref).yaml) == [17, 21, 25]


def test_import_turns_autoinstall_off():
    import ultralytics.utils.checks as checks

    assert detector is not None and checks.AUTOINSTALL is False
