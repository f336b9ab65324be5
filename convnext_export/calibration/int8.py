"""The INT8 step: calibration images -> ranges (cached) -> recipe -> QDQ model -> hold-out check -> fallback."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..drift import drift_metrics
from ..errors import InputError
from ..isa import DEFAULT_ISA, ISA_CHOICES, detect_host, resolve_isa
from ..preprocess import Preprocessing
from ..progress import ProgressCallback, no_progress
from .cache import (CACHE_FILE, CacheKey, Calibration, calibration_cache_key, check_cache_file, read_cache,
                    write_cache)
from .data import (DEFAULT_CALIB_SIZE, DEFAULT_HOLDOUT, CalibrationData, fixed_batches, holdout_description,
                   load_calibration_data, resolvable_loss)
from .floor import AccuracyFloor, check_accuracy_floor
from .equalize import EQUALIZATION, apply_stream_scales, scales_report, stream_scales
from .fallback import check_holdout_resolution, fall_back_until, float_mac_fraction, layer_macs
from .graph import graph_fingerprint, name_nodes_by_module
from .onepass import ONE_PASS_METHODS, equalize_and_calibrate
from .quantize import quantize_with_plan
from .ranges import DEFAULT_PERCENTILE, CalibrationMethod, calibration_batch_size, collect_ranges
from .overflow import reduce_weight_range
from .recipe import QuantPlan, get_target, isa_report, plan_quantization, weight_range_bits
from .validation import check_kernels, host_gap_warning, repair_kernel_gap
from .sigmoid_gelu import GELU_FORMS, apply_sigmoid_gelu

# benchmarks/calibration_methods.py on the CIFAR-10 reference (8,000 test images, 512 train images):
# top-1 agreement with eager 98.78% minmax, 98.90% entropy, 99.15% percentile 99.99.
DEFAULT_METHOD = "percentile"


@dataclass(frozen=True)
class Int8Options:
    """How to calibrate and what to keep float (the target is the request's)."""

    calib_data: Path | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_method: str = DEFAULT_METHOD
    calib_percentile: float = DEFAULT_PERCENTILE
    exclude: tuple[str, ...] = ()
    max_drift: float | None = None  # minimum top-1 agreement with eager on the hold-out
    calib_cache: Path | None = None
    seed: int = 0
    gelu: str = "exact"  # "sigmoid": GELU as u8 lookup tables on --target cpu (calibration/sigmoid_gelu.py)
    isa: str | None = None  # --target cpu: the integer path the weights are made for (isa.py; None: DEFAULT_ISA)
    holdout: int | None = None  # hold-out images (default DEFAULT_HOLDOUT of real data; 1/8 of synthetic)
    floor: AccuracyFloor = AccuracyFloor()  # the least agreement and cosine with eager on the hold-out (floor.py)

    def validate(self, target: str, preprocessing: Preprocessing | None = None) -> None:
        """Usage errors for an INT8 export to ``target``, raised before any work; given the model's
        ``preprocessing``, --calib-data is opened too (its files listed, an array's shape checked)."""
        CalibrationMethod(self.calib_method, self.calib_percentile)
        if self.calib_size < 1:
            raise InputError(f"--calib-size {self.calib_size}: calibrate on at least 1 image "
                             f"(default {DEFAULT_CALIB_SIZE})")
        if self.gelu not in GELU_FORMS:
            raise InputError(f"--gelu {self.gelu!r}: use one of {', '.join(GELU_FORMS)}")
        if self.gelu == "sigmoid" and "gelu" not in get_target(target).quantized_classes:
            raise InputError(f"--gelu sigmoid applies to --target cpu: on --target {target} GELU's input stays "
                             f"float (TensorRT fuses exact GELU into the pointwise conv)")
        if self.isa is not None and self.isa not in ISA_CHOICES:
            raise InputError(f"--isa {self.isa!r}: use one of {', '.join(ISA_CHOICES)} "
                             f"(x86 = every x86 CPU, the default; host = this machine's only)")
        if self.isa is not None and target != "cpu":
            raise InputError(f"--isa {self.isa} applies to --target cpu (ONNX Runtime's x86 kernels); "
                             f"--target {target} runs on the GPU's int8 kernels")
        if self.holdout is not None and self.holdout < 1:
            raise InputError(f"--holdout {self.holdout}: validate on at least 1 image (default {DEFAULT_HOLDOUT} "
                             f"where --calib-data has them)")
        if self.max_drift is not None and not 0.0 < self.max_drift <= 1.0:
            raise InputError(f"--max-drift {self.max_drift}: give the minimum top-1 agreement with the eager "
                             f"model on the hold-out, in (0, 1], e.g. 0.99")
        self.floor.validate()
        if self.calib_data is not None:
            from ..datasets import open_dataset

            if not Path(self.calib_data).exists():
                raise InputError(f"--calib-data {self.calib_data} does not exist; give an image folder, "
                                 f"a .npy/.npz array, or omit it to calibrate on synthetic data")
            if preprocessing is not None:
                try:  # lists the files only: a folder without images fails here, before the export
                    open_dataset(self.calib_data, preprocessing, limit=self.calib_size, seed=self.seed)
                except InputError as error:
                    raise InputError(f"--calib-data: {error}") from None
        if self.calib_cache is not None and Path(self.calib_cache).is_dir():
            raise InputError(f"--calib-cache {self.calib_cache} is a directory; give a file "
                             f"(e.g. {Path(self.calib_cache) / CACHE_FILE})")
        if self.calib_cache is not None:
            check_cache_file(Path(self.calib_cache))  # a damaged cache stops the export now, before any work


@dataclass(frozen=True)
class Int8Result:
    path: Path
    drift: dict
    report: dict = field(default_factory=dict)  # manifest extra: calibration, quantized


def onnxruntime_runner(batch: int | None, kernels: str = "integer") -> Callable[..., np.ndarray]:
    """Run a model proto over images with ONNX Runtime (the backend's session options): its first output;
    ``progress(done, total)`` gets the images done after each batch. ``kernels="simulated"`` turns graph
    optimizations off: Q/DQ run as written around float ops, no integer kernel."""
    outputs = onnxruntime_outputs(batch, kernels=kernels)

    def run(model: onnx.ModelProto, images: np.ndarray, progress=lambda done, total: None) -> np.ndarray:
        return np.concatenate([chunk[0] for chunk in outputs(model, [model.graph.output[0].name], images, progress)])

    return run


def onnxruntime_outputs(batch: int | None, default_batch: int = 16, kernels: str = "integer"):
    """Run a model proto with ONNX Runtime and yield the named outputs batch by batch (static batches padded,
    the padding dropped); ``kernels`` as in ``onnxruntime_runner``; ``progress(done, total)`` gets the images done
    after each batch."""
    import onnxruntime

    from ..backends.onnxruntime import session_options

    if kernels not in ("integer", "simulated"):
        raise ValueError(f"kernels {kernels!r}: integer or simulated")

    def run(model: onnx.ModelProto, names: list[str], images: np.ndarray,
            progress=lambda done, total: None) -> Iterator[list[np.ndarray]]:
        progress(0, len(images))
        options = session_options()
        if kernels == "simulated":
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        size = batch or default_batch
        for start, chunk in zip(range(0, len(images), size), fixed_batches(images, size, pad=batch is not None)):
            outputs = session.run(names, {feed: chunk})
            progress(min(start + size, len(images)), len(images))
            yield [output[: min(size, len(images) - start)] for output in outputs]

    return run


def reporting(run: Callable[..., np.ndarray], label: str, progress: ProgressCallback) -> Callable[..., np.ndarray]:
    """``run`` (an ONNX Runtime or eager runner) reporting its images done to ``progress`` under ``label``."""
    def reported(*args):
        return run(*args, progress=lambda done, total: progress(label, done, total))

    return reported


def _set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    existing = {entry.key: entry for entry in model.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value


def cached_calibration(key: CacheKey, explicit: Path | None, previous: Path | None,
                       log: Callable[[str], None]) -> tuple[Calibration | None, str, Path | None]:
    """The calibration from the first existing cache whose key matches (``explicit``, the --calib-cache, first:
    damaged, it raises InputError; ``previous``, the replaced artifact's, damaged, is skipped with a warning);
    every cache looked at is reported. Returns (calibration, what happened, the cache file it came from)."""
    for candidate, named in ((explicit, True), (previous, False)):
        if candidate is None or not Path(candidate).is_file():
            continue
        lookup = read_cache(Path(candidate), key, explicit=named)
        log(lookup.message)
        if lookup.calibration is not None:
            return lookup.calibration, lookup.message, Path(candidate)
    return None, "computed", None


def calibrate(model: onnx.ModelProto, data: CalibrationData, method: CalibrationMethod, batch_size: int, pad: bool,
              progress: ProgressCallback = no_progress) -> dict[str, tuple[float, float]]:
    """Ranges from ONNX Runtime's calibrator (the entropy method: it needs every tensor's whole histogram)."""
    total = len(data.images)
    with tempfile.TemporaryDirectory(prefix="convnext-int8-") as work:
        named = Path(work) / "named.onnx"
        onnx.save(model, str(named))
        return collect_ranges(named, data.batches(batch_size, pad=pad), method,
                              lambda seen: progress(f"calibration: {method.name} (ONNX Runtime)", seen, total))


def build_int8(fp32_path: Path, out_path: Path, eager: Callable[[np.ndarray], np.ndarray],
               preprocessing: Preprocessing, batch: int | None, options: Int8Options, target_name: str, versions: dict,
               previous_cache: Path | None = None, cache_out: Path | None = None,
               log: Callable[[str], None] = lambda message: None, progress: ProgressCallback = no_progress
               ) -> Int8Result:
    """Quantize the fused FP32 graph at ``fp32_path`` into ``out_path``, checked on the calibration hold-out.

    ``previous_cache`` (the cache of the artifact being replaced) and ``options.calib_cache`` are
    reused only when their key matches; the ranges used are written to ``cache_out`` (beside the
    artifact) and to ``options.calib_cache`` when given.
    """
    options.validate(target_name)  # --calib-data is opened by load_calibration_data below (the CLI checked it first)
    target = get_target(target_name)
    method = CalibrationMethod(options.calib_method, options.calib_percentile, symmetric=target.activation_symmetric)
    model = name_nodes_by_module(onnx.load(str(fp32_path)))
    data = load_calibration_data(preprocessing, options.calib_data, options.calib_size, options.seed, log,
                                 holdout=options.holdout)
    resolution = (check_holdout_resolution(options.max_drift, len(data.holdout), data.synthetic)
                  if options.max_drift is not None else None)
    if resolution:
        log(resolution)
    if not data.synthetic and resolvable_loss(len(data.holdout)) > resolvable_loss(DEFAULT_HOLDOUT):
        log(f"note: {holdout_description(data)['holdout_note']}")
    key = calibration_cache_key(graph_fingerprint(model), data.provenance, preprocessing.to_dict(),
                                {**method.to_dict(), "equalization": EQUALIZATION}, versions)
    check = next(fixed_batches(data.holdout, batch or min(len(data.holdout), 8), pad=batch is not None))
    size = batch or calibration_batch_size(preprocessing.image_size)
    calibration, cache_message, cache_source = cached_calibration(key, options.calib_cache, previous_cache, log)
    if calibration is None:
        log(f"calibrating ({method.name}) on {len(data.images)} {'synthetic' if data.synthetic else 'real'} images")
        if method.name in ONE_PASS_METHODS:
            model, scales, ranges = equalize_and_calibrate(model, list(data.batches(size, pad=batch is not None)),
                                                           method, check, progress, log)
        else:
            scales = stream_scales(model, data.batches(size, pad=batch is not None))
            model = apply_stream_scales(model, scales, check)
            ranges = calibrate(model, data, method, size, pad=batch is not None, progress=progress)
        calibration = Calibration(ranges, {stage: s.tolist() for stage, s in scales.items()})
    else:
        scales = {stage: np.asarray(values) for stage, values in calibration.stream_scales.items()}
        try:
            model = apply_stream_scales(model, scales, check)
        except Exception as error:  # noqa: BLE001 - a checksummed cache for this key whose scales do not fit the graph
            raise InputError(f"{cache_message}, but its stream scales do not fit this graph ({type(error).__name__}: "
                             f"{str(error)[:120]}): the cache was edited; delete it to recalibrate") from None
    ranges = calibration.ranges
    if cache_out is not None:
        write_cache(cache_out, key, calibration)

    isa = resolve_isa(options.isa or DEFAULT_ISA) if target.name == "cpu" else None
    host = isa.host if isa is not None else detect_host()
    weight_bits = weight_range_bits(isa)
    if host.path.saturates is None:
        log(f"warning: this host's integer path is unknown ({host.architecture}, {host.model}; flags from "
            f"{host.source}): {'made overflow-safe 7-bit weights for every x86 path; ' if weight_bits == 7 else ''}"
            f"its own kernels are checked against the simulated Q/DQ on the hold-out")
    plan = plan_quantization(model, target, options.exclude, warn=log)
    if "gelu" in target.quantized_classes and not any(node.op_type == "Gelu" for node in model.graph.node):
        log("warning: this graph has no Gelu op (opsets before 20 decompose it), so pwconv1 keeps a float output "
            "and runs slower; export at --opset 20 for the fast INT8 path")

    def quantize(chosen: QuantPlan) -> onnx.ModelProto:
        quantized = quantize_with_plan(model, ranges, method, chosen)
        return reduce_weight_range(quantized, model) if weight_bits == 7 else quantized

    progress("quantization (ONNX Runtime QDQ)", 0, 1)
    quantized = quantize(plan)
    progress("quantization (ONNX Runtime QDQ)", 1, 1)
    run = reporting(onnxruntime_runner(batch), "hold-out: INT8 (ONNX Runtime)", progress)
    simulated = reporting(onnxruntime_runner(batch, kernels="simulated"), "hold-out: INT8 simulated Q/DQ", progress)
    reference = reporting(eager, "hold-out: eager FP32 reference", progress)(data.holdout)
    outputs = run(quantized, data.holdout)
    drift = drift_metrics(outputs, reference)
    macs = layer_macs(model)
    fallback = None
    if options.max_drift is not None and drift["top1_agreement"] < options.max_drift:
        log(f"top-1 agreement {drift['top1_agreement']:.2%} on the hold-out misses --max-drift "
            f"{options.max_drift}: measuring per-unit sensitivity")
        result = fall_back_until(model, quantize, plan, data.holdout, reference, options.max_drift,
                                 onnxruntime_runner(batch), log, progress)
        plan, quantized, outputs = result.plan, result.model, result.outputs
        fallback = {"budget_top1_agreement": options.max_drift, "moved": result.moved,
                    "sensitivity": result.sensitivity, "float_mac_fraction": result.float_mac_fraction}
        log(f"moved {len(result.moved)} unit(s) back to float ({', '.join(m['unit'] for m in result.moved)}): "
            f"{result.float_mac_fraction:.1%} of the MACs now float")
    elif options.max_drift is not None:
        fallback = {"budget_top1_agreement": options.max_drift, "moved": []}
    if fallback is not None:
        fallback.update({"holdout_images": len(data.holdout), "holdout_note": resolution})
    gelu = {"form": "exact"}
    if options.gelu == "sigmoid":
        log(f"GELU in the sigmoid form; correcting pwconv2 biases on {len(data.images)} calibration images")
        outputs_reported = reporting(onnxruntime_outputs(batch), "--gelu sigmoid: bias correction runs", progress)
        candidate, report = apply_sigmoid_gelu(quantized, data.images, outputs_reported)
        candidate_outputs = run(candidate, data.holdout)
        candidate_drift = drift_metrics(candidate_outputs, reference)
        if options.max_drift is not None and candidate_drift["top1_agreement"] < options.max_drift:
            log(f"--gelu sigmoid: top-1 agreement {candidate_drift['top1_agreement']:.2%} on the hold-out misses "
                f"--max-drift {options.max_drift}: keeping exact GELU")
            gelu = {"form": "exact", "sigmoid_rejected": {"top1_agreement": candidate_drift["top1_agreement"]}}
        else:
            quantized, outputs, gelu = candidate, candidate_outputs, report

    kernels = check_kernels(quantized, data.holdout, reference, isa, run, simulated, host.path.saturates, log,
                            host_outputs=outputs)
    repair = None
    if kernels.costly:
        quantized, kernels, repair = repair_kernel_gap(quantized, model, kernels, weight_bits, data.holdout, reference,
                                                       isa, host, batch, run, simulated, log)
        weight_bits = 7
    elif kernels.host_costly:
        log(f"warning: {host_gap_warning(kernels, host, isa)}")
    floor = check_accuracy_floor({name: kernels.runs[name].drift for name in sorted({"host", *kernels.judged.values()})},
                                 options.floor.resolved(options.max_drift), data.synthetic, cache_source)
    if cache_source is None and options.calib_cache is not None:  # only ranges that passed the floor are kept for reuse
        write_cache(Path(options.calib_cache), key, calibration)
    drift = kernels.runs["host"].drift
    _set_metadata(quantized, {"convnext_export.precision": "int8", "convnext_export.target": target.name,
                              "convnext_export.isa": json.dumps(isa_report(isa, host, weight_bits))})
    onnx.save(quantized, str(out_path))

    kind = "synthetic" if data.synthetic else "calibration"
    drift = {"inputs": f"{len(data.holdout)} hold-out {kind} images", "backend": "onnxruntime", **drift}
    quantized_report = {**plan.report(weight_bits), "float_mac_fraction": float_mac_fraction(plan, macs),
                        "gelu": gelu}
    if fallback is not None:
        quantized_report["fallback"] = fallback
    calibration_report = {**data.describe(), **method.to_dict(), "cache": cache_message, "cache_key": key.digest,
                          "residual_stream_equalization": scales_report(scales),
                          "notes": list(data.notes)}
    holdout_report = holdout_description(data)
    validation = {**kernels.to_dict(), **holdout_report}
    if repair is not None:
        validation["repaired"] = repair
    report = {"calibration": calibration_report, "quantized": quantized_report,
              "isa": isa_report(isa, host, weight_bits), "kernel_validation": validation, "accuracy_floor": floor}
    return Int8Result(out_path, drift, report)
