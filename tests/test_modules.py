"""Attention layers (modules/): shapes, identity start, learning, ONNX export, bad input, and each paper's math.

Generic tests are parametrised over the registry, so a newly registered layer is covered automatically; two-input
layers (modules.TWO_INPUT) get a coarse context map beside each input (see ``feed``).
"""

from __future__ import annotations

import copy
import io
import math
import re
import warnings

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F

import modules
from modules import (
    ATTENTION,
    ECA,
    EMA,
    MHSA,
    TWO_INPUT,
    AreaAttention,
    Attention,
    BiLevelRoutingAttention,
    CoordAtt,
    CrossScaleAttention,
    SimAM,
    create_attention,
)
from modules.base import ScalingAttention

NAMES = list(ATTENTION)
CHANNELS = 64
# (N, C, H, W): square, non-square, odd, transposed, single pixel (batch 2: BatchNorm trains on >1 value).
SHAPES = [(2, CHANNELS, 16, 16), (1, CHANNELS, 15, 20), (2, CHANNELS, 7, 9), (1, CHANNELS, 20, 15), (2, CHANNELS, 1, 1)]
YOLO11_CHANNELS = [64, 128, 256, 512, 768]  # neck/backbone widths across the n..x scales
CONTEXT_CHANNELS = 96  # the coarse map of two-input layers


