"""The Backend protocol: load an artifact, run a batch, say what it is.

Every runtime is one module behind this protocol, registered below by name with what it
consumes and how it is opened, and imported only when asked for. A runtime or device that
is missing here raises ``BackendUnavailable`` with what to install; ``convnext-bench`` lists
such a backend as skipped, never crashes.

How a backend is opened (``BackendSpec.open``):

- ``consumes="reference"``: ``Factory(model, threads=..., **options)`` with the eager nn.Module;
- ``consumes="onnx"``: ``Factory(model_path, threads=..., profile_prefix=..., **options)``;
- ``consumes="engine"``: ``Factory(engine_path, threads=..., **options)`` (the ``model.engine``
  that ``convnext-export --trt`` writes beside ``model.onnx``; the manifest's ``tensorrt`` entry).

A backend whose instance has ``on_gpu = True`` also offers ``device_call(cuda_tensor) ->
cuda_tensor`` for CUDA-event timing of the device work alone (``bench.gpu_timing``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import InputError


class BackendUnavailable(Exception):
    """The runtime or its device is missing here; the message says what to install."""


class Backend(Protocol):
    name: str

    def run(self, images: np.ndarray) -> np.ndarray:
        """float32 (N,3,H,W) -> float32 logits (N,K)."""

    def describe(self) -> dict:
        """What runs: runtime, version, provider/device, threads."""


@dataclass(frozen=True)
class BackendSpec:
    """A registered backend: where its class lives, what it consumes, fixed constructor options."""

    name: str
    module: str
    factory: str
    consumes: str  # "reference" | "onnx" | "engine"
    summary: str
    options: dict[str, Any] = field(default_factory=dict)
    install_hint: str | None = None
    default: bool = True  # part of convnext-bench's default --backends
    runtime_modules: tuple[str, ...] = ()  # imported ahead of a cold-start measurement, which excludes import time
    gpu: bool = False  # runs on a CUDA GPU: the eager GPU references join any run that has one

    def load_class(self) -> type:
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError as error:
            if error.name and self.module.startswith(error.name):
                raise BackendUnavailable(f"backend {self.name!r} is not part of this version") from None
            raise BackendUnavailable(f"{error.name} is not installed: {self.install_hint or 'install it'}") from None
        return getattr(module, self.factory)

    def import_runtime(self) -> None:
        """Import the backend module and its runtime packages; ``BackendUnavailable`` names what to install."""
        self.load_class()
        for module in self.runtime_modules:
            try:
                importlib.import_module(module)
            except ImportError:
                raise BackendUnavailable(f"{module} is not installed: {self.install_hint or 'pip install ' + module}") from None

    def artifact_file(self, artifact: Any) -> Path | None:
        """The file of ``artifact`` this backend runs (its ONNX or its TensorRT engine), None when it has none."""
        if self.consumes == "onnx":
            return artifact.model_path if artifact.format == "onnx" else None
        if self.consumes == "engine":
            engine = artifact.extra.get("tensorrt")
            return artifact.directory / engine["engine_file"] if engine else None
        return None

    def open(self, *, model: Any = None, model_path: str | Path | None = None, threads: int | None = None,
             profile_prefix: str | None = None) -> Backend:
        """Create a ready-to-run backend; raises ``BackendUnavailable`` where it cannot run here."""
        factory = self.load_class()
        if self.consumes == "reference":
            return factory(model, threads=threads, **self.options)
        if self.consumes == "onnx":
            return factory(model_path, threads=threads, profile_prefix=profile_prefix, **self.options)
        return factory(model_path, threads=threads, **self.options)


# Modules are imported only when a backend is asked for.
_SPECS = [
    BackendSpec("torch", "convnext_export.backends.torch_eager", "TorchBackend", "reference",
                "PyTorch eager FP32, the reference", runtime_modules=("torch",)),
    BackendSpec("torch-compile", "convnext_export.backends.torch_eager", "TorchBackend", "reference",
                "PyTorch eager model under torch.compile (inductor)", options={"compile": True}, default=False,
                runtime_modules=("torch", "torch._inductor")),
    BackendSpec("onnxruntime", "convnext_export.backends.onnxruntime", "OnnxRuntimeBackend", "onnx",
                "ONNX Runtime, CPU execution provider", runtime_modules=("onnxruntime",)),
    BackendSpec("torch-cuda", "convnext_export.backends.torch_eager", "TorchBackend", "reference",
                "PyTorch eager FP32 on the GPU (TF32 off), the GPU reference", options={"device": "cuda"},
                default=False, runtime_modules=("torch",), gpu=True),
    BackendSpec("torch-cuda-fp16", "convnext_export.backends.torch_eager", "TorchBackend", "reference",
                "PyTorch eager on the GPU under autocast FP16", options={"device": "cuda", "precision": "fp16"},
                default=False, runtime_modules=("torch",), gpu=True),
    BackendSpec("onnxruntime-cuda", "convnext_export.backends.onnxruntime", "OnnxRuntimeBackend", "onnx",
                "ONNX Runtime, CUDA execution provider", options={"provider": "CUDAExecutionProvider"},
                install_hint="pip install onnxruntime-gpu (and a CUDA GPU)", runtime_modules=("onnxruntime",), gpu=True),
    BackendSpec("onnxruntime-tensorrt", "convnext_export.backends.onnxruntime", "OnnxRuntimeBackend", "onnx",
                "ONNX Runtime, TensorRT execution provider", options={"provider": "TensorrtExecutionProvider"},
                install_hint="pip install onnxruntime-gpu tensorrt (and a CUDA GPU)",
                runtime_modules=("onnxruntime",), gpu=True),
    BackendSpec("openvino", "convnext_export.backends.openvino", "OpenVinoBackend", "onnx",
                "OpenVINO CPU plugin on the same ONNX (its default inference precision)",
                install_hint="pip install 'convnext-export[openvino]'", runtime_modules=("openvino",)),
    BackendSpec("tensorrt", "convnext_export.backends.tensorrt", "TensorRTBackend", "engine",
                "TensorRT engines written by convnext-export --trt",
                install_hint="pip install 'convnext-export[tensorrt]' on a machine with an NVIDIA GPU",
                runtime_modules=("tensorrt",), gpu=True),
]
_BACKENDS = {spec.name: spec for spec in _SPECS}


def backend_names() -> list[str]:
    return list(_BACKENDS)


def default_backend_names() -> list[str]:
    return [spec.name for spec in _SPECS if spec.default]


def backend_spec(name: str) -> BackendSpec:
    if name not in _BACKENDS:
        raise InputError(f"unknown backend {name!r}; valid backends: {', '.join(_BACKENDS)}")
    return _BACKENDS[name]


def get_backend(name: str) -> type:
    """The class behind a backend name (raises ``BackendUnavailable`` when it is not installed)."""
    return backend_spec(name).load_class()
