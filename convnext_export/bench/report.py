"""The bench report as a terminal table (rich) and as Markdown for PR comments."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..drift import PLUMBING, REAL_IMAGES, drift_meaning
from ..isa import accumulation


def _threads(count: int) -> str:
    return f"{count} thread{'s' if count != 1 else ''}"


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


FULL_WIDTH = 140  # narrower consoles get the compact table
CONTENDED_MARK = "!"


def row_model(report: dict, row: dict) -> str:
    """The row's network, with its weights when the report holds two weights of one architecture."""
    weights = {r.get("weights") for r in report["rows"] if r["model"] == row["model"]}
    return f"{row['model']}#{row['weights']}" if len(weights) > 1 and row.get("weights") else row["model"]


def _variant(report: dict, row: dict) -> str:
    """model precision/target, with the artifact's name where two artifacts share them (e.g. a static batch)."""
    label = f"{row_model(report, row)} {row['precision']}" + (f"/{row['target']}" if row.get("target") else "")
    twins = {r["artifact"] for r in report["rows"] if r["artifact"] and r["model"] == row["model"]
             and r.get("weights") == row.get("weights") and r["precision"] == row["precision"]
             and r.get("target") == row.get("target")}
    return label + (f" ({row['artifact']})" if row["artifact"] and len(twins) > 1 else "")


def is_contended(row: dict) -> bool:
    return bool((row.get("contention") or {}).get("contended"))


def _speedup(row: dict) -> str:
    s = row["speedup_vs_eager"]
    return (f"{s['speedup']:.2f}x" + (f" ±{s['spread']:.0%}" if s["spread"] else "")
            + (f" {CONTENDED_MARK}" if is_contended(row) else ""))


def is_reference(row: dict) -> bool:
    """The eager row every speedup and drift is measured against."""
    return row["backend"] == "torch" and row["artifact"] is None


def row_drift_meaning(report: dict, row: dict) -> dict | None:
    """What the row's drift and agreement can tell: as recorded, or decided again for reports from before it was."""
    drift = row.get("drift")
    if not drift:
        return None
    if drift.get("meaning"):
        return drift["meaning"]
    artifact = next((a for a in report["artifacts"] if a["name"] == row["artifact"]), {})
    return drift_meaning(artifact.get("weights", {}).get("kind", "random"),
                         "real" if report["settings"].get("data") else "synthetic", drift["samples"])


def _drift(report: dict, row: dict) -> tuple[str, str]:
    drift = row.get("drift")
    if not drift:
        return ("ref", "ref") if is_reference(row) else ("n/a", "n/a")
    plumbing = row_drift_meaning(report, row)["kind"] == PLUMBING
    return f"{drift['relative_max_abs']:.1e}", f"{drift['top1_agreement']:.1%}" + (" (plumbing)" if plumbing else "")


def _accuracy(row: dict) -> str:
    accuracy = row.get("accuracy")
    if not accuracy:
        return ""
    text = f"{accuracy['top1']:.1%}"
    if row.get("drift"):
        text += f" ({accuracy['delta_top1'] * 100:+.1f})"
    return text


def _cold(row: dict) -> tuple[str, str]:
    cold = row.get("cold_start")
    if not cold or "error" in cold:
        return "n/a", "n/a"
    peak = cold.get("peak_rss_mb")
    return f"{cold['seconds']:.2f}", "n/a" if peak is None else f"{peak:.0f}"


COLUMNS = ["variant", "backend", "batch", "p50 ms", "p99 ms", "CV", "img/s", "speedup", "cold s", "peak MB",
           "drift", "top-1 agree"]
COMPACT_COLUMNS = ["artifact", "backend", "batch", "p50 ms", "speedup", "agree"]


def row_cells(report: dict, row: dict, with_accuracy: bool) -> list[str]:
    lat = row["latency_ms"]
    drift, agreement = _drift(report, row)
    cells = [_variant(report, row), row["backend"], str(row["batch"]), _ms(lat["p50"]), _ms(lat["p99"]),
             f"{lat['cv']:.0%}", f"{row['throughput_ips']:.0f}", _speedup(row), *_cold(row), drift, agreement]
    return cells + ([_accuracy(row)] if with_accuracy else [])


