"""convnext-bench end to end on tiny artifacts (atto, 32 px): table, JSON (schema), Markdown,
PNG, per-stage drift, the latency gate and bad input, through click's CliRunner and once
through the installed console script."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from convnext_export.artifact import MANIFEST, read_artifact
from convnext_export.bench import SCHEMA_PATH
from convnext_export.bench.report import markdown_report
from convnext_export.bench.stages import stage_drift
from convnext_export.cli import bench_command
from convnext_export.pipeline import rebuild_reference

from bench_artifacts import IMAGE, atto_artifacts

ITERS, WARMUP, BLOCK = 24, 2, 2  # 12 rounds: enough for a usable spread
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="session")
def artifacts() -> dict[str, Path]:
    return atto_artifacts()


def _validate(report: dict) -> None:
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))


def invoke(*args):
    return CliRunner().invoke(bench_command, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def bench_run(artifacts) -> dict:
    """One full run: both artifacts, every default backend, batches 1 and 2, cold start on, all outputs."""
    out = artifacts["root"] / "run"
    out.mkdir(exist_ok=True)
    result = invoke(artifacts["fp32"], artifacts["int8"], "--batch", "1,2", "--threads", "1", "--iters", ITERS,
                    "--warmup", WARMUP, "--block", BLOCK, "--json", out / "bench.json", "--markdown", out / "bench.md",
                    "--plot", out / "bench.png", "--profile", out / "traces")
    return {"result": result, "dir": out, "report": json.loads((out / "bench.json").read_text())
            if (out / "bench.json").is_file() else None}


def test_bench_prints_table_and_writes_json_markdown_png(bench_run):
    result, out, report = bench_run["result"], bench_run["dir"], bench_run["report"]
    assert result.exit_code == 0, result.output
    for text in ("speedup", "atto@32-10cls int8", "onnxruntime", "skipped backends not measured",
                 "per-stage drift of atto-int8"):
        assert text in result.output
    skips = [line for line in result.output.splitlines() if "not measured:" in line or "not installed" in line]
    assert len(skips) == 1 and "tensorrt" in skips[0]  # said once, grouped
    skipped = next(s for s in report["skipped"] if s["backend"] == "tensorrt")
    assert "'convnext-export[tensorrt]'" in skipped["reason"]
    assert "'convnext-export[tensorrt]'" in " ".join(result.output.split())  # not eaten as rich markup
    _validate(report)
    backends = ["torch", "onnxruntime"] + (["openvino"] if HAS_OPENVINO else [])
    expected = {("fp32", "torch")} | {(p, b) for p in ("fp32", "int8") for b in backends if b != "torch"}
    assert {(r["precision"], r["backend"]) for r in report["rows"]} == expected
    assert sorted({r["batch"] for r in report["rows"]}) == [1, 2]
    assert {s["backend"] for s in report["skipped"]} >= {"onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"}
    markdown = (out / "bench.md").read_text()
    assert "| variant | backend | batch |" in markdown and "atto@32-10cls int8" in markdown
    # no --data: the agreement is a plumbing check, said under the table and in each drift cell
    plumbing = "plumbing check, not an accuracy figure (checkpoint weights on 16 synthetic noise images)"
    assert f"- drift and top-1 agree of atto@32-10cls: {plumbing}" in markdown
    assert plumbing in " ".join(result.output.split())
    drifted = [r for r in report["rows"] if r["drift"]]
    assert drifted and all(r["drift"]["meaning"]["kind"] == "plumbing-check" for r in drifted)
    assert all("(plumbing) |" in line for line in markdown.splitlines() if "| onnxruntime |" in line)
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(Path(r["profile"]).is_file() for r in report["rows"])


def test_every_row_ran_the_requested_runs_on_fresh_inputs_beside_eager_of_the_same_run(bench_run):
    report = bench_run["report"]
    rounds = math.ceil(ITERS / BLOCK)
    for row in report["rows"]:
        assert row["runs"] == ITERS and row["warmup_runs"] == WARMUP
        assert row["distinct_inputs"] == min(ITERS, report["settings"]["timing"]["input_pool"])
        speedup = row["speedup_vs_eager"]
        assert speedup["rounds"] == rounds  # paired round by round with the eager runs of this run
        if row["backend"] == "torch":
            assert speedup["speedup"] == 1.0
        else:
            assert speedup["round_min"] <= speedup["speedup"] <= speedup["round_max"]
        assert row["cold_start"]["seconds"] > 0 and row["cold_start"]["peak_rss_mb"] > row["cold_start"]["session_rss_mb"] > 0


def test_drift_rows_match_an_independent_recomputation(bench_run, artifacts):
    """FP32 ONNX Runtime agrees with eager to float rounding; INT8 drifts more; stage drift has 4 stages."""
    report = bench_run["report"]
    fp32 = next(r for r in report["rows"] if r["precision"] == "fp32" and r["backend"] == "onnxruntime")
    int8 = next(r for r in report["rows"] if r["precision"] == "int8" and r["backend"] == "onnxruntime")
    assert fp32["drift"]["relative_max_abs"] < 1e-5 and fp32["drift"]["top1_agreement"] == 1.0
    assert 1e-4 < int8["drift"]["relative_max_abs"] < 0.5
    artifact = next(a for a in report["artifacts"] if a["precision"] == "int8")
    assert [s["shape"] for s in artifact["stage_drift"]] == [[40, 8, 8], [80, 4, 4], [160, 2, 2], [320, 1, 1]]


def test_reports_written_before_drift_meaning_still_say_plumbing(bench_run):
    """A report without the recorded meaning (an older --json) is labeled from its settings and artifacts."""
    report = json.loads(json.dumps(bench_run["report"]))
    for row in report["rows"]:
        if row["drift"]:
            del row["drift"]["meaning"]
    _validate(report)
    assert ("drift and top-1 agree of atto@32-10cls: plumbing check, not an accuracy figure (checkpoint weights on "
            "16 synthetic noise images)") in markdown_report(report)


def test_stage_outputs_are_found_in_the_graph(artifacts):
    """On the FP32 graph the found tensors equal eager's stage outputs; on INT8 the error is real but bounded."""
    images = np.random.default_rng(7).standard_normal((4, 3, IMAGE, IMAGE), dtype=np.float32)
    fp32 = read_artifact(artifacts["fp32"])
    reference = rebuild_reference(fp32)
    exact = stage_drift(fp32, reference, images)
    assert all(stage["relative_max_abs"] < 1e-5 for stage in exact)
    quantized = stage_drift(read_artifact(artifacts["int8"]), reference, images)
    assert all(q["relative_rms"] > 10 * e["relative_rms"] for q, e in zip(quantized, exact))
    assert all(q["cosine_mean"] > 0.9 for q in quantized)


