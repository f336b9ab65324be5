"""Does this machine slow down under sustained load, and which kind of work does it hit?

    python benchmarks/throttle.py [--seconds 15] [--idle 20]

Times a ConvNeXt-T INT8 artifact (ONNX Runtime, 2 threads) and a 2048^3 float matmul (torch,
2 threads) fresh, after ``--seconds`` of back-to-back INT8 runs, after ``--idle`` seconds of
rest, and after ``--seconds`` of back-to-back matmuls. On this project's VM, INT8 slowed far more
than FP32 under load, which is why INT8 speedups vs eager spread so widely between runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from convnext_export.backends.onnxruntime import OnnxRuntimeBackend
from convnext_export.bench.environment import host_line
from convnext_export.calibration.int8 import Int8Options
from convnext_export.pipeline import ExportRequest, export_artifact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(host_line(), flush=True)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = export_artifact(ExportRequest(size="tiny", seed=0, out=Path(tmp) / "int8", precision="int8",
                                                 int8=Int8Options(calib_size=16))).artifact
        int8 = OnnxRuntimeBackend(artifact.model_path, threads=args.threads).run
        image = np.random.default_rng(0).standard_normal((1, 3, 224, 224), np.float32)
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)

        def matmul_gmacs() -> float:
            started = time.perf_counter()
            for _ in range(5):
                a @ b
            return 2048 ** 3 * 5 / (time.perf_counter() - started) / 1e9

        def int8_ms(runs: int = 20) -> float:
            started = time.perf_counter()
            for _ in range(runs):
                int8(image)
            return (time.perf_counter() - started) / runs * 1e3

        def sustain(work) -> None:
            started = time.perf_counter()
            while time.perf_counter() - started < args.seconds:
                work()

        int8_ms(5)
        print(f"fresh:                       matmul {matmul_gmacs():.0f} GMAC/s, INT8 {int8_ms():.1f} ms", flush=True)
        sustain(lambda: int8(image))
        print(f"after {args.seconds:.0f} s of INT8 runs:     matmul {matmul_gmacs():.0f} GMAC/s, INT8 {int8_ms():.1f} ms",
              flush=True)
        time.sleep(args.idle)
        print(f"after {args.idle:.0f} s idle:            matmul {matmul_gmacs():.0f} GMAC/s, INT8 {int8_ms():.1f} ms",
              flush=True)
        sustain(lambda: a @ b)
        print(f"after {args.seconds:.0f} s of matmuls:       matmul {matmul_gmacs():.0f} GMAC/s, INT8 {int8_ms():.1f} ms",
              flush=True)


if __name__ == "__main__":
    main()
