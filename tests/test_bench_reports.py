"""Rows keyed by what was measured (the two committed references: one architecture, two checkpoints), and every
report renders: the plot (a marker per row and labeled ticks, read from matplotlib's artists) with one artifact,
a failed row, one batch, contended rows; the table at 80 columns."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from convnext_export.artifact import read_artifact
from convnext_export.bench.plot import pareto_figure, plot_pareto
from convnext_export.cli import bench_command
from convnext_export.pipeline import ExportRequest, export_artifact, rebuild_reference

from bad_input import REPO

REFERENCES = {"official": REPO / "benchmarks" / "reference" / "convnext_atto_cifar10.pth",
              "timm": REPO / "benchmarks" / "reference" / "convnext_atto_cifar10_timm.pth"}


@pytest.fixture(scope="module")
def two_references(tmp_path_factory) -> dict:
    """FP32 exports of both committed references (atto@64-10cls), benched together."""
    root = tmp_path_factory.mktemp("references")
    directories = {name: export_artifact(ExportRequest(weights=path, out=root / f"{name}-fp32")).artifact.directory
                   for name, path in REFERENCES.items()}
    result = CliRunner().invoke(bench_command, [*map(str, directories.values()), "--backends", "torch,onnxruntime",
                                                "--threads", "1", "--iters", "12", "--block", "2", "--warmup", "1",
                                                "--no-cold-start", "--json", str(root / "bench.json")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"dirs": directories, "report": json.loads((root / "bench.json").read_text()), "root": root}


def test_two_checkpoints_of_one_architecture_get_their_own_rows_and_eager_models(two_references):
    report = two_references["report"]
    sha = {name: hashlib.sha256(path.read_bytes()).hexdigest()[:8] for name, path in REFERENCES.items()}
    rows = report["rows"]
    assert len(rows) == 4 and len({row["id"] for row in rows}) == 4
    assert {(row["weights"], row["backend"]) for row in rows} == {(s, b) for s in sha.values()
                                                                  for b in ("torch", "onnxruntime")}
    assert all(row["model"] == "atto@64-10cls" for row in rows)
    eager = {row["weights"]: row for row in rows if row["backend"] == "torch"}
    assert eager[sha["official"]]["latency_ms"] != eager[sha["timm"]]["latency_ms"]  # each timed, not one copy
    # each FP32 row agrees with its own eager model to float rounding; the two models are far apart, so a row
    # compared against the other checkpoint's eager model would drift by orders of magnitude more
    for row in rows:
        if row["backend"] == "onnxruntime":
            assert row["drift"]["relative_max_abs"] < 1e-4, row["id"]
            assert row["artifact"] == {v: k for k, v in sha.items()}[row["weights"]] + "-fp32"
    images = np.random.default_rng(0).standard_normal((4, 3, 64, 64), dtype=np.float32)
    import torch

    logits = [rebuild_reference(read_artifact(d))(torch.from_numpy(images)).detach().numpy()
              for d in two_references["dirs"].values()]
    assert np.abs(logits[0] - logits[1]).max() / np.abs(logits[0]).max() > 1e-2


def _visible(ax, x: float, y: float) -> bool:
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    return x0 <= x <= x1 and y0 <= y <= y1


def _check_figure(report: dict) -> None:
    """Each panel: one visible marker per row of its batch, and labeled ticks on both axes."""
    from matplotlib.container import ErrorbarContainer

    fig = pareto_figure(report)
    try:
        fig.canvas.draw()
        batches = sorted({row["batch"] for row in report["rows"]})
        assert len(fig.axes) == len(batches)
        for ax, batch in zip(fig.axes, batches):
            rows = [row for row in report["rows"] if row["batch"] == batch]
            markers = [c.lines[0] for c in ax.containers if isinstance(c, ErrorbarContainer)]
            assert len(markers) == len(rows)
            for line in markers:
                assert line.get_marker() not in (None, "None", "")
                (x,), (y,) = line.get_xdata(), line.get_ydata()
                assert _visible(ax, x, y), (x, y, ax.get_xlim(), ax.get_ylim())
            for axis, limits in ((ax.yaxis, ax.get_ylim()), (ax.xaxis, ax.get_xlim())):
                low, high = sorted(limits)
                shown = [t.get_text() for t in axis.get_ticklabels(which="both")
                         if low <= t.get_position()[axis is ax.xaxis and 0 or 1] <= high and t.get_text()]
                assert len(shown) >= 2, (axis, shown, limits)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def _one_artifact(report: dict) -> dict:
    report = copy.deepcopy(report)
    first = next(row["weights"] for row in report["rows"])
    report["rows"] = [row for row in report["rows"] if row["weights"] == first]
    return report


def test_plot_has_a_marker_per_row_and_labeled_ticks(two_references, tmp_path):
    report = two_references["report"]
    _check_figure(report)
    single = _one_artifact(report)  # make run's first plot: one artifact, drift on noise, one batch
    assert len(single["rows"]) == 2
    _check_figure(single)
    failed = copy.deepcopy(single)  # a row whose drift was not measured (the backend failed on the drift images)
    next(row for row in failed["rows"] if row["backend"] == "onnxruntime")["drift"] = None
    _check_figure(failed)
    contended = copy.deepcopy(report)
    for row in contended["rows"]:
        row["contention"] = {**row["contention"], "contended": True, "reasons": ["test"]}
    _check_figure(contended)
    two_batches = copy.deepcopy(report)
    for row in copy.deepcopy(report["rows"]):
        two_batches["rows"].append({**row, "batch": 8, "id": row["id"].replace("/b1", "/b8")})
    _check_figure(two_batches)
    path = plot_pareto(single, tmp_path / "single.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_reads_at_80_columns(two_references):
    source = two_references["root"] / "bench.json"
    result = CliRunner(env={"COLUMNS": "80"}).invoke(bench_command, ["--from-json", str(source)],
                                                     catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    assert "…" not in result.output
    report = json.loads(source.read_text())
    for row in report["rows"]:
        speedup = f"{row['speedup_vs_eager']['speedup']:.2f}x"
        assert any(speedup in line and row["backend"] in line for line in lines), (speedup, result.output)
    text = " ".join(result.output.split())
    for name in two_references["dirs"]:  # one plain summary line per artifact: speedup and what the drift means
        assert f"{name}-fp32 (atto@64-10cls#" in text
    assert text.count("the eager model's speed on onnxruntime") == 2
    assert "which says nothing of accuracy" in text
