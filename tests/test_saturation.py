"""The u8 x s8 kernel model (numpy), its graph emulation and the overflow-safe weights, against ONNX Runtime's
real kernels: this host's (exact on VNNI / AMX, saturating on AVX2 / AVX-512 BW) and, where qemu-user is
installed, ONNX Runtime's AVX2 kernels run under ``qemu-x86_64 -cpu Haswell`` (no VNNI, no AVX-512), so both
paths are checked on whatever CPU CI lands on."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from convnext_export.calibration.kernel_emulation import emulable_layers, emulate_saturating_kernels
from convnext_export.calibration.overflow import limit_pairs
from convnext_export.calibration.saturation import (PAIR_LIMIT, im2col, reduction_order, u8s8_accumulate,
                                                    unsafe_pairs)
from convnext_export.isa import detect_host

# name: (in channels, out channels, kernel, stride, group, padding, height): ConvNeXt's pointwise, downsample,
# stem (3 channels: pairs straddle kernel positions) and depthwise convs, and a padded 3x3 for the order.
LAYERS = {
    "pointwise": (64, 32, 1, 1, 1, 0, 6),
    "downsample": (16, 24, 2, 2, 1, 0, 8),
    "stem": (3, 16, 4, 4, 1, 0, 16),
    "depthwise": (16, 16, 7, 1, 16, 3, 9),
    "padded3x3": (8, 8, 3, 1, 1, 1, 6),
}
ACT_SCALE, ACT_ZERO, WEIGHT_SCALE, OUT_ZERO = 0.05, 100, 0.01, 128
QEMU = shutil.which("qemu-x86_64")
QEMU_CPU = "Haswell"  # AVX2 + FMA, no AVX-512, no VNNI: ONNX Runtime picks its AVX2 u8 x s8 kernels


def _out_scale(channels: int, kernel: int) -> float:
    return ACT_SCALE * WEIGHT_SCALE * 64 * 255 * (channels * kernel * kernel) ** 0.5 / 16


def qdq_layer(name: str, weights: np.ndarray) -> onnx.ModelProto:
    """x -> Q/DQ (u8) -> Conv with DQ'd per-channel s8 weights -> Q/DQ: ONNX Runtime fuses it to a QLinearConv."""
    c, o, k, s, g, pad, h = LAYERS[name]
    out_scale = _out_scale(c // g, k)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sa", "za"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sa", "za"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4,
                              group=g, name=f"{name}/Conv"),
             helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["out"])]
    inits = [numpy_helper.from_array(np.array(ACT_SCALE, np.float32), "sa"),
             numpy_helper.from_array(np.array(ACT_ZERO, np.uint8), "za"),
             numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.full(o, WEIGHT_SCALE, np.float32), "sw"),
             numpy_helper.from_array(np.zeros(o, np.int8), "zw"),
             numpy_helper.from_array(np.array(out_scale, np.float32), "sy"),
             numpy_helper.from_array(np.array(OUT_ZERO, np.uint8), "zy")]
    size = (h + 2 * pad - k) // s + 1
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, h, h])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, o, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    return model


