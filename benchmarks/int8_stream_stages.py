"""Which stages' residual stream the INT8 recipe keeps float: accuracy on the reference, speed on ConvNeXt-T.

    python benchmarks/int8_stream_stages.py [--calib-size 512] [--limit N]

For each choice of ``recipe.FLOAT_STREAM_STAGES`` (the default (2, 3), (3,), (2,) and () = full INT8),
this experiment swaps the cpu target's value in ``recipe.TARGET_RECIPES`` (the recipe exposes no
option for it: it is a design decision, and this script is what decided it), then
- exports the CIFAR-10 reference as INT8 calibrated on ``--calib-size`` train images and measures top-1
  and top-1 agreement with eager on the test folder;
- exports ConvNeXt-T (random weights, 16 synthetic calibration images) and times every variant with
  eager PyTorch in one alternating-block run (batch 1, 2 threads).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from calibration_methods import DATA, HERE, test_logits
from convnext_export.backends.onnxruntime import OnnxRuntimeBackend
from convnext_export.backends.torch_eager import TorchBackend
from convnext_export.bench.environment import host_line
from convnext_export.bench.timing import TimingPlan, input_pool, measure_alternating, paired_speedup
from convnext_export.calibration import recipe
from convnext_export.calibration.int8 import Int8Options
from convnext_export.config import get_config
from convnext_export.datasets import open_dataset
from convnext_export.drift import topk_agreement
from convnext_export.evaluate import torch_runner
from convnext_export.model import build_model
from convnext_export.pipeline import ExportRequest, export_artifact, load_reference

CHOICES = {"default (2, 3)": (2, 3), "float stage 3 only": (3,), "float stage 2 only": (2,), "full INT8": ()}


@contextmanager
def float_stream_stages(stages: tuple[int, ...]):
    original = recipe.TARGET_RECIPES["cpu"]
    recipe.TARGET_RECIPES["cpu"] = dataclasses.replace(original, float_stream_stages=stages)
    try:
        yield
    finally:
        recipe.TARGET_RECIPES["cpu"] = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-size", type=int, default=512)
    parser.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=40)
    args = parser.parse_args()
    print(host_line(), flush=True)
    torch.set_num_threads(args.threads)
    checkpoint = HERE / "reference" / "convnext_atto_cifar10.pth"
    reference = load_reference(None, checkpoint, None, 0)
    dataset = open_dataset(DATA / "test", reference.preprocessing, limit=args.limit, require_labels=True)
    _, eager_logits = test_logits(torch_runner(reference.model), dataset, "eager")
    rows: dict[str, dict] = {}
    speed_variants = {"eager": TorchBackend(build_model(get_config("tiny"), seed=0), threads=args.threads).run}
    with tempfile.TemporaryDirectory() as tmp:
        for label, stages in CHOICES.items():
            with float_stream_stages(stages):
                artifact = export_artifact(ExportRequest(
                    weights=checkpoint, out=Path(tmp) / f"ref-{len(rows)}", precision="int8",
                    int8=Int8Options(calib_data=DATA / "train", calib_size=args.calib_size))).artifact
                tiny = export_artifact(ExportRequest(size="tiny", seed=0, out=Path(tmp) / f"tiny-{len(rows)}",
                                                     precision="int8", int8=Int8Options(calib_size=16))).artifact
            accuracy, logits = test_logits(OnnxRuntimeBackend(artifact.model_path, threads=args.threads).run,
                                           dataset, label)
            rows[label] = {"top1": accuracy.top1, "agreement": topk_agreement(logits, eager_logits, 1),
                           "float_mac_fraction": artifact.extra["quantized"]["float_mac_fraction"]}
            speed_variants[label] = OnnxRuntimeBackend(tiny.model_path, threads=args.threads).run
            print(f"{label}: top-1 {accuracy.top1:.2%}, agreement {rows[label]['agreement']:.2%}", flush=True)
        plan = TimingPlan(warmup=5, iters=args.iters, block=5, pool=8)
        timings = measure_alternating(speed_variants, input_pool(1, 224, plan.pool, 0), plan)
    print(f"\nCIFAR-10 reference: {accuracy.count} test images, INT8 calibrated on {args.calib_size} train images; "
          f"speed: ConvNeXt-T batch 1, {args.threads} threads, one alternating run, eager p50 "
          f"{np.median(timings['eager'].samples):.1f} ms\n")
    print("| residual stream kept float | top-1 | agreement with eager | MACs float (atto) | ConvNeXt-T p50 ms | speedup |")
    print("|---|---|---|---|---|---|")
    for label, row in rows.items():
        print(f"| {label} | {row['top1']:.2%} | {row['agreement']:.2%} | {row['float_mac_fraction']:.1%} | "
              f"{np.median(timings[label].samples):.1f} | {paired_speedup(timings['eager'], timings[label])['speedup']:.2f}x |")


if __name__ == "__main__":
    main()
