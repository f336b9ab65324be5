"""The calibration cache: ranges saved beside the artifact with the provenance they depend on.

A cache is reused only when its key matches: a hash of the fused FP32 graph, the calibration
images (names, sizes, mtimes) or the synthetic seed, the preprocessing, the method and the
tool versions. A cache made for anything else is recomputed and the reason is said, never
applied silently (Polygraphy reuses any cache file that exists, even for another graph).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

CACHE_FILE = "calibration.json"
CACHE_SCHEMA = "convnext-export/calibration/2"


@dataclass(frozen=True)
class CacheKey:
    """Everything the ranges depend on; ``digest`` is what a cache must match."""

    components: dict

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.components, sort_keys=True).encode()).hexdigest()


def calibration_cache_key(graph_sha256: str, data_provenance: dict, preprocessing: dict, method: dict,
                          versions: dict) -> CacheKey:
    relevant = {k: versions[k] for k in ("convnext_export", "onnxruntime", "onnx", "numpy") if k in versions}
    return CacheKey({"graph_sha256": graph_sha256, "data": data_provenance, "preprocessing": preprocessing,
                     "method": method, "versions": relevant})


@dataclass(frozen=True)
class Calibration:
    """What calibrating produced: activation ranges and the residual-stream scales they were measured under."""

    ranges: dict[str, tuple[float, float]]
    stream_scales: dict[int, list[float]]


@dataclass(frozen=True)
class CacheLookup:
    calibration: Calibration | None  # None: nothing reusable
    message: str  # what happened, for the log and the manifest


def _differences(stored: dict, wanted: dict) -> list[str]:
    names = {"graph_sha256": "fused graph", "data": "calibration images", "preprocessing": "preprocessing",
             "method": "calibration method", "versions": "tool versions"}
    return [names.get(k, k) for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]


def read_cache(path: Path, key: CacheKey) -> CacheLookup:
    """The cached ranges when ``path`` holds a cache for ``key``; otherwise why not."""
    if not path.is_file():
        return CacheLookup(None, f"no calibration cache at {path}")
    try:
        data = json.loads(path.read_text())
        if data.get("schema") != CACHE_SCHEMA:
            return CacheLookup(None, f"{path} is not a {CACHE_SCHEMA} cache: recalibrating")
        stored_key, components = data["key"], data["components"]
        ranges = {name: (float(low), float(high)) for name, (low, high) in data["ranges"].items()}
        scales = {int(stage): [float(v) for v in values] for stage, values in data["stream_scales"].items()}
    except (OSError, ValueError, KeyError, TypeError) as error:
        return CacheLookup(None, f"{path} is not a readable calibration cache ({error}): recalibrating")
    if stored_key != key.digest:
        changed = _differences(components, key.components) or ["its key"]
        return CacheLookup(None, f"calibration cache {path} does not match this export ({', '.join(changed)} "
                                 f"changed): recalibrating, the cache is not applied")
    return CacheLookup(Calibration(ranges, scales), f"reused calibration cache {path} (key {key.digest[:12]})")


def write_cache(path: Path, key: CacheKey, calibration: Calibration) -> Path:
    """Write atomically (a sibling temp file renamed into place)."""
    payload = {"schema": CACHE_SCHEMA, "key": key.digest, "components": key.components,
               "stream_scales": {str(stage): list(map(float, values))
                                 for stage, values in sorted(calibration.stream_scales.items())},
               "ranges": {name: [low, high] for name, (low, high) in sorted(calibration.ranges.items())}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1)
            handle.write("\n")
        os.replace(temp, path)
    except OSError as error:
        raise InputError(f"--calib-cache {path}: cannot write the calibration cache ({error.strerror})") from None
    return path
