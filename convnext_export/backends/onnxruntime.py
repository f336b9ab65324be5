"""ONNX Runtime, CPU provider here (CUDA / TensorRT providers where installed).

Intra-op threads spin while a run is under way and stop as the run returns
(``session.force_spinning_stop``), the default ``SPINNING = "within-run"``: spinning between
the ops of one run saved ~7% of ConvNeXt-T's latency here (FP32 46.5 vs 48.7 ms, INT8 23.8
vs 26.4 ms, batch 1, 2 threads), while threads left spinning after a run (ONNX Runtime's own
default, ``"on"``) kept both cores busy and slowed whatever ran next by ~40% on this 2-core
machine. Eager PyTorch timed in alternation with ``"within-run"`` sessions measured the same
as eager alone (66-69 ms either way). ``"off"`` never spins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BackendUnavailable

# provider -> (backend name, hint); GPU providers keep the CPU provider as ONNX Runtime's fallback.
PROVIDERS = {
    "CPUExecutionProvider": ("onnxruntime", "pip install onnxruntime"),
    "CUDAExecutionProvider": ("onnxruntime-cuda", "pip install onnxruntime-gpu on a machine with a CUDA GPU"),
    "TensorrtExecutionProvider": ("onnxruntime-tensorrt",
                                  "pip install onnxruntime-gpu tensorrt on a machine with a CUDA GPU"),
}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
    return onnxruntime


SPINNING_POLICIES = ("within-run", "off", "on")
SPINNING = "within-run"


def session_options(threads: int | None = None, spinning: str = SPINNING, profile_prefix: str | None = None):
    if spinning not in SPINNING_POLICIES:
        raise ValueError(f"spinning {spinning!r}: use one of {', '.join(SPINNING_POLICIES)}")
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if spinning == "off" else "1")
    if spinning == "within-run":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model_path: str | Path, threads: int | None = None, provider: str = "CPUExecutionProvider",
                 spinning: str = SPINNING, profile_prefix: str | None = None) -> None:
        ort = _onnxruntime()
        name, hint = PROVIDERS.get(provider, (f"onnxruntime-{provider}", "a build of onnxruntime with it"))
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(
                f"ONNX Runtime provider {provider} is not available here "
                f"(have: {', '.join(ort.get_available_providers())}); {hint}"
            )
        self.name = name
        self.threads, self.provider, self.spinning = threads, provider, spinning
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        self.session = ort.InferenceSession(
            str(model_path), session_options(threads, spinning, profile_prefix), providers=providers
        )
        self.input_name = self.session.get_inputs()[0].name
        self.input_type = self.session.get_inputs()[0].type

    def run(self, images: np.ndarray) -> np.ndarray:
        if self.input_type == "tensor(float16)":
            images = images.astype(np.float16)
        return np.asarray(self.session.run(None, {self.input_name: images})[0], np.float32)

    def end_profiling(self) -> str:
        """Stop profiling and return the trace file (Chrome trace JSON)."""
        return self.session.end_profiling()

    def describe(self) -> dict:
        ort = _onnxruntime()
        return {"runtime": "onnxruntime", "version": ort.__version__, "provider": self.provider,
                "providers_in_use": self.session.get_providers(), "threads": self.threads, "spinning": self.spinning}
