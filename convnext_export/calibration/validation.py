"""The export's hold-out check of an INT8 model: real integer kernels against the same Q/DQ simulated.

ONNX Runtime runs a Q/DQ graph on its integer kernels (QLinearConv, QGemm); with graph
optimizations off it runs the graph as written, DequantizeLinear -> float op -> QuantizeLinear:
the arithmetic the Q/DQ describe, without any kernel's shortcuts ("simulated"). On kernels that
accumulate exactly (VNNI, AMX) the two agree to rounding; saturating kernels (AVX2, AVX-512 BW)
can lose agreement with eager. An artifact is judged on the kernels of every integer path it is
made for: the host's own where the host has that path, the simulated graph for an exact path it
lacks, the emulated saturating kernels (``kernel_emulation.py``) for a saturating path it lacks.
A judged run whose agreement falls below the simulated one by more than the tolerance costs
agreement; ``layer_saturation`` then says which layers saturate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..drift import drift_metrics
from ..isa import ALL_X86, PATHS, IsaTarget
from .kernel_emulation import emulable_layers, emulate_saturating_kernels, input_quantization
from .qdq_weights import node_attribute, read_array
from .saturation import im2col, reduction_order, saturation_stats

GAP_TOLERANCE = 0.005  # agreement points a judged run may lose against the simulated graph (rounding) ...
GAP_TOLERANCE_IMAGES = 3  # ... or this many hold-out images, whichever is more
LAYER_SAMPLE_ROWS = 4096  # output positions per layer the saturation report looks at

Runner = Callable[[onnx.ModelProto, np.ndarray], np.ndarray]

KERNELS = {
    "simulated": "the same Q/DQ graph without integer kernels (ONNX Runtime, graph optimizations off)",
    "host": "ONNX Runtime's integer kernels on this host",
    "emulated_saturating": "AVX2 / AVX-512 BW saturating u8 x s8 pair sums, emulated (calibration/kernel_emulation.py)",
}


@dataclass(frozen=True)
class KernelRun:
    name: str  # a KERNELS key
    drift: dict
    outputs: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class KernelCheck:
    """Drift of the hold-out on each kind of kernel, and which kinds stand for the paths the artifact is made for."""

    runs: dict[str, KernelRun]
    judged: dict[str, str]  # kernel family ("exact" / "saturating") -> run name standing for it
    host_path: str

    @property
    def holdout(self) -> int:
        return len(self.runs["simulated"].outputs)

    @property
    def tolerance(self) -> float:
        return max(GAP_TOLERANCE, GAP_TOLERANCE_IMAGES / max(self.holdout, 1))

    def gap(self, name: str) -> float:
        """Top-1 agreement with eager lost on ``name``'s kernels against the simulated graph."""
        return self.runs["simulated"].drift["top1_agreement"] - self.runs[name].drift["top1_agreement"]

    @property
    def costly(self) -> list[str]:
        """Judged runs that lose more agreement than the tolerance."""
        return sorted({run for run in self.judged.values() if run != "simulated" and self.gap(run) > self.tolerance})

    @property
    def host_costly(self) -> bool:
        return self.gap("host") > self.tolerance

    def to_dict(self) -> dict:
        return {
            "holdout_images": self.holdout,
            "tolerance": self.tolerance,
            "host_integer_path": self.host_path,
            "runs": {name: {"kernels": KERNELS[name], "gap_top1_agreement": 0.0 if name == "simulated" else self.gap(name),
                            **{k: v for k, v in run.drift.items() if k != "samples"}}
                     for name, run in self.runs.items()},
            "judged": self.judged,
            "costly": self.costly,
        }


def kernel_families(isa: IsaTarget | None) -> tuple[str, ...]:
    """The kernel families (exact / saturating) the artifact is made for; TensorRT (None) accumulates exactly."""
    if isa is None:
        return ("exact",)
    if isa.name in PATHS and PATHS[isa.name].saturates is not None:
        return ("saturating",) if PATHS[isa.name].saturates else ("exact",)
    return ("exact", "saturating")  # every x86 path, or a path this tool does not know


