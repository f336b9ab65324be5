"""The latency regression gate: compare a bench report with a committed baseline.

Rows match on (model, weights, precision, target, backend, batch). By default the gate compares each
row's speedup vs the eager model of its own run, which a slower or busier machine changes far
less than milliseconds. A row regresses when its value worsens by more than
``max_regression`` plus the spread both runs measured for it:

- speedup (default): change = new/old - 1; regressed when change < -(max_regression + s_old + s_new),
  where s is the row's ``speedup_vs_eager.spread``: the relative 95% half-width of the median
  of the per-round paired speedups (1.96 x 1.2533 x (IQR/1.349) / sqrt(rounds) / median);
- ``absolute``: change = new p50 / old p50 - 1 (ms); regressed when change > max_regression + s_old + s_new,
  with s the same 95% half-width of the latency median (from the IQR of its runs).

The gate neither passes nor fails on figures it cannot trust: rows timed on a contended machine (either
run's ``contention``), non-finite figures, or a comparison that gated nothing (e.g. a baseline from another
kernel family) make it "could not gate" (exit code COULD_NOT_GATE), saying why and what to do. A row that
regressed on clean figures still fails the gate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .environment import same_machine

SCHEMA_PREFIX = "convnext-bench/"
NOISY_SPREAD = 0.25  # spreads adding more than this to the tolerance are reported
COULD_NOT_GATE = 3  # exit code: the gate neither passed nor failed (documented in options.EXIT_CODES_EPILOG)


def artifact_weights(artifact: dict) -> str | None:
    """An artifact entry's weights label (runner.weights_label), for reports written before rows carried it."""
    if artifact.get("weights_label"):
        return artifact["weights_label"]
    weights = artifact.get("weights") or {}
    if weights.get("kind") == "random":
        return f"seed{weights.get('seed')}"
    return (weights.get("sha256") or "unknown")[:8] if weights else None


def row_weights(row: dict, report: dict) -> str | None:
    """The row's weights; older reports: those of the report's artifacts of the row's model, when one."""
    if row.get("weights"):
        return row["weights"]
    found = {artifact_weights(a) for a in report.get("artifacts", []) if a.get("model") == row["model"]}
    return found.pop() if len(found) == 1 else None


def row_key(row: dict, report: dict | None = None) -> tuple:
    weights = row.get("weights") if report is None else row_weights(row, report)
    return (row["model"], weights, row["precision"], row.get("target"), row["backend"], int(row["batch"]))


def key_label(key: tuple) -> str:
    model, weights, precision, target, backend, batch = key
    return f"{model}{'#' + weights if weights else ''}/{precision}/{target or '-'}/{backend}/b{batch}"


def parse_regression(text: str) -> float:
    """'10%' or '0.1' -> 0.1."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise InputError(f"--max-regression {text!r}: give a percentage like 10% or a fraction like 0.1") from None
    if not 0 <= value < 1:
        raise InputError(f"--max-regression {text!r}: must be between 0% and 100%")
    return value


def load_report(path: str | Path, schema: str, option: str = "--baseline") -> dict:
    """A bench JSON of this schema; anything else is an InputError naming the option and what was found."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{option} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{option} {path}: not a convnext-bench JSON report (not readable JSON: {error})") from None
    found = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(found, str) or not found.startswith(SCHEMA_PREFIX):
        raise InputError(f"{option} {path}: not a convnext-bench JSON report (schema {found!r}, expected {schema!r}); "
                         "write one with convnext-bench --json FILE")
    if found != schema:
        raise InputError(f"{option} {path}: report schema {found!r} is not this version's {schema!r}; "
                         "re-record it with this convnext-bench")
    if not isinstance(data.get("rows"), list):
        raise InputError(f"{option} {path}: report has no rows list; it is truncated or hand-edited")
    if not data["rows"]:
        raise InputError(f"{option} {path}: report has no rows: nothing to compare; re-record it with "
                         "convnext-bench ... --json FILE")
    for n, row in enumerate(data["rows"]):
        try:
            row_key(row)
            figures = {"speedup_vs_eager.speedup": row["speedup_vs_eager"]["speedup"],
                       "speedup_vs_eager.spread": row["speedup_vs_eager"].get("spread", 0.0),
                       "latency_ms.p50": row["latency_ms"]["p50"]}
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InputError(f"{option} {path}: a row lacks {error} (row {n}); re-record it") from None
        for name, value in figures.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{option} {path}: row {n} ({row.get('id', row['model'])}): {name} is "
                                 f"{value!r}, not a number; re-record the baseline with convnext-bench ... --json FILE")
    return data


