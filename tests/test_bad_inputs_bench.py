"""convnext-bench over a table of bad inputs: baselines (NaN, wrong type, another ISA, another schema, not
JSON, no rows, contended rows) and bench options (threads, min-time, batches, options that would be ignored).
Each case runs the installed console script (tests/bad_input.py): exit code, message, no traceback, inputs intact,
nothing left behind. Gate cases compare reports with --from-json, so no case times anything."""

from __future__ import annotations

import copy
import functools
import json
import shutil
from pathlib import Path

import pytest

from bad_input import REPO, BadInput, run_bad_input

BASELINE = REPO / "benchmarks" / "baseline-atto.json"


def _committed() -> dict:
    return json.loads(BASELINE.read_text())


def _reports(edit_baseline=None, edit_current=None, raw_baseline: str | None = None):
    """Setup writing current.json (the committed baseline's run) and baseline.json (edited, or raw text)."""
    def setup(work: Path) -> None:
        current, baseline = _committed(), _committed()
        if edit_current:
            edit_current(current)
        if edit_baseline:
            edit_baseline(baseline)
        (work / "current.json").write_text(json.dumps(current))
        (work / "baseline.json").write_text(raw_baseline if raw_baseline is not None else json.dumps(baseline))
    return setup


def _speedups(value):
    def edit(report: dict) -> None:
        for row in report["rows"]:
            if row["backend"] != "torch":
                row["speedup_vs_eager"]["speedup"] = value
    return edit


def _other_isa(report: dict) -> None:
    """The baseline as if recorded on an AVX2 machine without VNNI (float and int8 kernels of another family)."""
    report["environment"]["cpu"]["flags"] = ["avx2", "fma"]
    report["environment"].pop("integer_path", None)


def _contended(report: dict) -> None:
    for row in report["rows"]:
        row["contention"] = {"contended": True, "reasons": ["2.0 runnable threads of other work beside this bench's "
                                                            "1 on 2 cores"], "others_running": 2.0, "cores": 2,
                             "threads": 1, "steal": 0.0, "eager_variation": 0.3, "samples": 40}


@functools.cache
def _static_batch_artifact() -> Path:
    """A real FP32 artifact exported with a static batch of 4 (atto, 32 px), once per test process."""
    import tempfile

    from convnext_export.pipeline import ExportRequest, PreprocessingOverrides, export_artifact

    root = Path(tempfile.mkdtemp(prefix="convnext-bench-static-"))
    out = root / "atto-b4"
    export_artifact(ExportRequest(size="atto", batch=4, preprocessing=PreprocessingOverrides(image_size=32), out=out))
    return out


def _copy_static(work: Path) -> None:
    shutil.copytree(_static_batch_artifact(), work / "atto-b4")


GATE = ("--from-json", "{work}/current.json", "--baseline", "{work}/baseline.json", "--quiet")

