"""TensorRT engines (``model.engine`` written by ``convnext-export --trt``) on a CUDA GPU.

The engine is checked before it is deserialized: its sha256 against the manifest, and the
TensorRT version, GPU and compute capability it was built for against this machine's (an engine
runs only where it was built). Device buffers are torch CUDA tensors; ``device_call`` exposes
the device-only work to the GPU timing (``bench.gpu_timing``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import file_sha256, read_artifact
from ..errors import InputError
from .base import BackendUnavailable


class TensorRTBackend:
    name = "tensorrt"
    on_gpu = True

    def __init__(self, engine_path: str | Path, threads: int | None = None) -> None:
        from ..tensorrt.availability import TensorRTUnavailable, require_tensorrt
        from ..tensorrt.compat import EngineTarget, check_engine_target
        from ..tensorrt.profiles import BatchProfile
        from ..tensorrt.runner import EngineRunner

        try:
            runtime = require_tensorrt("the tensorrt backend")
        except TensorRTUnavailable as error:
            raise BackendUnavailable(str(error)) from None
        engine_path = Path(engine_path)
        artifact = read_artifact(engine_path.parent, verify=False)
        entry = artifact.extra.get("tensorrt") or {}
        if entry.get("engine_sha256") != file_sha256(engine_path):
            raise InputError(f"{engine_path}: sha256 does not match the manifest's; the engine changed after export, "
                             f"rebuild it with convnext-export ... --trt")
        check_engine_target(artifact, EngineTarget.here(runtime))
        self.runtime, self.threads = runtime, threads
        self.profile = BatchProfile.from_dict(entry["build"]["profile"])
        self.runner = EngineRunner(engine_path.read_bytes(), runtime, self.profile)

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.runner.run(images)

    def device_call(self, images):
        """CUDA tensor in, CUDA tensor out, enqueued on torch's current stream: what the GPU timing measures."""
        return self.runner.infer(images)

    def describe(self) -> dict:
        device = self.runtime.device
        return {"runtime": "tensorrt", "version": self.runtime.version, "device": device.name,
                "compute_capability": device.compute_capability, "threads": self.threads,
                "profile": self.profile.to_dict()}
