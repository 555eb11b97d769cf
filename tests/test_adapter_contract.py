"""What detector/ultralytics_adapter.py relies on in Ultralytics. If one of these fails after an Ultralytics
upgrade, the adapter (and only the adapter) needs changing; each assertion says what behaviour moved."""

from __future__ import annotations

import inspect

import torch
from torch import nn

import detector.ultralytics_adapter as adapter
import ultralytics.nn.tasks as tasks


class _Probe(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == self.channels
        return x


def test_parse_model_resolves_layer_names_in_tasks_globals_and_c2_to_input_channels(monkeypatch):
    monkeypatch.setattr(tasks, "_Probe", _Probe, raising=False)
    cfg = adapter.baseline_cfg("yolo11")
    cfg["head"].insert(6, [-1, 1, "_Probe", ["c2"]])  # after layer 16, the P3 output
    cfg["head"][-1][0] = [17, 20, 23]
    for scale, channels in (("n", 64), ("s", 128), ("m", 256)):
        model = tasks.DetectionModel({**cfg, "scale": scale}, verbose=False)
        probe = model.model[17]
        assert isinstance(probe, _Probe), "parse_model no longer looks custom module names up in tasks' globals"
        assert probe.channels == channels, (
            "parse_model no longer resolves the string argument 'c2' to the previous layer's output channels; "
            "detector.variants.CHANNELS_ARG must change"
        )


def test_state_dict_keys_are_indexed_by_layer():
    keys = list(adapter.build_model({**adapter.baseline_cfg("yolo11"), "scale": "n"}).state_dict())
    assert all(k.startswith("model.") and k.split(".")[1].isdigit() for k in keys), (
        "DetectionModel state_dict keys are no longer model.<layer>.<...>; transfer_weights maps layer indices"
    )


def test_checkpoint_loading_asks_check_requirements_through_module_global():
    source = inspect.getsource(tasks.torch_safe_load)
    assert "check_requirements" in source, "torch_safe_load no longer installs missing modules via check_requirements"
    assert hasattr(adapter.checks, "AUTOINSTALL"), "ultralytics.utils.checks.AUTOINSTALL moved; update register_layers"
    assert adapter.checks.AUTOINSTALL is False


def test_trainer_class_is_pluggable_and_pickled_by_reference_for_ddp():
    from ultralytics.engine.model import Model
    from ultralytics.utils import dist

    assert "trainer" in inspect.signature(Model.train).parameters, "YOLO.train(trainer=...) is gone"
    assert "type(trainer)" in inspect.getsource(dist.generate_ddp_file), (
        "DDP workers no longer rebuild the trainer from its class; check that our layers still register there"
    )


def test_model_dict_keeps_extra_keys_and_scale():
    cfg = {**adapter.baseline_cfg("yolo11"), "scale": "s", "family": "yolo11"}
    model = adapter.build_model(cfg)
    assert model.yaml["family"] == "yolo11" and model.yaml["scale"] == "s", (
        "DetectionModel no longer keeps the model dict it was built from; detector.models.baseline_of reads it"
    )
