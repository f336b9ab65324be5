"""convnext-bench's one road: load artifacts -> open backends (cold start, memory) -> time them
side by side -> drift vs eager -> one JSON-ready report (schema ``convnext-bench/1``)."""

from __future__ import annotations

import json
import math
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifact import Artifact, read_artifact
from ..backends.onnxruntime import SPINNING as ORT_SPINNING
from ..backends.base import Backend, BackendSpec, BackendUnavailable, backend_spec, default_backend_names
from ..drift import drift_meaning, drift_metrics
from ..errors import ConvNeXtExportError, InputError
from ..pipeline import drift_inputs, rebuild_reference
from ..isa import artifact_isa_warning, detect_host
from .contention import (assess, available_cores, before_record, block_variation, contention_summary,
                         default_threads, LoadWindow, measure_before)
from .environment import environment
from .coldstart import METHOD as MEMORY_METHOD, measure_cold_start
from .profile import profile_session, profile_torch
from .stages import stage_drift
from .gpu_timing import CLOCK as GPU_CLOCK, compute_speedups
from .timing import HIGH_CV, TimingPlan, input_pool, latency_stats, measure_alternating, paired_speedup

SCHEMA = "convnext-bench/1"
DRIFT_SAMPLES = 16  # seeded random images for drift when no --data is given
DRIFT_BATCH = 8
STAGE_SAMPLES = 16
PROFILE_RUNS = 10
EAGER = "torch"
GPU_REFERENCES = ("torch-cuda", "torch-cuda-fp16")
MAX_MIN_TIME_S = 3600.0


@dataclass(frozen=True)
class BenchRequest:
    artifacts: tuple[Path, ...]
    backends: tuple[str, ...] = tuple(default_backend_names())
    batches: tuple[int, ...] | None = None  # None: 1, and each static-batch artifact at its own batch
    threads: int | None = None  # None: the cores other work leaves free (bench.contention)
    plan: TimingPlan = TimingPlan()
    data: Path | None = None
    limit: int | None = None
    seed: int = 0
    profile_dir: Path | None = None
    cold_start: bool = True  # a child process per (artifact, backend): cold start and peak memory
    cuda_graph: bool = False  # GPU rows: time CUDA graph replays (bench.gpu_timing)


def validate_request(request: BenchRequest) -> list[BackendSpec]:
    """Bad options fail before any work: unknown backends, empty or non-positive batches, threads beyond the
    cores, a --min-time that would never end."""
    if request.batches is not None and (not request.batches or any(b < 1 for b in request.batches)):
        raise InputError(f"--batch {','.join(map(str, request.batches))}: batch sizes must be integers >= 1, e.g. 1,8")
    if request.plan.iters < 1 or request.plan.warmup < 0 or request.plan.min_time < 0:
        raise InputError("--iters must be >= 1, --warmup and --min-time >= 0")
    if not math.isfinite(request.plan.min_time) or request.plan.min_time > MAX_MIN_TIME_S:
        raise InputError(f"--min-time {request.plan.min_time}: give a finite number of seconds from 0 to "
                         f"{MAX_MIN_TIME_S:.0f}, e.g. --min-time 2")
    cores = available_cores()
    if request.threads is not None and not 1 <= request.threads <= cores:
        raise InputError(f"--threads {request.threads}: this process may run on {cores} core"
                         f"{'s' if cores != 1 else ''}; give 1 to {cores}, or leave it out to use the cores other "
                         "work leaves free (more threads than cores times the waiting, not the model)")
    if request.limit is not None and request.limit < 1:
        raise InputError(f"--limit {request.limit}: must be >= 1")
    specs = [backend_spec(name) for name in dict.fromkeys(request.backends)]
    if EAGER not in {spec.name for spec in specs}:
        specs.insert(0, backend_spec(EAGER))  # the reference every speedup and drift is measured against
    if any(spec.gpu for spec in specs) and torch.cuda.is_available():
        # GPU rows are read against eager PyTorch on the same GPU in the same run (without a GPU, GPU rows are skipped)
        names = {spec.name for spec in specs}
        specs[1:1] = [backend_spec(name) for name in GPU_REFERENCES if name not in names]
    return specs