def _quiet(report: dict) -> dict:
    """The report as if timed on a quiet machine: this shared test machine's contention flags cleared and its
    speedup spreads at most a quiet machine's few percent (a busy one's can exceed any regression)."""
    for row in report["rows"]:
        row["contention"] = {**row["contention"], "contended": False, "reasons": []}
        row["speedup_vs_eager"]["spread"] = min(row["speedup_vs_eager"]["spread"], 0.05)
    return report


def _int8_id(report: dict) -> str:
    return next(r["id"] for r in report["rows"] if r["precision"] == "int8" and r["backend"] == "onnxruntime"
                and r["batch"] == 1)


def test_gate_same_run_passes_and_a_2x_better_int8_baseline_fails(bench_run, tmp_path):
    source = tmp_path / "quiet.json"
    source.write_text(json.dumps(_quiet(json.loads((bench_run["dir"] / "bench.json").read_text()))))
    same = invoke("--from-json", source, "--baseline", source)
    assert same.exit_code == 0, same.output
    assert "gate passed" in same.output
    baseline = json.loads(source.read_text())
    for row in baseline["rows"]:
        if row["precision"] == "int8" and row["backend"] == "onnxruntime" and row["batch"] == 1:
            row["speedup_vs_eager"].update(speedup=2 * row["speedup_vs_eager"]["speedup"], spread=0.0)
    better = tmp_path / "better.json"
    better.write_text(json.dumps(baseline))
    failed = invoke("--from-json", source, "--baseline", better, "--max-regression", "10%")
    assert failed.exit_code == 1
    assert _int8_id(baseline) in failed.output and "gate failed" in failed.output
    assert _int8_id(baseline).startswith("atto@32-10cls#") and _int8_id(baseline).endswith("/int8/cpu/onnxruntime/b1")
    contended = invoke("--from-json", bench_run["dir"] / "bench.json", "--baseline", better)
    if any(r["contention"]["contended"] for r in bench_run["report"]["rows"] if r["backend"] != "torch"):
        assert contended.exit_code == 3 and "could not gate" in contended.output, contended.output


