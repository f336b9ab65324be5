"""ONNX -> serialized TensorRT engine, strongly typed: the ONNX's casts and Q/DQ decide every precision.

TensorRT 11 removed ``BuilderFlag.FP16/INT8`` and the calibrators, and always builds strongly
typed networks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is deprecated and ignored
there); TensorRT 10 builds strongly typed only when that flag is passed, and ignores the
deprecated ``EXPLICIT_BATCH`` (NVIDIA's Python API docs for ``NetworkDefinitionCreationFlag``,
10.x and 11.0). So the flag is passed on 10 and never on 11, and no precision flag is set on
either: the FP16 casts and INT8 Q/DQ this project writes are the whole precision recipe.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConvNeXtExportError, InputError
from ..files import write_atomically
from .availability import TensorRTRuntime
from .compat import EngineTarget
from .inspect import LayerPrecision, parse_engine_information
from .profiles import BatchProfile

OPTIMIZATION_LEVELS = range(0, 6)  # TensorRT's default is 3
_UNITS = {"": 2**20, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30}


def parse_workspace(text: str) -> int:
    """'512MiB', '4GiB', '1.5G', '2048' (MiB) -> bytes; binary units whatever the spelling."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise InputError(f"--workspace {text!r}: give a positive size such as 512MiB or 4GiB (a bare number is MiB)")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class EngineBuildSettings:
    profile: BatchProfile
    workspace_bytes: int | None = None  # None: TensorRT's default (the device's memory)
    timing_cache: Path | None = None  # read when it exists, written back after the build
    optimization_level: int | None = None  # 0..5; None: TensorRT's default (3)
    tf32: bool = True  # False for FP32 artifacts: FP32 convs and matmuls stay FP32, not TF32

    def validate(self) -> None:
        if self.optimization_level is not None and self.optimization_level not in OPTIMIZATION_LEVELS:
            raise InputError(f"--builder-opt-level {self.optimization_level}: use 0..5 (TensorRT's default is 3)")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise InputError("--workspace must be positive, e.g. 512MiB")
        if self.timing_cache is not None and self.timing_cache.is_dir():
            raise InputError(f"--timing-cache {self.timing_cache}: is a directory; give a file path")

    def to_dict(self) -> dict:
        return {"profile": self.profile.to_dict(), "workspace_bytes": self.workspace_bytes,
                "timing_cache": str(self.timing_cache) if self.timing_cache else None,
                "builder_optimization_level": self.optimization_level, "tf32": self.tf32}


@dataclass(frozen=True)
class BuiltEngine:
    plan: bytes
    target: EngineTarget
    layers: list[LayerPrecision]
    seconds: float
    strongly_typed: str  # how strong typing was asked for: "flag" (TensorRT 10) or "always" (11)
    timing_cache: str | None  # "reused" | "new" | "mismatched, rebuilt" | None


def _logger(trt, log: Callable[[str], None]):
    """A TensorRT logger that keeps errors (for our message) and passes warnings on to ``log``."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, message) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(str(message))
            elif severity == trt.ILogger.WARNING:
                log(f"TensorRT: {message}")

    return Logger()


def _failure(logger, what: str) -> ConvNeXtExportError:
    detail = "; ".join(logger.errors[-3:]) or "no error message from TensorRT"
    return ConvNeXtExportError(f"TensorRT {what}: {detail}")


def build_engine(onnx_path: Path, image_size: int, settings: EngineBuildSettings, runtime: TensorRTRuntime,
                 log: Callable[[str], None] = lambda message: None) -> BuiltEngine:
    """Parse, configure, build; then inspect the engine at the profile's opt batch for per-layer precisions."""
    trt, started = runtime.trt, time.perf_counter()
    logger = _logger(trt, log)
    builder = trt.Builder(logger)
    strongly_typed_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    major = int(runtime.version.split(".")[0])
    if major < 11 and strongly_typed_flag is None:
        raise ConvNeXtExportError(f"TensorRT {runtime.version} has no strongly typed networks; use TensorRT >= 10")
    flags = 1 << int(strongly_typed_flag) if major < 11 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ConvNeXtExportError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {'; '.join(errors[:3])}")
    input_name = network.get_input(0).name
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *settings.profile.shapes(image_size))
    config.add_optimization_profile(profile)
    if settings.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if settings.optimization_level is not None:
        config.builder_optimization_level = settings.optimization_level
    if not settings.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then reports per-layer formats
    cache_state = None
    if settings.timing_cache is not None:
        blob = settings.timing_cache.read_bytes() if settings.timing_cache.is_file() else b""
        cache_state = "reused" if blob else "new"
        if not config.set_timing_cache(config.create_timing_cache(blob), False):
            log(f"timing cache {settings.timing_cache} was made by another TensorRT version or GPU: starting afresh")
            config.set_timing_cache(config.create_timing_cache(b""), False)
            cache_state = "mismatched, rebuilt"
    log(f"building the TensorRT {runtime.version} engine on {runtime.device.name} "
        f"(batch {settings.profile.min}..{settings.profile.max}, opt {settings.profile.opt})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise _failure(logger, "could not build the engine")
    plan = bytes(serialized)
    if settings.timing_cache is not None:
        write_atomically(settings.timing_cache, bytes(config.get_timing_cache().serialize()))
    layers = inspect_layers(plan, runtime, settings.profile, image_size, logger)
    return BuiltEngine(plan, EngineTarget.here(runtime), layers, time.perf_counter() - started,
                       "flag" if major < 11 else "always", cache_state)


def inspect_layers(plan: bytes, runtime: TensorRTRuntime, profile: BatchProfile, image_size: int,
                   logger=None) -> list[LayerPrecision]:
    """Per-layer precisions from the engine inspector, with an execution context at the opt batch.

    The inspector was given the context through ``execution_context`` (TensorRT 11's Python name)
    or ``context`` (the name in the 8.x/10.x Python docs); without one, dynamic-batch formats read
    "N/A due to dynamic shapes".
    """
    trt = runtime.trt
    engine = trt.Runtime(logger or trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
    if engine is None:
        raise ConvNeXtExportError("TensorRT could not deserialize the engine it just built")
    context = engine.create_execution_context()
    input_name = next(engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                      if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.INPUT)
    context.set_input_shape(input_name, profile.shapes(image_size)[1])
    inspector = engine.create_engine_inspector()
    for attribute in ("execution_context", "context"):
        if hasattr(inspector, attribute):
            setattr(inspector, attribute, context)
            break
    return parse_engine_information(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
