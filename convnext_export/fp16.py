"""FP16: the fused graph in half precision, LayerNorm in FP32, checked for what FP16 loses.

- LayerNormalization runs in FP32 between casts (ONNX Runtime's float16 converter with the
  op blocked): its ``(x - u)^2`` statistics overflow FP16 in late ConvNeXt stages (ConvNeXt
  issue #80), and TensorRT keeps LayerNorm in FP32 for the same reason.
- Layer scale is folded into pwconv2 only where the folded weights survive FP16: random
  init has gamma = 1e-6, so gamma x W ~ 2e-8 lies below FP16's smallest subnormal (6e-8)
  and would be flushed; such blocks keep gamma as a separate multiply
  (``fuse_model(keep_layer_scale=...)``).
- V2's GRN statistics run in FP32 (``grn_statistic_nodes``): G = ||x||_2 over H x W sums H*W
  squares, which overflows FP16 once G > 256 (ConvNeXt-V2 issue #66: a TensorRT FP16 V2
  detector output nothing); only the final x * scale runs in FP16.
- Inputs and outputs stay FP32 unless ``fp16_io``.
- Every converted weight is compared with its FP32 value: a tensor that lost more than
  ``MAX_WEIGHT_ENERGY_LOSS`` of its energy refuses the export. Activations are checked on
  the validation images: tensors over 65504 (overflow) and tensors with many nonzero values
  under FP16's smallest normal (underflow) are reported per tensor.
"""

from __future__ import annotations

import copy
import io
import logging
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto

from .errors import ConvNeXtExportError
from .model import ConvNeXt

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 6.103515625e-05
FOLD_ENERGY_LOSS = 1e-6  # fold gamma only if the folded weights lose less than this in FP16 (rounding alone: ~1e-7)
MAX_WEIGHT_ENERGY_LOSS = 0.01  # refuse when any weight tensor loses more than 1% of its energy
UNDERFLOW_REPORT_FRACTION = 0.01  # report a tensor when more than 1% of its nonzero values are subnormal in FP16
FLOAT_OPS = ("LayerNormalization",)


def fp16_energy_loss(values: np.ndarray, converted: np.ndarray | None = None) -> float:
    """||fp16(w) - w||^2 / ||w||^2 (IEEE rounding unless ``converted`` is given)."""
    w = np.asarray(values, np.float64)
    half = np.asarray(w.astype(np.float16) if converted is None else converted, np.float64)
    energy = float((w ** 2).sum())
    return float(((half - w) ** 2).sum() / energy) if energy > 0 else 0.0


@torch.no_grad()
def blocks_keeping_layer_scale(model: ConvNeXt) -> set[str]:
    """Blocks (``stages.i.j``) whose gamma x pwconv2 would not survive FP16: keep gamma separate."""
    keep = set()
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            if block.gamma is None:  # V2: no layer scale
                continue
            weight = block.pwconv2.weight.double()
            gamma = block.gamma.double().view(-1, 1)
            folded = (gamma * weight).numpy()
            bias = (block.gamma.double() * block.pwconv2.bias.double()).numpy()
            if max(fp16_energy_loss(folded), fp16_energy_loss(bias)) > FOLD_ENERGY_LOSS:
                keep.add(f"stages.{i}.{j}")
    return keep


@dataclass(frozen=True)
class Fp16Result:
    path: Path
    drift: dict
    report: dict = field(default_factory=dict)


def weight_losses(fp32: onnx.ModelProto, fp16: onnx.ModelProto) -> dict[str, float]:
    """Initializer -> energy lost in its FP16 form (initializers the converter left FP32 are skipped)."""
    converted = {init.name: init for init in fp16.graph.initializer if init.data_type == TensorProto.FLOAT16}
    losses = {}
    for init in fp32.graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name in converted:
            original = onnx.numpy_helper.to_array(init)
            half = onnx.numpy_helper.to_array(converted[init.name])
            losses[init.name] = fp16_energy_loss(original, half)
    return losses


