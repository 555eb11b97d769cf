"""How new attention layers train when a variant starts from a trained baseline (docs/ATTENTION.md)."""

from __future__ import annotations

import pytest
import torch

from detector import ultralytics_adapter as adapter
from detector.gates import gate_table
from detector.models import build_model, variant_from_checkpoint
from modules.base import Attention

# An optimizer step per batch of 4 on the 16 shapes images: 8 steps in 2 epochs, one of them warm-up.
TINY = {"epochs": 2, "imgsz": 64, "batch": 4, "workers": 0, "plots": False, "val": False, "nbs": 4, "seed": 0,
        "deterministic": True, "exist_ok": True}


@pytest.fixture(scope="module")
def start(tmp_path_factory, shapes_data):
    """A yolo11n-eca variant at identity start from a (briefly trained) yolo11n baseline."""
    directory = tmp_path_factory.mktemp("attention-training")
    baseline = adapter.train(build_model_yaml(directory), data=str(shapes_data), project=str(directory),
                             name="baseline", **TINY)
    variant, _ = variant_from_checkpoint("yolo11n-eca", baseline / "weights" / "last.pt", verbose=False)
    return adapter.save_checkpoint(variant, directory / "yolo11n-eca-init.pt")


def build_model_yaml(directory):
    from detector.models import write_yaml

    return write_yaml("yolo11n", directory / "yolo11n.yaml", nc=2)


def fine_tune(start, shapes_data, tmp_path, callbacks=None, **args) -> list[float]:
    run = adapter.train(start, data=str(shapes_data), project=str(tmp_path), name="run", callbacks=callbacks,
                        **TINY, **args)
    model, _ = adapter.load_checkpoint(run / "weights" / "last.pt")
    return [abs(g.gamma) for g in gate_table(model)]


@pytest.mark.slow
def test_gates_open_in_a_short_fine_tune(start, shapes_data, tmp_path):
    """With the attention layers on Ultralytics' own learning rate (the old design, attn_lr_mult=1), 8 optimizer steps
    move γ by at most a few thousandths; the default multiplier moves it an order of magnitude further."""
    shared = fine_tune(start, shapes_data, tmp_path / "shared", attn_lr_mult=1)
    default = fine_tune(start, shapes_data, tmp_path / "default")
    assert max(shared) < 0.01, shared
    assert max(default) > 0.02, default
    assert sum(default) > 5 * sum(shared)


@pytest.mark.slow
def test_attention_warmup_trains_only_the_attention(start, shapes_data, tmp_path):
    initial, _ = adapter.load_checkpoint(start)
    reference = initial.state_dict()
    attention_keys = {f"model.{g.layer}." for g in gate_table(initial)}
    checked = []

    def compare_with_start(trainer):
        model = trainer.model
        for key, value in model.state_dict().items():
            is_attention = any(key.startswith(prefix) for prefix in attention_keys)
            if trainer.epoch == 0 and not is_attention:  # epoch 1 of 2 is the warm-up: BN statistics included
                assert torch.equal(value, reference[key]), f"{key} changed during the attention warm-up"
        layers = [m for m in model.modules() if isinstance(m, Attention)]
        checked.append((trainer.epoch, [float(m.gamma.detach()) for m in layers]))
        if trainer.epoch == 1:  # after the warm-up the baseline trains again
            assert any(not torch.equal(v, reference[k]) for k, v in model.state_dict().items()
                       if k.endswith("conv.weight") and not any(k.startswith(p) for p in attention_keys))

    gammas = fine_tune(start, shapes_data, tmp_path, callbacks={"on_train_epoch_end": compare_with_start},
                       attn_warmup_epochs=1)
    assert [epoch for epoch, _ in checked] == [0, 1]
    assert all(abs(g) > 0 for g in checked[0][1]), "the gates did not train during the warm-up"
    assert max(gammas) > 0


def test_attention_parameters_get_their_own_groups(shapes_data, tmp_path):
    from ultralytics.utils import DEFAULT_CFG

    model = build_model("yolo11n-cbam", nc=2)
    trainer = adapter.AttentionTrainer(DEFAULT_CFG, {"model": "yolo11n.yaml", "data": str(shapes_data),
                                                     "project": str(tmp_path), "attn_lr_mult": 7})
    optimizer = trainer.build_optimizer(model, name="AdamW", lr=0.002, decay=0.0005)
    attention, gates = trainer.attention_parameters(model)
    seen = set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids and not ids & seen
        seen |= ids
        if ids <= gates:
            assert group["weight_decay"] == 0 and group["lr"] == pytest.approx(0.014)
        elif ids <= attention:
            assert group["lr"] == pytest.approx(0.014)
        else:
            assert not ids & attention and group["lr"] == pytest.approx(0.002)
    assert seen == {id(p) for p in model.parameters()}
    assert len(gates) == 3
