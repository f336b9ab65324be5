"""Latency measured honestly: alternating short blocks of runs, fresh inputs, same-run ratios.

Every variant (eager, each artifact on each backend) runs on the same pool of distinct
random inputs, cycled so that consecutive runs never see the same array. After ``warmup``
untimed runs each, the variants take turns in rounds: a block of ``block`` timed runs of
one variant, then the next, with the starting variant rotated every round, so drift of the
shared machine (other jobs, clocks, caches) hits all of them alike. The speedup of a
variant is the median over rounds of (eager block median / variant block median): a ratio
of runs that were seconds apart, not minutes. Its spread is the 95% half-width of that
median (1.96 x 1.2533 x IQR/1.349 / sqrt(rounds)), relative to it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

HIGH_CV = 0.15  # a coefficient of variation above this earns a warning


@dataclass(frozen=True)
class TimingPlan:
    warmup: int = 5
    iters: int = 50  # timed runs per variant, at least
    min_time: float = 0.0  # seconds of timed runs per variant, at least
    block: int = 5  # consecutive runs of one variant before the next takes its turn
    pool: int = 8  # distinct inputs cycled

    def describe(self) -> dict:
        return {
            "method": "alternating-blocks",
            "warmup_runs": self.warmup,
            "min_runs": self.iters,
            "min_time_s": self.min_time,
            "block_runs": self.block,
            "input_pool": self.pool,
            "clock": "time.perf_counter_ns around one backend.run(images) call, host to host (outputs as numpy)",
            "order": "rounds of one block per variant, starting variant rotated each round",
            "speedup": "median over rounds of eager block median / variant block median",
            "speedup_spread": "1.96 x 1.2533 x (IQR/1.349) / sqrt(rounds), relative to the median speedup",
        }


@dataclass
class VariantTiming:
    """What one variant measured: every timed run (ms), grouped by round, and the input each saw."""

    name: str
    rounds: list[list[float]] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)  # pool index of each timed run, in order
    warmup_runs: int = 0

    @property
    def samples(self) -> list[float]:
        return [ms for block in self.rounds for ms in block]

    @property
    def total_s(self) -> float:
        return sum(self.samples) / 1e3


def input_pool(batch: int, image_size: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` distinct seeded standard-normal batches (the scale of normalized pixels)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32) for _ in range(max(count, 1))]


def measure_alternating(
    variants: dict[str, Callable[[np.ndarray], object]], pool: Sequence[np.ndarray], plan: TimingPlan,
    clock: Callable[[], int] = time.perf_counter_ns, on_round: Callable[[int], None] | None = None,
) -> dict[str, VariantTiming]:
    """Time every variant in alternating blocks; each variant sees pool[0], pool[1], ... in turn."""
    names = list(variants)
    timings = {name: VariantTiming(name) for name in names}
    for _ in range(plan.warmup):
        for name in names:
            variants[name](pool[timings[name].warmup_runs % len(pool)])
            timings[name].warmup_runs += 1
    counter = dict.fromkeys(names, 0)
    round_index = 0
    while True:
        remaining = plan.iters - counter[names[0]]
        if remaining <= 0 and all(t.total_s >= plan.min_time for t in timings.values()):
            break
        block = plan.block if remaining <= 0 else min(plan.block, remaining)
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            run, times = variants[name], []
            for _ in range(block):
                index = counter[name] % len(pool)
                images = pool[index]
                begin = clock()
                run(images)
                times.append((clock() - begin) / 1e6)
                timings[name].inputs.append(index)
                counter[name] += 1
            timings[name].rounds.append(times)
        round_index += 1
        if on_round:
            on_round(round_index)
    return timings


def latency_stats(samples_ms: Sequence[float], batch: int) -> dict:
    """mean, std, p50, p90, p99, min, max, CV and throughput (images/s at the mean)."""
    x = np.asarray(samples_ms, np.float64)
    mean = float(x.mean())
    p25, p50, p75, p90, p99 = (float(v) for v in np.percentile(x, [25, 50, 75, 90, 99]))
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    return {
        "mean": mean, "std": std, "p50": p50, "p90": p90, "p99": p99, "min": float(x.min()), "max": float(x.max()),
        "iqr": p75 - p25, "cv": std / mean if mean > 0 else 0.0, "runs": int(len(x)),
        "throughput_ips": batch * 1e3 / mean if mean > 0 else 0.0,
    }


def paired_speedup(reference: VariantTiming, variant: VariantTiming) -> dict:
    """Median over rounds of reference block median / variant block median, with its relative spread."""
    ratios = np.asarray([np.median(r) / np.median(v) for r, v in zip(reference.rounds, variant.rounds)], np.float64)
    median = float(np.median(ratios))
    q25, q75 = np.percentile(ratios, [25, 75])
    spread = 1.96 * 1.2533 * (float(q75 - q25) / 1.349) / math.sqrt(len(ratios)) / median if median > 0 else 0.0
    return {"speedup": median, "spread": spread, "rounds": int(len(ratios)),
            "round_min": float(ratios.min()), "round_max": float(ratios.max())}
