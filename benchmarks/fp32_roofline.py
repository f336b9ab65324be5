"""How close fused FP32 ConvNeXt-T in ONNX Runtime is to this CPU's FMA ceiling.

    python benchmarks/fp32_roofline.py [--threads 2] [--runs 30]

Profiles the fused FP32 artifact (ONNX Runtime's own per-node profiler, ``--runs`` runs of batch 1)
and prints the time per op type and the GMAC/s of the 1x1 convolutions, beside torch's float
matmul on large square matrices with the same threads (what these cores sustain in FP32). If the
convs already run at that rate, the lower bound of the whole model is its MAC count at that rate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import torch

from convnext_export.backends.onnxruntime import session_options
from convnext_export.bench.environment import host_line
from convnext_export.bench.profile import onnxruntime_kernel_events
from convnext_export.calibration.fallback import layer_macs
from convnext_export.pipeline import ExportRequest, export_artifact


def matmul_gmacs(n: int, threads: int, repeats: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return n ** 3 * repeats / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    print(host_line(), flush=True)
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        artifact = export_artifact(ExportRequest(size="tiny", seed=0, out=Path(tmp) / "fp32", batch=1)).artifact
        model = onnx.shape_inference.infer_shapes(onnx.load(str(artifact.model_path)))
        convs = {node.name for node in model.graph.node if node.op_type == "Conv"}
        conv_macs = sum(m for name, m in layer_macs(model).items() if name in convs)
        options = session_options(args.threads, profile_prefix=str(Path(tmp) / "profile"))
        session = ort.InferenceSession(str(artifact.model_path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 224, 224), np.float32)}
        for _ in range(args.runs + 5):
            session.run(None, feed)
        events = onnxruntime_kernel_events(Path(session.end_profiling()))
    skip = len(events) // (args.runs + 5) * 5  # the first 5 runs are warm-up
    events = events[skip:]
    by_op: dict[str, float] = defaultdict(float)
    pointwise_us, pointwise_macs = 0.0, 0.0
    for event in events:
        by_op[event["args"]["op_name"]] += event["dur"]
        inputs = event["args"].get("input_type_shape", [])
        dims = next(iter(inputs[1].values()), []) if len(inputs) > 1 else []
        outputs = event["args"].get("output_type_shape", [])
        out_dims = next(iter(outputs[0].values()), []) if outputs else []
        if event["args"]["op_name"] == "Conv" and len(dims) == 4 and dims[2:] == [1, 1] and len(out_dims) == 4:
            pointwise_us += event["dur"]
            pointwise_macs += dims[0] * dims[1] * out_dims[2] * out_dims[3]  # Cout x Cin x H x W at batch 1
    total = sum(by_op.values())
    print(f"ConvNeXt-T fused FP32, batch 1, {args.threads} threads, ONNX Runtime profile of {args.runs} runs:")
    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"  {op:22s} {us / args.runs / 1e3:6.2f} ms  {us / total:5.1%}")
    print(f"  total                  {total / args.runs / 1e3:6.2f} ms")
    rate = pointwise_macs / (pointwise_us / 1e6) / 1e9 if pointwise_us and pointwise_macs else float("nan")
    print(f"1x1 convs: {pointwise_macs / args.runs / 1e9:.2f} GMAC in {pointwise_us / args.runs / 1e3:.2f} ms per run: {rate:.0f} GMAC/s")
    matmul = {n: matmul_gmacs(n, args.threads) for n in (2048, 4096)}
    for n, gmacs in matmul.items():
        print(f"torch float matmul {n}^3, {args.threads} threads: {gmacs:.0f} GMAC/s")
    print(f"conv MACs of the model: {conv_macs / 1e9:.2f} G: {conv_macs / (rate * 1e9) * 1e3:.1f} ms at the 1x1 convs' "
          f"rate, {conv_macs / (matmul[4096] * 1e9) * 1e3:.1f} ms at the matmul rate")


if __name__ == "__main__":
    main()