def compact_cells(report: dict, row: dict, with_accuracy: bool) -> list[str]:
    """The cells of an 80-column table: what the summary lines under it need a row for."""
    drift = row.get("drift")
    agreement = "ref" if is_reference(row) else f"{drift['top1_agreement']:.1%}" if drift else "n/a"
    name = row["artifact"] or "eager" + (f" #{row['weights']}" if row_model(report, row) != row["model"] else "")
    cells = [name, row["backend"], str(row["batch"]), _ms(row["latency_ms"]["p50"]), _speedup(row), agreement]
    return cells + ([_accuracy(row)] if with_accuracy else [])


def _eager_row(report: dict, row: dict) -> dict | None:
    return next((r for r in report["rows"] if is_reference(r) and r["model"] == row["model"]
                 and r.get("weights") == row.get("weights") and r["batch"] == row["batch"]), None)


def drift_lines(report: dict) -> list[str]:
    """Under the table: what each model's drift and agreement mean, then one line per artifact with the figures
    a reader came for (speedup on each backend; top-1 vs eager on labeled real images, else drift and agreement)."""
    lines, seen = [], set()
    for row in report["rows"]:
        meaning = row_drift_meaning(report, row)
        if meaning and meaning["kind"] != REAL_IMAGES and row_model(report, row) not in seen:
            seen.add(row_model(report, row))
            lines.append(f"drift and top-1 agree of {row_model(report, row)}: {meaning['text']}")
    return lines + artifact_lines(report)


def artifact_lines(report: dict) -> list[str]:
    """One line per artifact: how much faster than eager (per backend, at the first batch it ran), and how close."""
    lines = []
    for name in dict.fromkeys(r["artifact"] for r in report["rows"] if r["artifact"]):
        rows = [r for r in report["rows"] if r["artifact"] == name]
        first = rows[0]
        batch_rows = [r for r in rows if r["batch"] == first["batch"]]
        speed = ", ".join(f"{r['speedup_vs_eager']['speedup']:.2f}x ±{r['speedup_vs_eager']['spread']:.0%} the eager "
                          f"model's speed on {r['backend']}" for r in batch_rows)
        line = f"{name} ({_variant(report, first)}, batch {first['batch']}): {speed}"
        if any(is_contended(r) for r in batch_rows):
            line += f" ({CONTENDED_MARK} timed on a contended machine: not to be trusted, see the warning)"
        measured = next((r for r in batch_rows if r.get("drift")), None)
        if measured is None:
            lines.append(line + "; drift not measured")
            continue
        drift, accuracy, eager = measured["drift"], measured.get("accuracy"), _eager_row(report, measured)
        meaning = row_drift_meaning(report, measured)
        if meaning["kind"] == REAL_IMAGES and accuracy and eager and eager.get("accuracy"):
            line += (f"; top-1 {accuracy['top1']:.1%} vs eager {eager['accuracy']['top1']:.1%} "
                     f"({accuracy['delta_top1'] * 100:+.1f} pt) on {accuracy['count']} labeled real images, same "
                     f"prediction as eager on {drift['top1_agreement']:.1%} of them")
        elif meaning["kind"] == REAL_IMAGES:
            line += (f"; same top-1 prediction as eager on {drift['top1_agreement']:.1%} of {drift['samples']} real "
                     f"images, logits within {drift['relative_max_abs']:.1e} of eager's largest")
        else:
            line += (f"; same top-1 prediction as eager on {drift['top1_agreement']:.1%}, logits within "
                     f"{drift['relative_max_abs']:.1e} of eager's largest: it computes what eager computes, which "
                     f"says nothing of accuracy ({meaning['text'].split('(', 1)[-1].rstrip(')')})")
        lines.append(line)
    return lines


def skipped_lines(report: dict) -> list[str]:
    """What was not measured, said once: backends grouped by reason, then artifacts and batches."""
    by_reason: dict[str, list[str]] = {}
    lines = []
    for skipped in report["skipped"]:
        if skipped.get("backend") and not skipped.get("artifact") and skipped.get("batch") is None:
            names = by_reason.setdefault(skipped["reason"], [])
            if skipped["backend"] not in names:
                names.append(skipped["backend"])
        else:
            lines.append(f"{skipped_label(skipped)}: {skipped['reason']}")
    grouped = [f"{', '.join(names)}: {reason}" for reason, names in by_reason.items()]
    return ([f"backends not measured: {'; '.join(grouped)}"] if grouped else []) + lines


