"""One straight road: config -> model -> fuse -> export ONNX -> precision -> artifact on disk."""

from __future__ import annotations

import dataclasses
import errno
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch

from . import __version__
from .artifact import Artifact, WeightsSource, file_sha256, scratch_inside, staged_directory, write_manifest
from .backends.onnxruntime import OnnxRuntimeBackend
from .calibration.cache import CACHE_FILE
from .calibration.data import DEFAULT_HOLDOUT
from .calibration.int8 import Int8Options
from .calibration.recipe import TARGETS
from .config import ConvNeXtConfig, UnknownSizeError, get_config, resolve_model_name
from .drift import drift_meaning, drift_metrics
from .errors import ConvNeXtExportError, InputError
from .export import DEFAULT_OPSET, check_fp32_drift, check_opset, export_onnx
from .fingerprint import FINGERPRINT, model_fingerprint
from .fusion import FUSIONS, fuse_model
from .hub import fetch_weights, is_hub_id, parse_hub_id
from .memory import check_export_memory
from .model import ConvNeXt, build_model
from .preprocess import Preprocessing, torchvision_preprocessing
from .progress import ProgressCallback, no_progress
from .protected import check_out_spares
from .tensorrt.build import EngineBuildSettings

DRIFT_SAMPLES = 4
FP16_VALIDATION_SAMPLES = 8
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class PreprocessingOverrides:
    """Preprocessing given on the command line; None keeps what the weights imply."""

    image_size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def apply(self, base: Preprocessing) -> Preprocessing:
        changes = {k: v for k, v in self.__dict__.items() if v is not None}
        try:
            return Preprocessing(**{**base.to_dict(), **changes, "mean": tuple(changes.get("mean", base.mean)),
                                    "std": tuple(changes.get("std", base.std))})
        except ValueError as error:
            raise InputError(str(error)) from None


@dataclass(frozen=True)
class ExportRequest:
    size: str | None = None  # a registered size or timm's name: tiny, convnext_tiny, convnext_tiny.fb_in1k
    weights: Path | str | None = None  # a checkpoint file or an hf-hub:OWNER/NAME id
    num_classes: int | None = None
    seed: int = 0
    preprocessing: PreprocessingOverrides = field(default_factory=PreprocessingOverrides)
    opset: int = DEFAULT_OPSET
    batch: int | None = None
    fuse: bool = True
    precision: str = "fp32"
    out: Path | None = None
    force: bool = False
    target: str = "cpu"  # INT8 Q/DQ layout: "cpu" | "tensorrt"
    int8: Int8Options = field(default_factory=Int8Options)  # calibration, exclusions, drift budget
    fp16_io: bool = False  # FP16 inputs/outputs (default FP32 I/O around an FP16 graph)
    engine: EngineBuildSettings | None = None  # --trt: also build model.engine (TensorRT) from the final ONNX

    def inputs(self) -> dict[str, Path | None]:
        """The files and folders the export reads, by option: ``--out`` must spare them."""
        int8 = self.int8 if self.precision == "int8" else Int8Options()
        return {"--weights": self.weights, "--calib-data": int8.calib_data, "--calib-cache": int8.calib_cache,
                "--timing-cache": self.engine.timing_cache if self.engine is not None else None}

    def default_out(self, config: ConvNeXtConfig) -> Path:
        suffix = "-tensorrt" if self.precision == "int8" and self.target == "tensorrt" else ""
        return Path("artifacts") / f"convnext_{config.name}-{self.precision}{suffix}"


@dataclass(frozen=True)
class ExportResult:
    artifact: Artifact
    op_census: dict[str, int]
    seconds: float
    size_bytes: int

    def to_dict(self) -> dict:
        """What ``convnext-export --json`` writes."""
        return {
            "artifact": str(self.artifact.directory),
            "model": str(self.artifact.model_path),
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 2),
            "op_census": self.op_census,
            "manifest": self.artifact.to_dict(),
        }


