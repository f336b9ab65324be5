"""The TensorRT path's CPU-side logic: profiles, workspace sizes, the inspector's precision report,
engine compatibility, availability errors, and --trt failing fast where there is no GPU or TensorRT."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from convnext_export.artifact import Artifact, WeightsSource
from convnext_export.cli import export_command
from convnext_export.config import get_config
from convnext_export.errors import ConvNeXtExportError, InputError
from convnext_export.preprocess import Preprocessing
from convnext_export.tensorrt import availability
from convnext_export.tensorrt.availability import GpuDevice, TensorRTUnavailable, require_tensorrt
from convnext_export.tensorrt.build import EngineBuildSettings, parse_workspace
from convnext_export.tensorrt.compat import (EngineMismatch, EngineTarget, check_engine_target, differences,
                                             rebuild_command)
from convnext_export.tensorrt.engine_step import engine_logits
from convnext_export.tensorrt.inspect import (datatype_of, layer_precision, parse_engine_information,
                                              precision_report, quantized_onnx_nodes)
from convnext_export.tensorrt.profiles import DEFAULT_MAX_BATCH, BatchProfile, batch_profile

DATA = Path(__file__).parent / "data"
HAS_GPU_TENSORRT = availability.cuda_device() is not None and availability._import_tensorrt()[0] is not None


# -- optimization profile --------------------------------------------------------------------------

def test_static_batch_is_the_whole_profile():
    assert batch_profile(4) == BatchProfile(4, 4, 4)
    assert batch_profile(4, 4, 4, 4) == BatchProfile(4, 4, 4)
    assert BatchProfile(4, 4, 4).shapes(32) == ((4, 3, 32, 32),) * 3


def test_dynamic_profile_fills_what_is_not_given():
    assert batch_profile(None) == BatchProfile(1, 1, DEFAULT_MAX_BATCH)
    assert batch_profile(None, opt_batch=8) == BatchProfile(1, 8, DEFAULT_MAX_BATCH)
    assert batch_profile(None, 2, 8, 16) == BatchProfile(2, 8, 16)
    assert batch_profile(None, min_batch=40) == BatchProfile(40, 40, 40)
    assert batch_profile(None, opt_batch=64) == BatchProfile(1, 64, 64)
    profile = batch_profile(None, 2, 4, 8)
    assert profile.shapes(64) == ((2, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    assert profile.accepts(2) and profile.accepts(8) and not profile.accepts(1) and not profile.accepts(9)


@pytest.mark.parametrize("args, message", [
    ((None, 8, None, 4), r"min 8 / opt 8 / max 4: needs min <= opt <= max"),
    ((None, 1, 16, 8), r"min 1 / opt 16 / max 8"),
    ((None, 4, 2, None), r"min 4 / opt 2"),
    ((None, 0, None, None), r"--min-batch 0: batch sizes must be >= 1"),
    ((None, None, None, -3), r"--max-batch -3: batch sizes must be >= 1"),
    ((4, None, None, 8), r"--max-batch 8: the export has a static --batch 4"),
    ((4, 1, 4, None), r"--min-batch 1: the export has a static --batch 4"),
])
def test_bad_profiles_are_input_errors(args, message):
    with pytest.raises(InputError, match=message):
        batch_profile(*args)


# -- build settings --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("512MiB", 512 * 2**20), ("4GiB", 4 * 2**30), ("1.5G", 3 * 2**29),
                                            ("2048", 2048 * 2**20), ("64 mb", 64 * 2**20), ("1024KiB", 2**20)])
def test_workspace_sizes(text, expected):
    assert parse_workspace(text) == expected


@pytest.mark.parametrize("text", ["4XB", "0", "-1GiB", "GiB", "", "1e3"])
def test_bad_workspace_names_the_option(text):
    with pytest.raises(InputError, match=r"--workspace .*512MiB or 4GiB"):
        parse_workspace(text)


def test_build_settings_validate(tmp_path):
    EngineBuildSettings(BatchProfile(1, 1, 8), 2**30, tmp_path / "cache.bin", 3).validate()
    with pytest.raises(InputError, match="--builder-opt-level 6: use 0..5"):
        EngineBuildSettings(BatchProfile(1, 1, 8), optimization_level=6).validate()
    with pytest.raises(InputError, match="--timing-cache .* is a directory"):
        EngineBuildSettings(BatchProfile(1, 1, 8), timing_cache=tmp_path).validate()


# -- per-layer precision from the engine inspector -------------------------------------------------

@pytest.mark.parametrize("description, expected", [
    ("Row major linear FP32", "fp32"), ("Row major linear FP32 format (kLINEAR)", "fp32"),
    ("Channel major FP16 format (k=8)", "fp16"), ("Channel major FP16 format where channel % 4 == 0", "fp16"),
    ("Thirty-two wide channel vectorized row major Int8 format.", "int8"), ("Int8", "int8"), ("Half", "fp16"),
    ("Float", "fp32"), ("BFloat16", "bf16"), ("Row major linear Int32", "int32"),
    ("N/A due to dynamic shapes", "unknown"), ("", "unknown"), (None, "unknown"),
])
def test_datatype_of_format_strings(description, expected):
    assert datatype_of(description) == expected


@pytest.fixture(scope="module")
def sample_layers():
    return parse_engine_information((DATA / "engine_inspector_int8_trt10.json").read_text())


def test_layer_precisions_from_the_tensorrt10_sample(sample_layers):
    by_name = {layer.name: layer for layer in sample_layers}
    assert len(sample_layers) == 8
    stem = by_name["stem.0/Conv"]
    assert (stem.precision, stem.compute, stem.opaque) == ("int8", True, False)  # int8 in, fp16 out: an INT8 conv
    assert by_name["stages.0.0.dwconv/Conv"].precision == "fp16"
    assert by_name["stages.0.0.pwconv1/Conv + stages.0.0.act/Gelu"].onnx_nodes == ("stages.0.0.pwconv1/Conv",
                                                                                    "stages.0.0.act/Gelu")
    head = by_name["head.fc/Gemm"]
    assert (head.precision, head.compute) == ("fp32", True)
    myelin = by_name["{ForeignNode[stem.1/Transpose...stem.1/Transpose_1]}"]
    assert myelin.opaque and not myelin.compute and myelin.tactic is None


def test_precision_report_shares_and_int8_fallback(sample_layers):
    int8_nodes = ["stem.0/Conv", "stages.0.0.dwconv/Conv", "stages.0.0.pwconv1/Conv", "stages.0.0.pwconv2/Conv",
                  "stages.1.0.pwconv1/Conv", "stem.1/LayerNormalization"]
    report = precision_report(sample_layers, int8_nodes)
    assert report["layers"] == 6 and report["bookkeeping_layers"] == 2  # Reformat and NoOp are not counted
    assert report["by_precision"] == {"fp16": 2, "fp32": 1, "int8": 3}
    assert report["int8_layer_share"] == pytest.approx(3 / 6)
    assert report["compute_layers"] == 5 and report["compute_by_precision"] == {"fp16": 1, "fp32": 1, "int8": 3}
    assert report["int8_compute_share"] == pytest.approx(3 / 5)
    assert report["int8_fallback"] == [{"node": "stages.0.0.dwconv/Conv", "layer": "stages.0.0.dwconv/Conv",
                                        "precision": "fp16"}]
    # Nowhere in the engine, or only inside the opaque Myelin region: not guessed.
    assert report["int8_unattributed"] == ["stages.1.0.pwconv1/Conv", "stem.1/LayerNormalization"]
    assert report["opaque_layers"] == ["{ForeignNode[stem.1/Transpose...stem.1/Transpose_1]}"]


def test_node_names_match_as_whole_names_only():
    layer = layer_precision({"Name": "stages.0.0.dwconv/Conv_1 + stages.0.0/Add", "LayerType": "CaskConvolution",
                             "Inputs": [{"Format/Datatype": "Channel major FP16 format (k=8)"}]})
    report = precision_report([layer], ["stages.0.0.dwconv/Conv", "stages.0.0.dwconv/Conv_1", "stages.0.0/Add"])
    assert report["int8_unattributed"] == ["stages.0.0.dwconv/Conv"]
    assert [f["node"] for f in report["int8_fallback"]] == ["stages.0.0.dwconv/Conv_1", "stages.0.0/Add"]


def test_tensorrt11_split_datatype_field_is_read():
    """TensorRT 11 reports "DataType" and "Format" separately (NVIDIA's 10.x -> 11.x inspector migration guide)."""
    information = {"Layers": [
        {"Name": "a/Conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [{"Name": "x", "DataType": "Int8", "Format": "Thirty-two wide channel vectorized row major"}]},
        {"Name": "b/Conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
         "Inputs": [{"Name": "y", "DataType": "Half", "Format": "Channel major (k=8)"}]},
    ], "I/O Tensors": [{"Name": "x", "IOMode": "Input", "DataType": "Float"}]}
    assert [layer.precision for layer in parse_engine_information(json.dumps(information))] == ["int8", "fp16"]


def test_dynamic_shape_formats_without_a_context_stay_unknown():
    layer = layer_precision({"Name": "c/Conv", "LayerType": "CaskConvolution",
                             "Inputs": [{"Format/Datatype": "N/A due to dynamic shapes"}]})
    assert layer.precision == "unknown"
    assert precision_report([layer])["int8_layer_share"] == 0.0


@pytest.mark.parametrize("information, message", [
    ("not json", "returned no JSON"),
    ('{"Bindings": ["input"]}', "no 'Layers' list"),
    ('{"Layers": ["stem.0/Conv", "head.fc/Gemm"]}', "ProfilingVerbosity.DETAILED"),
])
def test_unusable_inspector_output_is_a_clear_error(information, message):
    with pytest.raises(ConvNeXtExportError, match=message):
        parse_engine_information(information)


def _conv_graph() -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(w via DQ) = quantized; and a float Conv beside it."""
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "w_q")
    wf = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w_f")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"], name="x/Q"),
        helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_dq"], name="x/DQ"),
        helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["w_dq"], name="w/DQ"),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["y"], name="quantized/Conv"),
        helper.make_node("Conv", ["x", "w_f"], ["y2"], name="float/Conv"),
        helper.make_node("Conv", ["x_dq", "w_f"], ["y3"], name="half_quantized/Conv"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y", "y2", "y3")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], outputs, [w, wf, scale, zero]))


def test_quantized_onnx_nodes_need_both_inputs_dequantized():
    assert quantized_onnx_nodes(_conv_graph()) == ["quantized/Conv"]


# -- engine compatibility --------------------------------------------------------------------------

BUILT = EngineTarget("10.9.0.34", "NVIDIA L4", "8.9")


def _artifact(tmp_path: Path, built_for: EngineTarget | None = BUILT, **changes) -> Artifact:
    extra = {"tensorrt": {"engine_file": "model.engine", "built_for": built_for.to_dict()}} if built_for else {}
    fields = dict(directory=tmp_path / "atto-int8-tensorrt", model_file="model.onnx", format="onnx", precision="int8",
                  config=get_config("atto", 10), preprocessing=Preprocessing(image_size=64),
                  weights=WeightsSource(seed=3), fusions={}, opset=20, batch=None, model_sha256="0" * 64,
                  target="tensorrt", extra=extra)
    return Artifact(**{**fields, **changes})


def test_same_target_is_accepted(tmp_path):
    assert differences(BUILT, EngineTarget("10.9.0.34", "NVIDIA L4", "8.9")) == []
    check_engine_target(_artifact(tmp_path), EngineTarget("10.9.0.34", "NVIDIA L4", "8.9"))


@pytest.mark.parametrize("here, what", [
    (EngineTarget("10.10.0.31", "NVIDIA L4", "8.9"), "TensorRT version 10.9.0.34 \\(built\\) vs 10.10.0.31 \\(here\\)"),
    (EngineTarget("10.9.0.34", "NVIDIA A100-SXM4-80GB", "8.0"), "GPU NVIDIA L4 \\(built\\) vs NVIDIA A100"),
    (EngineTarget("10.9.0.34", "NVIDIA L4", "9.0"), "compute capability 8.9 \\(built\\) vs 9.0 \\(here\\)"),
])
def test_another_tensorrt_or_gpu_is_refused_with_how_to_rebuild(tmp_path, here, what):
    with pytest.raises(EngineMismatch, match=what) as caught:
        check_engine_target(_artifact(tmp_path), here)
    message = str(caught.value)
    assert "model.engine was built for TensorRT 10.9.0.34 on NVIDIA L4 (compute capability 8.9)" in message
    assert "rebuild it here with: convnext-export --size atto --seed 3 --num-classes 10 --image-size 64" in message
    assert "--int8 --trt --out" in message and message.endswith("--force")
    assert isinstance(caught.value, ConvNeXtExportError) and caught.value.exit_code == 1


def test_a_manifest_without_a_build_record_is_refused(tmp_path):
    with pytest.raises(EngineMismatch, match="records no TensorRT build; rebuild with: convnext-export"):
        check_engine_target(_artifact(tmp_path, built_for=None), BUILT)


def test_rebuild_command_keeps_checkpoint_batch_and_calibration(tmp_path):
    artifact = _artifact(tmp_path, weights=WeightsSource(path="/w/atto.pth", sha256="1" * 64, layout="official"),
                         batch=8, extra={"calibration": {"kind": "dataset", "path": "/data/calib"}})
    command = rebuild_command(artifact)
    assert command.startswith("convnext-export --weights /w/atto.pth --image-size 64 --opset 20 --batch 8 --int8")
    assert "--calib-data /data/calib --trt" in command and "--size" not in command


# -- availability ----------------------------------------------------------------------------------

def test_missing_gpu_and_tensorrt_are_named_in_one_message(monkeypatch):
    monkeypatch.setattr(availability, "cuda_device", lambda index=0: None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(TensorRTUnavailable) as caught:
        require_tensorrt()
    message = str(caught.value)
    assert message.startswith("--trt needs TensorRT and an NVIDIA GPU; missing here: a CUDA GPU")
    assert "the tensorrt package" in message
    assert "pip install 'convnext-export[tensorrt]' on a machine with an NVIDIA GPU" in message
    assert caught.value.exit_code == 1


def test_only_what_is_missing_is_named(monkeypatch):
    monkeypatch.setattr(availability, "cuda_device", lambda index=0: GpuDevice(0, "NVIDIA L4", "8.9"))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TensorRTUnavailable, match="missing here: the tensorrt package\\. Install") as caught:
        require_tensorrt()
    assert "CUDA GPU (" not in str(caught.value)
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "11.4.0.1"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    runtime = require_tensorrt()
    assert runtime.version == "11.4.0.1" and runtime.device.compute_capability == "8.9"
    monkeypatch.setattr(availability, "cuda_device", lambda index=0: None)
    with pytest.raises(TensorRTUnavailable, match="missing here: a CUDA GPU \\(PyTorch sees none\\)\\. Install"):
        require_tensorrt()


# -- engine logits in chunks -----------------------------------------------------------------------

def test_engine_logits_chunk_at_opt_and_pad_to_min():
    seen = []

    class Runner:
        def run(self, images):
            seen.append(len(images))
            return images.reshape(len(images), -1)[:, :2] * 2

    images = np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32)
    out = engine_logits(Runner(), images, BatchProfile(2, 3, 8))
    assert seen == [3, 2]  # 3 at opt, then the last image padded up to min 2
    np.testing.assert_array_equal(out, images.reshape(4, -1)[:, :2] * 2)


# -- the command line ------------------------------------------------------------------------------

def _invoke(*args: str):
    return CliRunner().invoke(export_command, list(args), catch_exceptions=False)


@pytest.mark.skipif(HAS_GPU_TENSORRT, reason="this machine has a GPU and TensorRT: --trt would build")
def test_trt_fails_fast_without_gpu_or_tensorrt_and_leaves_nothing(tmp_path, monkeypatch):
    import convnext_export.pipeline as pipeline

    def no_slow_work(*args, **kwargs):
        raise AssertionError("the model was built before the GPU/TensorRT check")

    monkeypatch.setattr(pipeline, "load_reference", no_slow_work)
    out = tmp_path / "engine"
    for precision in ((), ("--fp16",), ("--int8",)):
        result = _invoke("--size", "atto", "--image-size", "32", "--trt", *precision, "--out", str(out))
        assert result.exit_code == 1, result.output
        assert "--trt needs TensorRT and an NVIDIA GPU; missing here:" in result.output
        assert "pip install 'convnext-export[tensorrt]' on a machine with an NVIDIA GPU" in result.output
        assert "Traceback" not in result.output and result.output.count("Error:") == 1
    assert list(tmp_path.iterdir()) == []  # no artifact, no staging directory


@pytest.mark.parametrize("args, message", [
    (("--workspace", "1GiB"), "--workspace applies to --trt only"),
    (("--min-batch", "2", "--timing-cache", "t.bin"), "--min-batch, --timing-cache apply to --trt only"),
    (("--trt", "--min-batch", "0"), "--min-batch 0: batch sizes must be >= 1"),
    (("--trt", "--min-batch", "8", "--max-batch", "4"), "needs min <= opt <= max"),
    (("--trt", "--batch", "4", "--max-batch", "8"), "static --batch 4"),
    (("--trt", "--workspace", "lots"), "--workspace 'lots': give a positive size such as 512MiB or 4GiB"),
    (("--trt", "--builder-opt-level", "6"), "6 is not in the range 0<=x<=5"),
    (("--trt", "--target", "cpu", "--int8"), "--trt builds for TensorRT"),
])
def test_trt_option_errors_are_usage_errors(tmp_path, args, message):
    result = _invoke("--size", "atto", "--image-size", "32", *args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_export_requests_with_an_engine_are_checked_before_any_work():
    from convnext_export.pipeline import ExportRequest, validate_request

    settings = EngineBuildSettings(BatchProfile(1, 1, 8))
    with pytest.raises(InputError, match="--trt takes the tensorrt INT8 layout"):
        validate_request(ExportRequest(size="atto", precision="int8", target="cpu", engine=settings))
    with pytest.raises(InputError, match="--batch 4 is static: the engine's profile must be 4"):
        validate_request(ExportRequest(size="atto", batch=4, engine=settings))
    validate_request(ExportRequest(size="atto", batch=4, engine=EngineBuildSettings(batch_profile(4))))
    validate_request(ExportRequest(size="atto", precision="int8", target="tensorrt", engine=settings))


def test_cli_summary_reports_int8_shares_and_fallbacks(tmp_path, sample_layers):
    """The summary rows --trt prints, from a manifest entry shaped as engine_step writes it."""
    from convnext_export.cli import engine_rows

    report = precision_report(sample_layers, ["stem.0/Conv", "stages.0.0.dwconv/Conv", "stages.9.0.pwconv1/Conv"])
    entry = {"engine_file": "model.engine", "engine_bytes": 3_500_000, "built_for": BUILT.to_dict(),
             "build": {"profile": {"min": 1, "opt": 4, "max": 32}, "seconds": 41.2}, "precision": report,
             "drift": {"inputs": "4 seeded standard-normal images", "backend": "tensorrt", "relative_max_abs": 0.012,
                       "cosine_min": 0.9991, "top1_agreement": 1.0, "samples": 4}}
    rows = dict(engine_rows(_artifact(tmp_path, extra={"tensorrt": {**entry}})))
    assert "TensorRT 10.9.0.34 on NVIDIA L4 (compute capability 8.9), batch 1..32 opt 4" in rows["engine"]
    assert rows["engine layers"] == ("6 layers (fp16 2, fp32 1, int8 3); INT8 50% of layers, 60% of conv/matmul "
                                     "layers; 1 opaque Myelin region(s)")
    assert rows["INT8 fallback"] == ("quantized convs TensorRT ran in another precision: stages.0.0.dwconv/Conv "
                                     "(fp16); 1 not attributable by name")
    assert rows["engine drift"] == ("plumbing check, not an accuracy figure (random, untrained weights on 4 synthetic "
                                    "noise images): 1.20e-02 relative max-abs vs eager, cosine 0.999100, top-1 "
                                    "agreement 100.0% on 4 seeded standard-normal images")
    assert engine_rows(_artifact(tmp_path, built_for=None)) == []
