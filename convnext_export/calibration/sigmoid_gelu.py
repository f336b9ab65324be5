"""GELU as two u8 lookup-table kernels on the cpu target: x * sigmoid(1.702 x), pwconv2's bias corrected.

On ``--target cpu`` every block's GELU is a float island between two QLinearConvs:
DequantizeLinear -> Gelu -> QuantizeLinear, ~20% of ConvNeXt-T's INT8 time on this CPU (ONNX Runtime
profile: Gelu 13%, and most of the DQ/Q traffic). Its input and output are u8, so the island is a
256-entry table, but ONNX Runtime has no table kernel for GELU (Gather, the op that takes a table, was
slower than the island in a one-off test). It does turn DQ -> Sigmoid -> Q into a QLinearSigmoid table and
DQ, DQ -> Mul -> Q into a QLinearMul, so ``--gelu sigmoid`` writes GELU in the sigmoid form
x * sigmoid(1.702 x) (the "quick GELU" of Hendrycks & Gimpel) in those standard QDQ ops:

    x_u8 -> DQ(scale * 1.702) -> Sigmoid -> Q(1/255) -> DQ -+
    x_u8 -> DQ ---------------------------------------------+-> Mul -> Q (the island's own output Q)

The sigmoid form differs from GELU by up to 0.02; after u8 rounding that moves some of the 256
table entries by one or two codes, and the mean of those moves biases pwconv2's input per channel.
That mean is computed from the input codes seen on the calibration images and folded into pwconv2's
int32 bias (bias correction, Nagel et al. 2019). Measured in ``benchmarks/int8_gelu.py``: ConvNeXt-T INT8
1.14x faster than exact GELU; on the CIFAR-10 reference top-1 unchanged (78.49%), agreement with eager
98.99% vs 99.15% (98.50% without the bias correction). Exact .5 ties may round differently in ONNX
Runtime than in ``gelu_tables``; the tables only feed the correction's statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ConvNeXtExportError

GELU_FORMS = ("exact", "sigmoid")
SIGMOID_GELU_SLOPE = 1.702
PROBABILITY_SCALE = 1.0 / 255.0  # sigmoid(1.702 x) in [0, 1] as u8 codes 0..255

# (model, output names, images) -> those outputs, batch after batch
RunOutputs = Callable[[onnx.ModelProto, list[str], np.ndarray], Iterator[list[np.ndarray]]]


@dataclass(frozen=True)
class GeluIsland:
    """A DequantizeLinear -> Gelu -> QuantizeLinear island and the INT8 pwconv2 it feeds."""

    gelu: str
    codes: str  # the u8 tensor the island reads
    dequantized: str  # its DequantizeLinear output, Gelu's input
    zero_point: str  # that DequantizeLinear's zero point initializer
    output: str  # Gelu's output, which the island's QuantizeLinear reads
    x_scale: float
    x_zero: int
    y_scale: float
    y_zero: int
    conv: str  # pwconv2
    weight: str  # its int8 weight initializer
    weight_scale: str  # and that weight's scale initializer
    bias: str | None  # its int32 bias initializer (None: a bias-free conv, given one if corrected)


def _quantize(values: np.ndarray, scale: float, zero: int) -> np.ndarray:
    """QuantizeLinear in float32, rounding half to even, saturating to u8 (as ONNX Runtime does)."""
    return np.clip(np.rint(values.astype(np.float32) / np.float32(scale)) + zero, 0, 255)


def gelu_tables(island: GeluIsland) -> tuple[np.ndarray, np.ndarray]:
    """Output code per input code 0..255: GELU (erf) and x * sigmoid(1.702 x), computed in float32 like
    ONNX Runtime's DequantizeLinear -> Gelu -> QuantizeLinear and its QLinearSigmoid / QLinearMul."""
    codes = np.arange(256, dtype=np.float32) - np.float32(island.x_zero)
    x = codes * np.float32(island.x_scale)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(x.astype(np.float64) / math.sqrt(2.0)))
    exact = _quantize(x * cdf.astype(np.float32), island.y_scale, island.y_zero)
    sigmoid_input = codes * np.float32(island.x_scale * SIGMOID_GELU_SLOPE)
    probability = _quantize(1.0 / (1.0 + np.exp(-sigmoid_input.astype(np.float64))), PROBABILITY_SCALE, 0)
    product = (x * (probability.astype(np.float32) * np.float32(PROBABILITY_SCALE))).astype(np.float32)
    sigmoid = _quantize(product, island.y_scale, island.y_zero)
    return exact, sigmoid


