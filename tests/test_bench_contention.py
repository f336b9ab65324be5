"""Contention is measured, not suffered: /proc/stat readings, the verdict per timing group, default threads,
and a real busy loop seen by the sampler."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from convnext_export.bench.contention import (EAGER_VARIATION_LIMIT, CpuSample, LoadWindow, assess, block_variation,
                                               contention_summary, default_threads, measure_before, steal_fraction)

STAT = """cpu  {user} 0 {system} {idle} 0 0 0 {steal} 0 0
cpu0 1 0 1 1 0 0 0 0 0 0
intr 0
procs_running {running}
procs_blocked 0
"""


def _sample(tmp_path: Path, name: str, running: int, steal: int, idle: int, own: str = "RS") -> CpuSample:
    """A /proc/stat and a /proc/self/task with one thread per letter of ``own`` (its state)."""
    path = tmp_path / name
    path.write_text(STAT.format(user=100, system=50, idle=idle, steal=steal, running=running))
    tasks = tmp_path / f"{name}-tasks"
    for n, state in enumerate(own):
        (tasks / str(n)).mkdir(parents=True)
        (tasks / str(n) / "stat").write_text(f"{n} (python (x)) {state} 1 2 3")
    return CpuSample.read(str(path), str(tasks))


def test_proc_stat_is_read_and_this_process_is_not_counted(tmp_path):
    sample = _sample(tmp_path, "a", running=4, steal=10, idle=840)
    assert (sample.running, sample.others_running, sample.total_ticks, sample.steal_ticks) == (4, 3, 1000, 10)
    spinning = _sample(tmp_path, "s", running=4, steal=10, idle=840, own="RRS")  # a runtime worker still spinning
    assert spinning.others_running == 2
    later = _sample(tmp_path, "b", running=1, steal=110, idle=1740)
    assert steal_fraction(sample, later) == pytest.approx(100 / 1000)
    assert CpuSample.read(str(tmp_path / "missing")).others_running is None


def test_a_group_is_contended_for_each_measured_reason(tmp_path):
    quiet = LoadWindow([_sample(tmp_path, "q1", 1, 0, 840), _sample(tmp_path, "q2", 2, 0, 1840)])
    assert quiet.others_running == pytest.approx(0.5)
    verdict = assess(quiet, cores=2, threads=2, eager_variation=0.03)
    assert not verdict["contended"] and verdict["reasons"] == []
    busy = LoadWindow([_sample(tmp_path, "b1", 3, 0, 840), _sample(tmp_path, "b2", 3, 200, 1840)])
    verdict = assess(busy, cores=2, threads=1, eager_variation=EAGER_VARIATION_LIMIT + 0.1)
    assert verdict["contended"] and len(verdict["reasons"]) == 3
    assert "2.0 runnable threads of other work beside this bench's 1 on 2 cores" in verdict["reasons"][0]
    assert "17% of CPU time stolen" in verdict["reasons"][1]  # 200 of 1,200 ticks and "moved 25%" in verdict["reasons"][2]
    summary = contention_summary([{"contention": verdict}, {"contention": assess(quiet, 2, 1, 0.0)}])
    assert summary.startswith("1 of 2 rows were timed on a contended machine") and "cannot be trusted" in summary
    assert "stop the other work" in summary and "--threads 1" not in summary  # at 1 thread already
    at_two = contention_summary([{"contention": assess(busy, cores=2, threads=2, eager_variation=0.0)}])
    assert "--threads 1 leaves a core" in at_two


def test_default_threads_leave_other_work_its_cores():
    assert default_threads(2, 0.0) == 2
    assert default_threads(2, 1.0) == 1
    assert default_threads(2, 7.2) == 1  # never below 1
    assert default_threads(16, 3.4) == 13
    assert default_threads(8, None) == 8  # not measurable: all cores


def test_block_variation_is_iqr_over_median_of_block_medians():
    steady = [[10.0, 10.1, 9.9]] * 8
    assert block_variation(steady) == pytest.approx(0.0)
    moving = [[10.0]] * 4 + [[20.0]] * 4  # half the rounds twice as slow
    assert block_variation(moving) == pytest.approx((20.0 - 10.0) / 15.0)
    assert block_variation([[1.0], [5.0]]) == 0.0  # too few rounds to tell


def _busy_loop(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_busy_loops_beside_the_sampler_are_counted():
    """Two busy-loop processes are always runnable: the sampler sees at least them (other work only adds)."""
    context = multiprocessing.get_context("spawn")
    loops = [context.Process(target=_busy_loop, args=(6.0,)) for _ in range(2)]
    for loop in loops:
        loop.start()
    try:
        time.sleep(1.5)  # spawned interpreters are up and spinning
        window = measure_before(samples=10, interval_s=0.05)
    finally:
        for loop in loops:
            loop.terminate()
            loop.join()
    assert window.others_running is not None and window.others_running >= 1.8
    assert default_threads(2, window.others_running) == 1


def test_the_summary_of_several_timing_groups_gives_the_worst_of_each_measure(tmp_path):
    groups = [assess(LoadWindow([_sample(tmp_path, f"g{n}a", running, 0, 840),
                                 _sample(tmp_path, f"g{n}b", running, 0, 1840)]), 2, 1, variation)
              for n, (running, variation) in enumerate([(4, 0.05), (9, 0.4)])]
    summary = contention_summary([{"contention": g} for g in groups])
    assert "up to 8.0 runnable threads of other work beside this bench's 1 on 2 cores" in summary
    assert "moved up to 40% between rounds" in summary and "3.0 runnable" not in summary
