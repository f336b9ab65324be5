"""OpenVINO's CPU plugin running the same ONNX (optional extra ``openvino``).

OpenVINO picks its own inference precision: BF16 on CPUs with AVX-512 BF16 or AMX, so an
FP32 artifact is not run in FP32 there; ``describe()`` reports what it chose. INT8 artifacts
(Q/DQ) run as INT8. ``precision`` overrides the hint (e.g. ``"f32"`` for exact FP32).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import BackendUnavailable

INSTALL_HINT = "pip install 'convnext-export[openvino]'"


def _openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(f"openvino is not installed: {INSTALL_HINT}") from None
    return openvino


class OpenVinoBackend:
    name = "openvino"

    def __init__(self, model_path: str | Path, threads: int | None = None, device: str = "CPU",
                 precision: str | None = None, profile_prefix: str | None = None) -> None:
        ov = _openvino()
        core = ov.Core()
        if device not in core.available_devices:
            raise BackendUnavailable(f"OpenVINO device {device} is not available (have: {', '.join(core.available_devices)})")
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        if profile_prefix:
            config["PERF_COUNT"] = True
        self.device, self.threads, self.profile_prefix = device, threads, profile_prefix
        self.compiled = core.compile_model(core.read_model(str(model_path)), device, config)
        self.request = self.compiled.create_infer_request()
        self.version = ov.__version__
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self._profile: list[dict] = []

    def run(self, images: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(images, np.float32)})
        if self.profile_prefix:
            self._profile.append({info.node_name: {"type": info.node_type, "exec_type": info.exec_type,
                                                   "real_time_us": info.real_time.total_seconds() * 1e6}
                                  for info in self.request.profiling_info})
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)

    def end_profiling(self) -> str:
        """Write the per-node times of every profiled run (OpenVINO's PERF_COUNT) and return the file."""
        path = Path(f"{self.profile_prefix}.json")
        path.write_text(json.dumps({"runtime": "openvino", "runs": self._profile}, indent=1))
        return str(path)

    def describe(self) -> dict:
        return {"runtime": "openvino", "version": self.version, "device": self.device, "threads": self.threads,
                "inference_precision": self.precision.removeprefix("<Type: '").removesuffix("'>")}
