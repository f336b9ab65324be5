"""Cold start and peak memory of one backend, each measured in a fresh interpreter.

Measured in the benchmark's own process, memory would be wrong both ways: pages an earlier
export freed stay resident and get reused (a session can look free), and libraries another
backend loaded are shared. So every (artifact, backend) gets a child process that imports its
runtime, notes its RSS, resets the kernel's peak-RSS mark (write ``5`` to
``/proc/self/clear_refs``), then creates the session (or rebuilds the eager model from the
manifest) and runs one batch. It reports the wall time of that, the process's peak RSS (what a
process serving only this backend needs) and the part of it that creation + first run added.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

METHOD = ("subprocess per (artifact, backend): runtime imported first (not counted), then peak RSS (VmHWM, reset "
          "through /proc/self/clear_refs) during session creation / model rebuild + first run; peak_rss_mb is "
          "the whole process's peak, session_rss_mb the part creation + first run added")
TIMEOUT_S = 900


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def measure_cold_start(backend: str, artifact_dir: str, threads: int, batch: int, seed: int) -> dict:
    """Run the child; its one JSON line, or an ``error`` entry when it failed."""
    job = {"backend": backend, "artifact": artifact_dir, "threads": threads, "batch": batch, "seed": seed}
    try:
        done = subprocess.run([sys.executable, "-m", "convnext_export.bench.coldstart", json.dumps(job)],
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"cold-start child did not finish in {TIMEOUT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"cold-start child failed: {tail[:200]}"}
    return json.loads(lines[-1])


def _child(job: dict) -> dict:
    import numpy as np

    from ..artifact import read_artifact
    from ..backends.base import backend_spec

    spec = backend_spec(job["backend"])
    spec.import_runtime()
    artifact = read_artifact(job["artifact"], verify=False)  # the parent checked its sha256
    if spec.consumes == "reference":
        from ..pipeline import rebuild_reference  # imports torch and the model code before the clock starts
    size = artifact.preprocessing.image_size
    images = np.random.default_rng(job["seed"]).standard_normal((job["batch"], 3, size, size), dtype=np.float32)
    before = _status_kb("VmRSS")
    reset = _reset_peak()
    started = time.perf_counter()
    if spec.consumes == "reference":
        runner = spec.open(model=rebuild_reference(artifact), threads=job["threads"])
    else:
        runner = spec.open(model_path=spec.artifact_file(artifact), threads=job["threads"])
    runner.run(images)
    seconds = time.perf_counter() - started
    peak = _status_kb("VmHWM")
    measured = reset and before is not None and peak is not None
    return {"seconds": seconds, "batch": job["batch"],
            "peak_rss_mb": peak / 1024 if measured else None,
            "session_rss_mb": max(peak - before, 0) / 1024 if measured else None}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
