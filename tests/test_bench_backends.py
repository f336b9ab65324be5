"""The backend registry: every name opens or says why not; optional runtimes are lazy."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from convnext_export.backends import BackendUnavailable, backend_names, backend_spec, default_backend_names
from convnext_export.config import get_config
from convnext_export.errors import InputError
from convnext_export.model import build_model
from convnext_export.artifact import read_artifact
from convnext_export.pipeline import rebuild_reference

from bench_artifacts import atto_artifacts
from helpers import make_trained_like


@pytest.fixture(scope="module")
def fp32():
    return read_artifact(atto_artifacts()["fp32"])


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(InputError, match="unknown backend 'tflite'; valid backends: torch, torch-compile, onnxruntime"):
        backend_spec("tflite")
    assert set(default_backend_names()) <= set(backend_names())
    assert "torch-compile" not in default_backend_names()  # opt-in: compiling takes a while


def test_missing_openvino_is_unavailable_with_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(BackendUnavailable, match=r"pip install 'convnext-export\[openvino\]'"):
        backend_spec("openvino").import_runtime()


def test_gpu_providers_and_engine_backend_say_why_they_cannot_run_here(fp32):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider is not available here.*onnxruntime-gpu"):
            backend_spec("onnxruntime-cuda").open(model_path=fp32.model_path)
    if importlib.util.find_spec("convnext_export.backends.tensorrt") is None:
        with pytest.raises(BackendUnavailable, match="'tensorrt' is not part of this version"):
            backend_spec("tensorrt").import_runtime()
    # an ONNX artifact has no engine for the tensorrt backend; the ONNX backends run its model.onnx
    assert backend_spec("tensorrt").artifact_file(fp32) is None
    assert backend_spec("onnxruntime").artifact_file(fp32) == fp32.model_path


@pytest.mark.parametrize("name, tolerance", [("onnxruntime", 1e-5), ("openvino", 5e-2)])
def test_onnx_backends_match_eager(fp32, name, tolerance):
    """Same ONNX, same inputs as the eager model (OpenVINO runs BF16 on this CPU, hence its tolerance)."""
    if name == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino not installed: pip install 'convnext-export[openvino]'")
    backend = backend_spec(name).open(model_path=fp32.model_path, threads=1)
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        eager = rebuild_reference(fp32)(torch.from_numpy(images)).numpy()
    out = backend.run(images)
    assert out.shape == eager.shape and out.dtype == np.float32
    assert np.abs(out - eager).max() / np.abs(eager).max() < tolerance
    info = backend.describe()
    assert info["runtime"] == name and info["threads"] == 1 and backend.name == name


def test_torch_backend_is_the_eager_model():
    model = make_trained_like(build_model(get_config("atto", 10), 1), 1)
    backend = backend_spec("torch").open(model=model, threads=1)
    images = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_array_equal(backend.run(images), expected)
