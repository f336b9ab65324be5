"""A QDQ model rewritten to compute what ONNX Runtime's saturating u8 x s8 kernels (AVX2, AVX-512 BW) compute,
so that their accuracy can be measured on any host, VNNI CPUs included.

Every Conv / Gemm with a quantized activation and int8 weights (what ONNX Runtime runs as an
integer kernel) becomes float ops that follow ``saturation.py``'s kernel model exactly: the raw
activation codes, pair products in reduction order summed by a grouped 1x1 conv, each pair sum
clipped to int16, the pairs summed, the zero point's weight sums subtracted, then scaled and
biased as the integer kernel does. Run the result with graph optimizations off (simulated Q/DQ
elsewhere). 1x1 convs, stride = kernel "patchify" convs (stem, downsamples; ``SpaceToDepth``
gives the reduction order) and Gemms are emulated; depthwise convs run on non-saturating
kernels and stay as they are. All values stay integers below 2^24 in float32, so it is exact.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ConvNeXtExportError
from .qdq_weights import QuantizedWeight, node_attribute, quantized_weights, read_array
from .saturation import INT16_MAX, INT16_MIN, reduction_order

MAX_PAIR_CHANNELS = 4096  # pair products materialized at once per emulated layer (memory)


class _Builder:
    def __init__(self, prefix: str) -> None:
        self.prefix, self.nodes, self.initializers, self.count = prefix, [], [], 0

    def name(self, label: str) -> str:
        self.count += 1
        return f"{self.prefix}/emulated_{label}_{self.count}"

    def constant(self, label: str, array: np.ndarray) -> str:
        name = self.name(label)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], label: str, output: str | None = None, **attributes) -> str:
        output = output or self.name(label)
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self.name(op_type), **attributes))
        return output


def _emulable(weight: QuantizedWeight, producers: dict[str, onnx.NodeProto], initializers: dict) -> bool:
    source = producers.get(weight.node.input[0])
    if weight.depthwise or source is None or source.op_type != "DequantizeLinear":
        return False
    if source.input[0] in initializers:
        return False
    if weight.op_type == "Gemm":
        return (not node_attribute(weight.node, "transA", 0) and node_attribute(weight.node, "alpha", 1.0) == 1.0
                and node_attribute(weight.node, "beta", 1.0) == 1.0)
    kernel = list(node_attribute(weight.node, "kernel_shape", []))
    strides = list(node_attribute(weight.node, "strides", [1, 1]))
    pads = list(node_attribute(weight.node, "pads", [0, 0, 0, 0]))
    dilations = list(node_attribute(weight.node, "dilations", [1, 1]))
    return (len(kernel) == 2 and kernel[0] == kernel[1] and strides == kernel and not any(pads)
            and dilations == [1, 1])


def emulable_layers(model: onnx.ModelProto) -> list[QuantizedWeight]:
    """The integer convs / Gemms whose saturating kernel ``emulate_saturating_kernels`` reproduces."""
    producers = {output: node for node in model.graph.node for output in node.output}
    initializers = {init.name for init in model.graph.initializer}
    return [w for w in quantized_weights(model) if _emulable(w, producers, initializers)]


def _scalar(model: onnx.ModelProto, name: str, constants: dict[str, np.ndarray]) -> np.ndarray:
    if name in constants:
        return constants[name]
    return read_array(model, name)


def input_quantization(model: onnx.ModelProto, dequantize: onnx.NodeProto,
                       constants: dict[str, np.ndarray] | None = None) -> tuple[float, int]:
    """(scale, raw offset) of the activation codes an integer layer reads through ``dequantize``: the kernel takes
    the codes raw (s8 ones shifted by 128, as u8) and subtracts the offset through the weight sums."""
    constants = constants or {}
    zero_point_name = dequantize.input[2] if len(dequantize.input) > 2 and dequantize.input[2] else None
    scale = float(_scalar(model, dequantize.input[1], constants))
    zero_point = _scalar(model, zero_point_name, constants) if zero_point_name else np.uint8(0)
    return scale, int(zero_point) + (128 if zero_point.dtype == np.int8 else 0)


def emulate_saturating_kernels(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the QDQ ``model`` in which every emulable integer layer saturates as on AVX2 / AVX-512 BW."""
    emulated = onnx.ModelProto()
    emulated.CopyFrom(model)
    producers = {output: node for node in emulated.graph.node for output in node.output}
    constants = {node.output[0]: numpy_helper.to_array(node.attribute[0].t)
                 for node in emulated.graph.node if node.op_type == "Constant" and node.attribute}
    replaced: dict[str, _Builder] = {}
    for weight in emulable_layers(emulated):
        try:
            scale, raw_offset = input_quantization(emulated, producers[weight.node.input[0]], constants)
            weight_scale = read_array(emulated, weight.scale_name).astype(np.float64)
            codes = read_array(emulated, weight.codes_name)
        except KeyError as error:
            raise ConvNeXtExportError(f"{weight.name}: quantization parameter {error} is not a constant; "
                                      f"the saturating kernels cannot be emulated") from None
        replaced[weight.node.output[0]] = _emulated_layer(weight, codes, scale, raw_offset, weight_scale)
    nodes = []
    for node in emulated.graph.node:
        if node.output and node.output[0] in replaced:
            nodes.extend(replaced[node.output[0]].nodes)
        else:
            nodes.append(node)
    del emulated.graph.node[:]
    emulated.graph.node.extend(nodes)
    for builder in replaced.values():
        emulated.graph.initializer.extend(builder.initializers)
    return emulated