CASES = [
    # baselines
    BadInput("baseline-nan-speedups", "convnext-bench", GATE, 3, ("could not gate", "non-finite", "re-record"),
             _reports(edit_baseline=_speedups(float("nan")))),
    BadInput("baseline-infinite-speedups", "convnext-bench", GATE, 3, ("could not gate", "non-finite"),
             _reports(edit_baseline=_speedups(float("inf")))),
    BadInput("baseline-speedup-wrong-type", "convnext-bench", GATE, 2, ("speedup_vs_eager.speedup", "'fast'",
                                                                        "not a number"),
             _reports(edit_baseline=_speedups("fast"))),
    BadInput("baseline-speedup-boolean", "convnext-bench", GATE, 2, ("not a number",),
             _reports(edit_baseline=_speedups(True))),
    BadInput("baseline-other-isa", "convnext-bench", GATE, 3,
             ("could not gate", "gated nothing", "0 gated of 2 compared", "record a baseline on this kind of cpu",
              "convnext-bench --size atto"), _reports(edit_baseline=_other_isa)),
    BadInput("baseline-other-schema", "convnext-bench", GATE, 2, ("convnext-bench/2", "re-record"),
             _reports(edit_baseline=lambda r: r.update(schema="convnext-bench/2"))),
    BadInput("baseline-not-a-bench-report", "convnext-bench", GATE, 2, ("not a convnext-bench json report",),
             _reports(edit_baseline=lambda r: r.update(schema="convnext-export/1"))),
    BadInput("baseline-not-json", "convnext-bench", GATE, 2, ("not readable json",),
             _reports(raw_baseline="{ this is not json")),
    BadInput("baseline-empty-rows", "convnext-bench", GATE, 2, ("no rows", "re-record"),
             _reports(edit_baseline=lambda r: r.update(rows=[]))),
    BadInput("baseline-row-without-speedup", "convnext-bench", GATE, 2, ("a row lacks", "speedup_vs_eager"),
             _reports(edit_baseline=lambda r: r["rows"][1].pop("speedup_vs_eager"))),
    BadInput("baseline-missing-file", "convnext-bench", ("--from-json", "{work}/current.json", "--baseline",
                                                         "{work}/nowhere.json"), 2, ("no such file",),
             _reports()),
    BadInput("baseline-contended-run", "convnext-bench", GATE, 3, ("could not gate", "contended machine",
                                                                   "--threads 1"),
             _reports(edit_current=_contended)),
    BadInput("baseline-contended-baseline", "convnext-bench", GATE, 3, ("could not gate", "contended machine"),
             _reports(edit_baseline=_contended)),
    BadInput("from-json-no-rows-plot", "convnext-bench", ("--from-json", "{work}/baseline.json", "--plot",
                                                          "{work}/plot.png"), 2, ("no rows",),
             _reports(edit_baseline=lambda r: r.update(rows=[])), outputs=("plot.png",)),
    # bench options
    BadInput("threads-100000", "convnext-bench", ("--threads", "100000"), 2, ("--threads 100000", "give 1 to"),
             process=True),  # segfaulted once: only a real process shows it
    BadInput("min-time-nan", "convnext-bench", ("--min-time", "nan"), 2, ("--min-time nan", "finite"), process=True),
    BadInput("min-time-inf", "convnext-bench", ("--min-time", "inf"), 2, ("--min-time inf", "finite")),
    BadInput("min-time-huge", "convnext-bench", ("--min-time", "1e9"), 2, ("--min-time", "3600")),
    BadInput("batch-zero", "convnext-bench", ("--batch", "0"), 2, ("--batch", ">= 1")),
    BadInput("image-size-with-artifact", "convnext-bench", ("{work}/some-artifact", "--image-size", "64"), 2,
             ("--image-size applies to the default set", "re-export")),
    BadInput("size-and-weights-with-from-json", "convnext-bench", ("--from-json", "{work}/current.json", "--size",
                                                                   "atto"), 2, ("--size applies",), _reports()),
    BadInput("max-regression-without-baseline", "convnext-bench", ("--from-json", "{work}/current.json",
                                                                   "--max-regression", "20%"), 2,
             ("--max-regression applies to the latency gate", "--baseline"), _reports()),
    BadInput("absolute-without-baseline", "convnext-bench", ("--from-json", "{work}/current.json", "--absolute"), 2,
             ("--absolute applies", "--baseline"), _reports()),
    BadInput("static-batch-left-out", "convnext-bench", ("{work}/atto-b4", "--batch", "1,2", "--no-cold-start"), 2,
             ("atto-b4 (static batch 4", "--batch 1,2,4"), _copy_static),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bench_bad_input(case: BadInput, tmp_path: Path) -> None:
    run_bad_input(case, tmp_path)


def test_committed_baseline_gates_itself() -> None:
    """The committed baseline against its own run passes (the same figures) on every machine: kernel families are
    read from the reports, not from this host."""
    from convnext_export.bench.gate import compare

    result = compare(_committed(), copy.deepcopy(_committed()), 0.2)
    assert result.status == "passed" and result.gated == 2
