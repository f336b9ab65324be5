"""Latency vs accuracy (Pareto) plot of a bench report, as PNG (matplotlib, Agg).

One panel per batch size, a marker per row. x: p50 latency (bars: min to p90). y: labeled top-1
accuracy when --data had labels; otherwise the relative max-abs drift vs eager (log scale, better is
up, at least one labeled decade), with the eager reference drawn at the top edge and as a vertical
line at its latency. A row whose accuracy or drift was not measured sits on the bottom edge, marked
"not measured"; a row timed on a contended machine is hollow, its speedup marked "!". Colour =
precision, marker = backend, the number beside a point = its speedup vs eager; the dashed step line
joins the points no other point beats on both axes. Random weights or noise inputs are named in the
panel's title as a plumbing check (``drift.drift_meaning``), and the figure is then not titled
"accuracy".
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path

from ..drift import PLUMBING
from ..errors import ConvNeXtExportError, InputError
from ..files import replacing
from .report import is_reference, row_drift_meaning, row_model

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


def _score(row: dict, labeled: bool) -> float | None:
    """The row's y value: top-1 (%) when labeled, else its drift (eager's is None: it is the reference)."""
    if labeled:
        return 100 * row["accuracy"]["top1"] if row.get("accuracy") else None
    return max(row["drift"]["relative_max_abs"], DRIFT_FLOOR) if row.get("drift") else None


def _y_limits(values: list[float], labeled: bool) -> tuple[float, float]:
    """Limits holding every measured value with room; on the log axis whole decades, so ticks are labeled."""
    if labeled:
        lo, hi = (min(values), max(values)) if values else (0.0, 100.0)
        pad = max((hi - lo) * 0.25, 1.0)
        return max(lo - pad, 0.0), min(hi + pad, 100.0)
    lo, hi = (min(values), max(values)) if values else (1e-6, 1e-2)
    low, high = 10.0 ** math.floor(math.log10(lo)), 10.0 ** math.ceil(math.log10(hi))
    return low, high if high > low else low * 10


def _panel(ax, rows: list[dict], batch: int, plumbing: list[str], name: Callable[[dict], str]) -> None:
    labeled = any(row.get("accuracy") for row in rows)
    scores = [_score(row, labeled) for row in rows]
    lo, hi = _y_limits([v for v in scores if v is not None], labeled)
    if labeled:
        ax.set_ylabel("labeled top-1 accuracy (%)")
        top, bottom = hi, lo
    else:
        ax.set_yscale("log")
        ax.set_ylabel("relative max-abs drift vs eager (log; up = closer)")
        top, bottom = lo, hi  # the axis is inverted: small drift is up
    for row in rows:
        if is_reference(row) and not labeled:
            ax.axvline(row["latency_ms"]["p50"], color="0.35", linestyle=":", linewidth=1.5,
                       label=f"eager {name(row)} (reference, drift 0)")
    points = []
    for n, (row, score) in enumerate(sorted(zip(rows, scores), key=lambda p: p[0]["latency_ms"]["p50"])):
        lat, x = row["latency_ms"], row["latency_ms"]["p50"]
        measured = score is not None
        y = score if measured else top if is_reference(row) else bottom
        contended = bool((row.get("contention") or {}).get("contended"))
        color = PRECISION_COLORS.get(row["precision"], "k")
        label = f"{name(row)} {row['precision']} · {row['backend']}" + (
            "" if measured or is_reference(row) else " (not measured)") + (" (contended)" if contended else "")
        ax.errorbar(x, y, xerr=[[max(x - lat["min"], 0)], [max(lat["p90"] - x, 0)]],
                    fmt=BACKEND_MARKERS.get(row["backend"], "X"), color=color, markersize=10, capsize=3, elinewidth=1,
                    markerfacecolor="none" if contended or not measured else color, clip_on=False, label=label)
        text = f"{row['speedup_vs_eager']['speedup']:.1f}x" + ("!" if contended else "") + (
            "" if measured or is_reference(row) else ", not measured")
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, 7 if n % 2 == 0 else -15), fontsize=9,
                    annotation_clip=False)
        if measured:
            points.append((x, score if labeled else -score, y))
    if len(points) > 1:
        front = pareto_front([(x, s) for x, s, _ in points])
        if len(front) > 1:
            ax.step([points[i][0] for i in front], [points[i][2] for i in front], where="post", color="0.55",
                    linestyle="--", linewidth=1, label="Pareto front")
    ax.set_ylim(lo, hi)
    if not labeled:
        ax.invert_yaxis()
    ax.margins(x=0.1)
    every = [row["latency_ms"]["p50"] for row in rows]
    reach = max(max(row["latency_ms"]["p90"], row["latency_ms"]["p50"]) for row in rows)
    wide = max(every) / max(min(every), 1e-9) > 8  # eager far to the right would squeeze the rest
    if wide:
        ax.set_xscale("log")
        ax.set_xlim(min(row["latency_ms"]["min"] for row in rows) / 1.5, reach * 1.5)
    else:
        ax.set_xlim(0, reach * 1.15)
    ax.set_xlabel(f"latency p50 (ms{', log' if wide else ''}), batch {batch}; bars: min to p90")
    ax.grid(True, which="both", alpha=0.3)
    notes = [textwrap.fill(text, 70) for text in plumbing]
    ax.set_title("\n".join([f"batch {batch}"] + notes), fontsize=10, color="0.1" if not notes else "#8c2d04")
    ax.legend(fontsize=8, loc="best")


def pareto_figure(report: dict):
    """The figure plot_pareto saves (returned open, for tests and notebooks; the caller closes it)."""
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
        _panel(ax, panel, batch, list(plumbing), lambda row: row_model(report, row))
    labeled = any(row.get("accuracy") for row in rows)
    plumbing = any(m is not None and m["kind"] == PLUMBING for m in meanings)
    versus = ("drift vs eager" if not labeled else "labeled top-1 (a plumbing check, see the panel titles)"
              if plumbing else "accuracy on real images")
    env = report["environment"]
    reasons = list(dict.fromkeys(reason for row in rows if (row.get("contention") or {}).get("contended")
                                 for reason in row["contention"]["reasons"]))
    legend = (f"{env['cpu']['model']}, {env['threads']} thread(s); number = speedup vs eager"
              + (f"; hollow and ! = timed on a contended machine ({'; '.join(reasons)}), speedup not to be trusted"
                 if reasons else ""))
    fig.suptitle(f"convnext-bench: latency vs {versus}\n" + textwrap.fill(legend, 60 * len(batches)), fontsize=10)
    fig.tight_layout()
    return fig


def plot_pareto(report: dict, path: str | Path) -> Path:
    fig = pareto_figure(report)
    import matplotlib.pyplot as plt
    path = Path(path)
    try:
        with replacing(path) as temporary:
            fig.savefig(temporary, dpi=120)
    except OSError as error:
        raise ConvNeXtExportError(f"--plot {path}: cannot write ({error.strerror})") from None
    finally:
        plt.close(fig)
    return path