def activation_ranges(fp32: onnx.ModelProto, images: np.ndarray) -> dict[str, dict]:
    """Per float intermediate tensor of the FP32 graph: max |x|, fraction of nonzero |x| < FP16's smallest normal,
    and for LayerNorm inputs the largest variance (the statistic that overflows in FP16)."""
    import onnxruntime

    from .backends.onnxruntime import session_options

    model = copy.deepcopy(fp32)
    known = {o.name for o in model.graph.output} | {init.name for init in model.graph.initializer}
    float_values = [v for v in model.graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT]
    model.graph.output.extend(v for v in float_values if v.name not in known)
    norm_inputs = {node.input[0]: int(next((a.i for a in node.attribute if a.name == "axis"), -1))
                   for node in model.graph.node if node.op_type == "LayerNormalization"}
    l2_outputs = {node.output[0] for node in model.graph.node if node.op_type == "ReduceL2"}
    session = onnxruntime.InferenceSession(model.SerializeToString(), session_options(),
                                           providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    stats: dict[str, dict] = {}
    input_name = session.get_inputs()[0].name
    static = session.get_inputs()[0].shape[0]
    step = static if isinstance(static, int) else 1
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        if len(chunk) < step:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - len(chunk), axis=0)])
        for name, value in zip(names, session.run(None, {input_name: chunk})):
            magnitude = np.abs(value.astype(np.float64))
            nonzero = magnitude[magnitude > 0]
            entry = stats.setdefault(name, {"max_abs": 0.0, "subnormal": 0, "nonzero": 0})
            entry["max_abs"] = max(entry["max_abs"], float(magnitude.max(initial=0.0)))
            entry["subnormal"] += int((nonzero < FP16_MIN_NORMAL).sum())
            entry["nonzero"] += int(nonzero.size)
            if name in norm_inputs:
                variance = float(np.var(value.astype(np.float64), axis=norm_inputs[name]).max())
                entry["max_variance"] = max(entry.get("max_variance", 0.0), variance)
            if name in l2_outputs:  # GRN's G: its square is the sum of squares an FP16 ReduceL2 accumulates
                entry["max_sum_of_squares"] = max(entry.get("max_sum_of_squares", 0.0),
                                                  float(magnitude.max(initial=0.0)) ** 2)
    return stats


def overflow_report(stats: dict[str, dict], producers: dict[str, str]) -> dict:
    """Tensors (with the node producing them) that overflow FP16, underflow it, or whose LayerNorm variance would."""
    def where(name: str) -> dict:
        return {"tensor": name, "node": producers.get(name, "")}

    overflow = [{**where(n), "max_abs": s["max_abs"]} for n, s in stats.items() if s["max_abs"] > FP16_MAX]
    underflow = [{**where(n), "subnormal_fraction": s["subnormal"] / s["nonzero"]} for n, s in stats.items()
                 if s["nonzero"] and s["subnormal"] / s["nonzero"] > UNDERFLOW_REPORT_FRACTION]
    norm_stats = [{**where(n), "max_variance": s["max_variance"]} for n, s in stats.items()
                  if s.get("max_variance", 0.0) > FP16_MAX]
    grn_stats = [{**where(n), "max_sum_of_squares": s["max_sum_of_squares"]} for n, s in stats.items()
                 if s.get("max_sum_of_squares", 0.0) > FP16_MAX]
    report = {"overflow": overflow, "underflow": sorted(underflow, key=lambda e: -e["subnormal_fraction"]),
              "layernorm_statistics_over_fp16_max": norm_stats, "tensors_checked": len(stats)}
    if any(".grn/" in name for name in producers.values()):
        report["grn_sum_of_squares_over_fp16_max"] = grn_stats  # computed in FP32 here; FP16 would overflow
    return report


def grn_statistic_nodes(model: onnx.ModelProto) -> list[str]:
    """GRN nodes (named ``*.grn/...`` by module) that compute its scale, i.e. all but the x * scale that leaves it."""
    nodes = [node for node in model.graph.node if ".grn/" in node.name]
    module = {node.name: node.name.rsplit("/", 1)[0] for node in nodes}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name.rsplit("/", 1)[0] if "/" in node.name else node.name)
    return [node.name for node in nodes
            if all(reader == module[node.name] for output in node.output for reader in readers.get(output, []))]


def drop_fp16_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove Cast(FP16) -> Cast(FP32) pairs between two FP32 nodes, and sort the nodes (in place).

    The float16 converter casts every output of a blocked node to FP16 and back for the next blocked
    node, so a chain of FP32 nodes (GRN's statistics) would still round, and overflow, in FP16 between
    them. Dropping the round trip is exact: the reader gets the FP32 value the writer computed.
    """
    graph = model.graph
    outputs = {value.name for value in graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def casts_to(node: onnx.NodeProto, dtype: int) -> bool:
        return node.op_type == "Cast" and any(a.name == "to" and a.i == dtype for a in node.attribute)

    dropped: set[int] = set()
    for node in graph.node:
        if not casts_to(node, TensorProto.FLOAT16) or node.output[0] in outputs:
            continue
        consumers = readers.get(node.output[0], [])
        if not consumers or not all(casts_to(c, TensorProto.FLOAT) for c in consumers):
            continue
        source = node.input[0]  # the FP32 value before the round trip
        for back in consumers:
            for reader in readers.get(back.output[0], []):
                reader.input[:] = [source if name == back.output[0] else name for name in reader.input]
            dropped.add(id(back))
        dropped.add(id(node))
    from .calibration.graph import topological_order

    kept = [node for node in topological_order(graph) if id(node) not in dropped]  # the converter appends its casts
    del graph.node[:]
    graph.node.extend(kept)
    return model


def convert_to_fp16(fp32: onnx.ModelProto, fp16_io: bool) -> onnx.ModelProto:
    """ONNX Runtime's float16 converter: everything FP16 but LayerNormalization and GRN's statistics;
    FP32 I/O unless ``fp16_io``."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    logger = logging.getLogger("onnxruntime.transformers.float16")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with redirect_stdout(io.StringIO()):
            converted = convert_float_to_float16(copy.deepcopy(fp32), keep_io_types=not fp16_io,
                                                 op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FLOAT_OPS),
                                                 node_block_list=grn_statistic_nodes(fp32))
        return drop_fp16_round_trips(converted)
    finally:
        logger.setLevel(level)


