"""May this engine run here? A TensorRT engine is bound to the TensorRT version and the GPU it was built on."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConvNeXtExportError

if TYPE_CHECKING:
    from ..artifact import Artifact
    from .availability import TensorRTRuntime


class EngineMismatch(ConvNeXtExportError):
    """The engine was built for another TensorRT version or GPU; the message says how to rebuild it."""


@dataclass(frozen=True)
class EngineTarget:
    """What an engine was built for (recorded in the manifest) or what is here (to compare)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str

    def to_dict(self) -> dict:
        return {"tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
                "compute_capability": self.compute_capability}

    @classmethod
    def from_dict(cls, data: dict) -> EngineTarget:
        return cls(str(data["tensorrt_version"]), str(data["gpu_name"]), str(data["compute_capability"]))

    @classmethod
    def here(cls, runtime: TensorRTRuntime) -> EngineTarget:
        return cls(runtime.version, runtime.device.name, runtime.device.compute_capability)

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (compute capability {self.compute_capability})"


def differences(built_for: EngineTarget, here: EngineTarget) -> list[str]:
    """What differs, in words; empty when the engine may run here."""
    fields = (("TensorRT version", "tensorrt_version"), ("GPU", "gpu_name"),
              ("compute capability", "compute_capability"))
    return [f"{label} {getattr(built_for, key)} (built) vs {getattr(here, key)} (here)"
            for label, key in fields if getattr(built_for, key) != getattr(here, key)]


def rebuild_command(artifact: Artifact) -> str:
    """The convnext-export command that rebuilds this artifact with its engine, from what its manifest records."""
    args = ["convnext-export"]
    weights = artifact.weights
    if weights.path:
        args += ["--weights", weights.path]
    else:
        args += ["--size", artifact.config.name, "--seed", str(weights.seed or 0)]
    if artifact.config.num_classes != 1000 and not weights.path:
        args += ["--num-classes", str(artifact.config.num_classes)]
    args += ["--image-size", str(artifact.preprocessing.image_size), "--opset", str(artifact.opset)]
    if artifact.batch is not None:
        args += ["--batch", str(artifact.batch)]
    if artifact.precision != "fp32":
        args.append(f"--{artifact.precision}")
    calibration = artifact.extra.get("calibration") or {}
    if calibration.get("kind") not in (None, "synthetic") and calibration.get("path"):
        args += ["--calib-data", str(calibration["path"])]
    if (artifact.extra.get("fp16") or {}).get("io") == "float16":
        args.append("--fp16-io")
    args += ["--trt", "--out", str(artifact.directory), "--force"]
    return shlex.join(args)


def check_engine_target(artifact: Artifact, here: EngineTarget) -> None:
    """Refuse an engine built for another TensorRT version or GPU, saying how to rebuild it here."""
    recorded = artifact.extra.get("tensorrt", {}).get("built_for")
    if recorded is None:
        raise EngineMismatch(f"{artifact.directory}: the manifest records no TensorRT build; rebuild with: "
                             f"{rebuild_command(artifact)}")
    built_for = EngineTarget.from_dict(recorded)
    found = differences(built_for, here)
    if found:
        raise EngineMismatch(f"{artifact.directory}/{artifact.extra['tensorrt']['engine_file']} was built for "
                             f"{built_for.describe()}, this machine has {here.describe()} ({'; '.join(found)}). "
                             f"TensorRT engines run only where they were built: rebuild it here with: "
                             f"{rebuild_command(artifact)}")
