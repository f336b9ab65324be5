"""Export time of INT8 against FP32: the same model exported FP32, INT8, FP32 again, in one run, with phases.

    python benchmarks/export_time.py [--size tiny] [--weights W] [--calib-data DIR] [--calib-size N]
        [--profile FILE] [--markdown benchmarks/results/export_time.md]

The machine is shared and busy, so absolute seconds move from run to run: what counts is the
ratio INT8 / FP32, the FP32 reference being the mean of the exports just before and after.
Phases come from the exporter's progress callback (convnext_export/progress.py): a phase runs
from its label's first report (0 done) to its last; "other" is the rest (model build, fusion,
the FP32 and equalization checks, range computation, writing). ``--profile`` adds a pyinstrument profile of the INT8 export
(``pip install pyinstrument``). Exports go through the Python API (``convnext_export.export_model``), i.e. the
same request the CLI builds from ``convnext-export --size S [--int8 --calib-data D --calib-size N]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import convnext_export
from convnext_export.bench.environment import host_line
from convnext_export.calibration.data import DEFAULT_CALIB_SIZE


class PhaseClock:
    """A progress callback recording when each label first and last reported (its phase)."""

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {}  # label -> [first report, last report]

    def __call__(self, label: str, done: int, total: int) -> None:
        now = time.perf_counter()
        self.spans.setdefault(label, [now, now])[1] = now

    def phases(self, total: float) -> dict[str, float]:
        phases = {label: end - start for label, (start, end) in self.spans.items()}
        phases["other"] = total - sum(phases.values())
        return phases


def timed_export(options: dict, profile: Path | None = None) -> tuple[float, dict[str, float]]:
    """Seconds of one ``convnext_export.export_model(**options)`` and its phases."""
    clock = PhaseClock()
    profiler = None
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.01)
        profiler.start()
    started = time.perf_counter()
    convnext_export.export_model(**options, progress=clock)
    seconds = time.perf_counter() - started
    if profiler is not None:
        profiler.stop()
        profile.write_text(profiler.output_text(unicode=False, color=False))
    return seconds, clock.phases(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--weights", default=None, help="checkpoint file or hf-hub:OWNER/NAME id")
    parser.add_argument("--calib-data", type=Path, default=None)
    parser.add_argument("--calib-size", type=int, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="write a pyinstrument profile of the INT8 export")
    parser.add_argument("--markdown", type=Path, default=None, help="append the result to this Markdown file")
    args = parser.parse_args()
    print(host_line(), flush=True)

    model = {"size": None if args.weights else args.size, "weights": args.weights}
    int8 = {"int8": True, "calib_data": args.calib_data, "calib_size": args.calib_size}
    with tempfile.TemporaryDirectory(prefix="export-time-") as work:
        def options(precision: str, name: str) -> dict:
            return {**model, **(int8 if precision == "int8" else {}), "out": Path(work) / name, "force": True}

        convnext_export.export_model(**options("fp32", "warmup"))  # imports and first-call costs out of the measurement
        fp32_before, _ = timed_export(options("fp32", "fp32-before"))
        int8_seconds, phases = timed_export(options("int8", "int8"), args.profile)
        fp32_after, _ = timed_export(options("fp32", "fp32-after"))
    fp32 = (fp32_before + fp32_after) / 2
    calib_size = args.calib_size or DEFAULT_CALIB_SIZE
    calibration = (f"{calib_size} images from {args.calib_data}" if args.calib_data
                   else f"{calib_size} synthetic images")
    lines = [f"INT8 {int8_seconds:.1f} s, FP32 {fp32_before:.1f} s before / {fp32_after:.1f} s after: "
             f"INT8 / FP32 = {int8_seconds / fp32:.2f}"]
    if phases:
        lines += ["", "| INT8 phase | seconds | share |", "|---|---|---|"]
        lines += [f"| {label} | {seconds:.1f} | {seconds / int8_seconds:.0%} |" for label, seconds in phases.items()]
    print("\n".join(lines))
    if args.markdown:
        command = " ".join(["python benchmarks/export_time.py"] + [
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if v is not None and k not in ("markdown", "profile") and not (k == "size" and args.weights)])
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        header = (f"\n## {command} ({when}, {os.cpu_count()} cores, load average "
                  f"{os.getloadavg()[0]:.1f})\n\n{args.weights or args.size}, INT8 calibrated on {calibration}\n\n")
        with args.markdown.open("a") as handle:
            handle.write(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