def check_kernels(model: onnx.ModelProto, holdout: np.ndarray, reference: np.ndarray, isa: IsaTarget | None,
                  integer: Runner, simulated: Runner, host_saturates: bool | None,
                  log: Callable[[str], None] = lambda message: None,
                  host_outputs: np.ndarray | None = None) -> KernelCheck:
    """Run the hold-out on the host's integer kernels and simulated, plus emulated saturating kernels where the
    artifact is made for a saturating path the host lacks; ``host_saturates`` None: the host's path is unknown.
    ``host_outputs``: ``integer(model, holdout)`` when the caller has run it already."""
    runs = {"simulated": KernelRun("simulated", drift_metrics(outputs := simulated(model, holdout), reference),
                                   outputs)}
    if host_outputs is None:
        host_outputs = integer(model, holdout)
    runs["host"] = KernelRun("host", drift_metrics(host_outputs, reference), host_outputs)
    judged = {}
    for family in kernel_families(isa):
        if family == "exact":
            judged[family] = "host" if host_saturates is False else "simulated"
        elif host_saturates:
            judged[family] = "host"
        else:
            if "emulated_saturating" not in runs:
                log(f"emulating saturating AVX2 / AVX-512 BW kernels on {len(holdout)} hold-out images")
                outputs = simulated(emulate_saturating_kernels(model), holdout)
                runs["emulated_saturating"] = KernelRun("emulated_saturating", drift_metrics(outputs, reference), outputs)
            judged[family] = "emulated_saturating"
    host_path = isa.host.path.name if isa is not None else "n/a"
    return KernelCheck(runs, judged, host_path)


@dataclass(frozen=True)
class LayerSaturation:
    node: str
    saturated_pairs: float  # fraction of u8 x s8 pair sums outside int16
    accumulator_error: float  # relative L2 error of the layer's accumulator from saturation

    def to_dict(self) -> dict:
        return {"node": self.node, "saturated_pairs": self.saturated_pairs, "accumulator_error": self.accumulator_error}


def layer_saturation(model: onnx.ModelProto, images: np.ndarray, simulated_outputs,
                     seed: int = 0) -> list[LayerSaturation]:
    """Per integer layer, how often and how much its saturating kernel would saturate on ``images`` (numpy model
    of the kernels on the layer's real input codes), worst first. ``simulated_outputs``: ``onnxruntime_outputs``
    with ``kernels="simulated"``."""
    layers = emulable_layers(model)
    producers = {output: node for node in model.graph.node for output in node.output}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = []
    for layer in layers:
        name = layer.node.input[0]
        if name not in {o.name for o in probe.graph.output}:
            probe.graph.output.add().name = name
        names.append(name)
    captured: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for chunk in simulated_outputs(probe, names, images):
        for name, array in zip(names, chunk):
            captured[name].append(array)
    rng = np.random.default_rng(seed)
    report = []
    for layer, name in zip(layers, names):
        scale, offset = input_quantization(model, producers[name])
        x = np.concatenate(captured[name])
        codes = np.rint(x / scale).astype(np.int32) + offset
        if layer.op_type == "Conv":  # emulable convs are 1x1 or patchify (stride = kernel, no padding)
            k = int(node_attribute(layer.node, "kernel_shape", [1])[0])
            codes = im2col(codes, k, k, 0, offset)
        if len(codes) > LAYER_SAMPLE_ROWS:
            codes = codes[np.sort(rng.choice(len(codes), LAYER_SAMPLE_ROWS, replace=False))]
        weights = reduction_order(read_array(model, layer.codes_name), layer.op_type, layer.trans_b)
        fraction, error = saturation_stats(codes, weights, offset)
        report.append(LayerSaturation(layer.name, fraction, error))
    return sorted(report, key=lambda entry: entry.accumulator_error, reverse=True)


