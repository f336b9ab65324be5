"""`--gelu sigmoid`: GELU islands as ONNX Runtime u8 lookup tables, checked against ONNX Runtime itself.

The code tables are compared with what ONNX Runtime computes for every one of the 256 input codes
(exact GELU and the sigmoid form), the bias correction with the mean pwconv2 output of the exact
model on the same data, and the export path with the eager model.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from convnext_export.calibration import int8 as int8_step
from convnext_export.calibration.int8 import Int8Options, build_int8, onnxruntime_outputs
from convnext_export.calibration.sigmoid_gelu import apply_sigmoid_gelu, code_histograms, find_islands, gelu_tables
from convnext_export.cli import export_command
from convnext_export.config import get_config
from convnext_export.export import export_onnx
from convnext_export.fusion import fuse_model
from convnext_export.model import build_model
from convnext_export.pipeline import eager_runner, tool_versions
from convnext_export.preprocess import Preprocessing

from helpers import make_trained_like

CHANNELS = 8


def island_model(x_scale: float, x_zero: int, y_scale: float, y_zero: int, seed: int = 0,
                 bias: bool = True) -> onnx.ModelProto:
    """u8 codes -> DQ -> Gelu -> Q (output ``codes_out``) -> DQ -> pwconv2 (int8 per-channel weights) -> ``y``."""
    rng = np.random.default_rng(seed)
    weight_scale = rng.uniform(0.005, 0.02, CHANNELS).astype(np.float32)
    initializers = [
        numpy_helper.from_array(np.array(x_scale, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(x_zero, np.uint8), "x_zero"),
        numpy_helper.from_array(np.array(y_scale, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(y_zero, np.uint8), "y_zero"),
        numpy_helper.from_array(rng.integers(-127, 128, (CHANNELS, CHANNELS, 1, 1)).astype(np.int8), "w"),
        numpy_helper.from_array(weight_scale, "w_scale"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["codes", "x_scale", "x_zero"], ["x"], name="x_dq"),
        helper.make_node("Gelu", ["x"], ["g"], name="stages.0.0.act/Gelu"),
        helper.make_node("QuantizeLinear", ["g", "y_scale", "y_zero"], ["codes_out"], name="g_q"),
        helper.make_node("DequantizeLinear", ["codes_out", "y_scale", "y_zero"], ["g_dq"], name="g_dq"),
        helper.make_node("DequantizeLinear", ["w", "w_scale"], ["w_dq"], name="w_dq", axis=0),
    ]
    conv_inputs = ["g_dq", "w_dq"]
    if bias:
        initializers += [numpy_helper.from_array(rng.integers(-500, 500, CHANNELS).astype(np.int32), "b"),
                         numpy_helper.from_array(weight_scale * np.float32(y_scale), "b_scale")]
        nodes.append(helper.make_node("DequantizeLinear", ["b", "b_scale"], ["b_dq"], name="b_dq", axis=0))
        conv_inputs.append("b_dq")
    nodes.append(helper.make_node("Conv", conv_inputs, ["y"], name="stages.0.0.pwconv2/Conv"))
    shape = [None, CHANNELS, 4, 4]
    graph = helper.make_graph(nodes, "island", [helper.make_tensor_value_info("codes", TensorProto.UINT8, shape)],
                              [helper.make_tensor_value_info("codes_out", TensorProto.UINT8, shape),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def run(model: onnx.ModelProto, codes: np.ndarray) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"codes": codes})


ALL_CODES = np.arange(256, dtype=np.uint8).reshape(2, CHANNELS, 4, 4)
# (x scale, x zero point, y scale, y zero point): ConvNeXt islands of the CIFAR-10 reference, and wider ones
ISLANDS = [(0.0506, 130, 0.0255, 7), (0.0373, 135, 0.0182, 9), (0.1309, 146, 0.0567, 3), (0.02, 100, 0.01, 20),
           (0.2913, 201, 0.1977, 1)]  # calibrated scales: no exact .5 ties, which ORT and numpy may round apart


@pytest.mark.parametrize("quantization", ISLANDS)
def test_code_tables_are_what_onnxruntime_computes(quantization):
    model = island_model(*quantization)
    (island,) = find_islands(model)
    exact, sigmoid = gelu_tables(island)
    assert np.array_equal(run(model, ALL_CODES)[0].ravel(), exact)
    rewritten, report = apply_sigmoid_gelu(model, ALL_CODES, None, correct_bias=False)
    assert np.array_equal(run(rewritten, ALL_CODES)[0].ravel(), sigmoid)
    assert report["islands"] == 1
    # within |x (Phi(x) - sigmoid(1.702 x))| <= 0.0205 of GELU, plus sigmoid's u8 step (|x| / 510) and two roundings
    x_scale, x_zero, y_scale, _ = quantization
    largest = x_scale * max(x_zero, 255 - x_zero)
    assert np.abs(sigmoid - exact).max() <= 1 + (0.0205 + largest / 510) / y_scale


def test_onnxruntime_runs_the_sigmoid_form_as_lookup_table_kernels(tmp_path):
    rewritten, _ = apply_sigmoid_gelu(island_model(*ISLANDS[0]), ALL_CODES, None, correct_bias=False)
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(rewritten.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    assert "QLinearSigmoid" in ops and "QLinearMul" in ops
    assert not {"Gelu", "Sigmoid", "Mul"} & set(ops)


@pytest.mark.parametrize("bias", [True, False])
def test_bias_correction_restores_the_mean_pwconv2_output(bias):
    """On the data it was corrected on, pwconv2's mean output per channel matches the exact-GELU model's
    (to the rounding of the int32 bias), and the correction is what makes it so."""
    model = island_model(0.0373, 135, 0.0182, 9, seed=1, bias=bias)
    rng = np.random.default_rng(2)
    # pwconv1-like codes: a bell around the zero point, different per channel
    centre = rng.integers(110, 160, CHANNELS)[None, :, None, None]
    codes = np.clip(np.rint(rng.normal(centre, 25, (64, CHANNELS, 4, 4))), 0, 255).astype(np.uint8)

    def outputs(probe, names, images):
        yield run_named(probe, names, images)

    def run_named(probe, names, images):
        session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(names, {"codes": images})

    exact_mean = run(model, codes)[1].mean(axis=(0, 2, 3))
    corrected, report = apply_sigmoid_gelu(model, codes, outputs)
    uncorrected, _ = apply_sigmoid_gelu(model, codes, None, correct_bias=False)
    weight_scale = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w_scale"))
    bias_step = weight_scale * 0.0182
    corrected_error = np.abs(run(corrected, codes)[1].mean(axis=(0, 2, 3)) - exact_mean)
    uncorrected_error = np.abs(run(uncorrected, codes)[1].mean(axis=(0, 2, 3)) - exact_mean)
    assert (corrected_error <= 0.5 * bias_step + 1e-6).all(), corrected_error / bias_step
    assert uncorrected_error.max() > 5 * bias_step.max()
    assert report["bias_correction_images"] == len(codes)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    work = tmp_path_factory.mktemp("sigmoid-gelu")
    model = make_trained_like(build_model(get_config("atto").with_classes(10), seed=3), seed=3)
    fused, _ = fuse_model(model)
    return {"path": export_onnx(fused, work / "fp32.onnx", 32).path, "eager": eager_runner(model)}


def _build(graph, out: Path, **options):
    logs: list[str] = []
    result = build_int8(graph["path"], out, graph["eager"], Preprocessing(image_size=32, crop_pct=1.0), None,
                        Int8Options(calib_size=48, **options), "cpu", tool_versions(), log=logs.append)
    return result, logs


def test_int8_export_with_sigmoid_gelu_tracks_the_exact_one(graph, tmp_path):
    exact, _ = _build(graph, tmp_path / "exact.onnx")
    sigmoid, logs = _build(graph, tmp_path / "sigmoid.onnx", gelu="sigmoid")
    report = sigmoid.report["quantized"]["gelu"]
    assert report["form"] == "sigmoid" and report["islands"] == 12 and report["bias_correction_images"] == 42
    assert exact.report["quantized"]["gelu"] == {"form": "exact"}
    ops = [node.op_type for node in onnx.load(str(sigmoid.path)).graph.node]
    assert "Gelu" not in ops and ops.count("Sigmoid") == 12
    assert any("sigmoid form" in line for line in logs)
    # the hold-out drift is the sigmoid model's, and stays close to the exact INT8 model's
    assert sigmoid.drift["cosine_min"] > 0.99
    assert sigmoid.drift["relative_max_abs"] < 2 * exact.drift["relative_max_abs"] + 0.02


def test_sigmoid_gelu_on_a_static_batch_graph(graph, tmp_path):
    """A static batch pads the last calibration batch; the histograms count real images only."""
    model = make_trained_like(build_model(get_config("atto").with_classes(10), seed=3), seed=3)
    static = export_onnx(fuse_model(model)[0], tmp_path / "fp32-b4.onnx", 32, batch=4).path
    result = build_int8(static, tmp_path / "model.onnx", graph["eager"], Preprocessing(image_size=32, crop_pct=1.0), 4,
                        Int8Options(calib_size=48, gelu="sigmoid"), "cpu", tool_versions())
    report = result.report["quantized"]["gelu"]
    assert report["form"] == "sigmoid" and report["bias_correction_images"] == 42  # 42 % 4 = 2: one padded batch
    assert result.drift["cosine_min"] > 0.99
    # each channel's histogram counts 42 images x its spatial positions, none of the padding's
    exact = build_int8(static, tmp_path / "exact.onnx", graph["eager"], Preprocessing(image_size=32, crop_pct=1.0),
                          4, Int8Options(calib_size=48), "cpu", tool_versions())
    quantized = onnx.load(str(exact.path))
    islands = find_islands(quantized)
    images = np.random.default_rng(0).normal(size=(42, 3, 32, 32)).astype(np.float32)
    histograms = code_histograms(quantized, islands, images, onnxruntime_outputs(4))
    positions = {"stages.0": 8 * 8, "stages.1": 4 * 4, "stages.2": 2 * 2, "stages.3": 1}
    for island in islands:
        expected = 42 * positions[island.gelu[:8]]
        assert (histograms[island.codes].sum(axis=1) == expected).all(), island.gelu


def test_sigmoid_gelu_missing_max_drift_keeps_exact_gelu(graph, tmp_path, monkeypatch):
    """When the sigmoid form misses --max-drift on the hold-out, the exact GELU model is written instead."""
    real = int8_step.apply_sigmoid_gelu

    def broken(model, images, run_outputs):  # the real rewrite, then the head negated: top-1 becomes the argmin
        rewritten, report = real(model, images, run_outputs)
        head = next(n for n in rewritten.graph.node if n.op_type == "Gemm")
        initializers = {i.name: i for i in rewritten.graph.initializer}
        for tensor in head.input[1:]:
            source = next(n for n in rewritten.graph.node if n.output[0] == tensor).input[0]
            codes = numpy_helper.to_array(initializers[source])
            negated = np.clip(-codes.astype(np.int64), np.iinfo(codes.dtype).min, np.iinfo(codes.dtype).max)
            initializers[source].CopyFrom(numpy_helper.from_array(negated.astype(codes.dtype), source))
        return rewritten, report

    monkeypatch.setattr(int8_step, "apply_sigmoid_gelu", broken)
    result, logs = _build(graph, tmp_path / "model.onnx", gelu="sigmoid", max_drift=0.5, holdout=16)
    assert result.report["quantized"]["gelu"]["form"] == "exact"
    assert "sigmoid_rejected" in result.report["quantized"]["gelu"]
    assert any("keeping exact GELU" in line for line in logs)
    assert "Gelu" in [node.op_type for node in onnx.load(str(result.path)).graph.node]


def test_onnxruntime_outputs_drops_static_batch_padding(graph):
    images = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
    model = onnx.load(str(graph["path"]))
    name = model.graph.output[0].name
    batches = list(onnxruntime_outputs(2)(model, [name], images))  # the last batch padded to 2, then cut to 1
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert np.allclose(np.concatenate([b[0] for b in batches]), graph["eager"](images), atol=1e-4)


@pytest.mark.parametrize("args, message", [
    (("--int8", "--gelu", "sigmoid", "--target", "tensorrt"), "--gelu sigmoid applies to --target cpu"),
    (("--int8", "--gelu", "sigmoid", "--trt"), "--gelu sigmoid applies to --target cpu"),
    (("--gelu", "sigmoid"), "applies to --int8 only"),
])
def test_sigmoid_gelu_usage_errors(tmp_path, args, message):
    result = CliRunner().invoke(export_command, ["--size", "atto", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "x").exists()
