"""FP32 ONNX export of the (fused) ConvNeXt, checked, annotated and compared with eager."""

from __future__ import annotations

import io
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .errors import ConvNeXtExportError, InputError
from .fingerprint import op_census

DEFAULT_OPSET = 20
MIN_OPSET = 17  # LayerNormalization; Gelu needs 20
# The newest opset torch.onnx's converter reaches and ONNX Runtime 1.32 runs (atto exported and checked at each
# of 17-25 here; 26 and 28 fail in the exporter's version conversion).
MAX_OPSET = 25
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class ExportedGraph:
    path: Path
    op_census: dict[str, int]
    seconds: float


def check_opset(opset: int) -> None:
    if opset > MAX_OPSET:
        raise InputError(f"--opset {opset}: the exporter and ONNX Runtime here work up to opset {MAX_OPSET}; "
                         f"use {MIN_OPSET}-{MAX_OPSET} (20, the default, gives one Gelu and LayerNormalization)")
    if opset < MIN_OPSET:
        raise InputError(
            f"--opset {opset}: ConvNeXt needs opset >= {MIN_OPSET} for one LayerNormalization per norm "
            f"(20, the default, also gives one Gelu)"
        )


def check_single_file_onnx(model: nn.Module) -> None:
    """Refuse a model whose FP32 weights cannot fit one ONNX file (ConvNeXt-V2-huge: 2.6 GB); the CLI checks
    the config earlier (``memory.check_export_memory``), this guards direct callers."""
    from .memory import ONNX_LIMIT_BYTES

    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if weight_bytes > ONNX_LIMIT_BYTES:
        config = getattr(model, "config", None)
        name = config.title if config is not None else "The model"
        raise InputError(
            f"{name} has {weight_bytes / 1e9:.2f} GB of FP32 weights, over the 2 GB an ONNX file can hold (one "
            f"protobuf message); this tool writes single-file ONNX, so it cannot export it yet: use a smaller size "
            f"(xlarge, 1.4 GB, and v2-large, 0.8 GB, fit)"
        )


def export_onnx(
    model: nn.Module, path: Path, image_size: int, *, opset: int = DEFAULT_OPSET, batch: int | None = None,
    metadata: dict[str, str] | None = None,
) -> ExportedGraph:
    """Export with the dynamo exporter; ``batch=None`` keeps the batch axis dynamic."""
    check_opset(opset)
    check_single_file_onnx(model)
    started = time.perf_counter()
    # torch.export specialises a dimension of size 1, so a dynamic batch is traced at 2.
    example = torch.randn(batch or 2, 3, image_size, image_size)
    dynamic = None if batch else ({0: torch.export.Dim("batch", min=1, max=4096)},)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.eval(), (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, optimize=True, verbose=False,
        )
    proto = program.model_proto
    if dynamic:
        for value in (proto.graph.input[0], proto.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "convnext-export"
    onnx.checker.check_model(proto, full_check=True)
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    onnx.save(proto, str(path))
    return ExportedGraph(path, op_census(proto), time.perf_counter() - started)


def relative_max_abs(out: np.ndarray, ref: np.ndarray) -> float:
    """The project's drift: max|out - ref| / max|ref|."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def check_fp32_drift(drift: float, limit: float = 1e-4) -> None:
    if not drift <= limit:
        raise ConvNeXtExportError(
            f"FP32 ONNX drift {drift:.2e} vs eager exceeds {limit:.0e}: the export is wrong, nothing was written"
        )
