"""ConvNeXt V2: the model against timm's and transformers' with the same weights, every layout, GRN fusions,
FP16 that keeps GRN's statistics in FP32, and the CLI from a V2 checkpoint with no --size."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from convnext_export.checkpoints import load_checkpoint
from convnext_export.cli import export_command
from convnext_export.config import get_config, size_names
from convnext_export.fp16 import convert_to_fp16, grn_statistic_nodes, layernorm_precision
from convnext_export.fusion import ChannelScaleGRN, fold_grn_bias, fuse_model, grn_as_channel_scale
from convnext_export.model import GRN, build_model

from bad_input import BadInput, run_bad_input
from helpers import logits, relative_drift, sizes_marking_heavy_slow, trained_like

timm = pytest.importorskip("timm")

TOLERANCE = 1e-5  # relative max-abs drift of the logits
V2_SIZES = [name for name in size_names() if get_config(name).family == "v2"]


def images(seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def timm_v2(size: str, seed: int = 0, num_classes: int = 10) -> nn.Module:
    return trained_like(timm.create_model(f"convnextv2_{size}", pretrained=False, num_classes=num_classes), seed)


def official_from_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm -> facebookresearch/ConvNeXt-V2 names and shapes, written independently for the test."""
    renames = [(r"^stem\.", "downsample_layers.0."), (r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1."),
               (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."), (r"\.conv_dw\.", ".dwconv."),
               (r"\.mlp\.fc([12])\.", r".pwconv\1."), (r"\.mlp\.grn\.weight$", ".grn.gamma"),
               (r"\.mlp\.grn\.bias$", ".grn.beta"), (r"^head\.norm\.", "norm."), (r"^head\.fc\.", "head.")]
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        if ".grn." in key:
            value = value.reshape(1, 1, 1, -1)  # the official GRN parameters are channels-last (1, 1, 1, C)
        elif re.search(r"pwconv[12]\.weight$", key) and value.ndim == 4:
            value = value.flatten(1)  # timm's conv_mlp 1x1 convs -> the official Linear
        out[key] = value
    return out


@pytest.mark.parametrize("size", sizes_marking_heavy_slow(V2_SIZES))
def test_every_v2_size_matches_timm_in_timm_and_official_layouts(size, tmp_path):
    peer = timm_v2(get_config(size).size, seed=3)
    timm_file = tmp_path / "timm.pth"
    torch.save(peer.state_dict(), timm_file)
    official_file = tmp_path / "official.pth"
    torch.save({"model": official_from_timm(peer.state_dict())}, official_file)
    x = images()
    expected = logits(peer, x)
    for path, layout in ((timm_file, "timm"), (official_file, "official")):
        loaded = load_checkpoint(path)
        assert (loaded.config.name, loaded.config.family, loaded.layout) == (size, "v2", layout)
        assert relative_drift(logits(loaded.model, x), expected) <= TOLERANCE, layout
    fused, applied = fuse_model(loaded.model)
    assert applied["grn_as_channel_scale"] == applied["fold_grn_bias"] == loaded.config.num_blocks
    with torch.inference_mode():
        assert relative_drift(fused(x), expected) <= TOLERANCE


@pytest.mark.parametrize("size", sizes_marking_heavy_slow([s for s in V2_SIZES if s != "v2-small"]))
def test_every_v2_size_matches_transformers(size, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = get_config(size)
    hf_config = transformers.ConvNextV2Config(depths=list(config.depths), hidden_sizes=list(config.dims),
                                              num_labels=7, layer_norm_eps=1e-6)
    peer = trained_like(transformers.ConvNextV2ForImageClassification(hf_config), seed=4)
    save = tmp_path / "hf"
    peer.save_pretrained(save)  # model.safetensors + config.json (layer_norm_eps read from it)
    loaded = load_checkpoint(save / "model.safetensors")
    assert (loaded.config.name, loaded.layout, loaded.config.num_classes) == (size, "huggingface", 7)
    x = images(1)
    assert relative_drift(logits(loaded.model, x), logits(peer, x)) <= TOLERANCE


def test_grn_channel_scale_matches_a_float64_recomputation_of_timms_formula():
    grn = GRN(24)
    with torch.no_grad():
        grn.gamma.normal_(0, 0.7)
        grn.beta.normal_(0, 0.3)
    x = torch.randn(3, 24, 9, 11) * 4
    conv = nn.Conv2d(24, 10, 1)
    # timm GlobalResponseNorm (channels-first): x + bias + weight * (x * G / (mean_c G + eps)), in float64
    xd = x.double()
    g = xd.pow(2).sum((2, 3), keepdim=True).sqrt()
    n = g / (g.mean(1, keepdim=True) + grn.eps)
    gamma, beta = grn.gamma.double().view(1, -1, 1, 1), grn.beta.double().view(1, -1, 1, 1)
    reference = nn.functional.conv2d(xd + beta + gamma * (xd * n), conv.weight.double(), conv.bias.double())
    fused_grn, folded = grn_as_channel_scale(grn), fold_grn_bias(grn.beta, conv)
    assert isinstance(fused_grn, ChannelScaleGRN)
    with torch.no_grad():
        assert relative_drift(folded(fused_grn(x)), reference) <= 1e-6
        # and the eager module on channels-last data agrees with the same float64 reference
        eager = grn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert relative_drift(conv(eager), reference) <= 1e-6


def _v2_model(seed: int = 0) -> nn.Module:
    return trained_like(build_model(get_config("v2-atto", 10), seed=seed), seed)


def test_v2_onnx_census_has_seven_ops_per_grn(tmp_path):
    from convnext_export.export import export_onnx

    model = _v2_model()
    fused, _ = fuse_model(model)
    graph = export_onnx(fused, tmp_path / "m.onnx", 32)
    blocks = model.config.num_blocks
    census = graph.op_census
    assert census["ReduceL2"] == blocks and census["Div"] == blocks
    assert census["Mul"] == 2 * blocks and census["Add"] == 3 * blocks  # residual, eps, 1 + gamma N
    assert census["ReduceMean"] == blocks + 1  # GRN's channel mean + the head's global pool
    assert census["Gelu"] == blocks and census["LayerNormalization"] == model.config.num_layernorms
    x = images()
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        assert relative_drift(session.run(None, {"input": x.numpy()})[0], model(x).numpy()) <= 1e-4


def _naive_fp16_grn_norm(x: np.ndarray) -> np.ndarray:
    """GRN's G as a graph typed FP16 computes it (TensorRT runs what the types say): squares summed in FP16."""
    half = x.astype(np.float16)
    return np.sqrt((half * half).sum(axis=(2, 3), keepdims=True, dtype=np.float16))


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.graph.value_info[:]  # the converter's own value_info can disagree with inference on casts
    inferred = onnx.shape_inference.infer_shapes(stripped)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({init.name: init.data_type for init in inferred.graph.initializer})
    return types


def test_fp16_keeps_grn_statistics_in_fp32_where_fp16_overflows(tmp_path):
    """ConvNeXt-V2 #66: G = ||x||_2 over H x W overflows FP16. Here G reaches ~8e4 (> 65504) in stage 0."""
    from convnext_export.calibration.graph import name_nodes_by_module
    from convnext_export.export import export_onnx

    model = _v2_model(1)
    with torch.no_grad():  # half of one block's GELU outputs near 5000 over 16 x 16 positions: G ~ 5000 * 16
        model.stages[0][0].pwconv1.bias[::2].add_(5000.0)
    fused, _ = fuse_model(model)
    export_onnx(fused, tmp_path / "fp32.onnx", 64)
    fp32 = name_nodes_by_module(onnx.load(str(tmp_path / "fp32.onnx")))
    statistics = set(grn_statistic_nodes(fp32))
    assert len(statistics) == 6 * model.config.num_blocks  # all but the x * scale that leaves each GRN
    fp16 = convert_to_fp16(fp32, fp16_io=False)
    assert layernorm_precision(fp16) == {"float32": model.config.num_layernorms}
    types = _value_types(fp16)
    for node in fp16.graph.node:  # as typed (what a strongly typed TensorRT network runs): FP32 in and out
        if node.name in statistics:
            assert onnx.TensorProto.FLOAT16 not in {types[name] for name in [*node.input, *node.output]}, node.name
    onnx.save(fp16, str(tmp_path / "fp16.onnx"))

    x = images(2, 64)
    with torch.no_grad():
        gelu = {}
        hook = model.stages[0][0].act.register_forward_hook(
            lambda m, i, o: gelu.update(x=o.permute(0, 3, 1, 2).numpy()))
        expected = model(x).numpy()
        hook.remove()
    assert np.sqrt((gelu["x"].astype(np.float64) ** 2).sum((2, 3))).max() > 65504
    with np.errstate(over="ignore"):
        assert np.isinf(_naive_fp16_grn_norm(gelu["x"])).any()  # typed FP16, G would be inf
    session = ort.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": x.numpy()})[0]
    assert np.isfinite(out).all()
    assert (out.argmax(1) == expected.argmax(1)).all() and relative_drift(out, expected) < 1e-2


def test_cli_exports_a_v2_checkpoint_with_no_size_in_every_precision(tmp_path):
    checkpoint = tmp_path / "v2.pth"
    torch.save(timm_v2("atto", seed=5).state_dict(), checkpoint)
    for flags in ((), ("--fp16",), ("--int8",)):
        out = tmp_path / f"out{len(flags)}{''.join(flags)}"
        result = CliRunner().invoke(export_command, ["--weights", str(checkpoint), "--image-size", "32", *flags,
                                                     "--out", str(out), "--quiet"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["config"]["name"] == "v2-atto" and manifest["config"]["family"] == "v2"
        assert manifest["fusions"]["fold_grn_bias"] == 12 and "fold_layer_scale" not in manifest["fusions"]


def _save(state_dict: dict, name: str):
    def setup(work) -> None:
        torch.save(state_dict, work / name)
    return setup


def _timm_v2_state(seed: int = 6) -> dict[str, torch.Tensor]:
    return timm_v2("atto", seed=seed).state_dict()


def _drop(state: dict, pattern: str) -> dict:
    return {k: v for k, v in state.items() if not re.search(pattern, k)}


def _misshape(state: dict, key: str) -> dict:
    return {**state, key: state[key][:-1]}


V1_TIMM = {k: v for k, v in timm.create_model("convnext_atto", pretrained=False, num_classes=10).state_dict().items()}
V2_TIMM = _timm_v2_state()
FCMAE = {"encoder.downsample_layers.0.0.kernel": torch.zeros(16, 3, 40), "mask_token": torch.zeros(1, 320, 1, 1),
         "decoder.0.weight": torch.zeros(512, 320, 1, 1)}
CASES = [
    BadInput("v2-missing-grn", "convnext-export", ("--weights", "{work}/v2.pth", "--out", "{work}/out"), 2,
             ("timm layout", "ConvNeXt-V2-atto", "missing keys", "stages.1.0.grn.gamma"),
             _save(_drop(V2_TIMM, r"stages\.1\.blocks\.0\.mlp\.grn"), "v2.pth"), ("out",)),
    BadInput("v2-misshaped-grn", "convnext-export", ("--weights", "{work}/v2.pth", "--out", "{work}/out"), 2,
             ("mis-shaped", "stages.0.1.grn.beta", "mlp.grn.bias"),
             _save(_misshape(V2_TIMM, "stages.0.blocks.1.mlp.grn.bias"), "v2.pth"), ("out",)),
    BadInput("v2-with-v1-size", "convnext-export", ("--weights", "{work}/v2.pth", "--size", "atto", "--out",
                                                     "{work}/out"), 2,
             ("ConvNeXt V2 checkpoint", "--size atto is ConvNeXt V1", "v2-atto"), _save(V2_TIMM, "v2.pth"), ("out",)),
    BadInput("v1-with-v2-size", "convnext-export", ("--weights", "{work}/v1.pth", "--size", "v2-atto", "--out",
                                                     "{work}/out"), 2,
             ("ConvNeXt V1 checkpoint", "ConvNeXt V2", "use size 'atto'"), _save(V1_TIMM, "v1.pth"), ("out",)),
    BadInput("v2-fcmae", "convnext-export", ("--weights", "{work}/fcmae.pt", "--out", "{work}/out"), 2,
             ("FCMAE pre-training checkpoint", "fine-tuned"), _save({"model": FCMAE}, "fcmae.pt"), ("out",)),
    BadInput("v2-headless", "convnext-export", ("--weights", "{work}/v2.pth", "--out", "{work}/out"), 2,
             ("ConvNeXt V2", "no classifier head", "FCMAE"), _save(_drop(V2_TIMM, r"^head\.fc\."), "v2.pth"), ("out",)),
    BadInput("v2-unknown-layout", "convnext-export", ("--weights", "{work}/v2.pth", "--out", "{work}/out"), 2,
             ("not a ConvNeXt checkpoint", "first keys"),
             _save({f"backbone.{k}": v for k, v in official_from_timm(V2_TIMM).items()
                    if not k.startswith("stem")}, "v2.pth"), ("out",)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_v2_checkpoints_fail_cleanly(case, tmp_path):
    run_bad_input(case, tmp_path)


@pytest.mark.parametrize("size", ["atto", "v2-atto", "v2-nano"])
def test_parameter_count_is_the_models(size):
    from convnext_export.memory import parameter_count

    config = get_config(size, num_classes=17)
    assert parameter_count(config) == sum(p.numel() for p in build_model(config).parameters())


def test_v2_huge_is_refused_before_any_work():
    from convnext_export.errors import InputError
    from convnext_export.memory import check_export_memory

    with pytest.raises(InputError, match="ConvNeXt-V2-huge .* more than the 2 GiB one ONNX file holds; this tool "
                                         "writes single-file ONNX"):
        check_export_memory(get_config("v2-huge"), 224, "fp32", None)
