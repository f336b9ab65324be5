"""FP32 speed of ConvNeXt-T batch 1 on this CPU: eager PyTorch vs our fused ONNX vs a plain export.

All variants run in one process, in alternating short blocks (see convnext_export.bench.timing),
with ONNX Runtime's intra-op spinning off and the same thread count everywhere:

  eager            the faithful model in PyTorch FP32 (inference_mode)
  fused-ort        `convnext-export --size tiny` (our fused graph) in ONNX Runtime
  timm-ort-opsetN  timm's convnext_tiny through torch.onnx.export at the default opset and
                   at 20, ONNX Runtime defaults but for spinning: what a user does without this tool

    python benchmarks/fp32_speed.py --repeats 3

Speedups are medians over rounds of paired block ratios; --repeats gives the spread over runs.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch

from convnext_export.backends.onnxruntime import OnnxRuntimeBackend
from convnext_export.backends.torch_eager import TorchBackend
from convnext_export.bench.environment import host_line
from convnext_export.bench.timing import TimingPlan, input_pool, measure_alternating, paired_speedup
from convnext_export.config import get_config
from convnext_export.drift import drift_metrics
from convnext_export.model import build_model
from convnext_export.pipeline import ExportRequest, export_artifact


def plain_timm_export(path: Path, opset: int | None, state_dict: dict) -> Path | None:
    """timm's model through torch.onnx.export, as a user would call it (dynamo, chosen opset)."""
    try:
        import timm
    except ImportError:
        return None
    model = timm.create_model("convnext_tiny", pretrained=False).eval()
    model.load_state_dict(state_dict)
    kwargs = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=True,
                          input_names=["input"], output_names=["logits"], **kwargs)
    return path


def timm_state_dict(model) -> dict:
    """Our weights in timm's layout, so every variant computes the same function."""
    sd = {}
    for key, value in model.state_dict().items():
        k = key.replace("downsample_layers.0.0", "stem.0").replace("downsample_layers.0.1", "stem.1")
        for i in range(1, 4):
            k = k.replace(f"downsample_layers.{i}.", f"stages.{i}.downsample.")
        parts = k.split(".")
        if parts[0] == "stages" and parts[2].isdigit():
            rest = ".".join(parts[3:])
            rest = {"dwconv.weight": "conv_dw.weight", "dwconv.bias": "conv_dw.bias",
                    "pwconv1.weight": "mlp.fc1.weight", "pwconv1.bias": "mlp.fc1.bias",
                    "pwconv2.weight": "mlp.fc2.weight", "pwconv2.bias": "mlp.fc2.bias"}.get(rest, rest)
            k = f"stages.{parts[1]}.blocks.{parts[2]}.{rest}"
        k = {"norm.weight": "head.norm.weight", "norm.bias": "head.norm.bias",
             "head.weight": "head.fc.weight", "head.bias": "head.fc.bias"}.get(k, k)
        sd[k] = value
    return sd


def one_run(work: Path, threads: int, plan: TimingPlan, seed: int) -> dict:
    torch.set_num_threads(threads)
    model = build_model(get_config("tiny"), seed=seed)
    artifact = export_artifact(ExportRequest(size="tiny", seed=seed, out=work / "fused", force=True)).artifact
    variants = {"eager": TorchBackend(model, threads=threads).run,
                "fused-ort": OnnxRuntimeBackend(artifact.model_path, threads=threads).run}
    sd = timm_state_dict(model)
    for label, opset in (("timm-ort-default-opset", None), ("timm-ort-opset20", 20)):
        path = plain_timm_export(work / f"{label}.onnx", opset, sd)
        if path is not None:
            variants[label] = OnnxRuntimeBackend(path, threads=threads).run
    pool = input_pool(1, 224, plan.pool, seed)
    reference = {name: np.asarray(run(pool[0]), np.float32) for name, run in variants.items()}
    timings = measure_alternating(variants, pool, plan)
    rows = {}
    for name, timing in timings.items():
        rows[name] = {"p50_ms": float(np.median(timing.samples)), **paired_speedup(timings["eager"], timing),
                      "drift": drift_metrics(reference[name], reference["eager"])["relative_max_abs"]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(host_line(), flush=True)
    plan = TimingPlan(warmup=5, iters=args.iters, block=5, pool=8)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            runs.append(one_run(Path(tmp), args.threads, plan, args.seed))
            print(f"run {repeat + 1}: " + ", ".join(f"{k} {v['speedup']:.2f}x" for k, v in runs[-1].items()), flush=True)
    print(f"\nConvNeXt-T, batch 1, {args.threads} threads, ORT spinning off, alternating blocks of {plan.block}, "
          f"{args.iters} runs per variant per run, {args.repeats} runs\n")
    print("| variant | p50 ms (run 1) | speedup vs eager (median of runs) | spread over runs | drift vs eager |")
    print("|---|---|---|---|---|")
    for name in runs[0]:
        speedups = [r[name]["speedup"] for r in runs]
        print(f"| {name} | {runs[0][name]['p50_ms']:.1f} | {np.median(speedups):.2f}x | "
              f"{min(speedups):.2f}-{max(speedups):.2f}x | {runs[0][name]['drift']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"plan": plan.describe(), "threads": args.threads, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
