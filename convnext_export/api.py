"""The Python API: what ``convnext-export`` and ``convnext-bench`` do, as two functions.

    import convnext_export

    result = convnext_export.export_model(size="convnext_tiny.fb_in1k", weights="hf-hub:timm/convnext_tiny.fb_in1k",
                                    int8=True, calib_data="images/", out="build/tiny-int8")
    result.artifact.model_path, result.artifact.drift, result.to_dict()   # what --json writes
    report = convnext_export.benchmark([result.artifact.directory], batches=(1, 8), threads=1)
    report["rows"], report["summary"]                                     # what --json writes

Keyword arguments are the commands' options (``--calib-size`` -> ``calib_size``) with the same defaults, and
the CLI builds its requests through these same functions, so an option combination refused on the command
line is refused here with the same message (``InputError``, exit code 2 there). Failures raise
``ConvNeXtExportError`` (exit code 1 there). (They are not called ``export`` and ``bench``: those names are the
package's modules ``convnext_export.export`` and ``convnext_export.bench``.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .calibration.data import DEFAULT_CALIB_SIZE
from .calibration.floor import DEFAULT_MIN_COSINE, AccuracyFloor
from .calibration.int8 import DEFAULT_METHOD, Int8Options
from .calibration.ranges import DEFAULT_PERCENTILE
from .errors import InputError
from .export import DEFAULT_OPSET
from .hub import is_hub_id
from .pipeline import ExportRequest, ExportResult, PreprocessingOverrides, export_artifact
from .progress import ProgressCallback, no_progress

Log = Callable[[str], None]


def _weights(weights: Path | str | None) -> Path | str | None:
    """A checkpoint path, or an hf-hub: id kept as text."""
    return weights if weights is None or is_hub_id(str(weights)) else Path(weights)


def _applies_to(given: list[str], what: str) -> None:
    if given:
        raise InputError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to {what} only")


def export_request(*, size: str | None = None, weights: Path | str | None = None, num_classes: int | None = None,
                   image_size: int | None = None, crop_pct: float | None = None, interpolation: str | None = None,
                   mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                   opset: int = DEFAULT_OPSET, batch: int | None = None, seed: int = 0, fuse: bool = True,
                   fp16: bool = False, fp16_io: bool = False, int8: bool = False, target: str | None = None,
                   calib_data: Path | str | None = None, calib_size: int | None = None, calib_method: str | None = None,
                   calib_percentile: float | None = None, exclude: Sequence[str] = (), max_drift: float | None = None,
                   gelu: str | None = None, isa: str | None = None, holdout: int | None = None,
                   calib_cache: Path | str | None = None, min_agreement: float | None = None,
                   min_cosine: float | None = None, trt: bool = False, min_batch: int | None = None,
                   opt_batch: int | None = None, max_batch: int | None = None, workspace: str | None = None,
                   timing_cache: Path | str | None = None, builder_opt_level: int | None = None,
                   out: Path | str | None = None, force: bool = False) -> ExportRequest:
    """The ExportRequest ``convnext-export`` builds from its options (``fuse=False`` is ``--no-fuse``); option
    combinations are checked here, once, for the CLI and the API alike."""
    from .tensorrt.build import EngineBuildSettings, parse_workspace
    from .tensorrt.profiles import batch_profile

    if fp16 and int8:
        raise InputError("--fp16 and --int8 exclude each other: pick one precision")
    if fp16_io and not fp16:
        raise InputError("--fp16-io applies to --fp16 only")
    int8_only = {"--calib-data": calib_data, "--calib-size": calib_size, "--calib-method": calib_method,
                 "--calib-percentile": calib_percentile, "--exclude": tuple(exclude), "--max-drift": max_drift,
                 "--gelu": gelu, "--isa": isa, "--holdout": holdout, "--calib-cache": calib_cache,
                 "--min-agreement": min_agreement, "--min-cosine": min_cosine}
    _applies_to([flag for flag, value in int8_only.items() if value not in (None, ())] if not int8 else [], "--int8")
    if target == "cpu" and trt:
        raise InputError("--trt builds for TensorRT: it takes the tensorrt INT8 layout, not --target cpu")
    trt_only = {"--min-batch": min_batch, "--opt-batch": opt_batch, "--max-batch": max_batch, "--workspace": workspace,
                "--timing-cache": timing_cache, "--builder-opt-level": builder_opt_level}
    _applies_to([flag for flag, value in trt_only.items() if value is not None] if not trt else [], "--trt")
    engine = EngineBuildSettings(
        profile=batch_profile(batch, min_batch, opt_batch, max_batch),
        workspace_bytes=parse_workspace(workspace) if workspace is not None else None,
        timing_cache=Path(timing_cache) if timing_cache is not None else None, optimization_level=builder_opt_level,
    ) if trt else None
    int8_options = Int8Options(
        calib_data=Path(calib_data) if calib_data is not None else None, calib_size=calib_size or DEFAULT_CALIB_SIZE,
        calib_method=calib_method or DEFAULT_METHOD,
        calib_percentile=DEFAULT_PERCENTILE if calib_percentile is None else calib_percentile,
        exclude=tuple(exclude), max_drift=max_drift, calib_cache=Path(calib_cache) if calib_cache is not None else None,
        seed=seed, gelu=gelu or "exact", isa=isa, holdout=holdout,
        floor=AccuracyFloor(min_agreement, DEFAULT_MIN_COSINE if min_cosine is None else min_cosine),
    )
    return ExportRequest(
        size=size, weights=_weights(weights),
        num_classes=num_classes, seed=seed, opset=opset, batch=batch, fuse=fuse,
        preprocessing=PreprocessingOverrides(image_size, crop_pct, interpolation,
                                             tuple(mean) if mean is not None else None,
                                             tuple(std) if std is not None else None),
        out=Path(out) if out is not None else None, force=force,
        precision="int8" if int8 else "fp16" if fp16 else "fp32", target="tensorrt" if trt else (target or "cpu"),
        int8=int8_options, fp16_io=fp16_io, engine=engine,
    )


def export_model(*, log: Log | None = None, progress: ProgressCallback | None = None, **options) -> ExportResult:
    """Export one artifact, as ``convnext-export`` does; ``options`` are ``export_request``'s. Returns the result
    the CLI prints (``result.to_dict()`` is what its ``--json`` writes). ``log`` gets the CLI's log lines,
    ``progress(label, done, total)`` the long steps."""
    return export_artifact(export_request(**options), log=log or (lambda message: None),
                           progress=progress or no_progress)


def benchmark(artifacts: Sequence[Path | str] = (), *, size: str | None = None, image_size: int | None = None,
          weights: Path | str | None = None, work: Path | str | None = None,
          backends: Sequence[str] | str | None = None, batches: Sequence[int] | None = None,
          threads: int | None = None,
          warmup: int = 5, iters: int = 50, min_time: float = 0.0, block: int = 5, cold_start: bool = True,
          cuda_graph: bool = False, data: Path | str | None = None, limit: int | None = None, seed: int = 0,
          profile_dir: Path | str | None = None, baseline: Path | str | Sequence[Path | str] = (),
          max_regression: str = "10%",
          absolute: bool = False, allow_missing: bool = False, from_json: Path | str | None = None,
          log: Log | None = None, progress: ProgressCallback | None = None) -> dict:
    """Benchmark artifacts (or, with none, the default FP32 + INT8 set of ``size``/``weights``), as
    ``convnext-bench`` does (``batches=(1, 8)`` is ``--batch 1,8``, None: 1 and each static-batch artifact's own;
    ``threads`` None: the cores other running work leaves free; ``backends`` default: every installed one the
    CLI lists). Returns the report its ``--json`` writes (schema ``convnext-bench/1``); with ``baseline`` (one
    report, or several, one per kind of CPU: the one of this machine's kernel family is used),
    ``report["gate"]["status"]`` is the gate's verdict: passed, failed (the CLI exits 1) or could-not-gate
    (contended rows, non-finite figures, nothing gated: the CLI exits 3)."""
    from .backends import default_backend_names
    from .bench import BenchRequest, TimingPlan
    from .bench.defaults import DefaultSet, run_benchmark
    from .bench.gate import compare, load_report, parse_regression, select_baseline
    from .bench.runner import SCHEMA, validate_request

    if isinstance(backends, str):
        backends = [name.strip() for name in backends.split(",") if name.strip()]
    tolerance = parse_regression(max_regression)
    baselines = (baseline,) if isinstance(baseline, (str, Path)) else tuple(baseline or ())
    baseline_reports = {Path(b): load_report(b, SCHEMA) for b in baselines}
    path = lambda value: Path(value) if value is not None else None  # noqa: E731
    request = BenchRequest(artifacts=tuple(Path(a) for a in artifacts),
                           backends=tuple(dict.fromkeys(backends or default_backend_names())),
                           batches=None if batches is None else tuple(dict.fromkeys(batches)), threads=threads,
                           plan=TimingPlan(warmup=warmup, iters=iters, min_time=min_time, block=block), data=path(data),
                           limit=limit, seed=seed, profile_dir=path(profile_dir), cold_start=cold_start,
                           cuda_graph=cuda_graph)
    validate_request(request)
    if from_json is not None:
        report = load_report(from_json, SCHEMA, "--from-json")
        report.pop("gate", None)
    else:
        defaults = DefaultSet(size or (None if weights else "tiny"), image_size, _weights(weights), seed, path(work))
        report = run_benchmark(request, defaults, log=log or (lambda message: None), progress=progress or no_progress)
    if baseline_reports:
        chosen, notes = select_baseline(baseline_reports, report)
        result = compare(baseline_reports[chosen], report, tolerance, absolute, allow_missing)
        result.notes[:0] = notes
        report["gate"] = {"baseline": str(chosen), **result.to_dict()}
    return report