def find_islands(model: onnx.ModelProto) -> list[GeluIsland]:
    """Every Gelu whose input is dequantized u8 and whose output is quantized for an INT8 pwconv2."""
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {name: node for node in model.graph.node for name in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def constant(name: str) -> np.ndarray:
        return numpy_helper.to_array(initializers[name])

    islands = []
    for node in model.graph.node:
        if node.op_type != "Gelu":
            continue
        dequantize = producers.get(node.input[0])
        after = readers.get(node.output[0], [])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(after) != 1 \
                or after[0].op_type != "QuantizeLinear" or len(dequantize.input) < 3:
            continue
        quantize = after[0]
        if len(quantize.input) < 3 or not all(name in initializers
                                              for name in (*dequantize.input[1:3], *quantize.input[1:3])):
            continue
        convs = [conv for dq in readers.get(quantize.output[0], []) if dq.op_type == "DequantizeLinear"
                 for conv in readers.get(dq.output[0], []) if conv.op_type == "Conv"]
        if len(convs) != 1:
            continue
        conv = convs[0]
        weight_dq = producers.get(conv.input[1])
        bias_dq = producers.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear" or weight_dq.input[0] not in initializers:
            continue
        if bias_dq is not None and (bias_dq.op_type != "DequantizeLinear" or bias_dq.input[0] not in initializers
                                    or constant(bias_dq.input[0]).dtype != np.int32):
            continue
        if constant(dequantize.input[2]).dtype != np.uint8:
            continue
        islands.append(GeluIsland(node.name, dequantize.input[0], node.input[0], dequantize.input[2], node.output[0],
                                  float(constant(dequantize.input[1])),
                                  int(constant(dequantize.input[2])), float(constant(quantize.input[1])),
                                  int(constant(quantize.input[2])), conv.name, weight_dq.input[0], weight_dq.input[1],
                                  bias_dq.input[0] if bias_dq is not None else None))
    return islands


def code_histograms(model: onnx.ModelProto, islands: list[GeluIsland], images: np.ndarray,
                    run_outputs: RunOutputs) -> dict[str, np.ndarray]:
    """Per island, how often each input code 0..255 occurs in each channel on ``images`` (channels x 256)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [island.codes for island in islands]
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None) for name in names)
    histograms: dict[str, np.ndarray] = {}
    for outputs in run_outputs(probe, names, images):
        for name, codes in zip(names, outputs):
            channels = codes.shape[1]
            flat = (np.arange(channels, dtype=np.int64).reshape(1, -1, *([1] * (codes.ndim - 2))) * 256
                    + codes.astype(np.int64)).ravel()
            counts = np.bincount(flat, minlength=channels * 256).reshape(channels, 256)
            histograms[name] = histograms[name] + counts if name in histograms else counts
    return histograms


def _sigmoid_form(island: GeluIsland) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    stem = island.gelu.replace("/Gelu", "")
    names = {key: f"{stem}/sigmoid_gelu.{key}" for key in ("scale", "p_scale", "p_zero", "ax", "s", "p", "pf")}
    constants = [numpy_helper.from_array(np.array(island.x_scale * SIGMOID_GELU_SLOPE, np.float32), names["scale"]),
                 numpy_helper.from_array(np.array(PROBABILITY_SCALE, np.float32), names["p_scale"]),
                 numpy_helper.from_array(np.array(0, np.uint8), names["p_zero"])]
    nodes = [
        helper.make_node("DequantizeLinear", [island.codes, names["scale"], island.zero_point], [names["ax"]],
                         name=f"{stem}/SigmoidGeluDequantizeLinear"),
        helper.make_node("Sigmoid", [names["ax"]], [names["s"]], name=f"{stem}/Sigmoid"),
        helper.make_node("QuantizeLinear", [names["s"], names["p_scale"], names["p_zero"]], [names["p"]],
                         name=f"{stem}/SigmoidQuantizeLinear"),
        helper.make_node("DequantizeLinear", [names["p"], names["p_scale"], names["p_zero"]], [names["pf"]],
                         name=f"{stem}/SigmoidDequantizeLinear"),
        helper.make_node("Mul", [island.dequantized, names["pf"]], [island.output], name=f"{stem}/Mul"),
    ]
    return nodes, constants


def bias_correction(weight: np.ndarray, histogram: np.ndarray, table_shift: np.ndarray) -> np.ndarray:
    """int32 codes to subtract from pwconv2's bias: its weights times the mean code shift per input channel.

    pwconv2's input scale is the island's output scale and its bias scale is that times the weight
    scale, so a mean shift of ``d`` input codes in channel c moves output o by ``W_int[o, c] * d`` bias codes.
    """
    counts = histogram.sum(axis=1)
    mean_shift = (histogram @ table_shift) / np.maximum(counts, 1)
    return np.rint(weight.reshape(weight.shape[0], -1).astype(np.float64) @ mean_shift).astype(np.int64)


def _new_bias(model: onnx.ModelProto, island: GeluIsland,
              initializers: dict[str, onnx.TensorProto]) -> tuple[onnx.NodeProto, str]:
    """A zero int32 bias for a bias-free pwconv2, dequantized at input scale x weight scale (as QDQ biases are)."""
    weight_scale = numpy_helper.to_array(initializers[island.weight_scale]).astype(np.float64)
    channels = numpy_helper.to_array(initializers[island.weight]).shape[0]
    name = f"{island.conv.replace('/Conv', '')}.sigmoid_gelu_bias"
    bias = numpy_helper.from_array(np.zeros(channels, np.int32), f"{name}_quantized")
    scale = numpy_helper.from_array(np.broadcast_to(weight_scale * island.y_scale, (channels,)).astype(np.float32),
                                    f"{name}_scale")
    model.graph.initializer.extend([bias, scale])
    initializers[bias.name] = model.graph.initializer[-2]
    node = helper.make_node("DequantizeLinear", [bias.name, scale.name], [f"{name}_DequantizeLinear_Output"],
                            name=f"{name}_DequantizeLinear", axis=0)
    return node, bias.name


def apply_sigmoid_gelu(model: onnx.ModelProto, images: np.ndarray, run_outputs: RunOutputs,
                       correct_bias: bool = True) -> tuple[onnx.ModelProto, dict]:
    """The model with every GELU island in the sigmoid form and pwconv2's biases corrected on ``images``."""
    islands = find_islands(model)
    if not islands:
        raise ConvNeXtExportError("--gelu sigmoid: no quantized GELU island in this INT8 graph (GELU's input and "
                                  "output must be INT8, as on --target cpu with pwconv1 and pwconv2 quantized)")
    histograms = code_histograms(model, islands, images, run_outputs) if correct_bias else {}
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    initializers = {init.name: init for init in rewritten.graph.initializer}
    replaced: dict[str, list[onnx.NodeProto]] = {}
    moved_codes, weighted_entries = [], []
    for island in islands:
        nodes, constants = _sigmoid_form(island)
        replaced[island.gelu] = nodes
        rewritten.graph.initializer.extend(constants)
        exact, sigmoid = gelu_tables(island)
        shift = sigmoid - exact
        moved_codes.append(int((shift != 0).sum()))
        if not correct_bias:
            continue
        histogram = histograms[island.codes]
        weighted_entries.append(float((histogram.sum(axis=0) * (shift != 0)).sum() / max(histogram.sum(), 1)))
        correction = bias_correction(numpy_helper.to_array(initializers[island.weight]), histogram, shift)
        if island.bias is None:  # a bias-free pwconv2 (zero biases are dropped by the fusion) gets one
            bias_dq, bias = _new_bias(rewritten, island, initializers)
            replaced[island.conv] = [bias_dq, next(n for n in rewritten.graph.node if n.name == island.conv)]
            replaced[island.conv][1].input.append(bias_dq.output[0])
        else:
            bias = island.bias
        corrected = numpy_helper.to_array(initializers[bias]).astype(np.int64) - correction
        if np.abs(corrected).max() >= 2 ** 31:
            raise ConvNeXtExportError(f"--gelu sigmoid: the corrected bias of {island.conv} overflows int32")
        initializers[bias].CopyFrom(numpy_helper.from_array(corrected.astype(np.int32), bias))
    nodes = []
    for node in rewritten.graph.node:
        nodes.extend(replaced.get(node.name, [node]))
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    report = {"form": "sigmoid", "formula": f"x * sigmoid({SIGMOID_GELU_SLOPE} x)", "islands": len(islands),
              "table_entries_moved": f"{min(moved_codes)}-{max(moved_codes)} of 256 per island",
              "bias_correction_images": len(images) if correct_bias else 0}
    if weighted_entries:
        report["calibration_values_moved"] = round(float(np.mean(weighted_entries)), 4)
    return rewritten, report