def model_label(artifact: Artifact) -> str:
    """How rows name the network: size@resolution (+ classes when not 1000)."""
    label = f"{artifact.config.name}@{artifact.preprocessing.image_size}"
    return label if artifact.config.num_classes == 1000 else f"{label}-{artifact.config.num_classes}cls"


def weights_label(artifact: Artifact) -> str:
    """Which weights: the checkpoint's sha256 (first 8 hex digits) or the seed of random weights."""
    weights = artifact.weights
    if weights.path is None:
        return f"seed{weights.seed}"
    return (weights.sha256 or "unknown")[:8]


@dataclass
class Reference:
    """The eager model shared by every artifact exported from the same weights and config."""

    model_label: str
    weights: str  # weights_label: rows of two checkpoints of one architecture stay apart
    artifact: Artifact  # the manifest it was rebuilt from
    model: torch.nn.Module | None = None


@dataclass
class Subject:
    """One timed thing: the eager reference or an artifact on a backend."""

    spec: BackendSpec
    reference: Reference
    artifact: Artifact | None
    runner: Backend
    cold_batch: int
    cold: dict | None = None
    outputs: np.ndarray | None = None
    drift: dict | None = None
    accuracy: dict | None = None
    rows: list[dict] = field(default_factory=list)
    suffix: str = ""  # "@<artifact>" when another artifact of the same weights, precision and target is benched

    @property
    def precision(self) -> str:
        return self.artifact.precision if self.artifact else self.spec.options.get("precision", "fp32")

    @property
    def target(self) -> str | None:
        return self.artifact.target if self.artifact else None

    def key(self, batch: int) -> str:
        return (f"{self.reference.model_label}#{self.reference.weights}/{self.precision}{self.suffix}/"
                f"{self.target or '-'}/{self.spec.name}/b{batch}")

    def accepts(self, batch: int) -> bool:
        return self.artifact is None or self.artifact.batch in (None, batch)