@dataclass(frozen=True)
class ReferenceModel:
    """The eager model with where it came from and how its inputs are preprocessed."""

    model: ConvNeXt
    config: ConvNeXtConfig
    weights: WeightsSource
    preprocessing: Preprocessing


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"convnext_export": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def sidecar_preprocessing(weights: Path) -> tuple[Preprocessing, Path] | None:
    """Preprocessing from a ``reference.json``-style sidecar naming this checkpoint, if one lies beside it."""
    for candidate in (weights.with_suffix(".json"), weights.parent / "reference.json"):
        if not candidate.is_file() or candidate == weights:
            continue
        try:
            data = json.loads(candidate.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"{candidate}: sidecar beside the checkpoint is not valid JSON ({error})") from None
        if candidate.name == "reference.json" and data.get("checkpoint") not in (weights.name, None):
            continue
        try:
            return Preprocessing.from_dict(data), candidate
        except KeyError as error:
            raise InputError(f"{candidate}: sidecar lacks preprocessing field {error}") from None
        except (TypeError, ValueError) as error:
            raise InputError(f"{candidate}: the sidecar's preprocessing cannot be used ({error}); fix or remove "
                             f"it") from None
    return None


def load_reference(size: str | None, weights: Path | str | None, num_classes: int | None, seed: int,
                   overrides: PreprocessingOverrides = PreprocessingOverrides(),
                   log: Callable[[str], None] = lambda message: None) -> ReferenceModel:
    """The eager reference: a checkpoint (a file or an ``hf-hub:`` id; size inferred) or seeded random weights.

    ``size`` takes timm's names too; a pretrained tag (``convnext_tiny.fb_in1k``) sets the preprocessing, as the
    hub's config.json does for an ``hf-hub:`` id; then a sidecar beside the file; ``overrides`` win over all.
    """
    try:
        name = resolve_model_name(size) if size is not None else None
        if weights is None:
            config = get_config(size or "tiny", num_classes)
    except UnknownSizeError as error:
        raise InputError(str(error)) from None
    tagged = name.pretrained.preprocessing if name is not None and name.pretrained is not None else None
    if weights is None:
        if tagged is not None:
            log(f"{name.timm_name}: its preprocessing and classes, with seeded random weights; "
                f"--weights hf-hub:timm/{name.timm_name} loads its published weights")
        return ReferenceModel(build_model(config, seed), config, WeightsSource(seed=seed),
                              overrides.apply(tagged or Preprocessing()))
    from .checkpoints import load_checkpoint

    hub = None
    if is_hub_id(weights):
        hub = fetch_weights(parse_hub_id(str(weights)), log)
        weights = hub.path
    loaded = load_checkpoint(weights, size=size, num_classes=num_classes)
    sidecar = sidecar_preprocessing(Path(weights)) if hub is None else None
    if tagged is not None:
        base = tagged
    elif hub is not None:
        base = hub.preprocessing or hub_tag_preprocessing(hub.hub_id.model_name) or Preprocessing()
    elif sidecar is not None:
        base = sidecar[0]
    elif loaded.layout == "torchvision":
        base = torchvision_preprocessing(loaded.config.name)
    else:
        base = Preprocessing()
    source = WeightsSource(path=str(Path(weights).resolve()), sha256=loaded.sha256, layout=loaded.layout,
                           hub=str(hub.hub_id) if hub is not None else None)
    return ReferenceModel(loaded.model, loaded.config, source, overrides.apply(base))


def hub_tag_preprocessing(model_name: str) -> Preprocessing | None:
    """A hub repository named after a known timm tag (timm/convnext_tiny.fb_in1k) without a pretrained_cfg."""
    try:
        name = resolve_model_name(model_name)
    except UnknownSizeError:
        return None
    return name.pretrained.preprocessing if name.pretrained is not None else None


