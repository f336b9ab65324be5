"""Apply a quantization plan with ONNX Runtime's QDQ quantizer and the calibrated ranges."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx

from ..errors import ConvNeXtExportError
from .ranges import CalibrationMethod, tensors_data
from .recipe import QuantPlan, tap_conv_outputs


@contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice (pre-processing, reduce_range) at WARNING through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_with_plan(fp32: onnx.ModelProto, ranges: dict[str, tuple[float, float]], method: CalibrationMethod,
                       plan: QuantPlan) -> onnx.ModelProto:
    """A QDQ model: the plan's nodes get Q/DQ on their inputs (per-channel s8 weights, int32 biases)."""
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import QuantType

    if not plan.nodes:
        raise ConvNeXtExportError("the INT8 plan quantizes no node (everything excluded); export FP32 instead")
    fp32, plan = tap_conv_outputs(fp32, plan)
    missing = [name for name in _activation_inputs(fp32, plan) if name not in ranges]
    if missing:
        raise ConvNeXtExportError(f"calibration ranges miss {len(missing)} tensor(s) the plan quantizes "
                                  f"({', '.join(missing[:3])}); the calibration does not match this graph")
    target = plan.target
    op_types = sorted({node.op_type for node in fp32.graph.node if node.name in plan.classes})
    options = {
        "ActivationSymmetric": target.activation_symmetric,
        "WeightSymmetric": True,
        "ForceQuantizeNoInputCheck": True,  # a planned Transpose quantizes its input even if nothing upstream does
        "OpTypesToExcludeOutputQuantization": op_types,  # Q/DQ go on inputs only: the plan decides every tensor
        "DedicatedQDQPair": target.dedicated_qdq_pair,
        "QuantizeBias": target.quantize_bias,
        "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "Gemm": 0},
    }
    activation = QuantType.QUInt8 if target.activation_type == "uint8" else QuantType.QInt8
    with _quiet_ort_logging():
        quantizer = QDQQuantizer(copy.deepcopy(fp32), True, False, QuantType.QInt8, activation,
                                 tensors_data(ranges, method), list(plan.nodes), [], op_types, options)
        model = quantizer.quantize_model()
    return model


def _activation_inputs(model: onnx.ModelProto, plan: QuantPlan) -> list[str]:
    initializers = {init.name for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.name in plan.classes:
            names.extend(n for n in node.input[:1 if node.op_type in ("Conv", "Gemm") else None]
                         if n and n not in initializers)
    return names


def zero_points(model: onnx.ModelProto) -> dict[str, tuple[str, list[int]]]:
    """QuantizeLinear node -> (element type, zero point values) (zero point absent: uint8 0)."""
    initializers = {init.name: init for init in model.graph.initializer}
    constants = {node.output[0]: node for node in model.graph.node if node.op_type == "Constant"}
    found = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        if len(node.input) < 3 or not node.input[2]:
            found[node.name] = ("uint8", [0])
            continue
        tensor = initializers.get(node.input[2])
        if tensor is None and node.input[2] in constants:
            tensor = constants[node.input[2]].attribute[0].t
        if tensor is None:
            raise ConvNeXtExportError(f"{node.name}: zero point {node.input[2]} is not a constant")
        array = onnx.numpy_helper.to_array(tensor)
        found[node.name] = (str(array.dtype), np.atleast_1d(array).astype(int).tolist())
    return found