def test_gate_on_a_fresh_run_names_the_regressed_int8_row(bench_run, artifacts, tmp_path):
    baseline = _quiet(json.loads((bench_run["dir"] / "bench.json").read_text()))
    for row in baseline["rows"]:
        if row["precision"] == "int8" and row["backend"] == "onnxruntime" and row["batch"] == 1:
            row["speedup_vs_eager"].update(speedup=2 * row["speedup_vs_eager"]["speedup"], spread=0.0)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))
    result = invoke(artifacts["fp32"], artifacts["int8"], "--backends", "torch,onnxruntime", "--threads", "1",
                    "--iters", 30, "--block", 2, "--warmup", 2, "--no-cold-start", "--baseline", path,
                    "--allow-missing", "--json", tmp_path / "now.json")
    report = json.loads((tmp_path / "now.json").read_text())
    _validate(report)
    int8 = next(r for r in report["rows"] if r["id"] == _int8_id(baseline))
    if int8["contention"]["contended"]:  # this shared machine was busy: the gate must refuse to decide
        assert result.exit_code == 3, result.output
        assert "could not gate" in result.output and "contended machine" in result.output
        assert report["gate"]["status"] == "could-not-gate"
    else:
        assert result.exit_code == 1, result.output
        assert "regressed: " in result.output and _int8_id(baseline) in result.output
    assert report["gate"]["passed"] is False and report["gate"]["missing_in_current"]


def test_accuracy_on_real_labeled_images(artifacts, shared_data, tmp_path):
    result = invoke(artifacts["int8"], "--backends", "torch,onnxruntime", "--iters", 2, "--warmup", 1, "--no-cold-start",
                    "--data", shared_data / "cifar10" / "test", "--limit", 40, "--json", tmp_path / "acc.json",
                    "--markdown", tmp_path / "acc.md")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "acc.json").read_text())
    _validate(report)
    eager = next(r for r in report["rows"] if r["backend"] == "torch")
    int8 = next(r for r in report["rows"] if r["backend"] == "onnxruntime")
    assert eager["accuracy"]["count"] == int8["accuracy"]["count"] == 40
    assert int8["accuracy"]["delta_top1"] == pytest.approx(int8["accuracy"]["top1"] - eager["accuracy"]["top1"])
    assert "40 images from" in int8["drift"]["inputs"]
    assert int8["drift"]["meaning"]["kind"] == "real-images"
    markdown = (tmp_path / "acc.md").read_text()
    speedup = int8["speedup_vs_eager"]
    assert (f"- atto-int8 (atto@32-10cls int8/cpu, batch 1): {speedup['speedup']:.2f}x ±{speedup['spread']:.0%} the "
            f"eager model's speed on onnxruntime") in markdown
    assert (f"; top-1 {int8['accuracy']['top1']:.1%} vs eager {eager['accuracy']['top1']:.1%} "
            f"({int8['accuracy']['delta_top1'] * 100:+.1f} pt) on 40 labeled real images, same prediction as eager on "
            f"{int8['drift']['top1_agreement']:.1%} of them") in markdown
    assert "plumbing" not in markdown and "plumbing" not in result.output


