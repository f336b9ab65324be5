"""One-pass calibration (calibration/onepass.py) against ONNX Runtime's calibrators.

Fed the same values chunk by chunk, ONNX Runtime's ``HistogramCollector`` (every value in a
2048+-bin histogram) and the one-pass tails must give the same percentile ranges, bit for bit.
End to end, one pass of the unequalized graph must match ONNX Runtime's calibrator run on the
equalized graph up to float rounding (that graph computes x / s through rescaled weights).
"""

import io
from contextlib import redirect_stdout

import numpy as np
import onnx
import pytest

from convnext_export.calibration import onepass
from convnext_export.calibration.equalize import apply_stream_scales, stream_scales
from convnext_export.calibration.graph import name_nodes_by_module
from convnext_export.calibration.onepass import _TensorStatistics, equalize_and_calibrate
from convnext_export.calibration.ranges import CalibrationMethod, collect_ranges
from convnext_export.config import get_config
from convnext_export.export import export_onnx
from convnext_export.fusion import fuse_model
from convnext_export.model import build_model

from helpers import make_trained_like

SIZE = 32


def _onnxruntime_range(chunks: list[np.ndarray], method: CalibrationMethod) -> tuple[float, float]:
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector("percentile", method.symmetric, 2048, 2048, method.percentile, "same")
    with redirect_stdout(io.StringIO()):
        for chunk in chunks:
            collector.collect({"t": [chunk]})
        low, high, *_ = collector.compute_collection_result()["t"]
    return float(low), float(high)


def _one_pass_range(chunks: list[np.ndarray], method: CalibrationMethod, scale: np.ndarray | None,
                    batch: int, equalized: bool = False) -> tuple[float, float]:
    statistics = _TensorStatistics(method, None if scale is None else 0, equalized)
    images = sum(len(chunk) for chunk in chunks)
    for chunk in chunks:
        for start in range(0, len(chunk), batch):
            value = chunk[start:start + batch]
            statistics.observe("t", value, statistics.extremes(value), len(value), images)
        statistics.end_chunk()
    return statistics.range(scale)


def _chunks(rng: np.random.Generator, ties: bool) -> list[np.ndarray]:
    """Six chunks of 8 (8, 6, 6) batches whose spread grows (ONNX Runtime widens its grid), channels of
    unequal scale, a few outliers; ``ties``: values on a coarse grid, as pixels are."""
    chunks = []
    for index in range(6):
        chunk = rng.standard_normal((8, 8, 6, 6)).astype(np.float32)
        chunk *= np.linspace(0.2, 3.0, 8, dtype=np.float32)[None, :, None, None] * (1 + 0.3 * index)
        chunk.reshape(-1)[rng.integers(0, chunk.size, 3)] *= 6
        if ties:
            chunk = np.round(chunk * 4) / 4
        chunks.append(chunk.astype(np.float32))
    return chunks


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("percentile", [99.99, 99.0, 90.0])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("layout", ["tensor", "x/s", "x/s stream"])
def test_tails_give_onnxruntime_histogram_percentile_exactly(symmetric, percentile, ties, layout):
    """``tensor``: one tail per side; ``x / s``: per-channel tails, the whole tail each; ``stream``: a share."""
    rng = np.random.default_rng(int(percentile * 100) + 2 * symmetric + ties)
    chunks = _chunks(rng, ties)
    method = CalibrationMethod("percentile", percentile, symmetric=symmetric)
    scale = np.linspace(0.05, 1.0, 8) if layout != "tensor" else None
    # What ONNX Runtime sees: the values of x / s (as the one pass computes them: float64 quotient, float32 value).
    seen = [chunk if scale is None else (chunk / scale[None, :, None, None]).astype(np.float32) for chunk in chunks]
    expected = _onnxruntime_range(seen, method)
    assert _one_pass_range(chunks, method, scale, batch=3, equalized=layout == "x/s stream") == expected


def test_small_tails_are_pruned_and_still_exact():
    """Thousands of values per tensor, a 99.99 percentile: the tails keep a few dozen and prune the rest."""
    rng = np.random.default_rng(5)
    chunks = [rng.standard_normal((16, 4, 32, 32)).astype(np.float32) * (1 + i / 10) for i in range(12)]
    method = CalibrationMethod("percentile", 99.99)
    statistics = _TensorStatistics(method, None)
    for chunk in chunks:
        statistics.observe("t", chunk, statistics.extremes(chunk), len(chunk), 16 * len(chunks))
        statistics.end_chunk()
    assert sum(len(v) for v in statistics.tails["high"].values) < 2 * statistics.tails["high"].keep + 4096 + 16 * 4096
    assert statistics.tails["high"].floor > 3.0  # pruned: only the top of the distribution is kept
    assert statistics.range(None) == _onnxruntime_range(chunks, method)


