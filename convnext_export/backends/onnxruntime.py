"""ONNX Runtime, CPU provider here (CUDA / TensorRT providers where installed).

Intra-op thread spinning is off by default (``SPINNING = "off"``): threads left spinning after
a run (ONNX Runtime's own default, ``"on"``) kept both cores busy and slowed whatever ran next
by ~40% on this 2-core machine. ``"within-run"`` spins during a run and stops as it returns
(``session.force_spinning_stop``); ``benchmarks/ort_spinning.py`` compares the three, and on
this noisy host no policy won consistently (ConvNeXt-T INT8 sessions of every policy sometimes
ran ~35 ms instead of ~23 ms), so the default stays the one that cannot slow a neighbour.

GPU providers: the provider must be in ``onnxruntime.get_available_providers()`` (else
``BackendUnavailable`` before any session is made). The TensorRT provider gets no
``trt_fp16_enable`` / ``trt_int8_enable``: without them ONNX Runtime (>= 1.22, TensorRT 10)
builds strongly typed networks (microsoft/onnxruntime PR #24298), so the artifact's FP16 casts
and Q/DQ decide precision as in ``convnext-export --trt``. It gets an explicit batch profile
(``trt_profile_*_shapes``, else every new batch size rebuilds the engine) and a timing cache;
its engine cache stays off so that a cold start measures a real build.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..tensorrt.profiles import DEFAULT_MAX_BATCH
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
SPINNING = "off"


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


def tensorrt_provider_options(model_path: Path, max_batch: int = DEFAULT_MAX_BATCH) -> dict[str, str]:
    """TensorRT provider options: a batch profile 1..max (opt 1) for a dynamic batch, and a timing cache."""
    import onnx

    graph_input = onnx.load(str(model_path), load_external_data=False).graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "convnext-export" / "ort-tensorrt"
    options = {"trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)}
    if dims and dims[0] is None and all(d is not None for d in dims[1:]):
        shape = "x".join(str(d) for d in dims[1:])
        options.update({f"trt_profile_{kind}_shapes": f"{graph_input.name}:{batch}x{shape}"
                        for kind, batch in (("min", 1), ("opt", 1), ("max", max_batch))})
    return options


def provider_chain(provider: str, available: list[str], model_path: Path) -> list:
    """Providers in priority order, with options: TensorRT falls back to CUDA then CPU, CUDA to CPU."""
    if provider == "CPUExecutionProvider":
        return [provider]
    chain: list = []
    if provider == "TensorrtExecutionProvider":
        chain.append((provider, tensorrt_provider_options(model_path)))
        if "CUDAExecutionProvider" in available:
            chain.append(("CUDAExecutionProvider", {"device_id": "0"}))
    else:
        chain.append((provider, {"device_id": "0"}))
    return chain + ["CPUExecutionProvider"]


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
        self.session = ort.InferenceSession(
            str(model_path), session_options(threads, spinning, profile_prefix),
            providers=provider_chain(provider, ort.get_available_providers(), Path(model_path)),
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