def rebuild_reference(artifact: Artifact) -> ConvNeXt:
    """The eager model an artifact was exported from, checked against the recorded weights."""
    source = artifact.weights
    if source.path is None:
        return build_model(artifact.config, source.seed or 0)
    path = Path(source.path)
    if not path.is_file():
        raise InputError(f"{artifact.directory}: its weights {path} are gone; the eager reference cannot be rebuilt")
    if file_sha256(path) != source.sha256:
        raise InputError(f"{path}: sha256 differs from the one {artifact.directory} was exported from")
    from .checkpoints import load_checkpoint

    return load_checkpoint(path, size=artifact.config.name, num_classes=artifact.config.num_classes).model


def drift_inputs(preprocessing: Preprocessing, count: int, seed: int) -> np.ndarray:
    """Seeded standard-normal images (the scale of normalized pixels)."""
    rng = np.random.default_rng(seed)
    size = preprocessing.image_size
    return rng.standard_normal((count, 3, size, size), dtype=np.float32)


def onnx_metadata(reference: ReferenceModel, fusions: dict[str, int], precision: str) -> dict[str, str]:
    return {
        "convnext_export.size": reference.config.name,
        "convnext_export.num_classes": str(reference.config.num_classes),
        "convnext_export.image_size": str(reference.preprocessing.image_size),
        "convnext_export.preprocessing": json.dumps(reference.preprocessing.to_dict()),
        "convnext_export.fusions": json.dumps(fusions),
        "convnext_export.precision": precision,
        "convnext_export.versions": json.dumps(tool_versions()),
    }


def validate_request(request: ExportRequest) -> None:
    if request.out is not None:
        check_out_spares(request.out, request.inputs())
    check_opset(request.opset)
    try:
        if request.size is not None:
            resolve_model_name(request.size)
    except UnknownSizeError as error:
        raise InputError(str(error)) from None
    if is_hub_id(request.weights):
        parse_hub_id(str(request.weights))
    if request.batch is not None and request.batch < 1:
        raise InputError(f"--batch {request.batch}: a static batch must be >= 1 (omit it for a dynamic batch)")
    if request.num_classes is not None and request.num_classes < 1:
        raise InputError(f"--num-classes {request.num_classes}: must be >= 1")
    if request.precision not in PRECISIONS:
        raise InputError(f"precision {request.precision!r}: use one of {', '.join(PRECISIONS)}")
    if request.target not in TARGETS:
        raise InputError(f"--target {request.target!r}: use one of {', '.join(TARGETS)}")
    if request.precision == "int8":
        request.int8.validate(request.target)
    if request.fp16_io and request.precision != "fp16":
        raise InputError("--fp16-io applies to --fp16 exports only")
    if request.engine is not None:
        request.engine.validate()
        if request.batch is not None and request.engine.profile.to_dict() != dict.fromkeys(("min", "opt", "max"),
                                                                                         request.batch):
            raise InputError(f"--batch {request.batch} is static: the engine's profile must be {request.batch}, "
                             f"not {request.engine.profile.to_dict()}")
        if request.precision == "int8" and request.target != "tensorrt":
            raise InputError("--trt takes the tensorrt INT8 layout (symmetric int8, zero point 0), not --target cpu")
    if request.precision != "fp32" and not request.fuse:
        raise InputError(f"--{request.precision} works on the fused graph (its INT8 recipe and FP32 LayerNorm "
                         f"need one op per layer); drop --no-fuse")


def eager_runner(model: ConvNeXt, batch_size: int = 16):
    """float32 images -> eager FP32 logits, in chunks (the reference every precision is compared with);
    ``progress(done, total)`` gets the images done after each chunk."""
    def run(images: np.ndarray, progress=lambda done, total: None) -> np.ndarray:
        outputs = []
        progress(0, len(images))
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                outputs.append(model(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))).numpy())
                progress(min(i + batch_size, len(images)), len(images))
        return np.concatenate(outputs)
    return run


