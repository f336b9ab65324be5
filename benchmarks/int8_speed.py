"""INT8 speed of ConvNeXt-T batch 1 on this CPU: eager PyTorch FP32 vs our fused INT8 vs the default path.

All variants run in one process, in alternating short blocks (convnext_export.bench.timing),
with ONNX Runtime's intra-op spinning off and the same thread count everywhere:

  eager               the faithful model in PyTorch FP32 (torch.set_num_threads, inference_mode)
  fused-fp32-ort      `convnext-export --size tiny` (our fused FP32 graph) in ONNX Runtime, for context
  fused-int8-ort      `convnext-export --size tiny --int8` (our recipe, --target cpu) in ONNX Runtime
  default-int8-ort    what a user gets without this tool: a plain torch.onnx.export of the unfused
                      model, then onnxruntime.quantization.quantize_static with its defaults
                      (ONNX Runtime 1.32: QDQ, s8 activations, s8 per-tensor weights, MinMax),
                      calibrated on the same images
  default-u8-ort      the same with the two settings users then reach for: u8 activations and
                      per-channel weights (the "2.4-2.9x" path of REFERENCE.md)

    python benchmarks/int8_speed.py --repeats 3 [--profile]

Random weights (seeded) are fine for speed. Speedups are medians over rounds of paired block
ratios vs eager; each repeat makes fresh sessions and re-measures, --repeats gives the spread.
--profile adds an ONNX Runtime op-type breakdown of our INT8 model (a separate, untimed pass).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
import warnings
from collections import defaultdict
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch

from convnext_export.backends.onnxruntime import OnnxRuntimeBackend
from convnext_export.backends.torch_eager import TorchBackend
from convnext_export.bench.environment import host_line
from convnext_export.bench.profile import onnxruntime_kernel_events, profile_session
from convnext_export.bench.timing import TimingPlan, input_pool, measure_alternating, paired_speedup
from convnext_export.calibration.data import synthetic_images
from convnext_export.calibration.int8 import Int8Options
from convnext_export.config import get_config
from convnext_export.drift import drift_metrics
from convnext_export.model import build_model
from convnext_export.pipeline import ExportRequest, export_artifact
from convnext_export.preprocess import Preprocessing


def default_path(model: torch.nn.Module, work: Path, calibration: np.ndarray, name: str, **settings) -> Path:
    """Plain dynamo export of the unfused model + quantize_static with its defaults (but ``settings``)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    plain = work / "plain.onnx"
    if not plain.exists():
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(plain), dynamo=True,
                              input_names=["input"], output_names=["logits"])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter([{"input": image[None]} for image in calibration])

        def get_next(self):
            return next(self._feeds, None)

    quantized = work / f"{name}.onnx"
    quantize_static(str(plain), str(quantized), Reader(), **settings)
    return quantized


