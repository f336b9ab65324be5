"""The export road's TensorRT step: build ``model.engine`` beside ``model.onnx`` and describe it for the manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from ..artifact import file_sha256
from ..drift import drift_metrics
from .availability import TensorRTRuntime
from .build import EngineBuildSettings, build_engine
from .inspect import precision_report, quantized_onnx_nodes
from .profiles import BatchProfile
from .runner import EngineRunner

ENGINE_FILE = "model.engine"


def engine_logits(runner: EngineRunner, images: np.ndarray, profile: BatchProfile) -> np.ndarray:
    """Logits for all images in chunks of the opt batch, zero-padded up to the profile's min where needed."""
    outputs = []
    for start in range(0, len(images), profile.opt):
        chunk = images[start:start + profile.opt]
        count = len(chunk)
        if count < profile.min:
            chunk = np.concatenate([chunk, np.zeros((profile.min - count, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(runner.run(chunk)[:count])
    return np.concatenate(outputs)


def build_artifact_engine(staging: Path, image_size: int, settings: EngineBuildSettings, runtime: TensorRTRuntime,
                          images: np.ndarray, eager: np.ndarray, log: Callable[[str], None]) -> dict:
    """Write ``staging/model.engine`` from ``staging/model.onnx``; return the manifest's ``tensorrt`` entry."""
    onnx_path = staging / "model.onnx"
    built = build_engine(onnx_path, image_size, settings, runtime, log)
    engine_path = staging / ENGINE_FILE
    engine_path.write_bytes(built.plan)
    int8_nodes = quantized_onnx_nodes(onnx.load(str(onnx_path), load_external_data=False))
    report = precision_report(built.layers, int8_nodes)
    logits = engine_logits(EngineRunner(built.plan, runtime, settings.profile), images, settings.profile)
    log(f"engine built in {built.seconds:.1f} s; {report['layers']} layers")
    return {
        "engine_file": ENGINE_FILE,
        "engine_sha256": file_sha256(engine_path),
        "engine_bytes": len(built.plan),
        "built_for": built.target.to_dict(),
        "build": {**settings.to_dict(), "strongly_typed": built.strongly_typed, "timing_cache_state": built.timing_cache,
                  "seconds": round(built.seconds, 2)},
        "precision": report,
        "layers": [layer.to_dict() for layer in built.layers],
        "drift": {"inputs": f"{len(images)} seeded standard-normal images", "backend": "tensorrt",
                  **drift_metrics(logits, eager)},
    }