def apply_precision(request: ExportRequest, reference: ReferenceModel, fp32_path: Path, staging: Path, out: Path,
                    kept_layer_scale: set[str], log, progress: ProgressCallback = no_progress) -> tuple[dict, dict]:
    """The precision step on the checked FP32 graph: writes ``staging/model.onnx``; returns (drift, manifest extra)."""
    model_path = staging / "model.onnx"
    eager = eager_runner(reference.model)
    if request.precision == "int8":
        from .calibration.int8 import build_int8

        previous = out / CACHE_FILE if request.force and (out / CACHE_FILE).is_file() else None
        result = build_int8(fp32_path, model_path, eager, reference.preprocessing, request.batch, request.int8,
                            request.target, tool_versions(), previous_cache=previous, cache_out=staging / CACHE_FILE,
                            log=log, progress=progress)
        return result.drift, result.report
    from .fp16 import build_fp16

    images = drift_inputs(reference.preprocessing, request.batch or FP16_VALIDATION_SAMPLES, request.seed + 1)
    result = build_fp16(fp32_path, model_path, eager, images, request.batch, request.fp16_io, kept_layer_scale, log)
    drift = {"inputs": f"{len(images)} seeded standard-normal images", **result.drift}
    return drift, result.report


def export_artifact(request: ExportRequest, log=lambda message: None,
                    progress: ProgressCallback = no_progress) -> ExportResult:
    """Build, fuse, export and check one artifact; nothing is left on disk if any step fails.

    With ``request.engine`` the GPU and TensorRT are checked first, before any slow step. ``progress``
    gets (label, done, total) of the long steps (torch.onnx export, calibration, validation runs).
    """
    validate_request(request)
    runtime = None
    if request.engine is not None:
        from .tensorrt.availability import require_tensorrt

        runtime = require_tensorrt("--trt")
    started = time.perf_counter()
    if request.weights is None:  # random weights: the model (its head) is checked before it is built
        config = requested_config(request.size, request.num_classes)
        check_export_memory(config, request.preprocessing.image_size or Preprocessing().image_size,
                            request.precision, request.batch)
    reference = load_reference(request.size, request.weights, request.num_classes, request.seed, request.preprocessing,
                               log)
    held = 0
    if request.precision == "int8":  # --calib-data against the model's input size, known now
        request.int8.validate(request.target, reference.preprocessing)
        held = calibration_images_held(request.int8, reference.preprocessing)
    check_export_memory(reference.config, reference.preprocessing.image_size, request.precision, request.batch,
                        held, log)
    out = request.out or request.default_out(reference.config)
    check_out_spares(out, request.inputs())
    try:
        return _write_artifact(request, reference, out, runtime, started, log, progress)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {error.filename}" if error.filename else ""
        raise ConvNeXtExportError(f"--out {out}: the disk is full ({error.strerror}{where}); nothing was written: "
                                  f"free some space, or choose an --out on another disk") from None


def requested_config(size: str | None, num_classes: int | None) -> ConvNeXtConfig:
    """The config of a random-weights export (default tiny), or a usage error naming the valid sizes."""
    try:
        return get_config(size or "tiny", num_classes)
    except UnknownSizeError as error:
        raise InputError(str(error)) from None


def calibration_images_held(options: Int8Options, preprocessing: Preprocessing) -> int:
    """Images the INT8 step holds at once: --calib-size plus the hold-out, at most what --calib-data has."""
    if options.calib_data is None:
        return options.calib_size + (options.holdout if options.holdout is not None else 0)
    from .datasets import open_dataset

    wanted = options.calib_size + (DEFAULT_HOLDOUT if options.holdout is None else options.holdout)
    return len(open_dataset(options.calib_data, preprocessing, limit=wanted, seed=options.seed))