def layernorm_precision(model: onnx.ModelProto) -> dict[str, int]:
    """Element type name -> number of LayerNormalization nodes computing in it (from their inferred inputs)."""
    stripped = copy.deepcopy(model)
    del stripped.graph.value_info[:]  # the converter's own value_info can disagree with inference on casts
    inferred = onnx.shape_inference.infer_shapes(stripped)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({init.name: init.data_type for init in inferred.graph.initializer})
    counts: dict[str, int] = {}
    for node in inferred.graph.node:
        if node.op_type == "LayerNormalization":
            name = {"FLOAT": "float32", "FLOAT16": "float16"}.get(
                TensorProto.DataType.Name(types.get(node.input[0], 0)), "unknown")
            counts[name] = counts.get(name, 0) + 1
    return counts


def build_fp16(fp32_path: Path, out_path: Path, eager: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
               batch: int | None, fp16_io: bool, kept_layer_scale: set[str],
               log: Callable[[str], None] = lambda message: None) -> Fp16Result:
    """Convert, check weights (refuse on energy loss), report activation over/underflow, measure drift."""
    from .calibration.data import run_batched
    from .calibration.graph import name_nodes_by_module
    from .drift import drift_metrics

    fp32 = name_nodes_by_module(onnx.load(str(fp32_path)))
    fp16 = convert_to_fp16(fp32, fp16_io)
    losses = weight_losses(fp32, fp16)
    worst = sorted(losses.items(), key=lambda kv: -kv[1])
    lost = [(name, loss) for name, loss in worst if loss > MAX_WEIGHT_ENERGY_LOSS]
    if lost:
        names = ", ".join(f"{name} ({loss:.1%})" for name, loss in lost[:5])
        raise ConvNeXtExportError(
            f"FP16 would lose more than {MAX_WEIGHT_ENERGY_LOSS:.0%} of the energy of {len(lost)} weight tensor(s): "
            f"{names}; their values lie outside FP16's range. Export FP32 or INT8 instead; nothing was written.")
    log(f"checking FP16 ranges of the activations on {min(len(images), 4)} images")
    producers = {output: node.name for node in fp32.graph.node for output in node.output}
    activations = overflow_report(activation_ranges(fp32, images[:4]), producers)
    for entry in activations["overflow"]:
        log(f"warning: {entry['tensor']} ({entry['node']}) reaches {entry['max_abs']:.3g}, over FP16's 65504")
    for key, value in {"convnext_export.precision": "fp16"}.items():
        entry = next((e for e in fp16.metadata_props if e.key == key), None) or fp16.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(fp16, str(out_path))

    import onnxruntime

    from .backends.onnxruntime import session_options

    session = onnxruntime.InferenceSession(str(out_path), session_options(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    dtype = np.float16 if fp16_io else np.float32
    outputs = run_batched(lambda x: np.asarray(session.run(None, {input_name: x.astype(dtype)})[0], np.float32),
                          images, batch)
    if not np.isfinite(outputs).all():
        out_path.unlink()
        raise ConvNeXtExportError("the FP16 model produces inf/NaN on the validation images "
                                  f"(overflow in {', '.join(e['tensor'] for e in activations['overflow'][:5]) or 'an op'}); "
                                  "export FP32 or INT8 instead; nothing was written")
    drift = drift_metrics(outputs, eager(images))
    grn_nodes = len(grn_statistic_nodes(fp32))
    report = {
        "layer_scale_kept_separate": sorted(kept_layer_scale),
        "float32_ops": list(FLOAT_OPS),
        **({"float32_grn_statistics": grn_nodes} if grn_nodes else {}),
        "layernorm_compute_types": layernorm_precision(fp16),
        "io": "float16" if fp16_io else "float32",
        "weights": {"max_energy_loss_allowed": MAX_WEIGHT_ENERGY_LOSS,
                    "worst": [{"tensor": n, "energy_loss": v} for n, v in worst[:5]]},
        "activations": activations,
    }
    return Fp16Result(out_path, {"backend": "onnxruntime", **drift}, {"fp16": report})
