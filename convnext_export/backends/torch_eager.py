"""Eager PyTorch: the reference every artifact is compared with (optionally under torch.compile)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchBackend:
    name = "torch"

    def __init__(self, model: nn.Module, threads: int | None = None, compile: bool = False) -> None:
        self.model = model.eval()
        self.threads = threads
        self.compiled = compile
        if threads:
            torch.set_num_threads(threads)
        if compile:
            self.name = "torch-compile"
            # One graph per batch size (dynamic=False): the fastest code for each timed shape.
            self.model = torch.compile(self.model, dynamic=False)

    @torch.inference_mode()
    def run(self, images: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(images, np.float32))).float().numpy()

    def describe(self) -> dict:
        return {"runtime": "torch", "version": torch.__version__, "device": "cpu",
                "threads": self.threads or torch.get_num_threads(),
                "compile": "inductor" if self.compiled else None}
