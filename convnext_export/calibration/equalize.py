"""Residual-stream equalization: an exact per-channel rescaling that INT8 per-tensor ranges like.

A trained ConvNeXt's residual stream has a few channels far larger than the rest, so one
per-tensor INT8 scale leaves the small channels a handful of levels (the stream and the
pwconv2 outputs that feed it had the lowest SQNR of every quantized tensor, 22-30 dB on the
CIFAR-10 reference). Within a stage every block reads and writes the same stream, so the
whole stage can carry ``x / s`` instead of ``x`` (``s`` per channel) at no cost in float:

- the stage's producer writes ``x / s``: the stem LayerNorm's affine (stage 0) or the
  downsample conv (stages 1-3), divided by ``s``;
- each block's depthwise conv reads ``x / s``: its weights times ``s`` (it is per channel);
- each block's pwconv2 writes its branch in the same units: weights and bias divided by ``s``;
- the stage's consumer gets ``x`` back: a ``Mul(s)`` before the next downsample LayerNorm,
  or after the head's mean pooling.

``s`` makes every channel's calibration-set maximum equal (floored at 1% of the largest, so
dead channels are not blown up): per-tensor quantization then behaves like per-channel.
The rewrite is checked against the original graph on real inputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ConvNeXtExportError

EQUALIZATION = "residual-stream per-channel max, floor 0.01"  # part of the calibration cache key
SCALE_FLOOR = 0.01
EXACTNESS = 1e-4  # relative max-abs between the equalized and the original FP32 graph


def _stage_streams(model: onnx.ModelProto) -> dict[int, list[str]]:
    """Stage -> the residual-stream tensors of that stage (its input, then each block's Add output)."""
    streams: dict[int, list[str]] = {}
    for node in model.graph.node:
        if node.name == "stem.1/Transpose_1":
            streams.setdefault(0, []).insert(0, node.output[0])
        match = re.fullmatch(r"downsamples\.(\d+)\.1/Conv", node.name)
        if match:
            streams.setdefault(int(match.group(1)) + 1, []).insert(0, node.output[0])
        match = re.fullmatch(r"stages\.(\d+)\.\d+/Add", node.name)
        if match:
            streams.setdefault(int(match.group(1)), []).append(node.output[0])
    return streams


def channel_maxima(model: onnx.ModelProto, tensors: list[str], batches: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-channel max |x| (axis 1) of ``tensors`` over the batches."""
    import onnxruntime

    from ..backends.onnxruntime import session_options

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in known)
    session = onnxruntime.InferenceSession(probe.SerializeToString(), session_options(),
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    maxima: dict[str, np.ndarray] = {}
    for batch in batches:
        for tensor, value in zip(tensors, session.run(tensors, {name: batch})):
            m = np.abs(value).max(axis=tuple(i for i in range(value.ndim) if i != 1))
            maxima[tensor] = m if tensor not in maxima else np.maximum(maxima[tensor], m)
    return maxima


class _Initializers:
    """Copy-on-write access to initializers (the exporter shares identical constants between nodes)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.by_name = {init.name: init for init in model.graph.initializer}

    def rewrite(self, node: onnx.NodeProto, index: int, values: np.ndarray) -> None:
        old = node.input[index]
        name = f"{node.name.split('/')[0]}.{index}.equalized"
        self.model.graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), name))
        self.by_name[name] = self.model.graph.initializer[-1]
        node.input[index] = name
        if not any(old in n.input for n in self.model.graph.node):
            self.model.graph.initializer.remove(self.by_name.pop(old))

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.by_name[name]).astype(np.float64)


def stage_streams(model: onnx.ModelProto) -> dict[int, list[str]]:
    """Stage -> its residual-stream tensors, for the fused ConvNeXt graph (4 stages) only."""
    streams = _stage_streams(model)
    if sorted(streams) != [0, 1, 2, 3]:
        raise ConvNeXtExportError("residual-stream equalization expects the fused ConvNeXt graph (4 stages)")
    return streams