def test_a_channel_holding_more_than_its_share_of_the_tail_is_sent_to_the_second_pass(monkeypatch):
    """All the outliers in one channel: with a share of 1 its kept values cannot cover the top 0.5%, and the
    check says so instead of returning a wrong range; with the default share the range is exact."""
    rng = np.random.default_rng(9)
    chunks = []
    for _ in range(6):
        chunk = rng.standard_normal((8, 8, 6, 6)).astype(np.float32)
        chunk[:, 0] *= 10
        chunks.append(chunk)
    method, scale = CalibrationMethod("percentile", 99.0), np.ones(8)
    expected = _onnxruntime_range(chunks, method)
    assert _one_pass_range(chunks, method, scale, batch=8, equalized=True) == expected
    assert _one_pass_range(chunks, method, scale, batch=8, equalized=False) == expected
    monkeypatch.setattr(onepass, "CHANNEL_SHARE", 1)
    assert _one_pass_range(chunks, method, scale, batch=8, equalized=True) is None
    assert _one_pass_range(chunks, method, scale, batch=8, equalized=False) == expected  # keeps the whole tail


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    work = tmp_path_factory.mktemp("onepass")
    model = make_trained_like(build_model(get_config("atto").with_classes(10), seed=3), seed=3)
    path = export_onnx(fuse_model(model)[0], work / "fp32.onnx", SIZE).path
    images = np.random.default_rng(0).standard_normal((96, 3, SIZE, SIZE), dtype=np.float32)
    return {"model": name_nodes_by_module(onnx.load(str(path))), "work": work,
            "batches": [images[i:i + 16] for i in range(0, len(images), 16)], "check": images[:8]}


def _onnxruntime_two_passes(graph, method):
    """The previous way: stream scales in a pass, then ONNX Runtime's calibrator on the equalized graph."""
    scales = stream_scales(graph["model"], iter(graph["batches"]))
    equalized = apply_stream_scales(graph["model"], scales, graph["check"])
    path = graph["work"] / "equalized.onnx"
    onnx.save(equalized, str(path))
    return scales, collect_ranges(path, iter(graph["batches"]), method)


@pytest.mark.parametrize("method", [CalibrationMethod("percentile", 99.99), CalibrationMethod("percentile", 99.0),
                                    CalibrationMethod("percentile", 99.99, symmetric=True),
                                    CalibrationMethod("minmax"), CalibrationMethod("minmax", symmetric=True)],
                         ids=["percentile", "percentile-99", "percentile-symmetric", "minmax", "minmax-symmetric"])
def test_one_pass_matches_onnxruntime_calibrator_on_the_equalized_graph(graph, method):
    expected_scales, expected = _onnxruntime_two_passes(graph, method)
    _, scales, ranges = equalize_and_calibrate(graph["model"], graph["batches"], method, graph["check"])
    assert ranges.keys() == expected.keys()
    for stage, scale in scales.items():
        np.testing.assert_allclose(scale, expected_scales[stage], rtol=1e-5)
    for name, (low, high) in expected.items():
        magnitude = max(abs(low), abs(high))
        # Float rounding of x / s only: far below one histogram bin (magnitude / 1024).
        assert ranges[name] == pytest.approx((low, high), abs=1e-5 * magnitude), name


def test_second_pass_when_tails_exceed_the_memory_budget(graph, monkeypatch):
    method = CalibrationMethod("percentile", 99.99)
    _, _, one_pass = equalize_and_calibrate(graph["model"], graph["batches"], method, graph["check"])
    monkeypatch.setattr(onepass, "TAIL_BUDGET", 0)
    logs, labels = [], set()
    _, _, two_passes = equalize_and_calibrate(graph["model"], graph["batches"], method, graph["check"],
                                              progress=lambda label, done, total: labels.add(label),
                                              log=logs.append)
    assert any("second pass" in message for message in logs)
    assert "calibration: second pass" in labels
    assert two_passes.keys() == one_pass.keys()
    for name, (low, high) in one_pass.items():
        assert two_passes[name] == pytest.approx((low, high), abs=1e-5 * max(abs(low), abs(high))), name
