"""Calibration methods on the trained CIFAR-10 reference: top-1, agreement with eager, and speed.

Every variant is exported with `convnext-export` (library call) from the reference checkpoint,
calibrated on CIFAR-10 train images, and evaluated with `evaluate_accuracy` on the test folder:

  fp32                   the fused FP32 graph (the baseline INT8 is judged against)
  fp16                   --fp16
  int8-<method>          --int8 --calib-method minmax|entropy|percentile (--target cpu)
  int8-trt-<method>      the same with --target tensorrt, run in ONNX Runtime (a layout check, not TensorRT speed)

Agreement and logits cosine are against the eager FP32 model on every test image; speed is
batch 1 in alternating blocks vs eager (ONNX Runtime spinning off). The best CPU method
(highest agreement, then top-1) is printed: it is the default --calib-method.

    python benchmarks/calibration_methods.py --calib-size 512
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from convnext_export.backends.onnxruntime import OnnxRuntimeBackend
from convnext_export.backends.torch_eager import TorchBackend
from convnext_export.bench.environment import host_line
from convnext_export.bench.timing import TimingPlan, input_pool, measure_alternating, paired_speedup
from convnext_export.calibration.int8 import Int8Options
from convnext_export.calibration.ranges import CALIBRATION_METHODS
from convnext_export.datasets import open_dataset
from convnext_export.drift import topk_agreement
from convnext_export.evaluate import evaluate_accuracy, torch_runner
from convnext_export.pipeline import ExportRequest, export_artifact, load_reference

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "cifar10"


def recording(run):
    """A batch runner that keeps every output, in order."""
    outputs: list[np.ndarray] = []

    def run_batch(images: np.ndarray) -> np.ndarray:
        logits = np.asarray(run(images), np.float32)
        outputs.append(logits)
        return logits

    return run_batch, outputs


def test_logits(run, dataset, description: str):
    """Top-1 of a batch runner over the test set, and its logits in order (the reference for agreement)."""
    run_batch, outputs = recording(run)
    accuracy = evaluate_accuracy(run_batch, dataset, batch_size=100, description=description)
    return accuracy, np.concatenate(outputs)


def cosine(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    out, ref = out.astype(np.float64), ref.astype(np.float64)
    return (out * ref).sum(1) / np.maximum(np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1), 1e-30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=HERE / "reference" / "convnext_atto_cifar10.pth")
    parser.add_argument("--calib-data", type=Path, default=DATA / "train")
    parser.add_argument("--test-data", type=Path, default=DATA / "test")
    parser.add_argument("--calib-size", type=int, default=512)
    parser.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--variants", default=None,
                        help="comma list of the variants to run (e.g. fp32,fp16); default: all")
    args = parser.parse_args()
    print(host_line(), flush=True)
    torch.set_num_threads(args.threads)

    reference = load_reference(None, args.checkpoint, None, 0)
    dataset = open_dataset(args.test_data, reference.preprocessing, limit=args.limit, require_labels=True)
    requests = {"fp32": {}, "fp16": {"precision": "fp16"}}
    for target in ("cpu", "tensorrt"):
        for method in CALIBRATION_METHODS:
            name = f"int8-{method}" if target == "cpu" else f"int8-trt-{method}"
            requests[name] = {"precision": "int8", "target": target,
                              "int8": Int8Options(calib_data=args.calib_data, calib_size=args.calib_size,
                                                  calib_method=method)}
    if args.variants:
        unknown = set(args.variants.split(",")) - set(requests)
        if unknown:
            parser.error(f"--variants: unknown {', '.join(sorted(unknown))}; choose from {', '.join(requests)}")
        requests = {name: fields for name, fields in requests.items() if name in args.variants.split(",")}
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {}
        for name, fields in requests.items():
            started = time.perf_counter()
            artifacts[name] = export_artifact(ExportRequest(weights=args.checkpoint, out=Path(tmp) / name,
                                                            **fields)).artifact
            print(f"exported {name} in {time.perf_counter() - started:.0f}s", flush=True)
        eager, eager_logits = test_logits(torch_runner(reference.model), dataset, "eager")
        backends = {name: OnnxRuntimeBackend(a.model_path, threads=args.threads) for name, a in artifacts.items()}
        for name, backend in backends.items():
            accuracy, logits = test_logits(backend.run, dataset, name)
            cos = cosine(logits, eager_logits)
            rows[name] = {"top1": accuracy.top1, "agreement": topk_agreement(logits, eager_logits, 1),
                          "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                          "export_drift": artifacts[name].drift}
            print(f"{name}: top-1 {accuracy.top1:.2%}", flush=True)
        plan = TimingPlan(warmup=10, iters=args.iters, block=10, pool=8)
        variants = {"eager": TorchBackend(reference.model, threads=args.threads).run,
                    **{name: backend.run for name, backend in backends.items()}}
        timings = measure_alternating(variants, input_pool(1, reference.preprocessing.image_size, 8, 0), plan)
        for name in backends:
            rows[name].update({"p50_ms": float(np.median(timings[name].samples)),
                               **paired_speedup(timings["eager"], timings[name])})
    eager_ms = float(np.median(timings["eager"].samples))
    base = rows["fp32"]["top1"] if "fp32" in rows else eager.top1
    print(f"\n{reference.config.name} CIFAR-10 reference ({args.checkpoint.name}), {eager.count} test images, "
          f"INT8 calibrated on {args.calib_size} train images; eager top-1 {eager.top1:.2%}, "
          f"batch-1 eager p50 {eager_ms:.2f} ms ({args.threads} threads)\n")
    print(f"| variant | top-1 | vs {'FP32 ONNX' if 'fp32' in rows else 'eager'} | agreement with eager | logits cosine min / mean | p50 ms | speedup vs eager |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['top1']:.2%} | {(row['top1'] - base) * 100:+.2f} pt | {row['agreement']:.2%} | "
              f"{row['cosine_min']:.5f} / {row['cosine_mean']:.6f} | {row['p50_ms']:.2f} | {row['speedup']:.2f}x |")
    methods = [m for m in CALIBRATION_METHODS if f"int8-{m}" in rows]
    best = max(methods, key=lambda m: (rows[f"int8-{m}"]["agreement"], rows[f"int8-{m}"]["top1"])) if methods else None
    if best:
        print(f"\nbest CPU calibration method: {best} (highest agreement with eager, then top-1)")
    if args.json:
        args.json.write_text(json.dumps({"eager_top1": eager.top1, "test_images": eager.count,
                                         "calib_size": args.calib_size, "rows": rows, "best": best}, indent=2))


if __name__ == "__main__":
    main()