def build(name: str, channels: int = CHANNELS, **kwargs) -> Attention:
    torch.manual_seed(0)
    if name in TWO_INPUT:
        kwargs.setdefault("context_channels", CONTEXT_CHANNELS)
    return create_attention(name, channels, **kwargs)


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def feed(layer: Attention, x: torch.Tensor, seed: int = 7) -> torch.Tensor | list[torch.Tensor]:
    """The input of ``layer`` for the map ``x``: ``x``, or for a two-input layer ``[x, context]`` with a coarse
    context of a quarter of ``x``'s size (as P5 is to P3), at least 1x1."""
    if getattr(layer, "inputs", 1) == 1:
        return x
    n, _, h, w = x.shape
    return [x, randn(n, layer.context_channels, max(h // 4, 1), max(w // 4, 1), seed=seed)]


def test_registry_exports_every_layer_under_its_name():
    expected = {
        "se": "SE", "eca": "ECA", "cbam": "CBAM", "coordatt": "CoordAtt", "simam": "SimAM", "ema": "EMA",
        "mhsa": "MHSA", "area": "AreaAttention", "cross": "CrossScaleAttention", "sparse": "BiLevelRoutingAttention",
    }  # fmt: skip
    assert {name: ATTENTION[name].__name__ for name in expected} == expected
    for name, cls in ATTENTION.items():
        assert issubclass(cls, Attention) and getattr(modules, cls.__name__) is cls and cls.__name__ in modules.__all__
        assert create_attention(name.upper(), CHANNELS).__class__ is cls
        assert re.search(r"et al\., .*(19|20)\d\d", cls.__doc__ or "", re.S), f"{name}: docstring cites no paper"
    assert MHSA.default_placement == AreaAttention.default_placement == "p5"
    assert TWO_INPUT == {"cross"}
    assert CrossScaleAttention.default_placement == "neck" and BiLevelRoutingAttention.default_placement == "p4"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("gate", [True, False])
def test_output_shape_equals_input_shape(name, shape, gate):
    layer = build(name, gate=gate)
    x = randn(*shape)
    for training in (True, False):
        y = layer.train(training)(feed(layer, x))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", YOLO11_CHANNELS)
def test_yolo11_channel_counts(name, channels):
    layer = build(name, channels, gate=False)
    x = randn(2, channels, 5, 6)
    assert layer(feed(layer, x)).shape == x.shape
    assert layer.channels == channels


@pytest.mark.parametrize("name", NAMES)
def test_gated_layer_starts_as_exact_identity(name):
    layer = build(name)
    assert layer.gamma is not None and layer.gamma.item() == 0
    x = randn(2, CHANNELS, 15, 20)
    with torch.no_grad():
        for training in (True, False):
            assert torch.equal(layer.train(training)(feed(layer, x)), x)


@pytest.mark.parametrize("name", NAMES)
def test_ungated_layer_changes_its_input(name):
    layer = build(name, gate=False).eval()
    assert layer.gamma is None
    x = randn(2, CHANNELS, 15, 20)
    with torch.no_grad():
        assert (layer(feed(layer, x)) - x).abs().max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_gate_and_mechanism_learn(name):
    layer = build(name).train()
    mechanism = {n: p for n, p in layer.named_parameters() if n != "gamma"}
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, target = randn(2, CHANNELS, 10, 7), randn(2, CHANNELS, 10, 7, seed=2)  # 10 rows: area pads its last strip
    for step in range(3):
        optimizer.zero_grad()
        F.mse_loss(layer(feed(layer, x)), target).backward()
        assert layer.gamma.grad is not None and layer.gamma.grad.abs().item() > 0
        for n, p in mechanism.items():
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
            if step == 0:  # gamma == 0 blocks the mechanism's gradient
                assert not p.grad.any(), n
            else:
                assert p.grad.abs().max() > 0, f"{name}.{n} got no gradient once gamma != 0"
        optimizer.step()
    assert layer.gamma.item() != 0


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_is_deterministic(name):
    """In eval mode an image's output is a function of that image alone: the batch equals each image run on its
    own by an untouched copy of the layer (batch statistics, a training-mode submodule or state that a forward pass
    changes would break it), and a second pass equals the first."""
    layer = build(name, gate=False).eval()
    reference = copy.deepcopy(layer)
    x = feed(layer, randn(2, CHANNELS, 9, 13))
    parts = x if isinstance(x, list) else [x]
    images = [[t[i : i + 1] for t in parts] for i in range(2)]
    with torch.no_grad():
        alone = torch.cat([reference(one if isinstance(x, list) else one[0]) for one in images])
        batched = layer(x)
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
        assert torch.equal(layer(x), batched)


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_torch_at_dynamic_sizes(name):
    layer = build(name).eval()
    with torch.no_grad():
        layer.gamma.fill_(0.7)  # a live gate, so the comparison sees the mechanism
    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    names = ["x", "context"][: getattr(layer, "inputs", 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and torch-internal tracer notes
        torch.onnx.export(
            layer, (feed(layer, randn(1, CHANNELS, 8, 8)),), buffer, opset_version=17, dynamo=False,
            input_names=names, output_names=["y"], dynamic_axes={**dict.fromkeys(names, axes), "y": axes},
        )  # fmt: skip
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for shape in [(2, CHANNELS, 15, 20), (1, CHANNELS, 7, 9), (1, CHANNELS, 12, 12)]:
        x = feed(layer, randn(*shape, seed=3))
        with torch.no_grad():
            expected = layer(x).numpy()
        inputs = x if isinstance(x, list) else [x]
        (got,) = session.run(None, {name: t.numpy() for name, t in zip(names, inputs, strict=True)})
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), shape


def test_unknown_name_lists_registered_names():
    with pytest.raises(ValueError, match="unknown attention") as error:
        create_attention("transformer", CHANNELS)
    assert all(name in str(error.value) for name in NAMES)
    with pytest.raises(ValueError, match="unknown attention"):
        create_attention(None, CHANNELS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [0, -64, 64.0, "64", True, None])
def test_bad_channels_rejected(name, channels):
    with pytest.raises(ValueError, match="channels must be a positive int"):
        create_attention(name, channels)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (EMA, {"channels": 48}, r"multiple of factor=32.*factor in \[1, 2, 3, 4, 6, 8, 12, 16, 24, 48\]"),
        (EMA, {"channels": 16}, "multiple of factor=32"),
        (EMA, {"channels": 64, "factor": 0}, "factor must be a positive int"),
        (MHSA, {"channels": 64, "num_heads": 3}, r"num_heads=3 does not divide channels=64; valid: \[1, 2, 4"),
        (MHSA, {"channels": 64, "num_heads": 0}, "num_heads must be a positive int"),
        (AreaAttention, {"channels": 64, "num_heads": 5}, "num_heads=5 does not divide"),
        (AreaAttention, {"channels": 64, "area": 0}, "area must be a positive int"),
        (ECA, {"channels": 64, "kernel_size": 4}, "kernel_size must be odd"),
        (modules.CBAM, {"channels": 64, "reduction": 0}, "reduction must be a positive int"),
        (modules.CBAM, {"channels": 64, "spatial_kernel": 6}, "spatial_kernel must be odd"),
        (CoordAtt, {"channels": 64, "reduction": 2.5}, "reduction must be a positive int"),
        (modules.SE, {"channels": 64, "reduction": -1}, "reduction must be a positive int"),
        (SimAM, {"channels": 64, "lambda_": 0}, "lambda_ must be a positive number"),
        (CrossScaleAttention, {"channels": 64, "context_channels": 0}, "context_channels must be a positive int"),
        (CrossScaleAttention, {"channels": 64, "rd_ratio": 0}, "rd_ratio must be a positive number"),
        (CrossScaleAttention, {"channels": 64, "num_heads": 33}, "num_heads=33 exceeds the attention width"),
        (BiLevelRoutingAttention, {"channels": 64, "regions": 0}, "regions must be a positive int"),
        (BiLevelRoutingAttention, {"channels": 64, "regions": 2, "topk": 5}, r"topk=5 exceeds the 2x2 = 4 regions"),
        (BiLevelRoutingAttention, {"channels": 64, "num_heads": 3}, "num_heads=3 does not divide"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_impossible_hyperparameters_rejected_at_construction(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, CHANNELS // 2, 8, 8), (CHANNELS, 8, 8)], ids=["channels", "unbatched"])
def test_wrong_input_shape_rejected_in_forward(name, shape):
    layer = build(name)
    x = randn(*shape)
    with pytest.raises(ValueError, match=rf"built for {CHANNELS} channels expects \(N, {CHANNELS}, H, W\)"):
        layer(x if name not in TWO_INPUT else [x, randn(1, CONTEXT_CHANNELS, 2, 2)])


def test_two_input_layer_rejects_a_bare_map_and_a_wrong_context():
    layer = build("cross")
    x = randn(2, CHANNELS, 8, 8)
    with pytest.raises(ValueError, match=r"takes \[x, context\]"):
        layer(x)
    for context in (randn(2, CHANNELS, 2, 2), randn(1, CONTEXT_CHANNELS, 2, 2)):
        with pytest.raises(ValueError, match=r"built for 96 context channels expects a \(2, 96, h, w\) context"):
            layer([x, context])


# --- each paper's math -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels, kernel", [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_adaptive_kernel_size(channels, kernel):
    assert ECA.adaptive_kernel_size(channels) == kernel  # |(log2 C + 1) / 2|, next odd
    assert ECA(channels).conv.kernel_size == (kernel,)


def test_eca_gates_each_channel_from_its_k_neighbours():
    layer = ECA(CHANNELS, gate=False).eval()  # k = 3
    x = randn(1, CHANNELS, 6, 6)
    changed = x.clone()
    changed[:, 10] += 1
    with torch.no_grad():
        moved = ((layer(changed) - layer(x)).abs().amax((0, 2, 3)) > 0).nonzero().flatten().tolist()
    assert moved == [9, 10, 11]


def test_cbam_is_channel_then_spatial_attention():
    layer = build("cbam", gate=False).eval()
    x = randn(2, CHANNELS, 9, 6)
    with torch.no_grad():
        channel = torch.sigmoid(layer.mlp(F.adaptive_avg_pool2d(x, 1)) + layer.mlp(F.adaptive_max_pool2d(x, 1)))
        refined = x * channel
        descriptors = torch.cat([refined.mean(1, keepdim=True), refined.max(1, keepdim=True).values], 1)
        expected = refined * torch.sigmoid(layer.spatial(descriptors))
        assert layer.spatial.kernel_size == (7, 7)
        torch.testing.assert_close(layer(x), expected)


def test_simam_matches_the_energy_formula():
    x = randn(2, CHANNELS, 6, 5)
    mean, var = x.mean((2, 3), keepdim=True), x.var((2, 3), keepdim=True)  # unbiased: over H*W - 1
    energy = 4 * (var + 1e-4) / ((x - mean) ** 2 + 2 * var + 2 * 1e-4)
    torch.testing.assert_close(SimAM(CHANNELS, gate=False)(x), x * torch.sigmoid(1 / energy))
    single = randn(2, CHANNELS, 1, 1)
    torch.testing.assert_close(SimAM(CHANNELS, gate=False)(single), single * torch.sigmoid(torch.tensor(0.5)))


def test_bottleneck_widths_are_each_papers():
    """SE floors at 8 channels, CBAM at 1, coordinate attention at 8; cross-scale attention rounds its ratio
    (modules.base.reduced_channels): trained checkpoints depend on these widths."""
    from modules import CBAM, SE

    assert [SE(c).fc[0].out_channels for c in (64, 128, 768)] == [8, 8, 48]
    assert [CBAM(c).mlp[0].out_channels for c in (8, 64, 768)] == [1, 4, 48]
    assert [CrossScaleAttention(c, 96).dim for c in (65, 67, 256)] == [32, 34, 128]


def test_coordatt_reduction_width():
    assert CoordAtt(64).reduce[0].out_channels == 8  # max(8, 64 // 32)
    assert CoordAtt(768).reduce[0].out_channels == 24


def test_ema_matches_per_group_cross_spatial_learning():
    layer = build("ema", gate=False).eval()
    x = randn(2, CHANNELS, 5, 8)
    width = CHANNELS // 32
    expected = torch.empty_like(x)
    with torch.no_grad():
        for image in range(2):
            for group in range(32):
                part = x[image : image + 1, group * width : (group + 1) * width]  # (1, width, H, W)
                along_h = layer.conv1x1(part.mean(3, keepdim=True)).sigmoid()  # shared 1x1 conv, per direction
                along_w = layer.conv1x1(part.mean(2, keepdim=True)).sigmoid()
                branch1 = layer.norm(part * along_h * along_w)
                branch3 = layer.conv3x3(part)
                weights = branch1.mean((2, 3)).softmax(1) @ branch3.flatten(2)[0]
                weights = weights + branch3.mean((2, 3)).softmax(1) @ branch1.flatten(2)[0]
                expected[image, group * width : (group + 1) * width] = (part * weights.reshape(1, 1, 5, 8).sigmoid())[0]
        torch.testing.assert_close(layer(x), expected)


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, C, ...) -> (N, heads, tokens, C / heads)."""
    return t.flatten(2).unflatten(1, (num_heads, -1)).transpose(-1, -2)


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v


def test_mhsa_matches_naive_multi_head_attention():
    layer = MHSA(CHANNELS, num_heads=4, gate=False).eval()
    x = randn(2, CHANNELS, 5, 7)
    with torch.no_grad():
        encoded = x + layer.pos(x)
        q, k, v = (_heads(t, 4) for t in layer.qkv(encoded).chunk(3, 1))
        expected = layer.proj(_softmax_attention(q, k, v).transpose(-1, -2).reshape_as(x))
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("height", [8, 15, 5, 1, 3])
def test_area_attention_is_exact_per_strip_attention(height):
    """Strips of ceil(H / area) rows, the last one shorter, computed without padding: what the layer must equal."""
    layer = AreaAttention(CHANNELS, num_heads=2, area=4, gate=False).eval()
    x = randn(2, CHANNELS, height, 6)
    rows = math.ceil(height / 4)
    with torch.no_grad():
        q, k, v = layer.qkv(x).chunk(3, 1)
        strips = []
        for top in range(0, height, rows):
            part = [_heads(t[:, :, top : top + rows], 2) for t in (q, k, v)]
            strips.append(_softmax_attention(*part).transpose(-1, -2).reshape(2, CHANNELS, -1, 6))
        expected = layer.proj(torch.cat(strips, 2) + layer.pos(v))
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)



@pytest.mark.parametrize("name", [n for n, cls in ATTENTION.items() if issubclass(cls, ScalingAttention)])
def test_an_opening_gate_reweights_without_a_global_gain(name):
    """Scaling attention opens the pattern of its weights: per sample, the relative change averages to zero."""
    layer = build(name).eval()
    with torch.no_grad():
        layer.gamma.fill_(0.5)
        x = randn(2, CHANNELS, 9, 13).abs() + 0.1  # no zeros: y / x is defined everywhere
        relative = layer(x) / x - 1
        assert relative.abs().max() > 1e-3  # it does re-weight
        assert torch.allclose(relative.mean((1, 2, 3)), torch.zeros(2), atol=1e-5)


def test_cross_scale_attention_matches_naive_cross_attention():
    layer = CrossScaleAttention(CHANNELS, CONTEXT_CHANNELS, num_heads=2, gate=False).eval()
    x, context = randn(2, CHANNELS, 8, 6), randn(2, CONTEXT_CHANNELS, 2, 3, seed=2)
    with torch.no_grad():
        q = _heads(layer.q(x + layer.pos(x)), 2)  # queries from the fine map, keys and values from the coarse one
        k, v = (_heads(t, 2) for t in layer.kv(context + layer.context_pos(context)).chunk(2, 1))
        assert (q.shape[-2], k.shape[-2]) == (48, 6)
        expected = layer.proj(_softmax_attention(q, k, v).transpose(-1, -2).reshape(2, layer.dim, 8, 6))
        torch.testing.assert_close(layer([x, context]), expected, atol=1e-5, rtol=1e-4)
    assert CrossScaleAttention(64, 256).dim == 32 and CrossScaleAttention(768, 512).num_heads == 12  # rd_ratio 0.5


def _routed_attention(layer: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """BiFormer's bi-level routing computed region by region without padding: what the layer must equal."""
    n, c, h, w = x.shape
    s, heads = layer.regions, layer.num_heads
    rh, rw = math.ceil(h / s), math.ceil(w / s)
    qkv = layer.qkv(x)
    out = torch.zeros(n, c, h, w)
    boxes = [(i * rh, j * rw) for i in range(s) for j in range(s) if i * rh < h and j * rw < w]  # non-empty regions
    for image in range(n):
        q, k, v = (t[image] for t in qkv.chunk(3, 1))
        tokens = {(top, left): [t[:, top : top + rh, left : left + rw].flatten(1) for t in (q, k, v)]
                  for top, left in boxes}
        q_region = torch.stack([tokens[b][0].mean(1) for b in boxes])
        k_region = torch.stack([tokens[b][1].mean(1) for b in boxes])
        chosen = (q_region @ k_region.T).topk(min(layer.topk, len(boxes)), -1).indices
        for r, (top, left) in enumerate(boxes):
            query = tokens[(top, left)][0]
            keys = torch.cat([tokens[boxes[j]][1] for j in chosen[r]], 1)
            values = torch.cat([tokens[boxes[j]][2] for j in chosen[r]], 1)
            split = [t.unflatten(0, (heads, -1)).transpose(-1, -2) for t in (query, keys, values)]
            region = _softmax_attention(*split).transpose(-1, -2).flatten(0, 1)  # (C, tokens)
            out[image, :, top : top + rh, left : left + rw] = region.reshape(c, min(rh, h - top), min(rw, w - left))
    return layer.proj(out + layer.lce(qkv[:, 2 * c :]))


@pytest.mark.parametrize("size", [(16, 16), (15, 20), (5, 7), (2, 3), (1, 1)], ids=lambda s: "x".join(map(str, s)))
def test_sparse_attention_is_exact_bi_level_routing(size):
    """Regions of ceil(H / regions) x ceil(W / regions) tokens, the last ones shorter or empty, routed top-k."""
    layer = BiLevelRoutingAttention(CHANNELS, num_heads=2, regions=4, topk=3, gate=False).eval()
    x = randn(2, CHANNELS, *size)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _routed_attention(layer, x), atol=1e-5, rtol=1e-4)


SDPA_LAYERS = ["mhsa", "area", "cross", "sparse"]


@pytest.mark.parametrize("name", SDPA_LAYERS)
def test_attention_runs_through_scaled_dot_product_attention(name, monkeypatch):
    """No manual softmax(QK^T)V: every self/cross/sparse attention calls SDPA, in training as in eval mode."""
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(a) or sdpa(*a, **k))
    layer = build(name)
    for training in (True, False):
        calls.clear()
        layer.train(training)(feed(layer, randn(2, CHANNELS, 10, 12)))
        assert len(calls) == 1, name


@pytest.mark.parametrize("name", ["mhsa", "area", "cross", "sparse"])
def test_queries_keys_values_suit_the_fused_kernels(name, monkeypatch):
    """PyTorch's fused SDPA kernels (flash, memory-efficient, CPU flash) need the head dim contiguous; otherwise
    SDPA falls back to its math path (see docs/MODELS.md, fused attention path)."""
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append((*a, k)) or sdpa(*a, **k))
    layer = build(name)
    layer(feed(layer, randn(2, CHANNELS, 10, 12)))
    (q, k, v, options), = calls
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    assert q.shape[-1] % 8 == 0  # memory-efficient kernels: head dim a multiple of 8 (fp16/bf16)
    mask = options.get("attn_mask")
    assert mask is None or mask.stride(-1) == 1
