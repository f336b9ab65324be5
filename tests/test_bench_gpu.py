"""convnext-bench's GPU pieces that can be checked on a CPU-only machine: which backends join a run,
which file each runs, ONNX Runtime's GPU provider options, the GPU row fields and their schema,
and a run asking for GPU backends here reporting them as skipped with what to install."""

from __future__ import annotations

import importlib.util
import json

import jsonschema
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from convnext_export.artifact import read_artifact
from convnext_export.backends import BackendUnavailable, backend_spec
from convnext_export.backends.onnxruntime import provider_chain, tensorrt_provider_options
from convnext_export.bench import SCHEMA_PATH
from convnext_export.bench.gpu_timing import CLOCK, _latency, compute_speedups
from convnext_export.bench.report import gpu_lines, markdown_report
from convnext_export.bench.runner import Bench, BenchRequest, validate_request
from convnext_export.bench.timing import TimingPlan

from bench_artifacts import atto_artifacts

HAS_CUDA = torch.cuda.is_available()
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
SCHEMA = json.loads(SCHEMA_PATH.read_text())


def test_gpu_references_join_a_run_with_gpu_backends_only_where_there_is_a_gpu(monkeypatch):
    def names(request: BenchRequest) -> list[str]:
        return [spec.name for spec in validate_request(request)]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert names(BenchRequest(artifacts=(), backends=("tensorrt",))) == ["torch", "torch-cuda", "torch-cuda-fp16",
                                                                         "tensorrt"]
    assert names(BenchRequest(artifacts=(), backends=("onnxruntime",))) == ["torch", "onnxruntime"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert names(BenchRequest(artifacts=(), backends=("tensorrt",))) == ["torch", "tensorrt"]


def test_each_backend_runs_its_file_of_the_artifact(tmp_path):
    artifact = read_artifact(atto_artifacts()["fp32"])
    assert backend_spec("onnxruntime").artifact_file(artifact) == artifact.model_path
    assert backend_spec("tensorrt").artifact_file(artifact) is None  # exported without --trt
    with_engine = artifact.with_changes(extra={**artifact.extra, "tensorrt": {"engine_file": "model.engine"}})
    assert backend_spec("tensorrt").artifact_file(with_engine) == artifact.directory / "model.engine"
    assert backend_spec("onnxruntime-tensorrt").artifact_file(with_engine) == artifact.model_path
    assert backend_spec("torch-cuda").artifact_file(with_engine) is None


@pytest.mark.skipif(HAS_TENSORRT and HAS_CUDA, reason="TensorRT and a GPU are present here")
def test_tensorrt_backend_says_what_to_install():
    spec = backend_spec("tensorrt")
    with pytest.raises(BackendUnavailable, match=r"pip install 'convnext-export\[tensorrt\]' on a machine with an "
                                                 r"NVIDIA GPU"):
        spec.import_runtime() if not HAS_TENSORRT else spec.open(model_path="model.engine")
    from convnext_export.backends.tensorrt import TensorRTBackend

    with pytest.raises(BackendUnavailable, match="the tensorrt backend needs TensorRT and an NVIDIA GPU; missing here"):
        TensorRTBackend("does-not-matter/model.engine")


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present here")
def test_eager_gpu_reference_is_unavailable_without_a_gpu():
    with pytest.raises(BackendUnavailable, match="eager PyTorch on the GPU needs a CUDA GPU"):
        backend_spec("torch-cuda").open(model=torch.nn.Identity())


def _onnx(path, batch) -> str:
    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["images", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 48, 40])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [weight])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_tensorrt_provider_gets_a_batch_profile_and_no_precision_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    options = tensorrt_provider_options(_onnx(tmp_path / "dynamic.onnx", "N"), max_batch=16)
    assert options["trt_profile_min_shapes"] == "images:1x3x48x40"
    assert options["trt_profile_opt_shapes"] == "images:1x3x48x40"
    assert options["trt_profile_max_shapes"] == "images:16x3x48x40"
    assert options["trt_timing_cache_enable"] == "True"
    assert options["trt_timing_cache_path"] == str(tmp_path / "cache" / "convnext-export" / "ort-tensorrt")
    assert not any(key in options for key in ("trt_fp16_enable", "trt_int8_enable", "trt_engine_cache_enable"))
    static = tensorrt_provider_options(_onnx(tmp_path / "static.onnx", 4))
    assert not any(key.startswith("trt_profile") for key in static)


