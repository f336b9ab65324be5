"""The GPU path end to end: convnext-export --trt (FP32, FP16, INT8) -> model.engine -> run it and the
bench's TensorRT backend on the GPU, against eager PyTorch on the same GPU.

Written against NVIDIA's documented TensorRT 10/11 Python API; this project has no GPU, so these
tests have never run here (conftest.py turns the markers into skips with the reason).
"""

from __future__ import annotations

import json
import shutil

import jsonschema
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from convnext_export.artifact import MANIFEST, file_sha256, read_artifact
from convnext_export.backends.onnxruntime import OnnxRuntimeBackend
from convnext_export.backends.tensorrt import TensorRTBackend
from convnext_export.backends.torch_eager import TorchBackend
from convnext_export.bench import SCHEMA_PATH
from convnext_export.bench.runner import Bench, BenchRequest
from convnext_export.bench.timing import TimingPlan
from convnext_export.cli import export_command
from convnext_export.config import get_config
from convnext_export.drift import drift_metrics
from convnext_export.errors import InputError
from convnext_export.model import build_model
from convnext_export.pipeline import rebuild_reference
from convnext_export.tensorrt.availability import require_tensorrt
from convnext_export.tensorrt.compat import EngineMismatch, EngineTarget

from helpers import make_trained_like

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]

IMAGE, MAX_BATCH = 64, 8


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict:
    """ConvNeXt-T (trained-like random weights, 10 classes, 64 px) exported with --trt in each precision."""
    root = tmp_path_factory.mktemp("trt")
    checkpoint = root / "tiny.pth"
    torch.save({"model": make_trained_like(build_model(get_config("tiny", 10), seed=5), seed=5).state_dict()},
               checkpoint)
    built = {"root": root, "cache": root / "timing.cache", "outputs": {}}
    for precision in ("fp32", "fp16", "int8"):
        args = ["--weights", str(checkpoint), "--image-size", str(IMAGE), "--trt", "--max-batch", str(MAX_BATCH),
                "--timing-cache", str(built["cache"]), "--builder-opt-level", "3", "--workspace", "2GiB",
                "--out", str(root / precision)]
        args += [] if precision == "fp32" else [f"--{precision}"]
        args += ["--calib-size", "64"] if precision == "int8" else []
        result = CliRunner().invoke(export_command, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        built["outputs"][precision] = result.output
        built[precision] = root / precision
    return built


def _images(count: int, seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, IMAGE, IMAGE), dtype=np.float32)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_manifest_records_the_engine_where_it_was_built_and_what_tensorrt_chose(engines, precision):
    artifact = read_artifact(engines[precision])
    entry = artifact.extra["tensorrt"]
    assert entry["engine_sha256"] == file_sha256(artifact.directory / entry["engine_file"])
    assert EngineTarget.from_dict(entry["built_for"]) == EngineTarget.here(require_tensorrt())
    assert entry["build"]["profile"] == {"min": 1, "opt": 1, "max": MAX_BATCH}
    assert entry["build"]["tf32"] is (precision != "fp32")
    report = entry["precision"]
    assert report["layers"] > 0 and report["compute_layers"] > 0 and len(entry["layers"]) >= report["layers"]
    compute = report["compute_by_precision"]
    if precision == "fp32":  # strongly typed: nothing may run below the ONNX's FP32
        assert set(compute) == {"fp32"}, compute
    elif precision == "fp16":
        assert "fp16" in compute and "int8" not in report["by_precision"]
    else:
        assert compute.get("int8", 0) > 0 and report["int8_compute_share"] > 0
        assert "INT8 fallback" in engines["outputs"][precision]
    assert "engine layers" in engines["outputs"][precision] and "engine drift" in engines["outputs"][precision]


def _eager_gpu(artifact, images: np.ndarray) -> np.ndarray:
    return TorchBackend(rebuild_reference(artifact), device="cuda").run(images)  # FP32, TF32 off


@pytest.mark.parametrize("precision, bound", [("fp32", 1e-3), ("fp16", 1e-2)])
def test_engine_matches_eager_on_the_gpu(engines, precision, bound):
    artifact = read_artifact(engines[precision])
    backend = TensorRTBackend(artifact.directory / "model.engine")
    images = _images(MAX_BATCH)
    drift = drift_metrics(backend.run(images), _eager_gpu(artifact, images))
    assert drift["relative_max_abs"] <= bound, drift


def test_int8_engine_agrees_with_its_onnx_and_drifts_no_more_than_it(engines):
    """Top-1 agreement on random inputs means little, so: the engine runs the same Q/DQ graph as ONNX Runtime
    (cosine >= 0.99 between them: only kernel rounding and accumulation order differ), and its drift from
    eager is at most 0.01 cosine worse than the ONNX's own."""
    artifact = read_artifact(engines["int8"])
    images = _images(MAX_BATCH)
    engine = TensorRTBackend(artifact.directory / "model.engine").run(images)
    onnx_cpu = OnnxRuntimeBackend(artifact.model_path).run(images)
    eager = _eager_gpu(artifact, images)
    assert drift_metrics(engine, onnx_cpu)["cosine_min"] >= 0.99
    assert drift_metrics(engine, eager)["cosine_min"] >= drift_metrics(onnx_cpu, eager)["cosine_min"] - 0.01


def test_dynamic_profile_takes_every_batch_in_range_and_refuses_others(engines):
    backend = TensorRTBackend(engines["fp32"] / "model.engine")
    for batch in (1, 3, MAX_BATCH):
        assert backend.run(_images(batch)).shape == (batch, 10)
    with pytest.raises(InputError, match="outside the engine's profile 1..8"):
        backend.run(_images(MAX_BATCH + 1))


def test_engine_built_for_another_gpu_is_refused(engines, tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(engines["fp16"], copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["tensorrt"]["built_for"]["gpu_name"] = "NVIDIA Some Other GPU"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(EngineMismatch, match="GPU NVIDIA Some Other GPU \\(built\\) vs .*rebuild it here with: "
                                             "convnext-export"):
        TensorRTBackend(copy / "model.engine")


def test_timing_cache_is_written_and_reused(engines):
    assert engines["cache"].is_file() and engines["cache"].stat().st_size > 0
    states = [read_artifact(engines[p]).extra["tensorrt"]["build"]["timing_cache_state"] for p in ("fp16", "int8")]
    assert states == ["reused", "reused"]


def test_bench_runs_the_tensorrt_backend_with_gpu_timing(engines):
    request = BenchRequest(artifacts=(engines["fp16"],), backends=("tensorrt",), batches=(1, 4), threads=2,
                           plan=TimingPlan(warmup=3, iters=10, block=5), limit=8, cold_start=False, cuda_graph=True)
    report = Bench(request).run(command="test")
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    rows = {(row["backend"], row["batch"]): row for row in report["rows"]}
    assert {backend for backend, _ in rows} == {"torch", "torch-cuda", "torch-cuda-fp16", "tensorrt"}
    for batch in (1, 4):
        gpu = rows[("tensorrt", batch)]["gpu"]
        assert gpu["cuda_graphs"] and 0 < gpu["compute_ms"]["p50"] <= gpu["end_to_end_ms"]["p50"]
        assert gpu["compute_speedup_vs_eager_gpu"] > 0
        assert rows[("torch", batch)]["gpu"] is None
    assert rows[("tensorrt", 1)]["drift"]["relative_max_abs"] <= 1e-2
    assert not [w for w in report["warnings"] if "GPU timing failed" in w]