def test_bad_input_is_a_clear_message_and_exit_2(artifacts, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    newer = tmp_path / "newer"
    shutil.copytree(artifacts["fp32"], newer)
    manifest = json.loads((newer / MANIFEST).read_text())
    (newer / MANIFEST).write_text(json.dumps({**manifest, "schema": "convnext-export/2"}))
    not_bench = tmp_path / "manifest-as-baseline.json"
    shutil.copy(artifacts["fp32"] / MANIFEST, not_bench)
    cases = [
        ([empty], f"{empty}: no manifest.json here"),
        ([newer], "manifest schema 'convnext-export/2' is not 'convnext-export/1'"),
        ([artifacts["fp32"], "--backends", "torch,tensorflow"], "unknown backend 'tensorflow'; valid backends: torch,"),
        ([artifacts["fp32"], "--batch", "0"], "give batch sizes >= 1"),
        ([artifacts["fp32"], "--baseline", not_bench], "not a convnext-bench JSON report"),
    ]
    for args, message in cases:
        result = invoke(*args, "--iters", 1, "--no-cold-start")
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
        assert "Traceback" not in result.output


def test_installed_console_script_exports_the_default_set(tmp_path):
    script = Path(sys.executable).with_name("convnext-bench")
    done = subprocess.run([str(script), "--size", "atto", "--image-size", str(IMAGE), "--backends", "torch,onnxruntime",
                           "--iters", "3", "--warmup", "1", "--threads", "1", "--no-cold-start", "--json", "out.json",
                           "--work", "work"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "atto@32 fp32" in done.stdout and "speedup" in done.stdout
    assert ("drift and top-1 agree of atto@32: plumbing check, not an accuracy figure (random, untrained weights on "
            "16 synthetic noise images)") in " ".join(done.stdout.split())
    report = json.loads((tmp_path / "out.json").read_text())
    _validate(report)
    assert read_artifact(tmp_path / "work" / "convnext_atto-fp32").precision == "fp32"
    int8_rows = [r for r in report["rows"] if r["precision"] == "int8"]
    int8_skipped = [s for s in report["skipped"] if s["artifact"] == "convnext_atto-int8"]
    assert bool(int8_rows) != bool(int8_skipped)  # INT8 is benchmarked once the exporter makes it, else says why


@pytest.mark.parametrize("signum, code, words", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                 (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_a_signal_mid_benchmark_exits_128_plus_signal(signum, code, words, artifacts, tmp_path, monkeypatch):
    from convnext_export.bench.runner import Bench

    def signalled(self, *args, **kwargs):
        os.kill(os.getpid(), signum)  # delivered to this (main) thread, as from `timeout` or Ctrl-C
        time.sleep(5)
        raise AssertionError("the signal did not interrupt the benchmark")

    monkeypatch.setattr(Bench, "time_batches", signalled)
    # As in a terminal: a background job of a non-interactive shell (CI scripts, `cmd &`) starts with SIGINT
    # ignored, and the command rightly keeps ignoring it, so the test gives itself Python's default handler.
    foreground = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = CliRunner().invoke(bench_command, [str(artifacts["fp32"]), "--backends", "torch", "--iters", "1",
                                                    "--no-cold-start", "--json", str(tmp_path / "b.json")])
    finally:
        signal.signal(signal.SIGINT, foreground)
    assert result.exit_code == code, result.output
    assert f"Aborted: {words}" in result.output and not (tmp_path / "b.json").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the command's only


def test_data_array_is_checked_against_each_artifacts_size_before_the_timing(artifacts, tmp_path, monkeypatch):
    from convnext_export.bench.runner import Bench

    def never(self, *args, **kwargs):
        raise AssertionError("timed before checking --data")

    monkeypatch.setattr(Bench, "time_batches", never)
    np.save(tmp_path / "x64.npy", np.zeros((8, 3, 64, 64), np.float32))
    result = invoke(artifacts["fp32"], "--data", tmp_path / "x64.npy", "--backends", "torch", "--no-cold-start")
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert f"--data: {tmp_path / 'x64.npy'} holds preprocessed images of shape (8, 3, 64, 64)" in message
    assert f"the model takes {IMAGE} px inputs, (8, 3, {IMAGE}, {IMAGE})" in message
    assert f"(for {artifacts['fp32'].name}, exported at {IMAGE} px)" in message


def test_data_array_at_the_artifacts_size_measures_drift(artifacts, tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((6, 3, IMAGE, IMAGE), dtype=np.float32))
    result = invoke(artifacts["fp32"], "--data", tmp_path / "x.npy", "--backends", "torch,onnxruntime", "--iters", 2,
                    "--warmup", 0, "--no-cold-start", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    onnxruntime = next(r for r in rows if r["backend"] == "onnxruntime")
    assert onnxruntime["drift"]["inputs"] == f"6 images from {tmp_path / 'x.npy'}"


@pytest.mark.parametrize("damage, words", [
    (lambda manifest: "{\"schema\": \"convnext-export/1\", \"model_file\": ",
     ["the manifest is not valid JSON (Expecting value", "so the artifact is damaged; re-export it: convnext-export "
      "--size SIZE --out {dir} --force (SIZE or --weights FILE as it was made from"]),
    (lambda manifest: json.dumps({k: v for k, v in manifest.items() if k != "config"}),
     ["the manifest is incomplete or malformed (it lacks the key 'config'); re-export it: convnext-export --weights "
      "{weights} --image-size 32 --out {dir} --force (plus any other options it was made with)"]),
    (lambda manifest: json.dumps({**manifest, "preprocessing": {**manifest["preprocessing"], "interpolation": "foo"}}),
     ["the manifest is incomplete or malformed (unknown interpolation 'foo'", "re-export it: convnext-export"]),
])
def test_a_damaged_manifest_says_how_to_re_export(damage, words, artifacts, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(artifacts["fp32"], damaged)
    manifest = json.loads((damaged / MANIFEST).read_text())
    (damaged / MANIFEST).write_text(damage(manifest))
    result = invoke(damaged, "--backends", "torch", "--no-cold-start", "--iters", 1)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert message.startswith(f"Error: {damaged / MANIFEST}: ")
    for word in words:
        assert word.format(dir=damaged, weights=manifest["weights"]["path"]) in message, message
    assert "Traceback" not in result.output


def test_cold_start_and_accuracy_runs_report_progress(artifacts, shared_data):
    from convnext_export.bench import BenchRequest, TimingPlan
    from convnext_export.bench.runner import Bench

    events: dict[str, list[tuple[int, int]]] = {}
    request = BenchRequest(artifacts=(artifacts["int8"],), backends=("torch", "onnxruntime"), batches=(1,), threads=1,
                           plan=TimingPlan(warmup=1, iters=2, min_time=0.0, block=1),
                           data=shared_data / "cifar10" / "test", limit=40, seed=0, profile_dir=None,
                           cold_start=True, cuda_graph=False)
    Bench(request, progress=lambda label, done, total: events.setdefault(label, []).append((done, total))).run()
    assert events["cold start + memory (a process each)"][-1] == (2, 2)
    accuracy = [label for label in events if label.startswith("accuracy and drift: ")]
    assert len(accuracy) == 2  # eager and ONNX Runtime, image by image up to all 40
    for label in accuracy:
        assert [done for done, _ in events[label]] == sorted(done for done, _ in events[label])
        assert events[label][-1] == (40, 40)
