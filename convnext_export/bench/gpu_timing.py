"""GPU latency from CUDA events: the device work alone, and the whole call with its host<->device copies.

Host clocks around a GPU call measure launch overhead and synchronization as much as the
GPU, so GPU rows get a second, device-side measurement. On one CUDA stream, per run: event,
copy a pinned host batch to a static device input, event, the backend's ``device_call`` (or
the replay of a CUDA graph that captured it, with ``cuda_graph``), event, copy the output to a
pinned host buffer, event; then wait. compute = events 2-3, end to end = events 1-4 (numpy ->
pinned staging is not counted). Warm-up runs (and the capture) are excluded; percentiles are
those of the CPU rows (``timing.latency_stats``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .timing import latency_stats

CLOCK = ("CUDA events on one non-default stream: compute = device_call (or CUDA graph replay) alone; end_to_end = "
         "pinned host->device copy + compute + device->pinned host copy; warm-up and graph capture excluded")
LATENCY_KEYS = ("mean", "std", "p50", "p90", "p99", "min", "max", "iqr", "cv")


@dataclass(frozen=True)
class GpuTimingPlan:
    warmup: int = 5
    iters: int = 50
    cuda_graph: bool = False  # capture device_call once in a CUDA graph and time its replays


def _latency(samples: list[float], batch: int) -> dict:
    stats = latency_stats(samples, batch)
    return {key: stats[key] for key in LATENCY_KEYS}


def measure_gpu(device_call: Callable, pool: Sequence[np.ndarray], plan: GpuTimingPlan) -> dict:
    """CUDA-event timing of ``device_call`` (CUDA tensor -> CUDA tensor) over the input pool; the ``gpu`` row field."""
    import torch

    device = torch.device("cuda", torch.cuda.current_device())
    stream = torch.cuda.Stream(device)
    batch = int(pool[0].shape[0])
    with torch.cuda.stream(stream), torch.inference_mode():
        hosts = [torch.from_numpy(np.ascontiguousarray(images, np.float32)).pin_memory() for images in pool]
        static_input = hosts[0].to(device)
        for _ in range(max(plan.warmup, 1)):  # at least one: TensorRT sets up shapes on its first enqueue
            output = device_call(static_input)
        if plan.cuda_graph:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                output = device_call(static_input)
            captured = output

            def compute():
                graph.replay()  # refills the buffer the capture allocated
                return captured
        else:
            def compute():
                return device_call(static_input)
        host_output = torch.empty(output.shape, dtype=output.dtype, pin_memory=True)
        times: dict[str, list[float]] = {"h2d": [], "compute": [], "d2h": [], "end_to_end": []}
        for i in range(plan.iters):
            events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            events[0].record(stream)
            static_input.copy_(hosts[i % len(hosts)], non_blocking=True)
            events[1].record(stream)
            result = compute()
            events[2].record(stream)
            host_output.copy_(result, non_blocking=True)
            events[3].record(stream)
            events[3].synchronize()
            times["h2d"].append(events[0].elapsed_time(events[1]))
            times["compute"].append(events[1].elapsed_time(events[2]))
            times["d2h"].append(events[2].elapsed_time(events[3]))
            times["end_to_end"].append(events[0].elapsed_time(events[3]))
    return {
        "device": torch.cuda.get_device_name(device),
        "compute_ms": _latency(times["compute"], batch),
        "end_to_end_ms": _latency(times["end_to_end"], batch),
        "host_to_device_ms": float(np.median(times["h2d"])),
        "device_to_host_ms": float(np.median(times["d2h"])),
        "cuda_graphs": plan.cuda_graph,
        "clock": CLOCK,
        "warmup_runs": max(plan.warmup, 1),
        "runs": plan.iters,
    }


def compute_speedups(rows: list[dict], reference_backend: str = "torch-cuda") -> None:
    """Add ``compute_speedup_vs_eager_gpu`` to GPU rows: eager FP32 GPU compute p50 / this row's, same model and batch."""
    references = {(row["model"], row["batch"]): row["gpu"]["compute_ms"]["p50"]
                  for row in rows if row["backend"] == reference_backend and row.get("gpu")}
    for row in rows:
        reference = references.get((row["model"], row["batch"]))
        if row.get("gpu") and reference:
            row["gpu"]["compute_speedup_vs_eager_gpu"] = reference / row["gpu"]["compute_ms"]["p50"]