def test_provider_chains_fall_back_to_cuda_then_cpu(tmp_path):
    model = _onnx(tmp_path / "m.onnx", "N")
    chain = provider_chain("TensorrtExecutionProvider", ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                         "CPUExecutionProvider"], model)
    assert [p if isinstance(p, str) else p[0] for p in chain] == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                                  "CPUExecutionProvider"]
    chain = provider_chain("TensorrtExecutionProvider", ["TensorrtExecutionProvider", "CPUExecutionProvider"], model)
    assert [p if isinstance(p, str) else p[0] for p in chain] == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert provider_chain("CUDAExecutionProvider", [], model) == [("CUDAExecutionProvider", {"device_id": "0"}),
                                                                  "CPUExecutionProvider"]
    assert provider_chain("CPUExecutionProvider", [], model) == ["CPUExecutionProvider"]


def _gpu_row(backend: str, compute: list[float]) -> dict:
    return {"id": f"atto@32/fp32/-/{backend}/b1", "model": "atto@32", "batch": 1, "backend": backend,
            "gpu": {"device": "NVIDIA L4", "compute_ms": _latency(compute, 1),
                    "end_to_end_ms": _latency([c + 0.2 for c in compute], 1), "host_to_device_ms": 0.05,
                    "device_to_host_ms": 0.01, "cuda_graphs": False, "clock": CLOCK, "warmup_runs": 5, "runs": 3}}


def test_gpu_fields_fit_the_schema_and_speedups_pair_rows_of_one_model_and_batch():
    rows = [_gpu_row("torch-cuda", [2.0, 2.2, 2.1]), _gpu_row("tensorrt", [0.5, 0.5, 0.6]),
            {**_gpu_row("tensorrt", [1.0, 1.0, 1.0]), "batch": 8}, {"model": "atto@32", "batch": 1, "gpu": None,
                                                                     "backend": "onnxruntime"}]
    compute_speedups(rows)
    assert rows[1]["gpu"]["compute_speedup_vs_eager_gpu"] == pytest.approx(2.1 / 0.5)
    assert rows[0]["gpu"]["compute_speedup_vs_eager_gpu"] == pytest.approx(1.0)
    assert "compute_speedup_vs_eager_gpu" not in rows[2]["gpu"]  # no eager GPU row at batch 8
    validator = jsonschema.Draft202012Validator({"$defs": SCHEMA["$defs"], "$ref": "#/$defs/gpu_timing"})
    for row in rows:
        validator.validate(row["gpu"])
    broken = {key: value for key, value in rows[1]["gpu"].items() if key != "compute_ms"}
    with pytest.raises(jsonschema.ValidationError, match="'compute_ms' is a required property"):
        validator.validate(broken)
    lines = gpu_lines({"rows": rows})
    assert len(lines) == 3 and "compute p50 0.5 ms" in lines[1] and "4.20x eager FP32 on the GPU" in lines[1]


def test_a_cpu_only_run_asking_for_gpu_backends_skips_them_with_reasons():
    artifacts = atto_artifacts()
    request = BenchRequest(artifacts=(artifacts["fp32"],), backends=("onnxruntime", "tensorrt", "torch-cuda"),
                           batches=(1,), threads=1, plan=TimingPlan(warmup=1, iters=4, block=2), limit=4,
                           cold_start=False)
    if HAS_CUDA:
        pytest.skip("a CUDA GPU is present: the GPU backends would run")
    report = Bench(request).run(command="test")
    jsonschema.validate(report, SCHEMA)
    reasons = {s["backend"]: s["reason"] for s in report["skipped"]}
    assert "pip install 'convnext-export[tensorrt]'" in reasons["tensorrt"]
    assert "eager PyTorch on the GPU needs a CUDA GPU" in reasons["torch-cuda"]
    assert {row["backend"] for row in report["rows"]} == {"torch", "onnxruntime"}
    assert all(row["gpu"] is None for row in report["rows"])
    assert "CUDA events" in report["settings"]["gpu_timing"] and "GPU timing" not in markdown_report(report)