LAYER_REPORT_IMAGES = 64  # hold-out images the per-layer saturation report reads
REPORTED_LAYERS = 5


def _layers_text(layers: list[LayerSaturation]) -> str:
    return ", ".join(f"{entry.node} ({entry.saturated_pairs:.2%} of pair sums saturate, accumulator error "
                     f"{entry.accumulator_error:.1%})" for entry in layers[:REPORTED_LAYERS]) or "none"


def _gap_text(check: KernelCheck, name: str) -> str:
    run = check.runs[name].drift["top1_agreement"]
    simulated = check.runs["simulated"].drift["top1_agreement"]
    return (f"on {KERNELS[name]} INT8 agrees with eager on {run:.2%} of {check.holdout} hold-out images, "
            f"{check.gap(name):.2%} below the same Q/DQ simulated ({simulated:.2%})")


def repair_kernel_gap(quantized: onnx.ModelProto, fp32: onnx.ModelProto, check: KernelCheck, weight_bits: int,
                      holdout: np.ndarray, reference: np.ndarray, isa: IsaTarget | None, host, batch: int | None,
                      integer: Runner, simulated: Runner, log: Callable[[str], None]):
    """A kernel gap that costs agreement: name the saturating layers, make the weights overflow-safe and check
    again; (model, check, report) if that closes the gap, else ConvNeXtExportError (nothing is written)."""
    from ..errors import ConvNeXtExportError
    from .int8 import onnxruntime_outputs
    from .overflow import reduce_weight_range

    layers = layer_saturation(quantized, holdout[:LAYER_REPORT_IMAGES], onnxruntime_outputs(batch, kernels="simulated"))
    problem = "; ".join(_gap_text(check, name) for name in check.costly)
    if weight_bits == 8:
        log(f"warning: {problem}. Layers that saturate most (AVX2 / AVX-512 BW kernel model): {_layers_text(layers)}. "
            f"Making the weights overflow-safe (7-bit) and checking again")
        repaired = reduce_weight_range(quantized, fp32)
        recheck = check_kernels(repaired, holdout, reference, isa, integer, simulated, host.path.saturates, log)
        if not recheck.costly:
            agreements = ", ".join(f"{name} {run.drift['top1_agreement']:.2%}" for name, run in recheck.runs.items())
            log(f"7-bit weights closed the gap: {agreements}")
            return repaired, recheck, {"problem": problem, "layers": [entry.to_dict() for entry in layers],
                                       "fix": "7-bit overflow-safe weights", "before": check.to_dict()}
        problem = "; ".join(_gap_text(recheck, name) for name in recheck.costly) + " (with 7-bit weights too)"
    worst = ", ".join(repr(entry.node) for entry in layers[:2] if entry.saturated_pairs > 0)
    remedies = [f"--exclude {worst.split(', ')[0]} (keeps the worst layer float)" if worst else None,
                None if isa is None or isa.name == ALL_X86 else
                "--isa x86 (the default) if this host's kernels are not the ones the artifact is made for",
                "--fp16 or FP32 (no integer kernels)"]
    raise ConvNeXtExportError(
        f"INT8 loses accuracy on the integer kernels it is made for: {problem}. Layers that saturate most: "
        f"{_layers_text(layers)}. Try {'; '.join(r for r in remedies if r)}. Nothing was written.")


def host_gap_warning(check: KernelCheck, host, isa: IsaTarget | None) -> str:
    """The host's own kernels lose agreement but are not what the artifact is made for."""
    made_for = "TensorRT (int32 accumulation)" if isa is None else f"the {isa.name} integer path"
    remedy = ("" if isa is None else
              f"; --isa {host.path.name if host.path.saturates is not None else 'x86'} makes one that holds here")
    return (f"{_gap_text(check, 'host')} on this host's {host.path.name} kernels; the artifact is made for {made_for} "
            f"and judged there{remedy}")
