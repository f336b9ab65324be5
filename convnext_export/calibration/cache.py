"""The calibration cache: ranges saved beside the artifact with the provenance they depend on.

A cache is reused only when its key matches: a hash of the fused FP32 graph, the calibration
images (names, sizes, mtimes) or the synthetic seed, the preprocessing, the method and the
tool versions. A cache made for anything else is recomputed and the reason is said, never
applied silently (Polygraphy reuses any cache file that exists, even for another graph).

Its contents are not trusted on the key alone: the file carries a sha256 checksum of its key,
components, stream scales and ranges, and every value is checked (finite numbers, low <= high,
positive scales). A cache that fails is *damaged*: given as ``--calib-cache`` it stops the export
(exit 2, delete it to recalibrate); found in the ``--out`` being replaced it is recomputed with a
warning. Edits that recompute the checksum too are caught by the INT8 accuracy floor
(``calibration/floor.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConvNeXtExportError, InputError

CACHE_FILE = "calibration.json"
CACHE_SCHEMA = "convnext-export/calibration/3"  # 3: the checksum; 2 (no checksum) is recomputed, never applied
SCHEMA_FAMILY = "convnext-export/calibration/"


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


class DamagedCache(ValueError):
    """A calibration cache whose contents cannot be trusted; the message says what is wrong."""


class StaleCache(DamagedCache):
    """A cache of an older format: recomputed (and rewritten where named), never applied."""


@dataclass(frozen=True)
class StoredCache:
    """A cache file that parsed and passed its checksum and value checks."""

    key: str
    components: dict
    calibration: Calibration


_CHECKED_FIELDS = ("key", "components", "stream_scales", "ranges")


def cache_checksum(payload: dict) -> str:
    """sha256 of the checksummed fields as canonical JSON (sorted keys, no NaN), as they stand in the file."""
    fields = {name: payload.get(name) for name in _CHECKED_FIELDS}
    try:
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as error:  # NaN / Infinity in the file
        raise DamagedCache(f"it holds a non-finite number ({error})") from None
    return hashlib.sha256(text.encode()).hexdigest()


def _finite(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DamagedCache(f"{where} is {value!r}, not a number")
    if not math.isfinite(value):
        raise DamagedCache(f"{where} is {value!r}, not a finite number")
    return float(value)


def _ranges(data: object) -> dict[str, tuple[float, float]]:
    if not isinstance(data, dict) or not data:
        raise DamagedCache(f"'ranges' is {type(data).__name__ if data else 'empty'}, not an object of tensor ranges")
    ranges = {}
    for name, pair in data.items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise DamagedCache(f"ranges[{name!r}] is {pair!r}, not a [low, high] pair")
        low, high = (_finite(v, f"ranges[{name!r}][{i}]") for i, v in enumerate(pair))
        if low > high:
            raise DamagedCache(f"ranges[{name!r}] is [{low}, {high}]: low above high")
        ranges[name] = (low, high)
    return ranges


def _stream_scales(data: object) -> dict[int, list[float]]:
    if not isinstance(data, dict):
        raise DamagedCache(f"'stream_scales' is {type(data).__name__}, not an object of per-stage scales")
    scales = {}
    for stage, values in data.items():
        if not (isinstance(stage, str) and stage in ("0", "1", "2", "3")):
            raise DamagedCache(f"stream_scales has stage {stage!r}; ConvNeXt has stages 0-3")
        if not isinstance(values, list) or not values:
            raise DamagedCache(f"stream_scales[{stage!r}] is {values!r}, not a list of channel scales")
        checked = [_finite(v, f"stream_scales[{stage!r}][{i}]") for i, v in enumerate(values)]
        if min(checked) <= 0:
            raise DamagedCache(f"stream_scales[{stage!r}] holds {min(checked)}: scales must be positive")
        scales[int(stage)] = checked
    return scales


def load_cache(path: Path) -> StoredCache:
    """Parse and check a cache file: DamagedCache (what is wrong) unless it is one this version trusts;
    OSError when it cannot be read."""
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise DamagedCache(f"it is not valid JSON ({error})") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_FAMILY):
        raise DamagedCache(f"it is not a convnext-export calibration cache (schema {schema!r})")
    if schema != CACHE_SCHEMA:
        raise StaleCache(f"it is a {schema} cache, without the checksum {CACHE_SCHEMA} carries")
    if not isinstance(data.get("checksum"), str):
        raise DamagedCache("it has no checksum")
    if cache_checksum(data) != data["checksum"]:
        raise DamagedCache("its checksum does not match its contents (edited or damaged after it was written)")
    if not isinstance(data.get("key"), str) or not isinstance(data.get("components"), dict):
        raise DamagedCache("its 'key' or 'components' is missing or of the wrong type")
    return StoredCache(data["key"], data["components"], Calibration(_ranges(data.get("ranges")),
                                                                    _stream_scales(data.get("stream_scales"))))


def damaged_cache_error(path: Path, problem: str) -> InputError:
    return InputError(f"--calib-cache {path}: the calibration cache cannot be trusted: {problem}. Delete it (or "
                      f"name another --calib-cache file) and the export recalibrates and writes a fresh one")


def check_cache_file(path: Path) -> None:
    """A --calib-cache given explicitly: InputError now, before any work, when it exists and is damaged."""
    if not path.exists():
        return
    if not path.is_file():
        raise InputError(f"--calib-cache {path} is not a regular file; give a JSON file (e.g. {CACHE_FILE})")
    try:
        load_cache(path)
    except StaleCache:
        return  # recomputed and rewritten, like a cache for another key
    except DamagedCache as error:
        raise damaged_cache_error(path, str(error)) from None
    except OSError as error:
        raise InputError(f"--calib-cache {path}: cannot read it ({error.strerror}); check its permissions or "
                         f"name another file") from None


def _differences(stored: dict, wanted: dict) -> list[str]:
    names = {"graph_sha256": "fused graph", "data": "calibration images", "preprocessing": "preprocessing",
             "method": "calibration method", "versions": "tool versions"}
    return [names.get(k, k) for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]


def read_cache(path: Path, key: CacheKey, explicit: bool = False) -> CacheLookup:
    """The cached ranges when ``path`` holds a trusted cache for ``key``; otherwise why not.

    ``explicit`` (``--calib-cache``): a damaged cache raises InputError; otherwise (the cache of the
    artifact being replaced) it is recomputed with a warning.
    """
    if not path.is_file():
        return CacheLookup(None, f"no calibration cache at {path}")
    try:
        stored = load_cache(path)
    except StaleCache as error:
        return CacheLookup(None, f"calibration cache {path}: {error}: recalibrating, the cache is not applied")
    except DamagedCache as error:
        if explicit:
            raise damaged_cache_error(path, str(error)) from None
        return CacheLookup(None, f"warning: calibration cache {path} (in the artifact being replaced) cannot be "
                                 f"trusted: {error}; recalibrating, the cache is not applied")
    except OSError as error:
        if explicit:
            raise InputError(f"--calib-cache {path}: cannot read it ({error.strerror})") from None
        return CacheLookup(None, f"warning: cannot read calibration cache {path} ({error.strerror}): recalibrating")
    if stored.key != key.digest:
        changed = _differences(stored.components, key.components) or ["its key"]
        return CacheLookup(None, f"calibration cache {path} does not match this export ({', '.join(changed)} "
                                 f"changed): recalibrating, the cache is not applied")
    return CacheLookup(stored.calibration, f"reused calibration cache {path} (key {key.digest[:12]})")


def write_cache(path: Path, key: CacheKey, calibration: Calibration) -> Path:
    """Write atomically (a sibling temp file renamed into place), with the checksum of what is written."""
    payload = {"schema": CACHE_SCHEMA, "key": key.digest, "components": key.components,
               "stream_scales": {str(stage): [float(v) for v in values]
                                 for stage, values in sorted(calibration.stream_scales.items())},
               "ranges": {name: [float(low), float(high)] for name, (low, high) in sorted(calibration.ranges.items())}}
    bad = sorted(name for name, values in [*calibration.ranges.items(),
                                          *((f"stream scale {s}", v) for s, v in calibration.stream_scales.items())]
                 if not all(map(math.isfinite, map(float, values))))
    if bad:
        raise ConvNeXtExportError(f"calibration gave non-finite values for {len(bad)} tensor(s) ({', '.join(bad[:3])}): "
                                  f"the calibration images or the weights hold NaN/Inf; check --calib-data and "
                                  f"--weights. Nothing was written")
    payload = json.loads(json.dumps(payload))  # the checksum covers the values as the file has them
    payload["checksum"] = cache_checksum(payload)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(payload, handle, indent=1)
                handle.write("\n")
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise InputError(f"--calib-cache {path}: cannot write the calibration cache ({error.strerror})") from None
    return path
