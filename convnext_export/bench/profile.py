"""One profiler trace per benchmark row, taken in a separate pass after the timed runs.

Profiling slows what it watches, so it never overlaps the timing: each row gets a fresh
session with the runtime's own profiler on (ONNX Runtime: ``enable_profiling``, a Chrome
trace; OpenVINO: per-node ``PERF_COUNT`` times as JSON; PyTorch: ``torch.profiler``,
a Chrome trace) and runs a few batches from the same input pool.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..backends.base import Backend


def trace_stem(row_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", row_id)


def profile_session(open_profiled: Callable[[str], Backend], pool: Sequence[np.ndarray], runs: int,
                    directory: Path, row_id: str) -> Path:
    """Run ``runs`` batches on a session opened with profiling; return the trace file."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = str(directory / trace_stem(row_id))
    backend = open_profiled(prefix)
    for i in range(runs):
        backend.run(pool[i % len(pool)])
    return Path(backend.end_profiling())  # type: ignore[attr-defined]


def profile_torch(run: Callable[[np.ndarray], object], pool: Sequence[np.ndarray], runs: int, directory: Path,
                  row_id: str) -> Path:
    """torch.profiler around ``runs`` eager (or compiled) runs, exported as a Chrome trace."""
    from torch.profiler import ProfilerActivity, profile

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{trace_stem(row_id)}.json"
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        for i in range(runs):
            run(pool[i % len(pool)])
    profiler.export_chrome_trace(str(path))
    return path


def onnxruntime_kernel_events(trace: Path) -> list[dict]:
    """The per-node kernel events of an ONNX Runtime profile (``args.op_name``, ``dur`` in us, shapes)."""
    return [event for event in json.loads(Path(trace).read_text())
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time")]
