"""What else runs beside the benchmark, measured before and while timing, and whether it biases the figures.

A paired speedup cancels a busy machine only when the busy machine slows both sides alike. It does not:
PyTorch's intra-op threads wait for each other at every operator, so when other work takes a core they
stall far more than ONNX Runtime's (on a busy 2-core machine eager PyTorch on 2 threads ran 5-10x slower and
the INT8 speedup read 22.58x instead of 3.41x at 1 thread). So the bench measures the load instead of
trusting the ratio:

- runnable threads of other processes: /proc/stat ``procs_running`` (every runnable thread on the machine)
  less this process's own runnable threads (/proc/self/task: the sampler, and runtime workers still spinning
  after a run), sampled before timing and between rounds;
- CPU steal: the share of /proc/stat's CPU time the hypervisor gave to other guests over the window;
- the eager reference's own variation: the spread of its block medians across rounds, which a quiet machine
  keeps to a few percent.

Default threads are the cores the other work leaves free (at least 1); a timing group is ``contended`` when
other work plus the bench's threads need more cores than there are, when steal is high, or when the eager
model's block medians varied too much, and each reason is recorded in words.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

STEAL_LIMIT = 0.05  # share of CPU time stolen by the hypervisor above which the figures are not trusted
EAGER_VARIATION_LIMIT = 0.15  # IQR / median of eager's block medians across rounds (quiet: a few percent)
OVERSUBSCRIBED_MARGIN = 0.5  # runnable threads beyond the cores, on average, before a group is contended
PRESAMPLES, PRESAMPLE_INTERVAL_S = 10, 0.05  # half a second of load before choosing threads
FIX = "stop the other work, or run on a quiet machine"
FIX_THREADS = ("; --threads 1 leaves a core to light other work and keeps eager PyTorch's threads from waiting on "
               "each other")


def available_cores() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def own_running_threads(tasks: str = "/proc/self/task") -> int:
    """This process's runnable threads (state R), the sampler among them; 1 where it cannot be read."""
    count = 0
    try:
        for task in os.scandir(tasks):
            try:
                with open(os.path.join(task.path, "stat")) as handle:
                    state = handle.read().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                continue  # the thread ended
            count += state == "R"
    except OSError:
        return 1
    return max(count, 1)


@dataclass(frozen=True)
class CpuSample:
    """One reading of /proc/stat (runnable threads, cumulative total and steal CPU ticks) and of this process's
    own runnable threads."""

    running: int | None
    total_ticks: int | None
    steal_ticks: int | None
    own_running: int = 1

    @classmethod
    def read(cls, path: str = "/proc/stat", tasks: str = "/proc/self/task") -> "CpuSample":
        running = total = steal = None
        try:
            with open(path) as handle:
                for line in handle:
                    if line.startswith("cpu "):
                        ticks = [int(v) for v in line.split()[1:]]
                        total, steal = sum(ticks[:8]), (ticks[7] if len(ticks) > 7 else 0)
                    elif line.startswith("procs_running"):
                        running = int(line.split()[1])
        except (OSError, ValueError):
            pass  # not Linux: contention is reported as not measured
        return cls(running, total, steal, own_running_threads(tasks))

    @property
    def others_running(self) -> int | None:
        return None if self.running is None else max(self.running - self.own_running, 0)


def steal_fraction(first: CpuSample, last: CpuSample) -> float | None:
    if None in (first.total_ticks, last.total_ticks, first.steal_ticks, last.steal_ticks):
        return None
    total = last.total_ticks - first.total_ticks
    return (last.steal_ticks - first.steal_ticks) / total if total > 0 else 0.0


@dataclass
class LoadWindow:
    """Samples over one stretch of time (before timing, or one timing group)."""

    samples: list[CpuSample] = field(default_factory=list)

    def sample(self) -> None:
        self.samples.append(CpuSample.read())

    @property
    def others_running(self) -> float | None:
        counts = [s.others_running for s in self.samples if s.others_running is not None]
        return float(np.mean(counts)) if counts else None

    @property
    def steal(self) -> float | None:
        return steal_fraction(self.samples[0], self.samples[-1]) if len(self.samples) > 1 else None