def gpu_lines(report: dict) -> list[str]:
    """One line per GPU row: CUDA-event compute and end-to-end latency, copies, speedup vs eager on the GPU."""
    lines = []
    for row in report["rows"]:
        gpu = row.get("gpu")
        if not gpu:
            continue
        compute, total = gpu["compute_ms"], gpu["end_to_end_ms"]
        speedup = gpu.get("compute_speedup_vs_eager_gpu")
        lines.append(f"{row['id']} on {gpu['device']}: compute p50 {_ms(compute['p50'])} ms (p99 {_ms(compute['p99'])}), "
                     f"end to end p50 {_ms(total['p50'])} ms (H2D {gpu['host_to_device_ms']:.3g}, D2H "
                     f"{gpu['device_to_host_ms']:.3g})" + (", CUDA graph" if gpu["cuda_graphs"] else "")
                     + (f", {speedup:.2f}x eager FP32 on the GPU" if speedup else ""))
    return lines


def _integer_path(env: dict) -> str:
    """The int8 kernel family of the machine (reports written before it was recorded say so)."""
    path = env.get("integer_path")
    if not path:
        return "int8 kernels not recorded"
    return f"int8 kernels {path['integer_path']}: {accumulation(path['saturates'])}"


def print_report(console: Console, report: dict) -> None:
    env = report["environment"]
    with_accuracy = any(row.get("accuracy") for row in report["rows"])
    compact = console.width < FULL_WIDTH
    title = f"convnext-bench: {env['cpu']['model']} ({_integer_path(env)}), {_threads(env['threads'])}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
                  pad_edge=not compact, collapse_padding=compact)
    columns = (COMPACT_COLUMNS if compact else COLUMNS) + (["top-1 (Δ pt)" if compact else "top-1 acc (Δ pt)"]
                                                          if with_accuracy else [])
    for name in columns:
        table.add_column(name, justify="left" if name in ("variant", "artifact", "backend") else "right",
                         overflow="fold", no_wrap=name not in ("variant", "artifact"))
    for row in report["rows"]:
        table.add_row(*(compact_cells if compact else row_cells)(report, row, with_accuracy))
    console.print(table)
    if compact:
        console.print(f"[dim](p99, CV, img/s, cold start, peak memory, drift: --markdown or --json, or a terminal "
                      f"of {FULL_WIDTH}+ columns)[/dim]")
    if any(is_contended(row) for row in report["rows"]):
        console.print(f"{CONTENDED_MARK} = timed on a contended machine: the speedup cannot be trusted (warning below)")
    for line in drift_lines(report):
        console.print(escape(line))
    for line in gpu_lines(report):
        console.print(f"GPU {escape(line)}")
    for artifact in report["artifacts"]:
        if artifact.get("stage_drift"):
            console.print(f"per-stage drift of {artifact['name']}: " + ", ".join(
                f"stage {s['stage']} {s['relative_max_abs']:.1e} (cos {s['cosine_mean']:.4f})" for s in artifact["stage_drift"]))
    for line in skipped_lines(report):
        console.print(f"[dim]skipped {escape(line)}[/dim]")
    for warning in report["warnings"]:
        console.print(f"[yellow]warning[/yellow]: {escape(warning)}")


