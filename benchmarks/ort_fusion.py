"""The fused attention path: which SDPA kernel torch picks for each attention module, and whether ONNX Runtime's
transformer optimizer fuses the attention of an exported detector (and what that saves on the CPU).

The model (default yolo11n-mhsa) is exported to a static ONNX at --imgsz like the attention cost benchmark, then
``onnxruntime.transformers.optimizer`` runs each model type's fusion passes on it (graph fusions only, opt_level 0:
ORT applies its usual optimisations when either file is loaded). Reported per model type: the fused operators
(``Attention`` / ``MultiHeadAttention`` contrib ops, LayerNorm, Gelu...), the operators before and after, the largest
relative output difference, and with --runs > 0 the median CPU latency of both files, interleaved. Time only on a
quiet machine.

    python benchmarks/ort_fusion.py --model yolo11n-mhsa --imgsz 640 --runs 30 --threads 1 \\
        --out docs/results/ort_fusion.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

SDPA_BACKENDS = {0: "math", 1: "flash", 2: "memory-efficient", 3: "cudnn", 4: "overrideable"}  # torch SDPBackend


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolo11n-mhsa", help="model name to export (default: yolo11n-mhsa)")
    parser.add_argument("--model-types", default="vit,bert,unet,clip",
                        help="optimizer model types to try, each its own fusion passes (default: vit,bert,unet,clip)")
    parser.add_argument("--imgsz", type=int, default=640, help="static export size (default: 640)")
    parser.add_argument("--runs", type=int, default=0, help="timed rounds per file (default: 0, no timing)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up rounds (default: 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads (default: physical cores)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here (default: don't)")
    return parser


def sdpa_backends(channels: int = 64, size: tuple[int, int] = (20, 20)) -> dict[str, str]:
    """The SDPA kernel torch selects on this machine's CPU for the call each attention module makes (FP32).

    ``torch._fused_sdp_choice`` is torch's own selection (private API); on a GPU the same call reports the CUDA choice.
    """
    import torch
    import torch.nn.functional as F

    from modules import ATTENTION, TWO_INPUT

    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append((q, k, v, attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        choices = {}
        for name, cls in ATTENTION.items():
            calls.clear()
            layer, x = cls(channels), torch.randn(1, channels, *size)
            with torch.no_grad():
                layer([x, x[:, :, ::4, ::4]] if name in TWO_INPUT else x)
            if calls:  # the kernel of the layer's last attention call
                choices[name] = SDPA_BACKENDS[int(torch._fused_sdp_choice(*calls[-1]))]
    finally:
        F.scaled_dot_product_attention = sdpa
    return choices


def operator_counts(path: Path) -> Counter:
    import onnx

    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def fuse(path: Path, model_type: str) -> tuple[Path, dict[str, int]]:
    """Run the transformer optimizer's ``model_type`` fusions on ``path``; the fused file and its fused operators."""
    from onnxruntime.transformers import optimizer

    fused = optimizer.optimize_model(str(path), model_type=model_type, num_heads=0, hidden_size=0, opt_level=0)
    out = path.with_name(f"{path.stem}.{model_type}.onnx")
    fused.save_model_to_file(str(out))
    return out, {op: n for op, n in fused.get_fused_operator_statistics().items() if n}


def max_relative_difference(reference: Path, candidate: Path, imgsz: int) -> float:
    from engine.model import create_session

    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    a, b = (create_session(p, threads=1) for p in (reference, candidate))
    ya, yb = (s.run(None, {s.get_inputs()[0].name: x})[0] for s in (a, b))
    return float(np.abs(ya - yb).max() / np.abs(ya).max())


def fusion_report(model: str, imgsz: int, model_types: list[str], runs: int = 0, warmup: int = 3,
                  threads: int | None = None, directory: Path | None = None) -> dict:
    """What each optimizer model type fuses in ``model``'s static ONNX and, with ``runs``, the median latencies."""
    from benchmarks.attention_cost import export_static, time_inference
    from engine.errors import ModelError

    with tempfile.TemporaryDirectory() as tmp:
        path = export_static(model, imgsz, Path(directory or tmp))
        before = operator_counts(path)
        rows, paths = [], {"exported": path}
        for model_type in model_types:
            fused, statistics = fuse(path, model_type)
            after = operator_counts(fused)
            row = {
                "model_type": model_type, "fused_operators": statistics,
                "attention_fused": sum(statistics.get(op, 0) for op in ("Attention", "MultiHeadAttention")),
                "operators_before": sum(before.values()), "operators_after": sum(after.values()),
                "changed_operators": {op: after[op] - before[op] for op in before | after if after[op] != before[op]},
            }
            try:  # some model types rewrite for GPUs only (unet: NhwcConv)
                row["max_relative_difference"] = max_relative_difference(path, fused, imgsz)
                paths[model_type] = fused
            except ModelError as error:
                row["cpu_error"] = str(error).rsplit(": ", 1)[-1]
            rows.append(row)
        latency = time_inference(paths, imgsz, runs, warmup, threads) if runs else {}
    for row in rows:
        if row["model_type"] in latency:
            row["latency_ms"], row["exported_latency_ms"] = latency[row["model_type"]], latency["exported"]
            row["latency_ratio"] = row["latency_ms"] / row["exported_latency_ms"]
    return {"model": model, "imgsz": imgsz, "softmax_nodes": before["Softmax"], "rows": rows}


def main() -> int:
    args = build_parser().parse_args()
    import onnxruntime
    import torch

    from benchmarks.engine import machine, write_report

    backends = sdpa_backends()
    print("torch SDPA kernel on this CPU (FP32): " + ", ".join(f"{k} {v}" for k, v in backends.items()))
    report = fusion_report(args.model, args.imgsz, args.model_types.split(","), args.runs, args.warmup, args.threads)
    print(f"{args.model} at {args.imgsz}: {report['softmax_nodes']} Softmax nodes in the export (attention, "
          "C2PSA's attention, the DFL head)")
    for row in report["rows"]:
        timing = f", {row['latency_ms']:.2f} ms = {row['latency_ratio']:.3f}x" if "latency_ms" in row else ""
        outcome = (f"max rel. diff {row['max_relative_difference']:.1e}{timing}" if "cpu_error" not in row
                   else f"does not load on the CPU: {row['cpu_error']}")
        print(f"  {row['model_type']:<5} attention fused: {row['attention_fused']}, "
              f"fused {row['fused_operators'] or 'nothing'}, "
              f"operators {row['operators_before']} -> {row['operators_after']}, {outcome}")
    write_report(args.out, {
        "machine": machine(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "args": {k: str(v) for k, v in vars(args).items()}, "date": time.strftime("%Y-%m-%d %H:%M"),
        "sdpa_backends_cpu": backends, **report,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
