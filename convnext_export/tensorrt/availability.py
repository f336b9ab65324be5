"""Is there a CUDA GPU and the ``tensorrt`` package here? One error naming what is missing."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from ..errors import ConvNeXtExportError

INSTALL_HINT = "pip install 'convnext-export[tensorrt]' on a machine with an NVIDIA GPU"


class TensorRTUnavailable(ConvNeXtExportError):
    """No CUDA GPU or no TensorRT here (exit code 1: the machine, not the arguments, is the problem)."""


@dataclass(frozen=True)
class GpuDevice:
    """The CUDA device an engine is built for and runs on."""

    index: int
    name: str
    compute_capability: str  # "8.6"


@dataclass(frozen=True)
class TensorRTRuntime:
    trt: ModuleType
    version: str
    device: GpuDevice


def cuda_device(index: int = 0) -> GpuDevice | None:
    """The CUDA device PyTorch sees at ``index``, or None without one."""
    try:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() <= index:
            return None
        major, minor = torch.cuda.get_device_capability(index)
        return GpuDevice(index, torch.cuda.get_device_name(index), f"{major}.{minor}")
    except (ImportError, RuntimeError, AssertionError):
        return None


def _import_tensorrt() -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module("tensorrt"), None
    except ImportError as error:  # not installed, or its CUDA libraries cannot be loaded
        return None, "the tensorrt package" + ("" if error.name == "tensorrt" else f" (importing it failed: {error})")
    except OSError as error:
        return None, f"the tensorrt package (its libraries failed to load: {error})"


def require_tensorrt(purpose: str = "--trt") -> TensorRTRuntime:
    """The tensorrt module and the GPU, or ``TensorRTUnavailable`` naming everything that is missing."""
    device = cuda_device()
    trt, missing_trt = _import_tensorrt()
    missing = ([] if device is not None else ["a CUDA GPU (PyTorch sees none)"]) + ([missing_trt] if missing_trt else [])
    if missing or trt is None or device is None:
        raise TensorRTUnavailable(f"{purpose} needs TensorRT and an NVIDIA GPU; missing here: {', '.join(missing)}. "
                                  f"Install with: {INSTALL_HINT}")
    return TensorRTRuntime(trt, str(trt.__version__), device)