def _write_artifact(request: ExportRequest, reference: ReferenceModel, out: Path, runtime, started: float, log,
                    progress: ProgressCallback) -> ExportResult:
    """The export proper, into a staged folder that replaces ``out`` only when every step succeeded."""
    with staged_directory(out, request.force, log) as staging, scratch_inside(staging) as work:
        kept_layer_scale: set[str] = set()
        if request.fuse and request.precision == "fp16":
            from .fp16 import blocks_keeping_layer_scale

            kept_layer_scale = blocks_keeping_layer_scale(reference.model)
            if kept_layer_scale:
                log(f"FP16: layer scale kept as a separate multiply in {len(kept_layer_scale)} block(s) "
                    f"where folding it into pwconv2 would underflow")
        if request.fuse:
            graph_model, fusions = fuse_model(reference.model, keep_layer_scale=kept_layer_scale)
            fusions = {**fusions, "gelu_as_one_op": fusions["gelu_as_one_op"] if request.opset >= 20 else 0}
        else:
            graph_model, fusions = reference.model, {name: 0 for name in FUSIONS}
        log(f"exporting {reference.config.name} (opset {request.opset}, "
            f"{'static batch ' + str(request.batch) if request.batch else 'dynamic batch'})")
        fp32_path = staging / "model.onnx" if request.precision == "fp32" else Path(work) / "fp32.onnx"
        progress("FP32 ONNX export (torch.onnx)", 0, 1)
        exported = export_onnx(graph_model, fp32_path, reference.preprocessing.image_size,
                               opset=request.opset, batch=request.batch,
                               metadata=onnx_metadata(reference, fusions, "fp32"))
        progress("FP32 ONNX export (torch.onnx)", 1, 1)
        images = drift_inputs(reference.preprocessing, request.batch or DRIFT_SAMPLES, request.seed + 1)
        with torch.inference_mode():
            eager = reference.model(torch.from_numpy(images)).numpy()
        onnx_out = OnnxRuntimeBackend(exported.path).run(images)
        drift = drift_metrics(onnx_out, eager)
        check_fp32_drift(drift["relative_max_abs"])
        weights_kind = reference.weights.to_dict()["kind"]
        drift = {"inputs": f"{len(images)} seeded standard-normal images", "backend": "onnxruntime", **drift,
                 "meaning": drift_meaning(weights_kind, "synthetic", len(images))}
        extra = {}
        if request.precision != "fp32":
            extra["fp32_drift"] = drift
            drift, extra_precision = apply_precision(request, reference, exported.path, staging, out,
                                                     kept_layer_scale, log, progress)
            real = extra_precision.get("calibration", {}).get("kind", "synthetic") != "synthetic"  # INT8 hold-out
            drift = {**drift, "meaning": drift_meaning(weights_kind, "real" if real else "synthetic", drift["samples"])}
            extra.update(extra_precision)
        model_path = staging / "model.onnx"
        fingerprint = model_fingerprint(onnx.load(str(model_path), load_external_data=False))
        census = fingerprint["op_census"]
        if runtime is not None:
            from .tensorrt.engine_step import build_artifact_engine

            settings = dataclasses.replace(request.engine, tf32=request.precision != "fp32")  # FP32: no TF32 either
            extra["tensorrt"] = build_artifact_engine(staging, reference.preprocessing.image_size, settings, runtime,
                                                      images, eager, log)
            engine_drift = extra["tensorrt"]["drift"]
            engine_drift["meaning"] = drift_meaning(weights_kind, "synthetic", engine_drift["samples"])
        artifact = Artifact(
            directory=out, model_file="model.onnx", format="onnx", precision=request.precision,
            config=reference.config, preprocessing=reference.preprocessing, weights=reference.weights,
            fusions=fusions, opset=request.opset, batch=request.batch, model_sha256=file_sha256(model_path),
            drift=drift, versions=tool_versions(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            target=request.target if request.precision == "int8" else None,
            extra={"op_census": census, "export_seconds": round(exported.seconds, 2), **extra,
                   FINGERPRINT: fingerprint},
        )
        write_manifest(artifact.with_changes(directory=staging))
        size_bytes = model_path.stat().st_size
    return ExportResult(artifact, census, time.perf_counter() - started, size_bytes)
