"""Tiny artifacts shared by the bench tests: exported once per test process (the dynamo export
is the slow part), from a trained-like atto with 10 classes at 32 px."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from convnext_export.artifact import MANIFEST, file_sha256
from convnext_export.config import get_config
from convnext_export.errors import ConvNeXtExportError
from convnext_export.model import build_model
from convnext_export.pipeline import ExportRequest, PreprocessingOverrides, export_artifact

from helpers import make_trained_like

IMAGE = 32


def quantized_copy(fp32: Path, out: Path, seed: int = 0) -> Path:
    """An INT8 artifact made with ONNX Runtime's quantize_static (used when the project's own INT8 export is absent)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(seed)
            self.batches = iter([{"input": rng.standard_normal((2, 3, IMAGE, IMAGE), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    out.mkdir()
    quantize_static(str(fp32 / "model.onnx"), str(out / "model.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    manifest = json.loads((fp32 / MANIFEST).read_text())
    manifest.update(precision="int8", target="cpu", model_sha256=file_sha256(out / "model.onnx"))
    for fp32_only in ("fingerprint", "op_census"):  # they describe the FP32 graph: an INT8 manifest without them
        manifest.pop(fp32_only, None)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


@functools.cache
def atto_artifacts() -> dict[str, Path]:
    """FP32 and INT8 artifacts (the project's INT8 export when it exists, else quantize_static) and a scratch root."""
    root = Path(tempfile.mkdtemp(prefix="convnext-bench-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    model = make_trained_like(build_model(get_config("atto", 10), seed=3), seed=3)
    checkpoint = root / "atto.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    common = dict(size="atto", weights=checkpoint, preprocessing=PreprocessingOverrides(image_size=IMAGE))
    fp32 = export_artifact(ExportRequest(**common, out=root / "atto-fp32")).artifact.directory
    try:
        int8 = export_artifact(ExportRequest(**common, precision="int8", out=root / "atto-int8")).artifact.directory
    except ConvNeXtExportError:
        int8 = quantized_copy(fp32, root / "atto-int8")
    return {"fp32": fp32, "int8": int8, "root": root}
