"""The latency gate on synthetic reports: matching, tolerance with spread, missing rows, bad baselines."""

from __future__ import annotations

import copy
import json

import pytest

from convnext_export.bench.gate import compare, load_report, parse_regression
from convnext_export.bench.runner import SCHEMA
from convnext_export.errors import InputError


def _row(backend: str, precision: str, speedup: float, p50: float, spread: float = 0.02) -> dict:
    return {"model": "atto@64", "precision": precision, "target": "cpu" if precision == "int8" else None,
            "backend": backend, "batch": 1, "runs": 50,
            "latency_ms": {"p50": p50, "iqr": 0.02 * p50},
            "speedup_vs_eager": {"speedup": speedup, "spread": spread}}


def _report(int8_speedup: float = 3.0, eager_ms: float = 9.0, cpu: str = "AMD EPYC") -> dict:
    return {"schema": SCHEMA, "environment": {"cpu": {"model": cpu, "cores": 2}, "threads": 1, "gpus": []},
            "rows": [_row("torch", "fp32", 1.0, eager_ms), _row("onnxruntime", "fp32", 2.0, eager_ms / 2),
                     _row("onnxruntime", "int8", int8_speedup, eager_ms / int8_speedup)]}


def test_parse_regression():
    assert parse_regression("10%") == pytest.approx(0.1)
    assert parse_regression("0.25") == pytest.approx(0.25)
    for bad in ("ten", "150%", "-5%"):
        with pytest.raises(InputError, match="--max-regression"):
            parse_regression(bad)


def test_same_report_passes_and_halved_speedup_fails_naming_the_row():
    current = _report()
    assert compare(current, copy.deepcopy(current), 0.10).passed
    result = compare(_report(int8_speedup=6.0), current, 0.10)
    assert not result.passed
    assert [c["row"] for c in result.regressions] == ["atto@64/int8/cpu/onnxruntime/b1"]
    assert result.regressions[0]["change"] == pytest.approx(-0.5)


def test_tolerance_is_max_regression_plus_both_spreads():
    baseline, current = _report(int8_speedup=3.0), _report(int8_speedup=2.5)  # -16.7%
    assert not compare(baseline, current, 0.10).passed  # allowed 10% + 2% + 2%
    for report in (baseline, current):
        report["rows"][2]["speedup_vs_eager"]["spread"] = 0.05
    assert compare(baseline, current, 0.10).passed  # allowed 10% + 5% + 5%


def test_slower_machine_passes_in_speedup_mode_but_not_in_absolute_mode():
    baseline, current = _report(eager_ms=9.0), _report(eager_ms=18.0)  # everything 2x slower, same ratios
    assert compare(baseline, current, 0.10).passed
    result = compare(baseline, current, 0.10, absolute=True)
    assert not result.passed
    assert {c["row"] for c in result.regressions} == {"atto@64/fp32/-/torch/b1", "atto@64/fp32/-/onnxruntime/b1",
                                                      "atto@64/int8/cpu/onnxruntime/b1"}


def test_missing_rows_fail_unless_allowed_and_another_machine_is_noted():
    baseline, current = _report(cpu="Intel Xeon"), _report()
    current["rows"].pop()
    result = compare(baseline, current, 0.10)
    assert result.missing_in_current == ["atto@64/int8/cpu/onnxruntime/b1"] and not result.passed
    assert any("another machine" in note and "Intel Xeon" in note for note in result.notes)
    assert compare(baseline, current, 0.10, allow_missing=True).passed


@pytest.mark.parametrize("content, message", [
    ("not json at all", "not readable JSON"),
    (json.dumps({"rows": []}), "not a convnext-bench JSON report"),
    (json.dumps({"schema": "convnext-export/1", "model_file": "model.onnx"}), "not a convnext-bench JSON report"),
    (json.dumps({"schema": "convnext-bench/2", "rows": []}), "is not this version's"),
    (json.dumps({"schema": SCHEMA, "rows": [{"model": "x"}]}), "a row lacks"),
])
def test_a_baseline_that_is_not_a_bench_report_is_an_input_error(tmp_path, content, message):
    path = tmp_path / "old.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        load_report(path, SCHEMA)
    assert error.value.exit_code == 2 and "--baseline" in str(error.value)


def test_gate_reports_but_does_not_gate_across_kernel_families():
    """A baseline from a VNNI / AVX-512 machine: on an AVX2 machine INT8 and FP32 speedups are reported with the
    reason, not gated, and a gate that gated nothing could not gate; on a machine of the same kind they are gated."""
    import copy

    from convnext_export.bench.gate import compare

    def report(flags, int8_speedup, fp32_speedup):
        rows = [{"model": "atto@64", "precision": precision, "target": target, "backend": "onnxruntime", "batch": 1,
                 "speedup_vs_eager": {"speedup": speedup, "spread": 0.01}, "latency_ms": {"p50": 1.0}}
                for precision, target, speedup in (("int8", "cpu", int8_speedup), ("fp32", None, fp32_speedup))]
        return {"environment": {"cpu": {"flags": flags, "architecture": "x86_64"}}, "rows": rows}

    zen4 = report(["avx2", "avx512f", "avx512bw", "avx512_vnni"], 6.6, 4.2)
    avx2 = report(["avx2", "fma"], 3.0, 2.5)
    result = compare(zen4, avx2, 0.2)
    assert not result.passed and not result.regressions and result.status == "could-not-gate"
    assert all("not_gated" in c for c in result.compared)
    assert "gated nothing (0 gated of 2 compared" in result.could_not_gate[0]
    assert "record a baseline on this kind of CPU" in result.could_not_gate[0]
    assert any("INT8 rows are reported, not gated" in n and "avx512_vnni" in n and "avx2" in n for n in result.notes)
    same_kind = compare(zen4, copy.deepcopy(zen4) | {"rows": avx2["rows"]}, 0.2)
    assert not same_kind.passed and len(same_kind.regressions) == 2


def test_the_baseline_of_this_machines_kernel_family_is_chosen():
    """--baseline repeated, one per kind of CPU: an AVX2 run is gated against the AVX2 baseline, not skipped."""
    from convnext_export.bench.gate import select_baseline

    def report(flags, int8_speedup):
        rows = [{"model": "atto@64", "precision": "int8", "target": "cpu", "backend": "onnxruntime", "batch": 1,
                 "speedup_vs_eager": {"speedup": int8_speedup, "spread": 0.01}, "latency_ms": {"p50": 1.0}}]
        return {"environment": {"cpu": {"flags": flags, "architecture": "x86_64"}}, "rows": rows}

    baselines = {"zen4.json": report(["avx2", "avx512f", "avx512bw", "avx512_vnni"], 6.6),
                 "avx2.json": report(["avx2", "fma"], 3.0)}
    avx2_run = report(["avx2", "fma"], 1.5)
    path, notes = select_baseline(baselines, avx2_run)
    assert path == "avx2.json" and "kernel family" in notes[0]
    result = compare(baselines[path], avx2_run, 0.2)
    assert result.status == "failed" and result.gated == 1  # gated, and the halved speedup caught
    path, notes = select_baseline({"zen4.json": baselines["zen4.json"]}, avx2_run)
    assert path == "zen4.json" and notes == []