def _emulated_layer(weight: QuantizedWeight, codes: np.ndarray, scale: float, raw_offset: int,
                    weight_scale: np.ndarray) -> _Builder:
    node, b = weight.node, _Builder(weight.name or weight.node.output[0])
    matrix = reduction_order(codes, weight.op_type, weight.trans_b).astype(np.int64)  # (O, K)
    outputs, k = matrix.shape
    x = node.input[0]
    raw = b.op("Add", [b.op("Round", [b.op("Div", [x, b.constant("scale", np.float32(scale))], "codes")], "round"),
                       b.constant("offset", np.float32(raw_offset))], "raw")
    if weight.op_type == "Gemm":
        raw = b.op("Unsqueeze", [raw, b.constant("axes", np.array([2, 3], np.int64))], "as_image")
    elif codes.shape[2] > 1:
        raw = b.op("SpaceToDepth", [raw], "patches", blocksize=int(codes.shape[2]))
    if k % 2:
        raw = b.op("Pad", [raw, b.constant("pads", np.array([0, 0, 0, 0, 0, 1, 0, 0], np.int64))], "even")
        matrix = np.pad(matrix, ((0, 0), (0, 1)))
        k += 1
    pairs = k // 2
    chunk = max(1, MAX_PAIR_CHANNELS // outputs)
    total = None
    for start in range(0, pairs, chunk):
        stop = min(pairs, start + chunk)
        count = stop - start
        part = raw if (start, stop) == (0, pairs) else b.op(
            "Slice", [raw, b.constant("starts", np.array([2 * start], np.int64)),
                      b.constant("ends", np.array([2 * stop], np.int64)), b.constant("axis", np.array([1], np.int64))],
            "pair_inputs")
        # group p of the grouped conv reads channels (2p, 2p+1) and writes one output per row o: w[o, 2p + j]
        kernel = matrix[:, 2 * start:2 * stop].reshape(outputs, count, 2).transpose(1, 0, 2)
        products = b.op("Conv", [part, b.constant("pair_weights", kernel.reshape(count * outputs, 2, 1, 1)
                                                  .astype(np.float32))], "pair_sums", group=count)
        clipped = b.op("Clip", [products, b.constant("int16_min", np.float32(INT16_MIN)),
                                b.constant("int16_max", np.float32(INT16_MAX))], "saturated")
        grouped = b.op("Reshape", [clipped, b.constant("shape", np.array([0, count, outputs, -1], np.int64))],
                       "by_pair")
        summed = b.op("ReduceSum", [grouped, b.constant("pair_axis", np.array([1], np.int64))], "accumulated",
                      keepdims=0)
        total = summed if total is None else b.op("Add", [total, summed], "accumulator")
    spatial = b.op("Shape", [raw], "spatial", start=2)
    image_shape = b.op("Concat", [b.constant("batch_channels", np.array([0, outputs], np.int64)), spatial],
                       "image_shape", axis=0)
    total = b.op("Reshape", [total, image_shape], "as_image")
    correction = (raw_offset * matrix.sum(1)).astype(np.float32).reshape(1, outputs, 1, 1)
    accumulator = b.op("Sub", [total, b.constant("zero_point_sums", correction)], "accumulator")
    step = (scale * weight_scale).astype(np.float32).reshape(1, outputs, 1, 1)
    result = b.op("Mul", [accumulator, b.constant("output_scale", step)], "scaled")
    if weight.op_type == "Gemm":
        result = b.op("Squeeze", [result, b.constant("axes", np.array([2, 3], np.int64))], "as_matrix")
    if len(node.input) > 2 and node.input[2]:
        bias = node.input[2]
        if weight.op_type == "Conv":
            bias = b.op("Reshape", [bias, b.constant("bias_shape", np.array([1, outputs, 1, 1], np.int64))], "bias")
        b.op("Add", [result, bias], "biased", output=node.output[0])
    else:
        b.op("Identity", [result], "output", output=node.output[0])
    return b
