"""Eager PyTorch: the reference every artifact is compared with (optionally under torch.compile, or on a CUDA GPU).

On the GPU, ``precision="fp32"`` turns TF32 off in cuDNN and cuBLAS (PyTorch allows it for
convolutions by default), so the FP32 reference is FP32; ``precision="fp16"`` runs the model
under ``torch.autocast(float16)``, the usual eager FP16 baseline.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from .base import BackendUnavailable


class TorchBackend:
    name = "torch"

    def __init__(self, model: nn.Module, threads: int | None = None, compile: bool = False, device: str = "cpu",
                 precision: str = "fp32") -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("eager PyTorch on the GPU needs a CUDA GPU and a CUDA build of torch; "
                                     "this machine has none")
        self.threads, self.compiled, self.device, self.precision = threads, compile, torch.device(device), precision
        self.on_gpu = self.device.type == "cuda"  # GPU rows also get CUDA-event timing (bench.gpu_timing)
        if threads:
            torch.set_num_threads(threads)
        if self.device.type == "cuda":
            self.name = "torch-cuda" + ("-fp16" if precision == "fp16" else "")
            torch.backends.cudnn.allow_tf32 = precision != "fp32"
            torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
        self.model = model.eval().to(self.device)
        if compile:
            self.name = "torch-compile"
            # One graph per batch size (dynamic=False): the fastest code for each timed shape.
            self.model = torch.compile(self.model, dynamic=False)

    def _autocast(self):
        if self.precision == "fp16":  # no weight-cast cache: it must be off inside CUDA graph capture (torch docs)
            return torch.autocast(self.device.type, dtype=torch.float16, cache_enabled=False)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def device_call(self, images: torch.Tensor) -> torch.Tensor:
        """A tensor on this backend's device in, logits on it out (what the GPU timing measures)."""
        with self._autocast():
            return self.model(images)

    @torch.inference_mode()
    def run(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device)
        return self.device_call(x).float().cpu().numpy()

    def describe(self) -> dict:
        info = {"runtime": "torch", "version": torch.__version__, "device": "cpu",
                "threads": self.threads or torch.get_num_threads(), "compile": "inductor" if self.compiled else None}
        if self.device.type == "cuda":
            info.update(device=torch.cuda.get_device_name(self.device), precision=self.precision,
                        autocast="float16" if self.precision == "fp16" else None, tf32=self.precision != "fp32")
        return info
