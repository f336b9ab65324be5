"""The Backend protocol: load an artifact, run a batch, say what it is."""

from __future__ import annotations

import importlib
from typing import Protocol

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


# name -> (module, factory): modules are imported only when the backend is asked for.
_BACKENDS = {
    "torch": ("convnext_export.backends.torch_eager", "TorchBackend"),
    "onnxruntime": ("convnext_export.backends.onnxruntime", "OnnxRuntimeBackend"),
}


def backend_names() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str) -> type:
    if name not in _BACKENDS:
        raise InputError(f"unknown backend {name!r}; valid backends: {', '.join(_BACKENDS)}")
    module, factory = _BACKENDS[name]
    return getattr(importlib.import_module(module), factory)
