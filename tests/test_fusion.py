import copy

import pytest
import torch
from torch import nn

from convnext_export.config import get_config, size_names
from convnext_export.fusion import (
    ChannelLayerNorm, fold_layer_scale, fold_layernorm_affine, fuse_model, layernorm_as_one_op, pointwise_as_conv1x1,
)
from convnext_export.model import LayerNorm2d, build_model

from helpers import make_trained_like, relative_drift, sizes_marking_heavy_slow



def _float64_layernorm(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    x = x.double()
    mean = x.mean(1, keepdim=True)
    var = ((x - mean) ** 2).mean(1, keepdim=True)
    return weight.double()[:, None, None] * (x - mean) / torch.sqrt(var + eps) + bias.double()[:, None, None]


def test_layernorm_as_one_op_matches_float64_channel_norm():
    norm = make_trained_like(LayerNorm2d(16))
    x = torch.randn(2, 16, 5, 5) * 3 + 1
    reference = _float64_layernorm(x, norm.weight, norm.bias, norm.eps)
    assert relative_drift(layernorm_as_one_op(norm)(x), reference) < 1e-6
    assert relative_drift(norm(x), reference) < 1e-6


@pytest.mark.parametrize("kernel", [1, 2])
def test_fold_layernorm_affine_into_unpadded_conv(kernel):
    norm = layernorm_as_one_op(make_trained_like(LayerNorm2d(12)))
    conv = nn.Conv2d(12, 20, kernel_size=kernel, stride=kernel)
    x = torch.randn(2, 12, 8, 8)
    plain_norm, folded = fold_layernorm_affine(norm, conv)
    assert plain_norm.weight is None and plain_norm.bias is None
    assert relative_drift(folded(plain_norm(x)), conv(norm(x))) < 1e-6


def test_fold_layernorm_affine_refuses_a_padded_conv():
    norm = layernorm_as_one_op(LayerNorm2d(4))
    with pytest.raises(ValueError, match="unpadded"):
        fold_layernorm_affine(norm, nn.Conv2d(4, 4, 3, padding=1))


def test_pointwise_as_conv1x1_and_fold_layer_scale():
    linear, gamma = nn.Linear(8, 6), torch.rand(6) + 0.1
    x = torch.randn(2, 8, 4, 4)
    expected = gamma * linear(x.permute(0, 2, 3, 1))
    conv = fold_layer_scale(gamma, pointwise_as_conv1x1(linear))
    assert relative_drift(conv(x).permute(0, 2, 3, 1), expected) < 1e-6


def test_rewrites_leave_the_input_model_untouched():
    model = make_trained_like(build_model(get_config("atto", 10)))
    before = copy.deepcopy(model.state_dict())
    fuse_model(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("size", sizes_marking_heavy_slow(size_names()))
def test_fused_matches_unfused_for_every_size(size):
    model = make_trained_like(build_model(get_config(size, num_classes=10), seed=1))
    fused, applied = fuse_model(model)
    config = model.config
    assert applied["layernorm_as_one_op"] == config.num_layernorms
    assert applied["fold_layernorm_affine"] == config.num_layernorms - 1  # all but the stem's
    per_block = {"fold_grn_bias", "grn_as_channel_scale"} if config.uses_grn else {"fold_layer_scale"}
    absent = {"fold_layer_scale"} if config.uses_grn else {"fold_grn_bias", "grn_as_channel_scale"}
    assert all(applied[name] == config.num_blocks for name in per_block) and not absent & set(applied)
    assert applied["pointwise_as_conv1x1"] == 2 * config.num_blocks
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert relative_drift(fused(x), model(x)) <= 1e-5


def test_keep_layer_scale_leaves_gamma_as_a_multiply():
    model = make_trained_like(build_model(get_config("atto", 10)))
    fused, applied = fuse_model(model, keep_layer_scale={"stages.0.1", "stages.2.3"})
    assert applied["fold_layer_scale"] == model.config.num_blocks - 2
    assert fused.stages[0][1].layer_scale is not None and fused.stages[0][0].layer_scale is None
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert relative_drift(fused(x), model(x)) <= 1e-5


def test_stem_norm_keeps_its_affine():
    fused, _ = fuse_model(make_trained_like(build_model(get_config("atto"))))
    stem_norm = fused.stem[1]
    assert isinstance(stem_norm, ChannelLayerNorm) and stem_norm.weight is not None
    assert all(d[0].weight is None for d in fused.downsamples)
