"""Timing honesty: every variant runs the requested number of times, on fresh inputs, in
alternating blocks, and speedups are ratios of runs taken side by side in the same run."""

from __future__ import annotations

import numpy as np
import pytest

from convnext_export.bench.timing import TimingPlan, input_pool, latency_stats, measure_alternating, paired_speedup


class Recorder:
    """A fake backend that records which pool entry it was given and when."""

    def __init__(self, name: str, pool: list[np.ndarray], log: list[tuple[str, int]]) -> None:
        self.name, self.pool, self.log = name, pool, log

    def __call__(self, images: np.ndarray) -> np.ndarray:
        index = next(i for i, candidate in enumerate(self.pool) if candidate is images)
        self.log.append((self.name, index))
        return images


def test_each_variant_runs_the_requested_times_on_fresh_inputs():
    pool = input_pool(batch=2, image_size=8, count=4, seed=0)
    assert all(not np.array_equal(a, b) for i, a in enumerate(pool) for b in pool[i + 1:]), "pool entries must differ"
    log: list[tuple[str, int]] = []
    variants = {name: Recorder(name, pool, log) for name in ("eager", "onnx", "int8")}
    plan = TimingPlan(warmup=3, iters=12, block=5, pool=4)
    timings = measure_alternating(variants, pool, plan)
    for name, timing in timings.items():
        calls = [index for who, index in log if who == name]
        assert len(calls) == plan.warmup + plan.iters  # warmup + timed, nothing more
        assert timing.warmup_runs == plan.warmup
        assert len(timing.samples) == plan.iters
        # timed runs cycle the pool: consecutive runs never reuse an input, all variants see the same sequence
        assert timing.inputs == [i % 4 for i in range(plan.iters)]
        assert all(a != b for a, b in zip(timing.inputs, timing.inputs[1:]))
    # blocks alternate: rounds of 5, 5, 2 runs, each round visiting every variant once, start rotated
    timed = log[plan.warmup * 3:]
    blocks = [timed[0][0]]
    for who, _ in timed[1:]:
        if who != blocks[-1]:
            blocks.append(who)
    assert blocks == ["eager", "onnx", "int8", "onnx", "int8", "eager", "int8", "eager", "onnx"]
    assert [len(r) for r in timings["onnx"].rounds] == [5, 5, 2]


def test_min_time_adds_rounds_until_every_variant_has_enough():
    pool = input_pool(1, 4, 2, 0)
    now = [0]

    def clock() -> int:
        return now[0]

    def slow(images):  # 2 ms per run
        now[0] += 2_000_000

    def fast(images):  # 0.5 ms per run
        now[0] += 500_000

    timings = measure_alternating({"slow": slow, "fast": fast}, pool, TimingPlan(warmup=0, iters=4, min_time=0.05, block=4),
                                  clock=clock)
    assert timings["fast"].total_s >= 0.05  # 100 runs of 0.5 ms
    assert len(timings["fast"].samples) == len(timings["slow"].samples) == 100  # paired: same number of runs


def test_speedup_is_paired_within_rounds_so_machine_drift_cancels():
    """The machine slows down 5x halfway; variant B is always 4x faster than eager in the same round."""
    pool = input_pool(1, 4, 3, 0)
    now, runs = [0], [0]

    def clock() -> int:
        return now[0]

    def cost(ms: float):
        def run(images):
            runs[0] += 1
            slowdown = 5.0 if runs[0] > 60 else 1.0
            now[0] += int(ms * slowdown * 1e6)
        return run

    timings = measure_alternating({"eager": cost(8.0), "b": cost(2.0)}, pool, TimingPlan(warmup=0, iters=60, block=5),
                                  clock=clock)
    speedup = paired_speedup(timings["eager"], timings["b"])
    assert speedup["speedup"] == pytest.approx(4.0)
    assert speedup["rounds"] == 12
    # the naive ratio of overall medians would be distorted by when each variant happened to run
    assert len(timings["eager"].samples) == len(timings["b"].samples) == 60


def test_latency_stats_against_numpy():
    samples = [1.0, 2.0, 3.0, 4.0, 10.0]
    stats = latency_stats(samples, batch=4)
    assert stats["mean"] == pytest.approx(4.0)
    assert stats["p50"] == pytest.approx(3.0)
    assert stats["std"] == pytest.approx(np.std(samples, ddof=1))
    assert stats["cv"] == pytest.approx(np.std(samples, ddof=1) / 4.0)
    assert stats["p99"] == pytest.approx(np.percentile(samples, 99))
    assert stats["min"] == 1.0 and stats["max"] == 10.0
    assert stats["throughput_ips"] == pytest.approx(4 * 1000 / 4.0)