def scaled_tensors(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor -> stage, for every tensor that ``apply_stream_scales`` turns into ``x / s`` (the stage's stream and
    the pwconv2 outputs that feed it); every other tensor keeps its value."""
    scaled = {tensor: stage for stage, tensors in stage_streams(model).items() for tensor in tensors}
    for node in model.graph.node:
        match = re.fullmatch(r"stages\.(\d+)\.\d+\.pwconv2/Conv", node.name)
        if match:
            scaled[node.output[0]] = int(match.group(1))
    return scaled


def scales_from_peaks(peaks: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Stage -> per-channel scale from the per-channel max |x| over the stage's stream (floored at 1% of the largest)."""
    scales = {}
    for stage, peak in peaks.items():
        peak = np.asarray(peak, np.float64)
        scales[stage] = np.maximum(peak, SCALE_FLOOR * peak.max()) / max(peak.max(), 1e-30)
    return scales


def stream_scales(model: onnx.ModelProto, batches: Iterable[np.ndarray]) -> dict[int, np.ndarray]:
    """Stage -> per-channel scale that gives every channel of its residual stream the same calibration maximum."""
    streams = stage_streams(model)
    maxima = channel_maxima(model, [t for ts in streams.values() for t in ts], batches)
    return scales_from_peaks({stage: np.max([maxima[t] for t in tensors], axis=0) for stage, tensors in streams.items()})


def apply_stream_scales(model: onnx.ModelProto, scales: dict[int, np.ndarray], check_images: np.ndarray
                        ) -> onnx.ModelProto:
    """A copy of the named fused graph carrying ``x / s`` in every stage, checked against the original."""
    equalized = onnx.ModelProto()
    equalized.CopyFrom(model)
    streams = _stage_streams(equalized)
    nodes = {node.name: node for node in equalized.graph.node}
    inits = _Initializers(equalized)
    for stage, scale in scales.items():
        scale = np.asarray(scale, np.float64)
        column = scale.reshape(-1, 1, 1, 1)
        if stage == 0:
            norm = nodes["stem.1/LayerNormalization"]
            for index in (1, 2):
                inits.rewrite(norm, index, inits.array(norm.input[index]) / scale)
        else:
            conv = nodes[f"downsamples.{stage - 1}.1/Conv"]
            inits.rewrite(conv, 1, inits.array(conv.input[1]) / column)
            if len(conv.input) > 2 and conv.input[2]:
                inits.rewrite(conv, 2, inits.array(conv.input[2]) / scale)
        for name, node in nodes.items():
            if re.fullmatch(rf"stages\.{stage}\.\d+\.dwconv/Conv", name):
                inits.rewrite(node, 1, inits.array(node.input[1]) * column)
            elif re.fullmatch(rf"stages\.{stage}\.\d+\.pwconv2/Conv", name):
                inits.rewrite(node, 1, inits.array(node.input[1]) / column)
                if len(node.input) > 2 and node.input[2]:
                    inits.rewrite(node, 2, inits.array(node.input[2]) / scale)
        _restore_scale(equalized, stage, streams[stage][-1], scale, nodes)
    _check_exact(model, equalized, check_images)
    return equalized


def scales_report(scales: dict[int, np.ndarray]) -> dict:
    return {f"stages.{stage}": {"channels": int(s.size), "smallest_scale": float(np.min(s)),
                                "floored_channels": int((np.asarray(s) <= SCALE_FLOOR + 1e-12).sum())}
            for stage, s in scales.items()}


def restore_scale_name(stage: int) -> str:
    """The initializer holding the per-channel scale that turns stage ``stage``'s equalized stream back into ``x``."""
    return f"stages.{stage}.restore.scale"


def _restore_scale(model: onnx.ModelProto, stage: int, stream: str, scale: np.ndarray,
                   nodes: dict[str, onnx.NodeProto]) -> None:
    """Multiply the stage's final stream by ``scale`` where it leaves the stage (downsample norm or head pooling)."""
    if stage < 3:
        reader, shape, tensor = nodes[f"downsamples.{stage}.0/Transpose"], (1, -1, 1, 1), stream
    else:
        reader = next(n for n in model.graph.node if n.op_type == "LayerNormalization" and n.name.startswith("head"))
        shape, tensor = (1, -1), reader.input[0]
    name, scale_name = f"stages.{stage}.restore", restore_scale_name(stage)
    model.graph.initializer.append(numpy_helper.from_array(scale.reshape(shape).astype(np.float32), scale_name))
    mul = helper.make_node("Mul", [tensor, scale_name], [f"{name}.output"], name=f"{name}/Mul")
    for index, value in enumerate(reader.input):
        if value == tensor:
            reader.input[index] = mul.output[0]
    position = list(model.graph.node).index(reader)
    model.graph.node.insert(position, mul)


def _check_exact(original: onnx.ModelProto, equalized: onnx.ModelProto, images: np.ndarray) -> None:
    import onnxruntime

    from ..backends.onnxruntime import session_options
    from ..export import relative_max_abs

    def run(model: onnx.ModelProto) -> np.ndarray:
        session = onnxruntime.InferenceSession(model.SerializeToString(), session_options(),
                                               providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0]

    drift = relative_max_abs(run(equalized), run(original))
    if not drift <= EXACTNESS:
        raise ConvNeXtExportError(f"residual-stream equalization changed the FP32 outputs by {drift:.1e} "
                                  f"(relative max-abs); this is a bug, please report it")