def brief(error: BaseException) -> str:
    """An exception as one short line for a report."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _reference_key(artifact: Artifact) -> str:
    return json.dumps([artifact.config.to_dict(), artifact.weights.to_dict(), artifact.preprocessing.to_dict()],
                      sort_keys=True)


class Bench:
    """Runs one benchmark; ``log`` gets one-line messages, ``progress(label, done, total)`` the rounds."""

    def __init__(self, request: BenchRequest, log: Callable[[str], None] = lambda m: None,
                 progress: Callable[[str, int, int], None] = lambda label, done, total: None) -> None:
        self.request, self.log, self.progress = request, log, progress
        self.specs = validate_request(request)
        self.cores = available_cores()
        self.threads = request.threads or self.cores  # without --threads: chosen from the load in run()
        self.batches: tuple[int, ...] = request.batches or (1,)  # with static-batch artifacts: set in load_artifacts
        self.load_before: dict | None = None
        self.skipped: list[dict] = []
        self.warnings: list[str] = []

    # -- load -------------------------------------------------------------------------------
    def load_artifacts(self) -> list[Artifact]:
        if not self.request.artifacts:
            raise InputError("no artifact to benchmark: pass ARTIFACT_DIR(s) or let convnext-bench export --size")
        def warn(note: str) -> None:
            self.warnings.append(note)
            self.log(f"warning: {note}")

        # sha256 checked, the graph checked against the manifest (fingerprint.verify_model)
        artifacts = [read_artifact(path, log=warn) for path in self.request.artifacts]
        self.batches = self.batches_for(artifacts)
        host = detect_host()
        if self.request.data is not None:  # a --data that does not fit fails now, not after the timing
            from ..datasets import open_dataset

            for artifact in {a.preprocessing: a for a in artifacts}.values():
                try:
                    open_dataset(self.request.data, artifact.preprocessing, limit=self.request.limit,
                                 seed=self.request.seed)
                except InputError as error:
                    raise InputError(f"--data: {error} (for {artifact.name}, exported at "
                                     f"{artifact.preprocessing.image_size} px)") from None
        for artifact in artifacts:
            warning = artifact_isa_warning(artifact.name, artifact.precision, artifact.target,
                                           artifact.extra.get("isa"), host)
            if warning:
                self.warnings.append(warning)
                self.log(f"warning: {warning}")
        return artifacts

    def batches_for(self, artifacts: list[Artifact]) -> tuple[int, ...]:
        """--batch as given (a static-batch artifact it leaves out is an InputError naming the --batch that
        includes it); without --batch: 1 for dynamic artifacts and each static artifact's own batch."""
        static = sorted({a.batch for a in artifacts if a.batch is not None})
        if self.request.batches is None:
            dynamic = any(a.batch is None for a in artifacts) or not artifacts
            return tuple(sorted(set(static) | ({1} if dynamic else set())))
        left_out = [a for a in artifacts if a.batch is not None and a.batch not in self.request.batches]
        if left_out:
            wanted = ",".join(map(str, dict.fromkeys([*self.request.batches, *(a.batch for a in left_out)])))
            names = ", ".join(f"{a.name} (static batch {a.batch}, exported with --batch {a.batch})" for a in left_out)
            raise InputError(f"--batch {','.join(map(str, self.request.batches))} leaves out {names}: use --batch "
                             f"{wanted} to bench it, or re-export it without --batch for a dynamic batch")
        return self.request.batches

    def _skip(self, spec: BackendSpec, artifact: Artifact | None, reason: str) -> None:
        """Recorded once per backend and reason; the report prints the skips, grouped, after the table."""
        entry = {"artifact": artifact.name if artifact else None, "backend": spec.name, "batch": None, "reason": reason}
        if not any(s["backend"] == spec.name and s["reason"] == reason for s in self.skipped):
            self.skipped.append(entry)

    def _first_batch(self, artifact: Artifact | None) -> int | None:
        for batch in self.batches:
            if artifact is None or artifact.batch in (None, batch):
                return batch
        return None

    def open_subjects(self, artifacts: list[Artifact]) -> tuple[list[Reference], list[Subject]]:
        """Every backend on every artifact it can run, opened and run once (a runtime that fails is skipped)."""
        torch.set_num_threads(self.threads)
        available = []
        for spec in self.specs:
            try:
                spec.import_runtime()  # imports are not part of a cold start
                available.append(spec)
            except BackendUnavailable as error:
                self._skip(spec, None, str(error))
        references: dict[str, Reference] = {}
        for artifact in artifacts:
            references.setdefault(_reference_key(artifact),
                                  Reference(model_label(artifact), weights_label(artifact), artifact))
        subjects: list[Subject] = []
        for reference in references.values():
            batch = self.batches[0]
            pool = input_pool(batch, reference.artifact.preprocessing.image_size, 1, self.request.seed)
            reference.model = rebuild_reference(reference.artifact)
            for spec in [s for s in available if s.consumes == "reference"]:
                try:
                    runner = spec.open(model=reference.model, threads=self.threads)
                    runner.run(pool[0])
                except BackendUnavailable as error:
                    self._skip(spec, None, str(error))
                    continue
                except Exception as error:  # noqa: BLE001 - e.g. torch.compile without a compiler: skipped
                    if spec.name == EAGER:  # the reference failing is a bug, not a result
                        raise
                    self._skip(spec, reference.artifact, f"failed: {brief(error)}")
                    continue
                subjects.append(Subject(spec, reference, None, runner, batch))
                self.log(f"opened {spec.name} for {reference.model_label}")
        for artifact in artifacts:
            reference = references[_reference_key(artifact)]
            batch = self._first_batch(artifact)
            if batch is None:
                continue
            pool = input_pool(batch, artifact.preprocessing.image_size, 1, self.request.seed)
            for spec in [s for s in available if s.consumes != "reference"]:
                model_path = spec.artifact_file(artifact)
                if model_path is None:
                    self._skip(spec, artifact, "runs TensorRT engines; export with convnext-export ... --trt"
                               if spec.consumes == "engine" else f"runs ONNX artifacts; {artifact.name} is "
                                                                 f"{artifact.format}")
                    continue
                try:
                    runner = spec.open(model_path=model_path, threads=self.threads)
                    runner.run(pool[0])
                except BackendUnavailable as error:
                    self._skip(spec, None, str(error))
                    continue
                except Exception as error:  # noqa: BLE001 - a runtime that cannot run this graph is skipped, not a crash
                    self._skip(spec, artifact, f"failed: {brief(error)}")
                    continue
                subjects.append(Subject(spec, reference, artifact, runner, batch))
                self.log(f"opened {spec.name} for {artifact.name}")
        _name_same_keys(subjects)
        return list(references.values()), subjects

    def measure_cold_starts(self, subjects: list[Subject]) -> None:
        """Cold start and peak memory of each subject, each in a fresh child process."""
        for done, subject in enumerate(subjects):
            self.progress("cold start + memory (a process each)", done, len(subjects))
            source = subject.artifact or subject.reference.artifact
            subject.cold = measure_cold_start(subject.spec.name, str(source.directory), self.threads,
                                              subject.cold_batch, self.request.seed)
            if "error" in subject.cold:
                self.warnings.append(f"{subject.spec.name} on {source.name}: {subject.cold['error']}")
        self.progress("cold start + memory (a process each)", len(subjects), len(subjects))

    # -- latency ----------------------------------------------------------------------------
    def time_batches(self, subjects: list[Subject]) -> None:
        plan = self.request.plan
        for batch in self.batches:
            groups: dict[int, list[Subject]] = {}
            for subject in subjects:
                if subject.accepts(batch) and self._runs_at(subject, batch):
                    groups.setdefault(subject.reference.artifact.preprocessing.image_size, []).append(subject)
            for image_size, group in groups.items():
                pool = input_pool(batch, image_size, plan.pool, self.request.seed + batch)
                variants = {subject.key(batch): subject.runner.run for subject in group}
                label = f"batch {batch}, {image_size}px: {len(group)} variants"
                rounds = -(-plan.iters // plan.block)
                load = LoadWindow()
                load.sample()

                def on_round(done: int, label: str = label, rounds: int = rounds, load: LoadWindow = load) -> None:
                    load.sample()  # between rounds: this bench's threads are idle, other work's are counted
                    self.progress(label, done, rounds)

                timings = measure_alternating(variants, pool, plan, on_round=on_round)
                eager_keys = [s.key(batch) for s in group if s.spec.name == EAGER]
                contention = assess(load, self.cores, self.threads,
                                    max(block_variation(timings[key].rounds) for key in eager_keys))
                for subject in group:
                    eager = next(s for s in group if s.reference is subject.reference and s.spec.name == EAGER)
                    subject.rows.append(self._row(subject, batch, timings[subject.key(batch)],
                                                  timings[eager.key(batch)], pool, contention))
                compute_speedups([subject.rows[-1] for subject in group])

    def _runs_at(self, subject: Subject, batch: int) -> bool:
        """One untimed run at this batch size; a backend that fails here is skipped for it, not a crash."""
        if subject.spec.name == EAGER:
            return True
        size = subject.reference.artifact.preprocessing.image_size
        try:
            subject.runner.run(input_pool(batch, size, 1, self.request.seed)[0])
            return True
        except Exception as error:  # noqa: BLE001 - reported as a skipped row
            self.skipped.append({"artifact": subject.artifact.name if subject.artifact else None,
                                 "backend": subject.spec.name, "batch": batch,
                                 "reason": f"failed at batch {batch}: {brief(error)}"})
            return False

    def _row(self, subject: Subject, batch: int, timing, eager_timing, pool, contention: dict) -> dict:
        stats = latency_stats(timing.samples, batch)
        speedup = paired_speedup(eager_timing, timing)
        if subject.spec.name == EAGER:
            speedup = {**speedup, "speedup": 1.0, "spread": 0.0}
        row_warnings = []
        if stats["cv"] > HIGH_CV:
            row_warnings.append(f"high variation: CV {stats['cv']:.0%} > {HIGH_CV:.0%}")
        row = {
            "id": subject.key(batch),
            "model": subject.reference.model_label,
            "weights": subject.reference.weights,
            "precision": subject.precision,
            "target": subject.target,
            "backend": subject.spec.name,
            "batch": batch,
            "artifact": subject.artifact.name if subject.artifact else None,
            "backend_info": subject.runner.describe(),
            "latency_ms": {k: v for k, v in stats.items() if k not in ("runs", "throughput_ips")},
            "runs": stats["runs"],
            "warmup_runs": timing.warmup_runs,
            "distinct_inputs": len(set(timing.inputs)),
            "throughput_ips": stats["throughput_ips"],
            "speedup_vs_eager": speedup,
            "cold_start": subject.cold,
            "gpu": self._gpu_timing(subject, batch, pool),
            "drift": None,
            "accuracy": None,
            "profile": None,
            "warnings": row_warnings,
            "contention": contention,
        }
        if self.request.profile_dir:
            trace = self._profile(subject, row["id"], pool)
            row["profile"] = str(trace) if trace else None
        return row

    def _gpu_timing(self, subject: Subject, batch: int, pool) -> dict | None:
        """CUDA-event timing for backends on the GPU (None on the CPU); a failure is a row warning, not a crash."""
        if not getattr(subject.runner, "on_gpu", False):
            return None
        from .gpu_timing import GpuTimingPlan, measure_gpu

        plan = GpuTimingPlan(self.request.plan.warmup, self.request.plan.iters, self.request.cuda_graph)
        self.progress(f"GPU timing of {subject.key(batch)}", 0, 1)
        try:
            return measure_gpu(subject.runner.device_call, pool, plan)
        except Exception as error:  # noqa: BLE001 - e.g. a graph that cannot be captured
            self.warnings.append(f"{subject.key(batch)}: GPU timing failed ({brief(error)})")
            return None
        finally:
            self.progress(f"GPU timing of {subject.key(batch)}", 1, 1)

    def _profile(self, subject: Subject, row_id: str, pool) -> Path | None:
        directory, runs = self.request.profile_dir, min(PROFILE_RUNS, self.request.plan.iters)
        if subject.spec.consumes == "reference":
            return profile_torch(subject.runner.run, pool, runs, directory, row_id)
        if subject.spec.consumes == "engine":  # no runtime profiler hooked up for engines (use nsys / trtexec)
            return None
        return profile_session(
            lambda prefix: subject.spec.open(model_path=subject.spec.artifact_file(subject.artifact),
                                             threads=self.threads, profile_prefix=prefix),
            pool, runs, directory, row_id)

    # -- drift ------------------------------------------------------------------------------
    def drift_inputs(self, reference: Reference) -> tuple[np.ndarray, np.ndarray | None, str, Any]:
        """Real images (labels, dataset) from --data, else seeded random ones; the same for every backend."""
        preprocessing = reference.artifact.preprocessing
        if self.request.data is None:
            count = self.request.limit or DRIFT_SAMPLES
            return (drift_inputs(preprocessing, count, self.request.seed + 1), None,
                    f"{count} seeded standard-normal images (seed {self.request.seed + 1})", None)
        from ..datasets import open_dataset

        dataset = open_dataset(self.request.data, preprocessing, limit=self.request.limit, seed=self.request.seed)
        images, labels = [], []
        for batch in dataset.batches(64):
            images.append(batch.images)
            labels.append(batch.labels)
        if not images:
            raise InputError(f"--data {self.request.data}: no readable images")
        description = f"{sum(len(i) for i in images)} images from {self.request.data}"
        classes = reference.artifact.config.num_classes
        if not dataset.labeled:
            return np.concatenate(images), None, description, dataset
        if dataset.classes is not None and len(dataset.classes) != classes:
            self.warnings.append(f"--data {self.request.data} has {len(dataset.classes)} classes, {reference.model_label} "
                                 f"predicts {classes}: labeled accuracy not measured, drift on its images")
            return np.concatenate(images), None, description, dataset
        return np.concatenate(images), np.concatenate(labels), description, dataset

    def measure_drift(self, references: list[Reference], subjects: list[Subject]) -> dict[str, list[dict]]:
        stages: dict[str, list[dict]] = {}
        for reference in references:
            images, labels, description, dataset = self.drift_inputs(reference)
            group = [s for s in subjects if s.reference is reference]
            eager = next(s for s in group if s.spec.name == EAGER)
            meaning = drift_meaning(reference.artifact.weights.to_dict()["kind"],
                                    "synthetic" if self.request.data is None else "real", len(images))
            for subject in [eager] + [s for s in group if s is not eager]:
                label = (f"{'accuracy and drift' if labels is not None else 'drift'}: {subject.spec.name} on "
                         f"{subject.artifact.name if subject.artifact else reference.model_label}")
                try:
                    subject.outputs = run_in_batches(subject.runner.run, images,
                                                     subject.artifact.batch if subject.artifact else None,
                                                     lambda done, total, label=label: self.progress(label, done, total))
                except Exception as error:  # noqa: BLE001 - a backend's failure is reported, not a crash
                    if subject is eager:  # the reference failing is a bug, not a result
                        raise
                    self.warnings.append(f"{subject.spec.name} on {subject.artifact.name}: drift not measured "
                                         f"({brief(error)})")
                    continue
                if subject is not eager:
                    subject.drift = {"inputs": description, **drift_metrics(subject.outputs, eager.outputs),
                                     "meaning": meaning}
                if labels is not None:
                    subject.accuracy = labeled_accuracy(subject.outputs, images, labels, dataset)
            if labels is not None:
                for subject in [s for s in group if s.accuracy is not None]:
                    subject.accuracy["delta_top1"] = subject.accuracy["top1"] - eager.accuracy["top1"]
                    if subject.accuracy["top5"] is not None:
                        subject.accuracy["delta_top5"] = subject.accuracy["top5"] - eager.accuracy["top5"]
            for artifact in {s.artifact.name: s.artifact for s in group if s.artifact}.values():
                if artifact.precision != "fp32" and artifact.format == "onnx":
                    self.log(f"per-stage drift of {artifact.name}")
                    try:
                        stages[artifact.name] = stage_drift(artifact, reference.model, images[:STAGE_SAMPLES],
                                                            self.threads)
                    except ConvNeXtExportError as error:
                        self.warnings.append(f"{artifact.name}: per-stage drift unavailable: {error}")
            for subject in group:
                for row in subject.rows:
                    row["drift"], row["accuracy"] = subject.drift, subject.accuracy
        return stages

    # -- all --------------------------------------------------------------------------------
    def choose_threads(self) -> None:
        """The load before timing; without --threads, the cores it leaves free (bench.contention)."""
        window = measure_before()
        if self.request.threads is None:
            self.threads = default_threads(self.cores, window.others_running)
        self.load_before = before_record(window, self.cores, self.threads, self.request.threads is None)
        self.log(f"threads: {self.threads} ({self.load_before['threads_chosen']})")

    def run(self, command: str | None = None) -> dict:
        artifacts = self.load_artifacts()
        self.choose_threads()
        references, subjects = self.open_subjects(artifacts)
        if self.request.cold_start:
            self.measure_cold_starts(subjects)
        self.time_batches(subjects)
        stages = self.measure_drift(references, subjects)
        rows = [row for subject in subjects for row in subject.rows]
        noisy = [f"{row['id']} ({row['latency_ms']['cv']:.0%})" for row in rows if row["latency_ms"]["cv"] > HIGH_CV]
        contended = contention_summary(rows)
        if contended:
            self.warnings.append(contended)
        elif noisy:
            self.warnings.append(f"high variation (CV > {HIGH_CV:.0%}) in {len(noisy)} of {len(rows)} rows: "
                                 f"{', '.join(noisy)}; rerun with more --iters or --min-time for steadier "
                                 "milliseconds")
        return {
            "schema": SCHEMA,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command or shlex.join(["convnext-bench", *sys.argv[1:]]),
            "environment": environment(self.threads),
            "settings": {
                "backends": [spec.name for spec in self.specs],
                "batches": list(self.batches),
                "threads": self.threads,
                "seed": self.request.seed,
                "data": str(self.request.data) if self.request.data else None,
                "limit": self.request.limit,
                "timing": self.request.plan.describe(),
                "memory": MEMORY_METHOD,
                "cold_start": ("wall time of rebuilding the eager model from the manifest or creating the session, "
                               "plus the first run at the first batch size, in a fresh process; runtime imports "
                               "excluded" if self.request.cold_start else "not measured (--no-cold-start)"),
                "drift": "each backend's logits vs the eager model's on the same inputs (relative max-abs = "
                         "max|out-ref| / max|ref|; KL of softmax(ref) to softmax(out))",
                "onnxruntime_spinning": ORT_SPINNING,
                "gpu_timing": f"{GPU_CLOCK}; CUDA graphs {'on' if self.request.cuda_graph else 'off'}",
            },
            "artifacts": [artifact_entry(a, stages.get(a.name)) for a in artifacts],
            "contention": {"before": self.load_before, "rows_contended": sum(r["contention"]["contended"] for r in rows),
                           "summary": contended},
            "rows": rows,
            "skipped": self.skipped,
            "warnings": self.warnings,
        }


def _name_same_keys(subjects: list[Subject]) -> None:
    """Artifacts of one model, weights, precision and target (e.g. two opsets) get their name in the row id."""
    counts: dict[str, int] = {}
    for subject in subjects:
        counts[subject.key(0)] = counts.get(subject.key(0), 0) + 1
    for subject in subjects:
        if subject.artifact is not None and counts[subject.key(0)] > 1:
            subject.suffix = f"@{subject.artifact.name}"


def unmeasured_artifacts(report: dict) -> dict[str, list[str]]:
    """Artifacts in ``report`` that no row measured -> the reasons they were skipped (the bench fails on them)."""
    measured = {row.get("artifact") for row in report.get("rows", [])}
    return {entry["name"]: [s["reason"] for s in report.get("skipped", []) if s.get("artifact") in (entry["name"], None)]
            for entry in report.get("artifacts", []) if entry["name"] not in measured}


def artifact_entry(artifact: Artifact, stages: list[dict] | None) -> dict[str, Any]:
    return {
        "name": artifact.name, "path": str(artifact.directory), "model": model_label(artifact),
        "weights_label": weights_label(artifact),
        "precision": artifact.precision, "target": artifact.target, "format": artifact.format,
        "opset": artifact.opset, "batch": artifact.batch, "model_sha256": artifact.model_sha256,
        "config": artifact.config.to_dict(), "preprocessing": artifact.preprocessing.to_dict(),
        "weights": artifact.weights.to_dict(), "export_drift": artifact.drift or None, "stage_drift": stages,
        "isa": artifact.extra.get("isa"), "kernel_validation": _kernel_summary(artifact.extra.get("kernel_validation")),
    }


def _kernel_summary(check: dict | None) -> dict | None:
    """The export's real-vs-simulated kernel check, without its per-run drift details."""
    if not check:
        return None
    return {"holdout_images": check["holdout_images"], "costly": check["costly"],
            "top1_agreement": {name: run["top1_agreement"] for name, run in check["runs"].items()}}


def run_in_batches(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, static_batch: int | None,
                   progress: Callable[[int, int], None] = lambda done, total: None) -> np.ndarray:
    """Logits for all images, in chunks; a static-batch model gets its last chunk zero-padded;
    ``progress(done, total)`` gets the images done after each chunk."""
    size = static_batch or DRIFT_BATCH
    outputs = []
    for start in range(0, len(images), size):
        chunk = images[start:start + size]
        count = len(chunk)
        if static_batch and count < static_batch:
            chunk = np.concatenate([chunk, np.zeros((static_batch - count, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(np.asarray(run(chunk))[:count])
        progress(start + count, len(images))
    return np.concatenate(outputs)


def labeled_accuracy(outputs: np.ndarray, images: np.ndarray, labels: np.ndarray, source: Any) -> dict:
    """Top-1/top-5 through the project's evaluator, replaying logits already computed on these images.

    The evaluator walks the loaded images in order; each chunk it asks for is checked to be the
    next slice of ``images``, so the logits it scores are the ones drift was measured on.
    """
    from ..datasets import Batch, ImageDataset
    from ..evaluate import evaluate_accuracy

    class LoadedImages(ImageDataset):
        def __len__(self) -> int:
            return len(images)

        def files(self) -> list[Path]:
            return source.files()

        def batches(self, batch_size: int):
            for start in range(0, len(images), batch_size):
                yield Batch(images[start:start + batch_size], labels[start:start + batch_size])

    cursor = 0

    def replay(chunk: np.ndarray) -> np.ndarray:
        nonlocal cursor
        if not np.array_equal(chunk, images[cursor:cursor + len(chunk)]):
            raise ConvNeXtExportError("accuracy evaluation visited the images out of order")
        cursor += len(chunk)
        return outputs[cursor - len(chunk):cursor]

    dataset = LoadedImages(source.path, source.kind, source.classes, labels)
    accuracy = evaluate_accuracy(replay, dataset, batch_size=DRIFT_BATCH * 8, progress=False)
    return {"top1": float(accuracy.top1), "top5": None if accuracy.top5 is None else float(accuracy.top5),
            "count": int(accuracy.count)}