def measure_before(samples: int = PRESAMPLES, interval_s: float = PRESAMPLE_INTERVAL_S) -> LoadWindow:
    """Other work's runnable threads and steal over about half a second, before anything is timed."""
    window = LoadWindow()
    for n in range(samples):
        if n:
            time.sleep(interval_s)
        window.sample()
    return window


def default_threads(cores: int, others_running: float | None) -> int:
    """The cores other work leaves free, at least 1: the bench's threads then need not wait for a core."""
    if others_running is None:
        return cores
    return max(1, min(cores, cores - int(round(others_running))))


def block_variation(rounds: list[list[float]]) -> float:
    """IQR / median of the per-round block medians: how much the machine moved one variant's time."""
    medians = np.asarray([np.median(block) for block in rounds if block], np.float64)
    if len(medians) < 4:
        return 0.0
    q25, q50, q75 = np.percentile(medians, [25, 50, 75])
    return float((q75 - q25) / q50) if q50 > 0 else 0.0


def contention_reasons(others: float | None, steal: float | None, eager_variation: float, cores: int,
                       threads: int, up_to: bool = False) -> list[str]:
    """Each measured reason the figures cannot be trusted, in words (``up_to``: the worst of several groups)."""
    most = "up to " if up_to else ""
    reasons = []
    if others is not None and others + threads > cores + OVERSUBSCRIBED_MARGIN:
        reasons.append(f"{most}{others:.1f} runnable threads of other work beside this bench's {threads} on {cores} "
                       f"core{'s' if cores != 1 else ''}")
    if steal is not None and steal > STEAL_LIMIT:
        reasons.append(f"{most}{steal:.0%} of CPU time stolen by the hypervisor")
    if eager_variation > EAGER_VARIATION_LIMIT:
        reasons.append(f"the eager model's time moved {most}{eager_variation:.0%} between rounds "
                       f"(IQR/median of its block medians; quiet: a few percent)")
    return reasons


def assess(window: LoadWindow, cores: int, threads: int, eager_variation: float) -> dict:
    """The contention record of one timing group: what was measured, and each reason it is not to be trusted."""
    others, steal = window.others_running, window.steal
    reasons = contention_reasons(others, steal, eager_variation, cores, threads)
    return {"contended": bool(reasons), "reasons": reasons, "others_running": others, "cores": cores,
            "threads": threads, "steal": steal, "eager_variation": eager_variation, "samples": len(window.samples)}


def before_record(window: LoadWindow, cores: int, threads: int, chosen: bool) -> dict:
    """The load seen before timing and how the thread count came about."""
    others = window.others_running
    how = ("given with --threads" if not chosen else
           "all cores: other work's load could not be read" if others is None else
           f"the {threads} of {cores} cores that {others:.1f} runnable threads of other work left free")
    return {"others_running": others, "steal": window.steal, "cores": cores, "threads": threads,
            "threads_chosen": how, "method": "/proc/stat procs_running (less this process's runnable threads) and "
                                             "steal ticks, "
                                             f"{len(window.samples)} samples before timing and one per round"}


def contention_summary(rows: list[dict]) -> str | None:
    """One warning for the rows timed on a contended machine, saying why and what would fix it."""
    flagged = [row for row in rows if (row.get("contention") or {}).get("contended")]
    if not flagged:
        return None
    records = [row["contention"] for row in flagged]
    if len({(r["others_running"], r["steal"], r["eager_variation"]) for r in records}) == 1:
        reasons = records[0]["reasons"]
    else:  # several timing groups: the worst of each measure
        def worst(key: str) -> float | None:
            values = [r[key] for r in records if r.get(key) is not None]
            return max(values) if values else None

        reasons = contention_reasons(worst("others_running"), worst("steal"), worst("eager_variation") or 0.0,
                                     records[0]["cores"], records[0]["threads"], up_to=True)
    return (f"{len(flagged)} of {len(rows)} rows were timed on a contended machine ({'; '.join(reasons)}): "
            f"their speedups cannot be trusted, because other work slows eager PyTorch's threads more than ONNX "
            f"Runtime's and so biases the ratio, not only its noise; to fix: {FIX}"
            + ("" if records[0]["threads"] == 1 else FIX_THREADS))
