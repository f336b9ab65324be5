from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from convnext_export.config import get_config, size_names
from convnext_export.errors import InputError
from convnext_export.export import export_onnx, op_census
from convnext_export.fusion import fuse_model
from convnext_export.model import build_model

from helpers import make_trained_like, relative_drift, sizes_marking_heavy_slow


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def tiny_trained():
    return make_trained_like(build_model(get_config("tiny", 10), seed=3), seed=3)


@pytest.fixture(scope="module")
def tiny_fused_onnx(tiny_trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    fused, _ = fuse_model(tiny_trained)
    export_onnx(fused, path, 64, metadata={"convnext_export.size": "tiny"})
    return path


def test_fused_tiny_graph_has_one_op_per_norm_and_gelu(tiny_fused_onnx):
    census = op_census(onnx.load(str(tiny_fused_onnx)))
    assert census["LayerNormalization"] == 23
    assert census["Gelu"] == 18
    assert census["Conv"] == 1 + 3 + 18 * 3  # stem, downsamples, dwconv + 2 pointwise per block
    for chain_op in ("Pow", "Sqrt", "Div", "Mul", "Erf", "MatMul"):
        assert chain_op not in census, f"{chain_op} left in the fused graph: {census}"
    assert census.get("ReduceMean", 0) == 1  # the global average pool only
    # Transposes only in the pairs around the 22 channel LayerNorms (the head's needs none).
    assert census["Transpose"] == 2 * 22


def test_layernorm_transposes_sit_only_around_layernorms(tiny_fused_onnx):
    graph = onnx.load(str(tiny_fused_onnx)).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type == "LayerNormalization" and node.input[0] in producer:
            before, after = producer[node.input[0]], consumers[node.output[0]]
            if before.op_type == "Transpose":
                assert [n.op_type for n in after] == ["Transpose"]
    for node in graph.node:
        if node.op_type == "Transpose":
            neighbours = [producer.get(node.input[0])] + consumers.get(node.output[0], [])
            assert any(n is not None and n.op_type == "LayerNormalization" for n in neighbours)


def test_fused_onnx_matches_eager_with_dynamic_batch(tiny_trained, tiny_fused_onnx):
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        with torch.inference_mode():
            reference = tiny_trained(x).numpy()
        assert relative_drift(_run(tiny_fused_onnx, x.numpy()), reference) <= 1e-4


def test_graph_is_checked_named_and_annotated(tiny_fused_onnx):
    model = onnx.load(str(tiny_fused_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.opset_import[0].version == 20 or any(o.version == 20 for o in model.opset_import if o.domain == "")
    assert {p.key: p.value for p in model.metadata_props}["convnext_export.size"] == "tiny"


def test_opset_17_decomposes_gelu_but_keeps_layernorm(tmp_path):
    model = make_trained_like(build_model(get_config("atto", 10)))
    fused, _ = fuse_model(model)
    path = tmp_path / "m.onnx"
    export_onnx(fused, path, 32, opset=17, batch=2)
    census = op_census(onnx.load(str(path)))
    assert "Gelu" not in census and census["Erf"] == 12 and census["LayerNormalization"] == 17
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert relative_drift(_run(path, x.numpy()), model(x).numpy()) <= 1e-4


def test_unfused_faithful_graph_exports_and_matches(tmp_path):
    model = make_trained_like(build_model(get_config("atto", 10)))
    path = tmp_path / "faithful.onnx"
    export_onnx(model, path, 32)
    census = op_census(onnx.load(str(path)))
    assert census.get("Sqrt", 0) >= 4  # the hand-written channels-first norms, as the official code has them
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert relative_drift(_run(path, x.numpy()), model(x).numpy()) <= 1e-4


@pytest.mark.parametrize("size", sizes_marking_heavy_slow(size_names()))
def test_every_size_exports_at_tiny_resolution(size, tmp_path):
    model = make_trained_like(build_model(get_config(size, 10), seed=2), seed=2)
    fused, _ = fuse_model(model)
    path = tmp_path / "model.onnx"
    if size == "v2-huge":  # 2.6 GB of FP32 weights: over one ONNX file's 2 GB
        with pytest.raises(InputError, match="over the 2 GB an ONNX file can hold"):
            export_onnx(fused, path, 32)
        assert not path.exists()
        return
    export_onnx(fused, path, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert relative_drift(_run(path, x.numpy()), model(x).numpy()) <= 1e-4
