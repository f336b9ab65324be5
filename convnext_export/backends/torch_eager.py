"""Eager PyTorch: the reference every artifact is compared with."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchBackend:
    name = "torch"

    def __init__(self, model: nn.Module, threads: int | None = None) -> None:
        self.model = model.eval()
        self.threads = threads
        if threads:
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def run(self, images: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(images, np.float32))).float().numpy()

    def describe(self) -> dict:
        return {"runtime": "torch", "version": torch.__version__, "device": "cpu",
                "threads": self.threads or torch.get_num_threads()}