def latency_spread(row: dict) -> float:
    lat = row["latency_ms"]
    runs = max(int(row.get("runs", 1)), 1)
    return 1.96 * 1.2533 * (lat.get("iqr", 0.0) / 1.349) / math.sqrt(runs) / lat["p50"] if lat["p50"] > 0 else 0.0


@dataclass
class GateResult:
    max_regression: float
    absolute: bool
    compared: list[dict] = field(default_factory=list)
    missing_in_current: list[str] = field(default_factory=list)
    missing_in_baseline: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    allow_missing: bool = False
    could_not_gate: list[str] = field(default_factory=list)  # why the figures cannot decide, and what to do

    @property
    def regressions(self) -> list[dict]:
        return [c for c in self.compared if c["regressed"]]

    @property
    def gated(self) -> int:
        return sum("not_gated" not in c for c in self.compared)

    @property
    def status(self) -> str:
        """failed (a clean regression or missing rows), could-not-gate, or passed."""
        missing = (self.missing_in_current or self.missing_in_baseline) and not self.allow_missing
        if self.regressions or missing:
            return "failed"
        return "could-not-gate" if self.could_not_gate else "passed"

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return {"mode": "absolute-ms" if self.absolute else "speedup-vs-eager", "max_regression": self.max_regression,
                "passed": self.passed, "status": self.status, "gated": self.gated, "compared": self.compared,
                "missing_in_current": self.missing_in_current, "missing_in_baseline": self.missing_in_baseline,
                "notes": self.notes, "could_not_gate": self.could_not_gate}


def kernel_family(environment: dict) -> tuple[bool, str]:
    """(AVX-512 float kernels?, int8 integer path) of a report's machine; older reports: from their CPU flags."""
    from ..isa import integer_path

    flags = set(environment.get("cpu", {}).get("flags", []))
    recorded = environment.get("integer_path", {}).get("integer_path")
    architecture = environment.get("cpu", {}).get("architecture", "x86_64")
    return "avx512f" in flags, recorded or integer_path(flags, architecture).name


def select_baseline(baselines: dict, current: dict) -> tuple[object, list[str]]:
    """The baseline recorded on this run's kernel family (float and int8), else the first; and notes saying which."""
    family = kernel_family(current.get("environment", {}))
    for path, report in baselines.items():
        if kernel_family(report.get("environment", {})) == family:
            return path, ([f"baseline {path} of {len(baselines)}: the one recorded on this machine's kernel family"]
                          if len(baselines) > 1 else [])
    first = next(iter(baselines))
    kinds = ", ".join(f"{p}: {kernel_family(r.get('environment', {}))[1]}" for p, r in baselines.items())
    return first, ([f"no baseline was recorded on this machine's kernel family ({family[1]}; baselines: {kinds}): "
                    f"compared with {first}"] if len(baselines) > 1 else [])


def ungated_precisions(baseline: dict, current: dict) -> dict[str, str]:
    """Precision -> why its speedups are not comparable between the two machines' kernel families.

    A speedup vs eager of the same run carries over between CPUs of one kind, not between kernel
    families: INT8 runs vpdpbusd (VNNI, AMX) or saturating vpmaddubsw pairs (AVX2, AVX-512 BW) at
    different rates, and FP32 (eager and ONNX Runtime alike) runs AVX-512 or AVX2 FMA kernels.
    """
    (old_avx512, old_path), (new_avx512, new_path) = (kernel_family(r.get("environment", {}))
                                                      for r in (baseline, current))
    reasons = {}
    if old_path != new_path:
        reasons["int8"] = (f"the baseline's int8 kernels are {old_path}, this machine's {new_path}: INT8 speedups differ "
                           f"between kernel families")
    if old_avx512 != new_avx512:
        reason = (f"the baseline's float kernels are {'AVX-512' if old_avx512 else 'AVX2'}, this machine's "
                  f"{'AVX-512' if new_avx512 else 'AVX2'}")
        for precision in ("fp32", "fp16"):
            reasons[precision] = reason
        reasons.setdefault("int8", reason)
    return reasons


