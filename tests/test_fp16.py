"""FP16: LayerNorm in FP32, per-block layer-scale folding, weight energy check, range report, drift."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto

from convnext_export.artifact import read_artifact
from convnext_export.cli import export_command
from convnext_export.config import get_config
from convnext_export.errors import ConvNeXtExportError
from convnext_export.export import export_onnx
from convnext_export.fp16 import (FP16_MAX, activation_ranges, blocks_keeping_layer_scale, build_fp16,
                                  fp16_energy_loss, overflow_report)
from convnext_export.fusion import fuse_model
from convnext_export.model import build_model
from convnext_export.pipeline import eager_runner

from helpers import make_trained_like

SIZE = 32


def _layernorms_in_fp32(model: onnx.ModelProto) -> bool:
    """Every LayerNormalization reads a Cast to FLOAT and its output is cast back to FLOAT16."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    for norm in norms:
        cast_in = producers[norm.input[0]]
        cast_out = consumers[norm.output[0]]
        to = lambda node: next(a.i for a in node.attribute if a.name == "to")  # noqa: E731
        if not (cast_in.op_type == "Cast" and to(cast_in) == TensorProto.FLOAT):
            return False
        if not all(c.op_type == "Cast" and to(c) == TensorProto.FLOAT16 for c in cast_out):
            return False
    return bool(norms)


def test_fp16_of_random_weight_model_is_written_and_close_to_eager(tmp_path):
    out = tmp_path / "fp16"
    result = CliRunner().invoke(export_command, ["--size", "atto", "--image-size", str(SIZE), "--num-classes", "10",
                                                 "--fp16", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    artifact = read_artifact(out)
    assert artifact.precision == "fp16" and artifact.target is None
    # Random init has gamma = 1e-6: gamma x W underflows FP16, so every block keeps gamma separate.
    assert len(artifact.extra["fp16"]["layer_scale_kept_separate"]) == 12
    assert artifact.fusions["fold_layer_scale"] == 0
    assert artifact.extra["fp16"]["layernorm_compute_types"] == {"float32": 17}
    model = onnx.load(str(artifact.model_path))
    assert _layernorms_in_fp32(model)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    conv_weights = [i for i in model.graph.initializer if i.name.endswith("pwconv1.weight")]
    assert conv_weights and all(i.data_type == TensorProto.FLOAT16 for i in conv_weights)
    # Reference: the eager FP32 model, on fresh images (not the export's own check).
    images = np.random.default_rng(7).standard_normal((4, 3, SIZE, SIZE), dtype=np.float32)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(artifact.model_path), providers=["CPUExecutionProvider"])
    out16 = session.run(None, {"input": images})[0]
    eager = build_model(get_config("atto").with_classes(10), seed=0)(torch.from_numpy(images)).detach().numpy()
    assert np.abs(out16 - eager).max() / np.abs(eager).max() < 5e-3
    assert artifact.drift["cosine_min"] > 0.9999 and artifact.drift["top1_agreement"] == 1.0
    assert "fp16" in result.output and "LayerNorm in float32" in result.output


def test_fp16_io_makes_inputs_and_outputs_half(tmp_path):
    out = tmp_path / "fp16io"
    result = CliRunner().invoke(export_command, ["--size", "atto", "--image-size", str(SIZE), "--fp16", "--fp16-io",
                                                 "--batch", "2", "--out", str(out), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert _layernorms_in_fp32(model)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fp16"]["io"] == "float16" and manifest["drift"]["cosine_min"] > 0.999


def test_layer_scale_fold_decided_per_block():
    model = build_model(get_config("atto"), seed=0)
    assert blocks_keeping_layer_scale(model) == {f"stages.{i}.{j}" for i, d in enumerate((2, 2, 6, 2)) for j in range(d)}
    make_trained_like(model)
    assert blocks_keeping_layer_scale(model) == set()
    with torch.no_grad():
        model.stages[2][3].gamma.fill_(1e-6)
    assert blocks_keeping_layer_scale(model) == {"stages.2.3"}


def test_energy_loss_against_float64():
    w = np.random.default_rng(0).standard_normal(1000) * 0.02
    assert fp16_energy_loss(w) < 1e-6  # plain FP16 rounding
    assert fp16_energy_loss(w * 1e-6) > 0.5  # gamma 1e-6 folded in: mostly flushed


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    work = tmp_path_factory.mktemp("fp16")
    model = make_trained_like(build_model(get_config("atto").with_classes(10), seed=2), seed=2)
    return model, work


def test_fp16_refuses_weights_that_lose_their_energy(tmp_path):
    """Folding gamma = 1e-6 into pwconv2 anyway: the weights fall under FP16's subnormals and the export refuses."""
    model = build_model(get_config("atto"), seed=0)
    fused, _ = fuse_model(model)  # folds everywhere
    fp32 = export_onnx(fused, tmp_path / "fp32.onnx", SIZE).path
    images = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    with pytest.raises(ConvNeXtExportError, match="pwconv2.weight"):
        build_fp16(fp32, tmp_path / "model.onnx", eager_runner(model), images, None, False, set())
    assert not (tmp_path / "model.onnx").exists()


def test_fp16_of_trained_like_model_matches_eager(trained_like):
    model, work = trained_like
    fused, _ = fuse_model(model, keep_layer_scale=blocks_keeping_layer_scale(model))
    fp32 = export_onnx(fused, work / "fp32.onnx", SIZE).path
    images = np.random.default_rng(1).standard_normal((8, 3, SIZE, SIZE), dtype=np.float32)
    result = build_fp16(fp32, work / "model.onnx", eager_runner(model), images, None, False, set())
    assert result.drift["cosine_min"] > 0.9999 and result.drift["top1_agreement"] == 1.0
    assert result.report["fp16"]["layernorm_compute_types"] == {"float32": 17}
    assert result.report["fp16"]["activations"]["overflow"] == []


def test_overflow_is_reported_per_tensor(trained_like, tmp_path):
    """A stem conv bias past 65504 shows up as an FP16 overflow of the stem conv output, and as LayerNorm
    statistics over FP16's range (the reason LayerNorm stays FP32)."""
    model, _ = trained_like
    model = make_trained_like(build_model(get_config("atto").with_classes(10), seed=2), seed=2)
    with torch.no_grad():
        model.downsample_layers[0][0].bias[0] = 7e4
    fused, _ = fuse_model(model)
    fp32 = onnx.load(str(export_onnx(fused, tmp_path / "fp32.onnx", SIZE).path))
    from convnext_export.calibration.graph import name_nodes_by_module

    name_nodes_by_module(fp32)
    images = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    producers = {o: n.name for n in fp32.graph.node for o in n.output}
    report = overflow_report(activation_ranges(fp32, images), producers)
    assert {"stem.0/Conv"} <= {e["node"] for e in report["overflow"]}
    assert all(e["max_abs"] > FP16_MAX for e in report["overflow"])
    assert report["layernorm_statistics_over_fp16_max"]
