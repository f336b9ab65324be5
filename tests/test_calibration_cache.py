"""The calibration cache's checksum and value checks: a cache is applied only as it was written."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from convnext_export.calibration.cache import (CACHE_SCHEMA, Calibration, CacheKey, DamagedCache, StaleCache,
                                               cache_checksum, check_cache_file, load_cache, read_cache, write_cache)
from convnext_export.errors import ConvNeXtExportError, InputError

KEY = CacheKey({"graph_sha256": "ab" * 32, "data": {"kind": "synthetic", "seed": 0}, "preprocessing": {},
                "method": {"method": "percentile"}, "versions": {"onnx": "1"}})
CALIBRATION = Calibration({"input": (-2.5, 2.25), "stem.1/LayerNormalization_output_0": (-0.125, 3.0)},
                          {0: [1.0, 0.5], 2: [2.0]})


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return write_cache(tmp_path / "calibration.json", KEY, CALIBRATION)


def _rewrite(path: Path, edit, checksum: bool = False) -> None:
    data = json.loads(path.read_text())
    edit(data)
    if checksum:
        data["checksum"] = cache_checksum(data)
    path.write_text(json.dumps(data))


def test_written_cache_round_trips_and_its_checksum_is_sha256_of_its_fields(cache):
    data = json.loads(cache.read_text())
    assert data["schema"] == CACHE_SCHEMA
    fields = {name: data[name] for name in ("key", "components", "stream_scales", "ranges")}
    expected = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert data["checksum"] == expected
    stored = load_cache(cache)
    assert stored.key == KEY.digest and stored.calibration == CALIBRATION
    lookup = read_cache(cache, KEY, explicit=True)
    assert lookup.calibration == CALIBRATION and lookup.message.startswith("reused")


@pytest.mark.parametrize("edit, says", [
    (lambda d: d["ranges"].update(input=[-1e-6, 1e-6]), "checksum does not match"),
    (lambda d: d["stream_scales"].update({"0": [1.0, 0.25]}), "checksum does not match"),
    (lambda d: d.update(key="0" * 64), "checksum does not match"),
    (lambda d: d["components"].update(data={"kind": "dataset"}), "checksum does not match"),
    (lambda d: d.pop("checksum"), "no checksum"),
    (lambda d: d["ranges"].update(input=[math.nan, 1.0]), "non-finite"),
    (lambda d: d["ranges"].update(input=[-math.inf, 1.0]), "non-finite"),
])
def test_edited_cache_is_damaged(cache, edit, says):
    _rewrite(cache, edit)
    with pytest.raises(DamagedCache, match=says):
        load_cache(cache)


@pytest.mark.parametrize("edit, says", [
    (lambda d: d["ranges"].update(input=["-2.5", 2.25]), r"ranges\['input'\]\[0\] is '-2.5', not a number"),
    (lambda d: d["ranges"].update(input=[True, 2.0]), "not a number"),
    (lambda d: d["ranges"].update(input=[3.0, 2.0]), "low above high"),
    (lambda d: d["ranges"].update(input=[1.0]), "not a \\[low, high\\] pair"),
    (lambda d: d.update(ranges=[]), "not an object"),
    (lambda d: d["stream_scales"].update({"0": [1.0, -0.5]}), "must be positive"),
    (lambda d: d["stream_scales"].update({"7": [1.0]}), "stages 0-3"),
    (lambda d: d["stream_scales"].update({"0": "ones"}), "not a list"),
    (lambda d: d.update(key=5), "'key'"),
])
def test_wrong_values_are_damaged_even_with_a_matching_checksum(cache, edit, says):
    _rewrite(cache, edit, checksum=True)
    with pytest.raises(DamagedCache, match=says):
        load_cache(cache)


def test_named_cache_damaged_stops_before_work_found_one_is_recomputed(cache):
    _rewrite(cache, lambda d: d["ranges"].update(input=[-1e-6, 1e-6]))
    with pytest.raises(InputError, match="--calib-cache .*checksum does not match.*Delete it") as raised:
        check_cache_file(cache)
    assert raised.value.exit_code == 2
    with pytest.raises(InputError, match="cannot be trusted"):
        read_cache(cache, KEY, explicit=True)
    lookup = read_cache(cache, KEY, explicit=False)
    assert lookup.calibration is None and lookup.message.startswith("warning:") and "recalibrating" in lookup.message


def test_not_json_and_not_a_cache(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": ')
    with pytest.raises(InputError, match="not valid JSON"):
        check_cache_file(broken)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "polygraphy/1"}))
    with pytest.raises(InputError, match="not a convnext-export calibration cache"):
        check_cache_file(other)
    check_cache_file(tmp_path / "absent.json")  # absent: computed and written


def test_older_schema_is_recomputed_never_applied(cache):
    _rewrite(cache, lambda d: (d.update(schema="convnext-export/calibration/2"), d.pop("checksum")))
    with pytest.raises(StaleCache):
        load_cache(cache)
    check_cache_file(cache)  # not refused: rewritten like a cache for another key
    lookup = read_cache(cache, KEY, explicit=True)
    assert lookup.calibration is None and "without the checksum" in lookup.message


def test_other_key_is_recomputed_naming_what_changed(cache):
    other = CacheKey({**KEY.components, "graph_sha256": "cd" * 32})
    lookup = read_cache(cache, other, explicit=True)
    assert lookup.calibration is None and "fused graph" in lookup.message


def test_non_finite_calibration_is_not_written(tmp_path):
    path = tmp_path / "calibration.json"
    with pytest.raises(ConvNeXtExportError, match="non-finite values for 1 tensor.*input"):
        write_cache(path, KEY, Calibration({"input": (math.nan, 1.0)}, {}))
    assert not path.exists() and not list(tmp_path.iterdir())
