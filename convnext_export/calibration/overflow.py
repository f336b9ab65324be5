"""Overflow-safe INT8 weights for x86 CPUs without VNNI: no u8 x s8 pair sum can leave int16.

A pair of neighbouring weights in a kernel's reduction order (``saturation.py``) saturates the
AVX2 / AVX-512 BW kernels only when both have the same sign and their magnitudes sum to more
than 128 (then 255 x the sum > 32767). Three forms keep every pair sum in int16:

- ``reduce_weight_range``: 7-bit weights ([-64, 64] per channel, requantized from the float
  weights, biases with them): what the recipe uses for the default ``--isa x86`` (portable) and
  wherever a target path saturates (``recipe.weight_range_bits``);
- ``unsigned_weights``: u8 weights around zero point 128, ONNX Runtime's slower u8 x u8 kernels;
- ``limit_weight_pairs``: only the pairs that can overflow shrunk to a sum of 128, everything
  else as it was.

The last two were measured and not chosen (``recipe.py``'s table). Depthwise convs run on
non-saturating kernels and are left alone by all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from .qdq_weights import quantized_weights, read_array, write_array
from .saturation import PAIR_LIMIT, from_reduction_order, reduction_order, unsafe_pairs


@dataclass(frozen=True)
class LimitedLayer:
    node: str
    pairs: int  # pairs in the reduction (x outputs)
    limited: int  # pairs shrunk to the limit
    max_change: int  # largest change of one weight, in codes

    def to_dict(self) -> dict:
        return {"node": self.node, "pairs": self.pairs, "limited": self.limited, "max_change": self.max_change}


def limit_pairs(weights: np.ndarray) -> np.ndarray:
    """int8 weights (O, K) in reduction order with every unsafe same-sign pair shrunk to |w1| + |w2| = 128."""
    odd = weights.shape[1] % 2
    w = np.pad(weights.astype(np.int32), ((0, 0), (0, odd))).reshape(len(weights), -1, 2)
    unsafe = unsafe_pairs(weights)
    if unsafe.any():
        pairs = w[unsafe]  # (n, 2), same sign, |sum| > 128
        sign = np.sign(pairs.sum(1, keepdims=True))
        size = np.abs(pairs)
        excess = size.sum(1, keepdims=True) - PAIR_LIMIT
        cut = np.floor(excess * size / size.sum(1, keepdims=True)).astype(np.int32)
        cut[:, :1] += (excess - cut.sum(1, keepdims=True))  # the rounding remainder to the first
        w[unsafe] = sign * (size - cut)
    return w.reshape(len(weights), -1)[:, :weights.shape[1]].astype(np.int8)


def limit_weight_pairs(model: onnx.ModelProto, nodes: set[str] | None = None) -> tuple[onnx.ModelProto, list[LimitedLayer]]:
    """A copy of the QDQ ``model`` whose u8 x s8 convs and Gemms (``nodes``, default all) cannot saturate."""
    limited = onnx.ModelProto()
    limited.CopyFrom(model)
    report = []
    for weight in quantized_weights(limited):
        if weight.depthwise or (nodes is not None and weight.name not in nodes):
            continue
        codes = read_array(limited, weight.codes_name)
        matrix = reduction_order(codes, weight.op_type, weight.trans_b)
        safe = limit_pairs(matrix)
        unsafe = unsafe_pairs(matrix)
        changed = int(np.count_nonzero(unsafe))
        if changed:
            write_array(limited, weight.codes_name, from_reduction_order(safe, codes.shape, weight.op_type, weight.trans_b))
        report.append(LimitedLayer(weight.name, int(unsafe.size), changed,
                                   int(np.abs(safe.astype(np.int32) - matrix).max(initial=0))))
    return limited, report


SEVEN_BIT_MAX = 64  # symmetric int8 weights in [-64, 64]: 255 * (64 + 64) = 32640 <= 32767


def reduce_weight_range(model: onnx.ModelProto, fp32: onnx.ModelProto, nodes: set[str] | None = None) -> onnx.ModelProto:
    """A copy of the QDQ ``model`` whose weights (``nodes``, default all but depthwise) are requantized from the
    FP32 graph's float weights to 7 bits per channel ([-64, 64], ONNX Runtime's ``reduce_range``), biases with them."""
    reduced = onnx.ModelProto()
    reduced.CopyFrom(model)
    float_weights = {init.name: init for init in fp32.graph.initializer}
    producers = {output: node for node in reduced.graph.node for output in node.output}
    for weight in quantized_weights(reduced):
        if weight.depthwise or (nodes is not None and weight.name not in nodes):
            continue
        source = weight.codes_name.removesuffix("_quantized")
        if source not in float_weights:
            raise KeyError(f"{weight.name}: float weight {source} not in the FP32 graph")
        w = onnx.numpy_helper.to_array(float_weights[source]).astype(np.float64)
        old_scale = read_array(reduced, weight.scale_name).astype(np.float64)
        axis_shape = (-1,) + (1,) * (w.ndim - 1)
        scale = np.maximum(np.abs(w).reshape(len(w), -1).max(1), 1e-12) / SEVEN_BIT_MAX
        codes = np.clip(np.round(w / scale.reshape(axis_shape)), -SEVEN_BIT_MAX, SEVEN_BIT_MAX).astype(np.int8)
        write_array(reduced, weight.codes_name, codes)
        write_array(reduced, weight.scale_name, scale.astype(np.float32))
        bias = producers.get(weight.node.input[2]) if len(weight.node.input) > 2 else None
        if bias is not None and bias.op_type == "DequantizeLinear":  # int32 bias at scale activation x weight
            bias_codes = read_array(reduced, bias.input[0]).astype(np.float64)
            bias_scale = read_array(reduced, bias.input[1]).astype(np.float64)
            new_scale = bias_scale * scale / old_scale
            write_array(reduced, bias.input[0], np.round(bias_codes * bias_scale / new_scale).astype(np.int32))
            write_array(reduced, bias.input[1], new_scale.astype(np.float32))
    return reduced


def unsigned_weights(model: onnx.ModelProto, nodes: set[str] | None = None) -> onnx.ModelProto:
    """A copy of the QDQ ``model`` with weights stored as uint8 around zero point 128 (ONNX Runtime's u8 x u8
    kernels, which widen to int16 before multiplying): the same float weights, no saturating pair sums."""
    unsigned = onnx.ModelProto()
    unsigned.CopyFrom(model)
    for weight in quantized_weights(unsigned):
        if weight.depthwise or (nodes is not None and weight.name not in nodes):
            continue
        codes = read_array(unsigned, weight.codes_name).astype(np.int32)
        write_array(unsigned, weight.codes_name, (codes + 128).astype(np.uint8))
        zero_point = weight.dequantize.input[2]
        write_array(unsigned, zero_point, np.full(read_array(unsigned, zero_point).shape, 128, np.uint8))
    return unsigned
