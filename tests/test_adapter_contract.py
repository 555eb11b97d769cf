"""What detector/ultralytics_adapter.py relies on in Ultralytics. If one of these fails after an Ultralytics
upgrade, the adapter (and only the adapter) needs changing; each assertion says what behaviour moved."""

from __future__ import annotations

import inspect
import math
import sys
from pathlib import Path

import pytest
import torch
import ultralytics.nn.tasks as tasks
from torch import nn

import detector.ultralytics_adapter as adapter


class _Probe(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == self.channels
        return x


def _with_row_after(cfg: dict, after: int, row: adapter.Row) -> dict:
    """``cfg`` with ``row`` inserted after layer ``after`` of the head (Detect re-pointed at P3 = the new layer)."""
    rows = adapter.model_rows(cfg)
    detect = rows[-1]
    rows.insert(after + 1, row)
    rows[-1] = adapter.Row([after + 1, *[i + 1 for i in detect.inputs[1:]]], detect.repeats, detect.module, detect.args)
    return adapter.with_rows(cfg, rows, adapter.backbone_length(cfg))


def test_parse_model_resolves_layer_names_in_tasks_globals_and_c2_to_input_channels(monkeypatch):
    monkeypatch.setattr(tasks, "_Probe", _Probe, raising=False)
    cfg = _with_row_after(adapter.baseline_cfg("yolo11"), 16, adapter.Row(-1, 1, "_Probe", [adapter.CHANNELS_ARG]))
    for scale, channels in (("n", 64), ("s", 128), ("m", 256)):
        model = tasks.DetectionModel({**cfg, "scale": scale}, verbose=False)
        probe = adapter.layers(model)[17]
        assert isinstance(probe, _Probe), "parse_model no longer looks custom module names up in tasks' globals"
        assert probe.channels == channels, (
            f"parse_model no longer resolves the string argument {adapter.CHANNELS_ARG!r} to the previous layer's "
            "output channels; ultralytics_adapter.CHANNELS_ARG must change"
        )


def test_model_rows_are_the_layers_in_index_order():
    cfg = {**adapter.baseline_cfg("yolo11"), "scale": "n"}
    rows = adapter.model_rows(cfg)
    model = adapter.build_model(cfg)
    layers = adapter.layers(model)
    assert len(rows) == len(layers) and adapter.backbone_length(cfg) < len(rows)
    assert [r.module.removeprefix("nn.") for r in rows] == [type(layer).__name__ for layer in layers], (
        "model dict rows are no longer [from, repeats, module, args] in backbone-then-head order"
    )
    assert [r.sources for r in rows] == [layer.f for layer in layers], "a row's `from` is no longer its first field"
    assert layers[-1].f == rows[-1].inputs and rows[0].inputs == [-1]
    rebuilt = adapter.with_rows(cfg, rows, adapter.backbone_length(cfg))
    assert adapter.model_rows(rebuilt) == rows and rebuilt["backbone"] == cfg["backbone"]
    assert [[r.to_list() for r in section] for _, section in adapter.yaml_sections(cfg)] == [cfg["backbone"],
                                                                                            cfg["head"]]


def test_state_dict_keys_map_to_layer_indices():
    model = adapter.build_model({**adapter.baseline_cfg("yolo11"), "scale": "n"})
    layers = adapter.layers(model)
    state = model.state_dict()
    for key, tensor in state.items():
        layer = adapter.state_dict_layer(key)
        own = [t for t in layers[layer].state_dict().values() if t.data_ptr() == tensor.data_ptr()]
        assert own, f"state_dict key {key} holds no tensor of layer {layer}; transfer_weights maps layer indices"
        assert adapter.state_dict_key_at(key, layer) == key
    # layers 1 and 3 are both strided Convs: a key moved from one to the other names the other's tensor
    assert type(layers[1]) is type(layers[3])
    for key in layers[1].state_dict():
        moved = adapter.state_dict_key_at(next(k for k in state if adapter.state_dict_layer(k) == 1 and
                                               k.endswith(f".{key}")), 3)
        assert state[moved].data_ptr() == layers[3].state_dict()[key].data_ptr()
    whole = {adapter.module_layer(name): module for name, module in model.named_modules()}
    assert [whole[i] for i in range(len(layers))] == list(layers) and set(whole) == {None, *range(len(layers))}


def test_checkpoint_loading_asks_for_missing_modules_and_auto_install_is_off(tmp_path, monkeypatch):
    """Ultralytics pip-installs the top-level module of a class a checkpoint names but cannot import; with
    ``checks.AUTOINSTALL`` off (register_layers) nothing is installed and the load fails instead."""
    name = "_attention_yolo_missing_module"
    (tmp_path / f"{name}.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    checkpoint = tmp_path / "missing.pt"
    torch.save({"model": module.Thing()}, checkpoint)
    monkeypatch.delitem(sys.modules, name)
    (tmp_path / f"{name}.py").unlink()

    asked = []
    monkeypatch.setattr(tasks, "check_requirements", lambda requirement, *a, **k: asked.append(requirement) or False)
    with pytest.raises(ModuleNotFoundError):
        tasks.torch_safe_load(checkpoint)
    assert asked == [name], "torch_safe_load no longer asks check_requirements for a checkpoint's missing module"

    monkeypatch.undo()
    monkeypatch.delitem(sys.modules, name, raising=False)
    installs = []
    monkeypatch.setattr(adapter.checks, "ONLINE", True)  # else it would skip the install only for being offline
    monkeypatch.setattr(adapter.checks, "check_uv", lambda: False)
    monkeypatch.setattr(adapter.checks.subprocess, "check_output", lambda *a, **k: installs.append(a) or "")
    with pytest.raises(adapter.CheckpointError):
        adapter.load_checkpoint(checkpoint)
    assert installs == [], "checks.AUTOINSTALL moved or is ignored: loading a checkpoint ran pip (see register_layers)"


def test_trainer_class_is_pluggable_and_pickled_by_reference_for_ddp(tmp_path, shapes_data):
    from ultralytics.engine.model import Model
    from ultralytics.utils import dist
    from ultralytics.utils.patches import torch_load

    assert "trainer" in inspect.signature(Model.train).parameters, "YOLO.train(trainer=...) is gone"
    trainer = adapter.AttentionTrainer(overrides={"model": "yolo11n.yaml", "data": str(shapes_data), "epochs": 1,
                                                  "imgsz": 64, "project": str(tmp_path), "name": "ddp"})
    trainer.model = adapter.build_model({**adapter.baseline_cfg("yolo11"), "scale": "n", "nc": 2})
    script = Path(dist.generate_ddp_file(trainer))
    try:
        state = torch_load(script.with_suffix(".pt"), map_location="cpu")
    finally:
        script.unlink()
        script.with_suffix(".pt").unlink(missing_ok=True)
    assert state["trainer"] is adapter.AttentionTrainer, (
        "DDP workers no longer rebuild the trainer from its class pickled by reference; check that our layers "
        "still register there"
    )


def test_model_dict_keeps_extra_keys_and_scale():
    cfg = {**adapter.baseline_cfg("yolo11"), "scale": "s", "family": "yolo11"}
    model = adapter.build_model(cfg)
    assert adapter.model_dict(model)["family"] == "yolo11" and adapter.model_dict(model)["scale"] == "s", (
        "DetectionModel no longer keeps the model dict it was built from; detector.models.baseline_of reads it"
    )


def test_onnx_node_names_name_their_layer_and_the_dfl(tmp_path):
    """quantize_int8 keeps the Detect head's decoding in floating point by the layer and DFL in node names."""
    import onnx

    model = adapter.build_model({**adapter.baseline_cfg("yolo11"), "scale": "n", "nc": 2})
    checkpoint = adapter.save_checkpoint(model, tmp_path / "tiny.pt")
    path = adapter.export(checkpoint, format="onnx", imgsz=64, opset=17, simplify=True, device="cpu", verbose=False)
    nodes = onnx.load(str(path)).graph.node
    found = {adapter.onnx_node_layer(n.name) for n in nodes} - {None}
    head = len(adapter.layers(model)) - 1
    assert max(found) == head and len(found) > head // 2, (
        f"exported node names no longer name their layer index: found layers {sorted(found)}"
    )
    dfl = [n for n in nodes if adapter.onnx_dfl_node(n.name)]
    assert dfl and {adapter.onnx_node_layer(n.name) for n in dfl} == {head}, "the Detect head's DFL nodes moved"
    assert any(n.op_type == "Conv" for n in dfl), "the DFL is no longer a convolution in the export"


@pytest.mark.slow
def test_training_run_layout_curve_and_trainer_events(tmp_path, shapes_data):
    """One tiny epoch: the run's checkpoints and per-epoch table where the adapter finds them, and the trainer
    attributes the compare's progress lines read."""
    seen = []

    def validated(trainer) -> None:
        seen.append((adapter.trainer_epoch(trainer), adapter.is_final_validation(trainer),
                     adapter.epoch_map50_95(trainer), adapter.epoch_images(trainer), adapter.trainer_device(trainer)))

    started = []
    events = adapter.EpochEvents(start=lambda t: started.append(adapter.trainer_epoch(t)), validated=validated)
    cfg = {**adapter.baseline_cfg("yolo11"), "scale": "n", "nc": 2}
    start = adapter.save_checkpoint(adapter.build_model(cfg), tmp_path / "start.pt")
    run = adapter.train(start, callbacks=events.callbacks(), data=str(shapes_data), epochs=1, imgsz=64, batch=4,
                        workers=0, plots=False, nbs=4, device="cpu", project=str(tmp_path), name="run")
    assert adapter.best_checkpoint(run).is_file() and adapter.last_checkpoint(run).is_file()
    assert all((run / f).is_file() for f in adapter.run_files(run))
    adapter.load_checkpoint(adapter.best_checkpoint(run))
    [score] = adapter.training_curve(run)
    assert 0 <= score <= 1
    assert started == [(0, 1)]
    epoch, *final = seen
    assert epoch[:2] == ((0, 1), False) and math.isclose(epoch[2], score, abs_tol=1e-5)
    assert epoch[3:] == (16, "cpu")  # 16 training images
    assert all(f[1] for f in final), "an epoch after the last one is not the final validation"


def test_parse_model_resolves_ch_to_every_earlier_layers_output_channels(monkeypatch):
    seen = []

    class _ChannelsProbe(nn.Module):
        def __init__(self, channels: list[int]) -> None:
            super().__init__()
            seen.append(list(channels))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    monkeypatch.setattr(tasks, "_ChannelsProbe", _ChannelsProbe, raising=False)
    cfg = adapter.baseline_cfg("yolo11")
    cfg["head"].insert(6, [-1, 1, "_ChannelsProbe", ["ch"]])  # after layer 16
    cfg["head"][-1][0] = [17, 20, 23]
    original = tasks.parse_model.__wrapped__  # Ultralytics' own, under register_two_input_layers' wrapper
    original({**cfg, "scale": "n"}, ch=3, verbose=False)
    assert len(seen[0]) == 17 and (seen[0][10], seen[0][16]) == (256, 64), (
        "parse_model no longer resolves the string argument 'ch' to its list of every earlier layer's output "
        "channels; register_two_input_layers builds two-input layers from it"
    )


def test_two_input_rows_get_both_inputs_channels_and_tensors():
    cfg = adapter.baseline_cfg("yolo11")
    cfg["head"].insert(12, [[16, -1], 1, "CrossScaleAttention", []])  # after layer 22: P3 queries P5
    cfg["head"][-1][0] = [23, 19, 22]
    for scale, fine, context in (("n", 64, 256), ("s", 128, 512), ("m", 256, 512)):
        model = tasks.DetectionModel({**cfg, "scale": scale}, verbose=False)  # runs a forward pass (strides)
        layer = model.model[23]
        assert type(layer).__name__ == "CrossScaleAttention", (
            "DetectionModel no longer builds through tasks.parse_model looked up at call time (wrapped by "
            "register_two_input_layers)"
        )
        assert (layer.channels, layer.context_channels) == (fine, context)
        assert layer.f == [16, -1] and {16, 22} <= set(model.save)
    seen = []
    layer.register_forward_hook(lambda m, inputs, output: seen.append([tuple(t.shape) for t in inputs[0]]))
    model.eval()(torch.zeros(1, 3, 64, 64))
    assert seen == [[(1, 256, 8, 8), (1, 512, 2, 2)]], (
        "the forward pass no longer hands a layer with a `from` list the list of those layers' outputs"
    )