def markdown_report(report: dict) -> str:
    env = report["environment"]
    settings = report["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v and k != "convnext_export")
    with_accuracy = any(row.get("accuracy") for row in report["rows"])
    header = COLUMNS + (["top-1 acc (Δ pt)"] if with_accuracy else [])
    lines = [
        "### convnext-bench",
        "",
        f"{env['cpu']['model']} ({env['cpu']['cores']} cores; {', '.join(env['cpu']['flags']) or 'no AVX-512'}; "
        f"{_integer_path(env)}), "
        f"{_threads(settings['threads'])}; {versions}.",
        f"Timing: {settings['timing']['method']}, >= {settings['timing']['min_runs']} runs per variant after "
        f"{settings['timing']['warmup_runs']} warmup, blocks of {settings['timing']['block_runs']}; speedup = paired "
        f"median vs eager in the same run (± its 95% spread). Cold start and peak RSS: a fresh process per row's "
        f"backend. Drift: relative max-abs of logits vs eager on {_drift_inputs(report)}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
    ]
    for row in report["rows"]:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row_cells(report, row, with_accuracy))
                     + " |")
    if any(is_contended(row) for row in report["rows"]):
        lines += ["", f"{CONTENDED_MARK} = timed on a contended machine: the speedup cannot be trusted (see Warnings)."]
    meanings = drift_lines(report)
    if meanings:
        lines += [""] + [f"- {line}" for line in meanings]
    if gpu_lines(report):
        lines += ["", "GPU timing (CUDA events):", ""] + [f"- {line}" for line in gpu_lines(report)]
    for artifact in report["artifacts"]:
        if artifact.get("stage_drift"):
            lines += ["", f"Per-stage drift of `{artifact['name']}` (vs the fused FP32 eager model):", "",
                      "| stage | shape | relative max-abs | relative RMS | cosine (mean) |", "|---:|---|---:|---:|---:|"]
            lines += [f"| {s['stage']} | {'x'.join(map(str, s['shape']))} | {s['relative_max_abs']:.2e} | "
                      f"{s['relative_rms']:.2e} | {s['cosine_mean']:.5f} |" for s in artifact["stage_drift"]]
    if report["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {line}" for line in skipped_lines(report)]
    if report["warnings"]:
        lines += ["", "Warnings:", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def skipped_label(skipped: dict) -> str:
    if skipped.get("backend") is None:
        return f"artifact {skipped['artifact']}"
    return skipped["backend"] + (f" on {skipped['artifact']}" if skipped.get("artifact") else "")


def _drift_inputs(report: dict) -> str:
    for row in report["rows"]:
        if row.get("drift"):
            return row["drift"]["inputs"]
    return "n/a"


def print_gate(console: Console, gate: dict, baseline_path: str) -> None:
    """The gate's verdict: a table of regressions (or of all compared rows when it passes)."""
    unit = "p50 ms" if gate["mode"] == "absolute-ms" else "speedup"
    failed = [c for c in gate["compared"] if c["regressed"]]
    shown = failed or gate["compared"]
    title = (f"[bold red]latency regressions vs {baseline_path}[/bold red]" if failed else
             f"latency gate vs {baseline_path}" + (": rows within tolerance" if gate["passed"] else ""))
    table = Table(title=title, title_justify="left")
    for name in ("row", f"baseline {unit}", f"this run {unit}", "change", "allowed"):
        table.add_column(name, justify="left" if name == "row" else "right")
    for c in shown:
        sign = "+" if gate["mode"] == "absolute-ms" else "-"
        table.add_row(c["row"], f"{c['baseline']:.3g}", f"{c['current']:.3g}", f"{c['change']:+.1%}",
                      "not gated" if "not_gated" in c else f"{sign}{c['allowed']:.1%}",
                      style="red" if c["regressed"] else "dim" if "not_gated" in c else None)
    if shown:
        console.print(table)
    for label, rows in (("missing in this run", gate["missing_in_current"]),
                        ("not in the baseline", gate["missing_in_baseline"])):
        for row in rows:
            console.print(f"[yellow]{label}[/yellow]: {escape(str(row))}")
    for note in gate["notes"]:
        console.print(f"[yellow]note[/yellow]: {escape(note)}")
    for reason in gate.get("could_not_gate", []):
        console.print(f"[yellow]could not gate[/yellow]: {escape(reason)}")
    status = gate.get("status", "passed" if gate["passed"] else "failed")
    verdict = {"passed": "[green]gate passed[/green]", "failed": "[bold red]gate failed[/bold red]",
               "could-not-gate": "[bold yellow]could not gate[/bold yellow] (neither passed nor failed)"}[status]
    gated = sum("not_gated" not in c for c in gate["compared"])
    console.print(f"{verdict}: {len(failed)} regressed, {gated} gated of {len(gate['compared'])} compared "
                  f"(mode {gate['mode']}, max regression {gate['max_regression']:.0%} + measured spread), "
                  f"{len(gate['missing_in_current']) + len(gate['missing_in_baseline'])} missing")