def compare(baseline: dict, current: dict, max_regression: float, absolute: bool = False,
            allow_missing: bool = False) -> GateResult:
    result = GateResult(max_regression, absolute, allow_missing=allow_missing)
    ungated = ungated_precisions(baseline, current)
    for precision, reason in ungated.items():
        if any(row["precision"] == precision for row in current["rows"]):
            result.notes.append(f"{precision.upper()} rows are reported, not gated: {reason}; record a baseline on "
                                f"this kind of CPU (convnext-bench ... --json FILE) to gate them here")
    old_rows, new_rows = ({row_key(r, report): r for r in report["rows"]} for report in (baseline, current))
    for label, report in (("baseline", baseline), ("this run", current)):
        if len({row_key(r, report) for r in report["rows"]}) != len(report["rows"]):
            result.notes.append(f"{label} has several rows with one (model, precision, target, backend, batch); "
                                "the last of each was compared")
    differences = same_machine(baseline.get("environment", {}), current.get("environment", {}))
    if differences:
        result.notes.append("baseline is from another machine or setting (" + "; ".join(differences) + ")" +
                            (": absolute milliseconds are not comparable" if absolute else
                             ": speedups vs eager still are, roughly"))
    result.missing_in_current = [key_label(k) for k in old_rows if k not in new_rows]
    result.missing_in_baseline = [key_label(k) for k in new_rows if k not in old_rows]
    for key, new in new_rows.items():
        old = old_rows.get(key)
        if old is None or (not absolute and key[4] == "torch"):
            continue  # eager's speedup is 1 by definition
        if absolute:
            before, after = old["latency_ms"]["p50"], new["latency_ms"]["p50"]
            allowed = max_regression + latency_spread(old) + latency_spread(new)
            change = after / before - 1 if before else math.nan
            regressed = change > allowed
        else:
            before, after = old["speedup_vs_eager"]["speedup"], new["speedup_vs_eager"]["speedup"]
            allowed = max_regression + old["speedup_vs_eager"]["spread"] + new["speedup_vs_eager"]["spread"]
            change = after / before - 1 if before else math.nan
            regressed = change < -allowed
        why_not = _why_not_gated(key[2], ungated, old, new, (before, after, allowed, change))
        result.compared.append({"row": key_label(key), "baseline": before, "current": after, "change": change,
                                "allowed": allowed, "regressed": bool(regressed) and why_not is None,
                                **({} if why_not is None else {"not_gated": why_not})})
        if math.isfinite(allowed) and allowed - max_regression > NOISY_SPREAD:
            result.notes.append(f"{key_label(key)}: measured spread adds {allowed - max_regression:.0%} to the tolerance; "
                                "regressions smaller than that go unseen: rerun with more --iters on a quieter machine")
    result.could_not_gate = _could_not_gate(result, baseline, current.get("settings", {}).get("threads"))
    return result


def _why_not_gated(precision: str, ungated: dict[str, str], old: dict, new: dict,
                   figures: tuple[float, float, float, float]) -> str | None:
    """Why a compared row decides nothing: another kernel family, non-finite figures, or a contended run."""
    if not all(math.isfinite(value) for value in figures):
        return "non-finite figures (baseline {:g}, this run {:g}, allowed {:g}, change {:g})".format(*figures)
    for label, row in (("this run", new), ("the baseline", old)):
        contention = row.get("contention") or {}
        if contention.get("contended"):
            return f"{label} was timed on a contended machine: {'; '.join(contention['reasons'])}"
    return ungated.get(precision)


def _could_not_gate(result: GateResult, baseline: dict, threads: int | None) -> list[str]:
    """Why the gate can neither pass nor fail, each with what to do; empty when it could gate."""
    rerecord = baseline.get("command") or "convnext-bench ... --json FILE"
    rerun = ("rerun the gate with nothing else running: at --threads 1 already, only a quieter machine helps"
             if threads == 1 else "rerun the gate with nothing else running, or with --threads 1 beside light work")
    reasons = []
    nonfinite = [c["row"] for c in result.compared if c.get("not_gated", "").startswith("non-finite")]
    if nonfinite:
        reasons.append(f"non-finite figures in {', '.join(nonfinite)}: the baseline or this run holds NaN or "
                       f"infinite speedups or spreads; re-record the baseline: {rerecord}")
    contended = [c["row"] for c in result.compared if "contended machine" in c.get("not_gated", "")]
    if contended:
        reasons.append(f"{len(contended)} row(s) timed on a contended machine ({', '.join(contended)}): their "
                       f"speedups can neither pass nor fail; {rerun}")
    if not result.gated and not reasons:
        why = "; ".join(dict.fromkeys(c["not_gated"] for c in result.compared if "not_gated" in c)) or (
            "no row of this run matches a row of the baseline")
        reasons.append(f"gated nothing ({result.gated} gated of {len(result.compared)} compared: {why}); record a "
                       f"baseline on this kind of CPU: {rerecord}")
    return reasons