def layer_case(name: str, seed: int = 1, seven_bit: bool = False) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A layer with large same-sign weight pairs and its input codes over the whole u8 range."""
    c, o, k, s, g, pad, h = LAYERS[name]
    rng = np.random.default_rng(seed)
    high = 65 if seven_bit else 128
    weights = (rng.integers(high // 2, high, (o, c // g, k, k)) * rng.choice([-1, 1], (o, c // g, k, k))).astype(np.int8)
    codes = rng.integers(0, 256, (2, c, h, h))
    return qdq_layer(name, weights), weights, codes


def kernel_model_codes(name: str, weights: np.ndarray, codes: np.ndarray, saturating: bool) -> np.ndarray:
    """The output codes the numpy kernel model gives for the layer."""
    c, o, k, s, g, pad, h = LAYERS[name]
    rows = im2col(codes, k, s, pad, ACT_ZERO)
    size = (h + 2 * pad - k) // s + 1
    if g == 1:
        acc = u8s8_accumulate(rows, reduction_order(weights, "Conv"), ACT_ZERO, saturating)
    else:  # depthwise: each channel reduces over its own k*k taps
        per_tap = rows.reshape(len(rows), k * k, c)
        acc = np.stack([u8s8_accumulate(per_tap[:, :, ch], weights[ch].reshape(1, -1), ACT_ZERO, saturating)[:, 0]
                        for ch in range(c)], 1)
    out = np.clip(np.round(acc * ACT_SCALE * WEIGHT_SCALE / _out_scale(c // g, k)) + OUT_ZERO, 0, 255)
    return out.reshape(len(codes), size, size, o).transpose(0, 3, 1, 2)


def _inputs(codes: np.ndarray) -> np.ndarray:
    return ((codes - ACT_ZERO) * ACT_SCALE).astype(np.float32)


def _codes(model: onnx.ModelProto, outputs: np.ndarray) -> np.ndarray:
    scale = float(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "sy")))
    return np.round(outputs / scale) + OUT_ZERO


def run_onnxruntime(model: onnx.ModelProto, x: np.ndarray, simulated: bool = False) -> np.ndarray:
    options = ort.SessionOptions()
    if simulated:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


QEMU_RUNNER = """
import sys, numpy as np, onnxruntime as ort
for model, inputs, out in zip(*[iter(sys.argv[1:])] * 3):
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    np.save(out, session.run(None, {session.get_inputs()[0].name: np.load(inputs)})[0])
"""


def run_under_qemu(tmp_path: Path, cases: list[tuple[onnx.ModelProto, np.ndarray]]) -> list[np.ndarray]:
    """ONNX Runtime's own kernels on an emulated AVX2 CPU without VNNI: one qemu process for all cases."""
    args = []
    for index, (model, x) in enumerate(cases):
        onnx.save(model, tmp_path / f"m{index}.onnx")
        np.save(tmp_path / f"x{index}.npy", x)
        args += [str(tmp_path / f"m{index}.onnx"), str(tmp_path / f"x{index}.npy"), str(tmp_path / f"y{index}.npy")]
    (tmp_path / "runner.py").write_text(QEMU_RUNNER)
    done = subprocess.run([QEMU, "-cpu", QEMU_CPU, sys.executable, str(tmp_path / "runner.py"), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return [np.load(tmp_path / f"y{index}.npy") for index in range(len(cases))]


needs_qemu = pytest.mark.skipif(QEMU is None or platform.machine() != "x86_64",
                                reason="needs qemu-user on x86_64 (apt-get install qemu-user) to run ONNX Runtime's "
                                       "AVX2 kernels on an emulated CPU without VNNI")


# -- the kernel model itself ---------------------------------------------------------------------------------------

def test_exact_accumulation_is_the_float64_dot_product():
    rng = np.random.default_rng(0)
    codes, weights = rng.integers(0, 256, (50, 37)), rng.integers(-127, 128, (9, 37)).astype(np.int8)
    expected = (codes.astype(np.float64) - 7) @ weights.astype(np.float64).T
    np.testing.assert_array_equal(u8s8_accumulate(codes, weights, 7, saturating=False), expected)


def test_saturation_needs_a_same_sign_pair_above_the_limit():
    codes = np.full((1, 2), 255)
    assert u8s8_accumulate(codes, np.array([[64, 64]], np.int8), 0, True)[0, 0] == 255 * 128  # at the limit: exact
    assert u8s8_accumulate(codes, np.array([[65, 64]], np.int8), 0, True)[0, 0] == 32767  # one code over: clipped
    assert u8s8_accumulate(codes, np.array([[-65, -64]], np.int8), 0, True)[0, 0] == -32768
    assert u8s8_accumulate(codes, np.array([[127, -127]], np.int8), 0, True)[0, 0] == 0  # mixed signs: never
    assert unsafe_pairs(np.array([[65, 64, 127, -127, -64, -64]], np.int8)).tolist() == [[True, False, False]]


def test_limited_and_seven_bit_weights_never_saturate():
    rng = np.random.default_rng(2)
    weights = rng.integers(-127, 128, (16, 40)).astype(np.int8)
    worst = np.where(rng.random((200, 40)) < 0.5, 0, 255)
    safe = limit_pairs(weights)
    assert unsafe_pairs(weights).any() and not unsafe_pairs(safe).any()
    assert (safe == weights)[~np.repeat(unsafe_pairs(weights), 2, axis=1)].all()  # only unsafe pairs change
    assert (np.abs(safe.astype(int)).reshape(16, 20, 2).sum(2)[unsafe_pairs(weights)] == PAIR_LIMIT).all()
    for w in (safe, np.clip(np.round(weights / 127 * 64), -64, 64).astype(np.int8)):
        np.testing.assert_array_equal(u8s8_accumulate(worst, w, 0, True), u8s8_accumulate(worst, w, 0, False))


# -- against ONNX Runtime's real kernels ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(LAYERS))
def test_kernel_model_matches_this_hosts_integer_kernels(name, monkeypatch):
    """On VNNI / AMX hosts ONNX Runtime's QLinearConv equals the exact model, on AVX2 / AVX-512 BW hosts the
    saturating one (depthwise never saturates), bit for bit: the CPU's own flags, not an override, decide."""
    monkeypatch.delenv("CONVNEXT_EXPORT_CPU_FLAGS", raising=False)
    host = detect_host()
    if host.path.saturates is None:
        pytest.skip(f"this host's integer path is unknown ({host.architecture}): no kernel model to check")
    model, weights, codes = layer_case(name)
    real = _codes(model, run_onnxruntime(model, _inputs(codes)))
    expected = kernel_model_codes(name, weights, codes, saturating=host.path.saturates and name != "depthwise")
    np.testing.assert_array_equal(real, expected)
    if name != "depthwise":  # the case does saturate: the two models differ
        assert (kernel_model_codes(name, weights, codes, True) != kernel_model_codes(name, weights, codes, False)).any()


@needs_qemu
def test_kernel_model_and_emulation_match_avx2_kernels_under_qemu(tmp_path):
    """ONNX Runtime's AVX2 kernels (qemu, no VNNI): the saturating model to the bit for every ConvNeXt layer
    shape and a padded 3x3; depthwise exact; the graph emulation gives the same codes; 7-bit weights exact."""
    cases = [layer_case(name) for name in LAYERS] + [layer_case(name, seven_bit=True) for name in ("pointwise", "stem")]
    real = run_under_qemu(tmp_path, [(model, _inputs(codes)) for model, _, codes in cases])
    names = list(LAYERS) + ["pointwise", "stem"]
    for index, ((model, weights, codes), name) in enumerate(zip(cases, names)):
        saturating = name != "depthwise" and index < len(LAYERS)
        np.testing.assert_array_equal(_codes(model, real[index]), kernel_model_codes(name, weights, codes, saturating),
                                      err_msg=name)
        if index >= len(LAYERS):  # 7-bit weights: the exact result on saturating kernels
            np.testing.assert_array_equal(_codes(model, real[index]), kernel_model_codes(name, weights, codes, False))
        if name in ("pointwise", "downsample", "stem"):
            emulated = run_onnxruntime(emulate_saturating_kernels(model), _inputs(codes), simulated=True)
            np.testing.assert_array_equal(_codes(model, emulated), _codes(model, real[index]), err_msg=name)


@pytest.mark.parametrize("name", ["pointwise", "downsample", "stem"])
def test_graph_emulation_follows_the_saturating_kernel_model(name):
    model, weights, codes = layer_case(name)
    assert [layer.name for layer in emulable_layers(model)] == [f"{name}/Conv"]
    emulated = _codes(model, run_onnxruntime(emulate_saturating_kernels(model), _inputs(codes), simulated=True))
    np.testing.assert_array_equal(emulated, kernel_model_codes(name, weights, codes, saturating=True))
    simulated = _codes(model, run_onnxruntime(model, _inputs(codes), simulated=True))
    np.testing.assert_array_equal(simulated, kernel_model_codes(name, weights, codes, saturating=False))


def test_depthwise_and_padded_convs_are_not_emulated():
    assert emulable_layers(layer_case("depthwise")[0]) == []
    assert emulable_layers(layer_case("padded3x3")[0]) == []  # not a ConvNeXt shape: no emulation claimed


@pytest.mark.slow
@needs_qemu
def test_default_int8_computes_the_same_on_avx2_kernels_under_qemu(tmp_path, monkeypatch):
    """The default (portable) INT8 model of a trained-like atto, built as on a VNNI host: ONNX Runtime's AVX2
    kernels (qemu) give this host's top-1 on every image; the host-only 8-bit form of the same model does not."""
    from convnext_export.calibration.int8 import Int8Options, build_int8
    from convnext_export.config import get_config
    from convnext_export.export import export_onnx
    from convnext_export.fusion import fuse_model
    from convnext_export.model import build_model
    from convnext_export.pipeline import eager_runner, tool_versions
    from convnext_export.preprocess import Preprocessing

    from helpers import make_trained_like

    monkeypatch.setenv("CONVNEXT_EXPORT_CPU_FLAGS", "avx2 fma avx512f avx512bw avx512_vnni")
    model = make_trained_like(build_model(get_config("atto").with_classes(10), seed=5), seed=5)
    fp32 = export_onnx(fuse_model(model)[0], tmp_path / "fp32.onnx", 32).path
    images = np.random.default_rng(3).standard_normal((200, 3, 32, 32)).astype(np.float32)
    cases, agreements = [], {}
    for isa in (None, "avx512_vnni"):
        result = build_int8(fp32, tmp_path / f"{isa}.onnx", eager_runner(model), Preprocessing(image_size=32,
                            crop_pct=1.0), None, Int8Options(calib_size=64, holdout=64, isa=isa), "cpu", tool_versions())
        assert result.report["isa"]["weight_bits"] == (7 if isa is None else 8)
        cases.append((onnx.load(str(result.path)), images))
    real = run_under_qemu(tmp_path, cases)
    for (quantized, _), avx2, isa in zip(cases, real, (None, "avx512_vnni")):
        agreements[isa] = float((avx2.argmax(1) == run_onnxruntime_input(quantized, images).argmax(1)).mean())
    assert agreements[None] >= 0.995, agreements
    assert agreements["avx512_vnni"] < agreements[None], agreements


def run_onnxruntime_input(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """This host's ONNX Runtime on a model whose input is not named ``x``."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]
