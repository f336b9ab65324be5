"""The INT8 accuracy floor: its binomial test against exact arithmetic, and an export it stops."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
from click.testing import CliRunner

from convnext_export.calibration.cache import CACHE_FILE, cache_checksum
from convnext_export.calibration.floor import (DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_COSINE, SIGNIFICANCE, AccuracyFloor,
                                               below_agreement_floor, check_accuracy_floor, disagreement_p_value)
from convnext_export.calibration.int8 import Int8Options
from convnext_export.cli import export_command
from convnext_export.errors import ConvNeXtExportError, InputError


def exact_tail(disagreements: int, images: int, p: Fraction) -> Fraction:
    return sum((math.comb(images, k) * p ** k * (1 - p) ** (images - k) for k in range(disagreements, images + 1)),
               Fraction(0))


@pytest.mark.parametrize("disagreements, images, agreement", [
    (1, 4, "4/5"), (4, 4, "4/5"), (3, 32, "9/10"), (30, 32, "4/5"), (120, 1000, "9/10"), (150, 1000, "9/10"),
    (0, 10, "1/2"), (10, 10, "1/2")])
def test_p_value_matches_exact_rational_arithmetic(disagreements, images, agreement):
    floor = Fraction(agreement)
    expected = float(exact_tail(disagreements, images, 1 - floor))
    assert disagreement_p_value(disagreements, images, float(floor)) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_small_holdouts_do_not_flake_large_ones_resolve():
    # a model at 75% on 4 images, or 87.5% on 32, is no evidence of being below the floor ...
    assert not below_agreement_floor(0.75, 4, DEFAULT_MIN_AGREEMENT)
    assert not below_agreement_floor(28 / 32, 32, DEFAULT_MIN_AGREEMENT)
    # ... but the doctored cache's 6.5% on 1,000 (or 1 of 32) is, and so is a real loss on 1,000 images
    assert below_agreement_floor(0.065, 1000, DEFAULT_MIN_AGREEMENT)
    assert below_agreement_floor(1 / 32, 32, DEFAULT_MIN_AGREEMENT)
    assert below_agreement_floor(DEFAULT_MIN_AGREEMENT - 0.05, 1000, DEFAULT_MIN_AGREEMENT)
    assert not below_agreement_floor(0.99, 1000, DEFAULT_MIN_AGREEMENT)
    # at the floor exactly, the test fails a model at most SIGNIFICANCE of the time
    images, p = 200, 1 - DEFAULT_MIN_AGREEMENT
    failing = [d for d in range(images + 1) if below_agreement_floor(1 - d / images, images, DEFAULT_MIN_AGREEMENT)]
    assert float(exact_tail(min(failing), images, Fraction(p).limit_denominator(1000))) < SIGNIFICANCE


def _drift(agreement: float, cosine: float, images: int) -> dict:
    return {"top1_agreement": agreement, "cosine_mean": cosine, "samples": images}


def test_floor_names_each_miss_and_what_would_help(tmp_path):
    runs = {"host": _drift(0.065, -0.83, 1000), "simulated": _drift(0.99, 0.999, 1000)}
    with pytest.raises(ConvNeXtExportError) as raised:
        check_accuracy_floor(runs, AccuracyFloor(), synthetic=False, cache=tmp_path / CACHE_FILE)
    message = str(raised.value)
    assert raised.value.exit_code == 1
    assert "this host's integer kernels: mean cosine of logits with eager -0.8300" in message
    assert "top-1 agreement 6.5% of 1000" in message and "simulated" not in message.split("Try:")[0]
    for remedy in (str(tmp_path / CACHE_FILE), "--calib-size", "--calib-method", "--max-drift", "--isa",
                   "--min-agreement", "Nothing was written"):
        assert remedy in message
    report = check_accuracy_floor(runs, AccuracyFloor(0.0, -1.0), synthetic=False, cache=None)  # lowered: holds
    assert report["min_top1_agreement"] == 0.0 and report["runs"]["host"]["cosine_mean"] == -0.83
    with pytest.raises(ConvNeXtExportError, match="cosine of logits with eager nan"):
        check_accuracy_floor({"host": _drift(0.99, math.nan, 1000)}, AccuracyFloor(), synthetic=True, cache=None)


def test_floor_options_are_validated_before_any_work():
    with pytest.raises(InputError, match="--min-agreement 1.5"):
        Int8Options(floor=AccuracyFloor(1.5, DEFAULT_MIN_COSINE)).validate("cpu")
    with pytest.raises(InputError, match="--min-cosine 2"):
        Int8Options(floor=AccuracyFloor(DEFAULT_MIN_AGREEMENT, 2)).validate("cpu")
    # --max-drift below the default agreement floor is the user's own budget: it lowers the floor; --min-agreement
    # given decides
    assert AccuracyFloor().resolved(0.3).min_agreement == 0.3
    assert AccuracyFloor().resolved(0.99).min_agreement == AccuracyFloor().resolved(None).min_agreement == \
        DEFAULT_MIN_AGREEMENT
    assert AccuracyFloor(0.95).resolved(0.3).min_agreement == 0.95


def test_export_with_doctored_ranges_fails_the_floor_and_lowering_it_lets_it_through(tmp_path):
    """The audit's case: the cache's ranges set to +-1e-6 and its checksum recomputed, so only the floor can tell."""
    args = ["--size", "atto", "--image-size", "32", "--num-classes", "10", "--int8", "--calib-size", "64"]
    first = CliRunner().invoke(export_command, [*args, "--out", str(tmp_path / "a"), "--quiet"])
    assert first.exit_code == 0, first.output
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    floor = manifest["accuracy_floor"]
    assert floor["min_top1_agreement"] == DEFAULT_MIN_AGREEMENT and set(floor["runs"]) >= {"host"}
    assert min(run["cosine_mean"] for run in floor["runs"].values()) > DEFAULT_MIN_COSINE
    cache = json.loads((tmp_path / "a" / CACHE_FILE).read_text())
    cache["ranges"] = {name: [-1e-6, 1e-6] for name in cache["ranges"]}
    cache["checksum"] = cache_checksum(cache)
    doctored = tmp_path / "doctored.json"
    doctored.write_text(json.dumps(cache))
    failed = CliRunner().invoke(export_command, [*args, "--calib-cache", str(doctored), "--out", str(tmp_path / "b")])
    assert failed.exit_code == 1, failed.output
    assert "accuracy floor" in failed.output and "Traceback" not in failed.output
    assert not (tmp_path / "b").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a", "doctored.json"]
    lowered = CliRunner().invoke(export_command, [*args, "--calib-cache", str(doctored), "--out", str(tmp_path / "c"),
                                                  "--min-agreement", "0", "--min-cosine", "-1", "--quiet"])
    assert lowered.exit_code == 0, lowered.output
    kept = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert kept["accuracy_floor"]["min_cosine_mean"] == -1 and kept["calibration"]["cache"].startswith("reused")
