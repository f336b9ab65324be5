"""Which ONNX Runtime thread-spinning policy to time (and ship) with: its own speed, and what it does to eager.

    python benchmarks/ort_spinning.py [--precision fp32|int8] [--rounds 2]

ConvNeXt-T batch 1, 2 threads. For each policy of ``backends.onnxruntime.SPINNING_POLICIES``
("within-run": spin during a run, stop as it returns; "off"; "on": ONNX Runtime's default, threads
keep spinning after a run), eager PyTorch and one ONNX Runtime session are timed in alternating
blocks; eager is also timed alone. A policy that leaves threads spinning after a run shows up as
eager running slower beside it than alone.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from convnext_export.backends.onnxruntime import SPINNING_POLICIES, OnnxRuntimeBackend
from convnext_export.backends.torch_eager import TorchBackend
from convnext_export.bench.environment import host_line
from convnext_export.bench.timing import TimingPlan, input_pool, measure_alternating, paired_speedup
from convnext_export.calibration.int8 import Int8Options
from convnext_export.config import get_config
from convnext_export.model import build_model
from convnext_export.pipeline import ExportRequest, export_artifact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(host_line(), flush=True)
    torch.set_num_threads(args.threads)
    plan = TimingPlan(warmup=3, iters=args.iters, block=5, pool=8)
    pool = input_pool(1, 224, plan.pool, 0)
    eager = TorchBackend(build_model(get_config("tiny"), seed=0), threads=args.threads).run
    with tempfile.TemporaryDirectory() as tmp:
        request = ExportRequest(size="tiny", seed=0, out=Path(tmp) / args.precision, precision=args.precision,
                                int8=Int8Options(calib_size=16))
        model_path = export_artifact(request).artifact.model_path
        sessions = {policy: OnnxRuntimeBackend(model_path, threads=args.threads, spinning=policy).run
                    for policy in SPINNING_POLICIES}
        print(f"ConvNeXt-T {args.precision}, batch 1, {args.threads} threads, alternating blocks of {plan.block}, "
              f"{args.iters} runs each")
        print("| round | policy | ORT p50 ms | eager p50 ms beside it | speedup | eager p50 ms alone |")
        print("|---|---|---|---|---|---|")
        for round_ in range(1, args.rounds + 1):
            alone = np.median(measure_alternating({"eager": eager}, pool, plan)["eager"].samples)
            for policy, run in sessions.items():
                timings = measure_alternating({"eager": eager, policy: run}, pool, plan)
                print(f"| {round_} | {policy} | {np.median(timings[policy].samples):.1f} | "
                      f"{np.median(timings['eager'].samples):.1f} | "
                      f"{paired_speedup(timings['eager'], timings[policy])['speedup']:.2f}x | {alone:.1f} |", flush=True)


if __name__ == "__main__":
    main()