def profile_ops(path: Path, threads: int, pool: list[np.ndarray], runs: int = 20) -> dict[str, float]:
    """Op type -> share of kernel time in an ONNX Runtime profile."""
    with tempfile.TemporaryDirectory() as scratch:
        trace = profile_session(lambda prefix: OnnxRuntimeBackend(path, threads=threads, profile_prefix=prefix),
                                pool, runs, Path(scratch), "int8")
        events = onnxruntime_kernel_events(trace)
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        totals[event["args"]["op_name"]] += event["dur"]
    whole = sum(totals.values())
    return {op: t / whole for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def one_run(artifacts: dict[str, Path], model: torch.nn.Module, threads: int, plan: TimingPlan, seed: int) -> dict:
    torch.set_num_threads(threads)
    variants = {"eager": TorchBackend(model, threads=threads).run}
    for name, path in artifacts.items():
        variants[name] = OnnxRuntimeBackend(path, threads=threads).run
    pool = input_pool(1, 224, plan.pool, seed)
    outputs = {name: np.concatenate([run(x) for x in pool]) for name, run in variants.items()}
    timings = measure_alternating(variants, pool, plan)
    rows = {}
    for name, timing in timings.items():
        drift = drift_metrics(outputs[name], outputs["eager"])
        rows[name] = {"p50_ms": float(np.median(timing.samples)), **paired_speedup(timings["eager"], timing),
                      "drift": drift["relative_max_abs"], "top1_agreement": drift["top1_agreement"]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--calib-size", type=int, default=64, help="synthetic calibration images for both INT8 paths")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print an op-type breakdown of our INT8 model")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(host_line(), flush=True)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's pre-processing advice
    plan = TimingPlan(warmup=5, iters=args.iters, block=5, pool=8)
    torch.set_num_threads(args.threads)
    model = build_model(get_config("tiny"), seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = export_artifact(ExportRequest(size="tiny", seed=args.seed, out=work / "fp32")).artifact
        int8 = export_artifact(ExportRequest(size="tiny", seed=args.seed, out=work / "int8", precision="int8",
                                             int8=Int8Options(calib_size=args.calib_size, seed=args.seed))).artifact
        calibration = synthetic_images(Preprocessing(), args.calib_size, args.seed)
        from onnxruntime.quantization import QuantType

        default = default_path(model, work, calibration, "default-int8")
        default_u8 = default_path(model, work, calibration, "default-u8", activation_type=QuantType.QUInt8,
                                  per_channel=True)
        artifacts = {"fused-fp32-ort": fp32.model_path, "fused-int8-ort": int8.model_path,
                     "default-int8-ort": default, "default-u8-ort": default_u8}
        runs = []
        for repeat in range(args.repeats):
            runs.append(one_run(artifacts, model, args.threads, plan, args.seed + repeat))
            print(f"run {repeat + 1}: " + ", ".join(f"{k} {v['speedup']:.2f}x" for k, v in runs[-1].items()),
                  flush=True)
        shares = profile_ops(int8.model_path, args.threads, input_pool(1, 224, 8, args.seed)) if args.profile else None
    print(f"\nConvNeXt-T (random weights), batch 1, {args.threads} threads, ORT spinning off, alternating blocks of "
          f"{plan.block}, {args.iters} runs per variant per repeat, {args.repeats} repeat(s); "
          f"INT8 calibrated on {args.calib_size} synthetic images ({int8.extra['calibration']['method']})\n")
    print("| variant | p50 ms (run 1) | speedup vs eager (median of repeats) | spread over repeats "
          "| drift vs eager | top-1 agreement |")
    print("|---|---|---|---|---|---|")
    for name in runs[0]:
        speedups = [r[name]["speedup"] for r in runs]
        print(f"| {name} | {runs[0][name]['p50_ms']:.1f} | {np.median(speedups):.2f}x | "
              f"{min(speedups):.2f}-{max(speedups):.2f}x | {runs[0][name]['drift']:.1e} | "
              f"{runs[0][name]['top1_agreement']:.0%} |")
    ours = np.median([r["fused-int8-ort"]["speedup"] for r in runs])
    for name in ("default-int8-ort", "default-u8-ort"):
        theirs = np.median([r[name]["speedup"] for r in runs])
        print(f"fused INT8 / {name}: {ours / theirs:.2f}x")
    if shares:
        print("\nONNX Runtime op-type share of our INT8 kernel time: "
              + ", ".join(f"{op} {share:.0%}" for op, share in shares.items() if share >= 0.005))
    if args.json:
        args.json.write_text(json.dumps({"plan": plan.describe(), "threads": args.threads, "runs": runs,
                                         "int8_recipe": int8.extra["quantized"]["counts"],
                                         "default_paths": {"default-int8-ort": "quantize_static defaults",
                                                           "default-u8-ort": "activation_type=QUInt8, per_channel=True"},
                                         "op_shares": shares}, indent=2))


if __name__ == "__main__":
    main()
