"""Latency vs accuracy (Pareto) plot of a bench report, as PNG (matplotlib, Agg).

One panel per batch size. x: p50 latency (bars: min to p90). y: labeled top-1 accuracy when
--data had labels; otherwise the relative max-abs drift vs eager (log scale, better is up),
with the eager reference drawn as a vertical line at its latency. Colour = precision,
marker = backend, the number beside a point = its speedup vs eager; the dashed step line
joins the points no other point beats on both axes. Random weights or noise inputs are named
in the panel's title as a plumbing check (``drift.drift_meaning``), and the figure is then
not titled "accuracy".
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from ..drift import PLUMBING
from ..errors import ConvNeXtExportError, InputError
from ..files import replacing
from .report import is_reference, row_drift_meaning

PRECISION_COLORS = {"fp32": "#1f77b4", "fp16": "#2ca02c", "int8": "#d62728", "bf16": "#9467bd"}
BACKEND_MARKERS = {"torch": "o", "torch-compile": "P", "onnxruntime": "s", "onnxruntime-cuda": "D",
                   "onnxruntime-tensorrt": "d", "openvino": "^", "tensorrt": "*"}
DRIFT_FLOOR = 1e-9  # a drift of exactly 0 is drawn here on the log axis


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both latency (lower) and score (higher), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _panel(ax, rows: list[dict], batch: int, plumbing: list[str]) -> None:
    labeled = all(row.get("accuracy") for row in rows)
    eager = [row for row in rows if is_reference(row)]
    points = rows if labeled else [row for row in rows if row["drift"] is not None]
    for row in ([] if labeled else eager):
        ax.axvline(row["latency_ms"]["p50"], color="0.35", linestyle=":", linewidth=1.5,
                   label=f"eager {row['model']} (reference)")
    xs = [row["latency_ms"]["p50"] for row in points]
    if labeled:
        ys = [100 * row["accuracy"]["top1"] for row in points]
        score = ys
        ax.set_ylabel("labeled top-1 accuracy (%)")
    else:
        ys = [max(row["drift"]["relative_max_abs"], DRIFT_FLOOR) for row in points]
        score = [-y for y in ys]
        ax.set_yscale("log")
        ax.invert_yaxis()
        ax.set_ylabel("relative max-abs drift vs eager (log; up = closer)")
    for n, (row, x, y) in enumerate(sorted(zip(points, xs, ys), key=lambda p: p[1])):
        lat = row["latency_ms"]
        ax.errorbar(x, y, xerr=[[x - lat["min"]], [max(lat["p90"] - x, 0)]], fmt=BACKEND_MARKERS.get(row["backend"], "X"),
                    color=PRECISION_COLORS.get(row["precision"], "k"), markersize=10, capsize=3, elinewidth=1,
                    label=f"{row['model']} {row['precision']} · {row['backend']}")
        ax.annotate(f"{row['speedup_vs_eager']['speedup']:.1f}x", (x, y), textcoords="offset points",
                    xytext=(7, 7 if n % 2 == 0 else -15), fontsize=9)
    if points:
        front = pareto_front(list(zip(xs, score)))
        if len(front) > 1:
            ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="0.55", linestyle="--",
                    linewidth=1, label="Pareto front")
    ax.margins(x=0.08, y=0.2)
    every = [row["latency_ms"]["p50"] for row in rows]
    wide = max(every) / max(min(every), 1e-9) > 8  # eager far to the right would squeeze the rest
    if wide:
        ax.set_xscale("log")
    else:
        ax.set_xlim(left=0)
    ax.set_xlabel(f"latency p50 (ms{', log' if wide else ''}), batch {batch}; bars: min to p90")
    ax.grid(True, which="both", alpha=0.3)
    notes = [textwrap.fill(text, 70) for text in plumbing]
    ax.set_title("\n".join([f"batch {batch}"] + notes), fontsize=10, color="0.1" if not notes else "#8c2d04")
    ax.legend(fontsize=8, loc="best")


def plot_pareto(report: dict, path: str | Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'convnext-export[bench]'") from None
    rows = report["rows"]
    if not rows:
        raise ConvNeXtExportError("nothing to plot: the benchmark produced no rows")
    batches = sorted({row["batch"] for row in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6.4 * len(batches), 5.0), squeeze=False)
    meanings = [row_drift_meaning(report, row) for row in rows]
    for ax, batch in zip(axes[0], batches):
        panel = [row for row in rows if row["batch"] == batch]
        plumbing = dict.fromkeys(f"{row['model']}: {meaning['text']}" for row, meaning in zip(rows, meanings)
                                 if row["batch"] == batch and meaning and meaning["kind"] == PLUMBING)
        _panel(ax, panel, batch, list(plumbing))
    labeled = all(row.get("accuracy") for row in rows)
    plumbing = any(m is not None and m["kind"] == PLUMBING for m in meanings)
    versus = ("drift vs eager" if not labeled else "labeled top-1 (a plumbing check, see the panel titles)"
              if plumbing else "accuracy on real images")
    env = report["environment"]
    fig.suptitle(f"convnext-bench: latency vs {versus}\n"
                 f"{env['cpu']['model']}, {env['threads']} thread(s); number = speedup vs eager", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    try:
        with replacing(path) as temporary:
            fig.savefig(temporary, dpi=120)
    except OSError as error:
        raise ConvNeXtExportError(f"--plot {path}: cannot write ({error.strerror})") from None
    finally:
        plt.close(fig)
    return path
