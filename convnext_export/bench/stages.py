"""Per-stage drift: where the error of an INT8/FP16 artifact enters.

The eager side is ``FusedConvNeXt.forward_stages`` of the fused FP32 model. On the ONNX side
the four stage outputs are found in the graph, not by name (exporters rename freely): a stage
ends with the residual ``Add`` of its last block, i.e. an ``Add`` whose two inputs both depend
on the graph input (a bias add has a constant operand, also behind a DequantizeLinear) and
whose output has that stage's shape (N, dims[i], H/4/2^i, W/4/2^i). One probe run of a
temporary copy that exposes every residual ``Add`` output tells the shapes; the last one of
each stage's shape in topological order (sorted here: quantizers append their Q/DQ nodes at the
end of the node list) is its output. A second copy exposes just those four
as extra graph outputs and runs on the drift inputs. Exposing a tensor keeps ONNX Runtime
from fusing it into a quantized Add (QLinearAdd), so what is compared is the stage output
before its re-quantization; the logits are measured on the untouched model elsewhere.

An INT8 artifact whose residual streams were equalized carries ``x / s`` per channel inside
each stage (``calibration/equalize.py``) and restores ``x`` with a ``Mul`` by the initializer
``restore_scale_name(i)`` where the stream leaves the stage; the stage outputs are multiplied
by it here, so they are compared with the eager model in the same units.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
import torch

from ..artifact import Artifact
from ..backends.onnxruntime import OnnxRuntimeBackend
from ..calibration.equalize import restore_scale_name
from ..calibration.graph import topological_order
from ..errors import ConvNeXtExportError
from ..fusion import fuse_model
from ..model import ConvNeXt


def residual_adds(graph: onnx.GraphProto) -> list[str]:
    """Outputs of Add nodes whose two operands both depend on a graph input, in topological order."""
    dynamic = {value.name for value in graph.input} - {init.name for init in graph.initializer}
    adds = []
    for node in topological_order(graph):
        live = [name for name in node.input if name in dynamic]
        if live:
            dynamic.update(node.output)
        if node.op_type == "Add" and len(live) == 2:
            adds.append(node.output[0])
    return adds


def _with_outputs(proto: onnx.ModelProto, names: list[str], path: Path) -> Path:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    existing = {value.name for value in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in existing)
    onnx.save(copy, str(path))
    return path


def _run_outputs(path: Path, images: np.ndarray, threads: int | None) -> dict[str, np.ndarray]:
    backend = OnnxRuntimeBackend(path, threads=threads)
    if backend.input_type == "tensor(float16)":
        images = images.astype(np.float16)
    names = [value.name for value in backend.session.get_outputs()]
    values = backend.session.run(names, {backend.input_name: images})
    return {name: np.asarray(value, np.float32) for name, value in zip(names, values)}


def stage_output_names(artifact: Artifact, threads: int | None = None) -> list[str]:
    """The tensor holding each stage's output in the artifact's ONNX graph."""
    proto = onnx.load(str(artifact.model_path))
    candidates = residual_adds(proto.graph)
    size = artifact.preprocessing.image_size
    probe = np.zeros((artifact.batch or 1, 3, size, size), np.float32)
    with tempfile.TemporaryDirectory(prefix="convnext-stages-") as tmp:
        shapes = {name: out.shape for name, out in
                  _run_outputs(_with_outputs(proto, candidates, Path(tmp) / "probe.onnx"), probe, threads).items()}
    found = []
    for i, dim in enumerate(artifact.config.dims):
        side = size // (4 * 2 ** i)
        matches = [name for name in candidates if tuple(shapes.get(name, ())[1:]) == (dim, side, side)]
        if not matches:
            raise ConvNeXtExportError(
                f"{artifact.model_path}: no residual Add with stage {i}'s shape ({dim}x{side}x{side}); "
                "per-stage drift needs a ConvNeXt graph"
            )
        found.append(matches[-1])
    return found


def stream_restore_scales(proto: onnx.ModelProto, stages: int) -> dict[int, np.ndarray]:
    """Stage -> the per-channel scale that turns its equalized stream back into the model's units."""
    initializers = {init.name: init for init in proto.graph.initializer}
    found = {}
    for stage in range(stages):
        init = initializers.get(restore_scale_name(stage))
        if init is not None:
            found[stage] = numpy_helper.to_array(init).astype(np.float32).reshape(1, -1, 1, 1)
    return found


def stage_metrics(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    out64, ref64 = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    diff = out64 - ref64
    flat_o, flat_r = out64.reshape(len(out64), -1), ref64.reshape(len(ref64), -1)
    cosine = (flat_o * flat_r).sum(1) / np.maximum(np.linalg.norm(flat_o, axis=1) * np.linalg.norm(flat_r, axis=1), 1e-30)
    return {
        "relative_max_abs": float(np.abs(diff).max() / max(np.abs(ref64).max(), 1e-30)),
        "max_abs": float(np.abs(diff).max()),
        "mean_abs": float(np.abs(diff).mean()),
        "relative_rms": float(np.sqrt((diff ** 2).mean() / max((ref64 ** 2).mean(), 1e-30))),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
    }


def stage_drift(artifact: Artifact, reference: ConvNeXt, images: np.ndarray, threads: int | None = None) -> list[dict]:
    """Drift of each stage output of the artifact (ONNX Runtime CPU) vs the fused FP32 eager model."""
    names = stage_output_names(artifact, threads)
    fused, _ = fuse_model(reference)
    with torch.inference_mode():
        eager = [stage.numpy() for stage in fused.forward_stages(torch.from_numpy(images))]
    proto = onnx.load(str(artifact.model_path))
    with tempfile.TemporaryDirectory(prefix="convnext-stages-") as tmp:
        outputs = _run_outputs(_with_outputs(proto, names, Path(tmp) / "stages.onnx"), images, threads)
    restore = stream_restore_scales(proto, len(names))
    return [{"stage": i, "tensor": name, "shape": list(eager[i].shape[1:]),
             **stage_metrics(outputs[name] * restore.get(i, np.float32(1)), eager[i])}
            for i, name in enumerate(names)]
