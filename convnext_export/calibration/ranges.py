"""Activation ranges from ONNX Runtime's calibrators, fed from an iterable of batches.

This is the one place that adapts our batches to ONNX Runtime's stateful
``CalibrationDataReader``. Batches are fed in chunks so that no calibrator holds more than
a chunk of intermediate outputs at once (ONNX Runtime's histogram calibrators keep every
output of a ``collect_data`` call in memory until it returns).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_PERCENTILE = 99.99  # 99.999 (ONNX Runtime's default) agreed 99.06% vs 99.15% on the CIFAR-10 reference
CHUNK_PIXELS = 64 * 64 * 64  # images fed per collect_data call: 64 at 64 px, 5 at 224 px (~0.6 GB of activations)

# Inputs and outputs of these ops cover every tensor the recipe quantizes (a norm_input Transpose
# reads a conv or Add output); the rest need no range.
CALIBRATED_OP_TYPES = ("Conv", "Gemm", "Gelu", "Add")


@dataclass(frozen=True)
class CalibrationMethod:
    name: str
    percentile: float | None = None
    symmetric: bool = False  # histogram over |x| (TensorRT's zero-point-0 layout) or over x

    def __post_init__(self) -> None:
        if self.name not in CALIBRATION_METHODS:
            raise InputError(f"--calib-method {self.name!r}: use one of {', '.join(CALIBRATION_METHODS)}")
        if self.name == "percentile" and not (self.percentile is not None and 50.0 < self.percentile <= 100.0):
            raise InputError(f"--calib-percentile {self.percentile}: give a percentile in (50, 100], e.g. 99.999")

    def to_dict(self) -> dict:
        data = {"method": self.name, "symmetric": self.symmetric}
        if self.name == "percentile":
            data["percentile"] = self.percentile
        return data


def _calibrator(model_path: Path, method: CalibrationMethod, work: Path):
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    ort_method, options = {
        "minmax": (OrtMethod.MinMax, {"symmetric": method.symmetric}),
        "entropy": (OrtMethod.Entropy, {"symmetric": method.symmetric}),
        "percentile": (OrtMethod.Percentile, {"symmetric": method.symmetric, "percentile": method.percentile}),
    }[method.name]
    return create_calibrator(model_path, list(CALIBRATED_OP_TYPES), augmented_model_path=str(work / "augmented.onnx"),
                             calibrate_method=ort_method, extra_options=options)


def collect_ranges(model_path: Path, batches: Iterable[np.ndarray], method: CalibrationMethod,
                   progress: Callable[[int], None] = lambda images: None) -> dict[str, tuple[float, float]]:
    """Tensor name -> (min, max) that ``method`` derives from running ``batches`` through the FP32 graph."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # the adapter: a stateful reader over one chunk
        def __init__(self, chunk: Sequence[np.ndarray], input_name: str) -> None:
            self._feeds = iter([{input_name: batch} for batch in chunk])

        def get_next(self) -> dict | None:
            return next(self._feeds, None)

    seen = 0
    with tempfile.TemporaryDirectory(prefix="convnext-calib-") as work, redirect_stdout(io.StringIO()):
        calibrator = _calibrator(Path(model_path), method, Path(work))
        input_name = calibrator.infer_session.get_inputs()[0].name
        for chunk in _chunks(batches):
            calibrator.collect_data(_Reader(chunk, input_name))
            seen += sum(len(batch) for batch in chunk)
            progress(seen)
        if seen == 0:
            raise InputError("no calibration images to collect ranges from")
        tensors = calibrator.compute_data()
    return {name: (float(np.min(data.range_value[0])), float(np.max(data.range_value[1])))
            for name, data in tensors.items()}


def calibration_batch_size(image_size: int) -> int:
    """Images per calibration run (dynamic-batch graphs): a chunk's worth, at most 16."""
    return max(1, min(16, CHUNK_PIXELS // (image_size * image_size)))


def _chunks(batches: Iterable[np.ndarray]) -> Iterable[list[np.ndarray]]:
    chunk: list[np.ndarray] = []
    for batch in batches:
        if chunk and batch.shape != chunk[0].shape:  # the histogram calibrators stack a chunk's outputs
            yield chunk
            chunk = []
        chunk.append(batch)
        if sum(b.shape[0] * b.shape[2] * b.shape[3] for b in chunk) >= CHUNK_PIXELS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def tensors_data(ranges: dict[str, tuple[float, float]], method: CalibrationMethod):
    """Our ranges as the ``TensorsData`` ONNX Runtime's quantizer takes."""
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    ort_method = {"minmax": OrtMethod.MinMax, "entropy": OrtMethod.Entropy, "percentile": OrtMethod.Percentile}
    return TensorsData(ort_method[method.name], {
        name: TensorData(lowest=np.float32(low), highest=np.float32(high)) for name, (low, high) in ranges.items()
    })
