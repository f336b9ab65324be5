"""The quantized weights of a QDQ model: which Conv/Gemm reads which int8 initializer, through which DQ."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass(frozen=True)
class QuantizedWeight:
    """An int8 weight initializer behind a DequantizeLinear that a Conv or Gemm reads."""

    node: onnx.NodeProto  # the Conv / Gemm
    dequantize: onnx.NodeProto
    codes_name: str
    scale_name: str
    op_type: str
    trans_b: bool
    depthwise: bool

    @property
    def name(self) -> str:
        return self.node.name


def node_attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def quantized_weights(model: onnx.ModelProto) -> list[QuantizedWeight]:
    """Every Conv / Gemm whose weight is an int8 initializer behind a DequantizeLinear, in graph order."""
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        dequantize = producers.get(node.input[1])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        codes = initializers.get(dequantize.input[0])
        if codes is None or codes.data_type != onnx.TensorProto.INT8:
            continue
        group = node_attribute(node, "group", 1)
        found.append(QuantizedWeight(node, dequantize, dequantize.input[0], dequantize.input[1], node.op_type,
                                     bool(node_attribute(node, "transB", 0)), node.op_type == "Conv" and group > 1))
    return found


def read_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise KeyError(name)


def write_array(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(array, name))
            return
    raise KeyError(name)
