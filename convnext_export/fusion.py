"""Inference fusions: small named rewrites from the faithful ConvNeXt to the exported graph.

Each rewrite is a pure function that returns new modules (the input model is untouched):

- ``layernorm_as_one_op``: every LayerNorm (the hand-written channels-first ones included)
  becomes ``F.layer_norm`` over channels-last data, so ONNX gets one ``LayerNormalization``
  per norm between a Transpose pair instead of a ReduceMean/Pow/Sqrt chain.
- ``fold_layernorm_affine``: w, b of a LayerNorm move into the conv/linear that follows:
  W' = W diag(w), c' = c + W b. Exact only when that layer has no zero padding and is the
  norm's only consumer, which holds for every norm but the stem's (it feeds the padded 7x7
  depthwise conv and the first residual, so its affine stays).
- ``pointwise_as_conv1x1``: the block's Linear layers become 1x1 convs on NCHW data, so no
  layout Transpose surrounds them; only the norms see channels-last data.
- ``fold_layer_scale``: gamma scales the second pointwise conv: W'' = diag(g) W2, c'' = g c2.
- ``gelu_as_one_op``: exact GELU, exported as one ONNX ``Gelu`` at opset >= 20.
- ``grn_as_channel_scale`` (V2): GRN on NCHW data as the per-sample channel scale it is,
  x (1 + gamma N) with N = G / (mean_c G + eps) and G the L2 norm over H, W: seven ONNX ops
  (ReduceL2, ReduceMean, Add, Div, Mul, Add, Mul), timm's formula with its epsilon where timm puts it.
- ``fold_grn_bias`` (V2): GRN's beta moves into pwconv2's bias: pwconv2(y + beta) = W y + (W beta + b).

Folds are computed in float64 and rounded once to the weights' dtype.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Container

import torch
import torch.nn.functional as F
from torch import nn

from .model import GRN, Block, ConvNeXt, LayerNorm2d

FUSIONS = (
    "layernorm_as_one_op",
    "fold_layernorm_affine",
    "pointwise_as_conv1x1",
    "fold_layer_scale",
    "gelu_as_one_op",
    "grn_as_channel_scale",
    "fold_grn_bias",
)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of NCHW data, exported as Transpose-LayerNormalization-Transpose."""

    def __init__(self, channels: int, eps: float, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.channels, self.eps = channels, eps
        self.weight = None if weight is None else nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (self.channels,), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LastAxisLayerNorm(ChannelLayerNorm):
    """LayerNorm over the last axis of (N, C) data (the head's), no transposes needed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.channels,), self.weight, self.bias, self.eps)


class ChannelScaleGRN(nn.Module):
    """GRN on NCHW data, its beta folded away: x (1 + gamma N), N = G / (mean_c G + eps), G = ||x||_2 over H, W."""

    def __init__(self, gamma: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(gamma.detach().clone().reshape(1, -1, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.linalg.vector_norm(x, 2, dim=(2, 3), keepdim=True)
        n = g / (g.mean(1, keepdim=True) + self.eps)
        return x * (self.gamma * n + 1)


class FusedBlock(nn.Module):
    """dwconv -> LayerNorm (no affine) -> 1x1 conv -> GELU -> [GRN scale] -> 1x1 conv (gamma / beta folded) -> + x."""

    def __init__(
        self, dwconv: nn.Conv2d, norm: ChannelLayerNorm, pwconv1: nn.Conv2d, pwconv2: nn.Conv2d,
        layer_scale: torch.Tensor | None, grn: ChannelScaleGRN | None = None,
    ) -> None:
        super().__init__()
        self.dwconv, self.norm, self.pwconv1, self.act, self.pwconv2 = dwconv, norm, pwconv1, nn.GELU(), pwconv2
        self.grn = grn
        # Kept separate only where folding would lose precision (the FP16 path decides per block).
        self.layer_scale = None if layer_scale is None else nn.Parameter(layer_scale.detach().clone().view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.pwconv1(self.norm(self.dwconv(x))))
        if self.grn is not None:
            y = self.grn(y)
        y = self.pwconv2(y)
        if self.layer_scale is not None:
            y = y * self.layer_scale
        return x + y


class FusedConvNeXt(nn.Module):
    """The inference graph: same function as ``ConvNeXt``, fewer and larger ops."""

    def __init__(self, stem: nn.Sequential, downsamples: nn.ModuleList, stages: nn.ModuleList,
                 head_norm: LastAxisLayerNorm, head: nn.Linear) -> None:
        super().__init__()
        self.stem, self.downsamples, self.stages = stem, downsamples, stages
        self.head_norm, self.head = head_norm, head

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output (for per-stage drift)."""
        outputs = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsamples[i - 1](x)
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_norm(self.forward_stages(x)[-1].mean((-2, -1))))


def layernorm_as_one_op(norm: LayerNorm2d | nn.LayerNorm, channels_last_input: bool = False) -> ChannelLayerNorm:
    """One ``F.layer_norm`` in place of the hand-written or channels-last LayerNorm."""
    cls = LastAxisLayerNorm if channels_last_input else ChannelLayerNorm
    return cls(norm.weight.shape[0], norm.eps, norm.weight, norm.bias)


@torch.no_grad()
def fold_layernorm_affine(norm: ChannelLayerNorm, layer: nn.Conv2d | nn.Linear) -> tuple[ChannelLayerNorm, nn.Module]:
    """Move the norm's w, b into the following unpadded conv or linear layer."""
    if isinstance(layer, nn.Conv2d) and any(p != 0 for p in layer.padding):
        raise ValueError("a LayerNorm affine folds exactly only into an unpadded conv")
    w, b = norm.weight.double(), norm.bias.double()
    weight = layer.weight.double()
    shape = (1, -1) + (1,) * (weight.ndim - 2)
    folded = copy.deepcopy(layer)
    folded.weight.copy_(weight * w.view(shape))
    bias = layer.bias.double() if layer.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    bias = bias + (weight * b.view(shape)).flatten(1).sum(1)
    if folded.bias is None:
        folded.bias = nn.Parameter(bias.to(layer.weight.dtype))
    else:
        folded.bias.copy_(bias)
    return type(norm)(norm.channels, norm.eps, None, None), folded


@torch.no_grad()
def pointwise_as_conv1x1(linear: nn.Linear) -> nn.Conv2d:
    conv = nn.Conv2d(linear.in_features, linear.out_features, kernel_size=1, bias=linear.bias is not None)
    conv.weight.copy_(linear.weight[:, :, None, None])
    if linear.bias is not None:
        conv.bias.copy_(linear.bias)
    return conv


@torch.no_grad()
def fold_layer_scale(gamma: torch.Tensor, conv: nn.Conv2d) -> nn.Conv2d:
    folded = copy.deepcopy(conv)
    g = gamma.double().flatten()
    folded.weight.copy_(conv.weight.double() * g.view(-1, 1, 1, 1))
    folded.bias.copy_(conv.bias.double() * g)
    return folded


def grn_as_channel_scale(grn: GRN) -> ChannelScaleGRN:
    """GRN without its beta (``fold_grn_bias`` moves it), as one channel scale on NCHW data."""
    return ChannelScaleGRN(grn.gamma.flatten(), grn.eps)


@torch.no_grad()
def fold_grn_bias(beta: torch.Tensor, conv: nn.Conv2d) -> nn.Conv2d:
    """pwconv2(y + beta) = W y + (W beta + b): GRN's beta joins pwconv2's bias."""
    folded = copy.deepcopy(conv)
    weight = conv.weight.double().flatten(1)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    bias = bias + weight @ beta.double().flatten()
    if folded.bias is None:
        folded.bias = nn.Parameter(bias.to(conv.weight.dtype))
    else:
        folded.bias.copy_(bias)
    return folded


def fuse_block(block: Block, fold_gamma: bool = True) -> tuple[FusedBlock, Counter]:
    norm = layernorm_as_one_op(block.norm)
    norm, pwconv1 = fold_layernorm_affine(norm, pointwise_as_conv1x1(block.pwconv1))
    pwconv2 = pointwise_as_conv1x1(block.pwconv2)
    applied = Counter(layernorm_as_one_op=1, fold_layernorm_affine=1, pointwise_as_conv1x1=2, gelu_as_one_op=1)
    grn = None
    if block.grn is not None:
        grn, pwconv2 = grn_as_channel_scale(block.grn), fold_grn_bias(block.grn.beta, pwconv2)
        applied.update(grn_as_channel_scale=1, fold_grn_bias=1)
    layer_scale = block.gamma
    if layer_scale is not None:
        if fold_gamma:
            pwconv2, layer_scale = fold_layer_scale(layer_scale, pwconv2), None
        applied["fold_layer_scale"] += int(fold_gamma)
    fused = FusedBlock(copy.deepcopy(block.dwconv), norm, pwconv1, pwconv2, layer_scale, grn)
    return fused, applied


def fuse_model(model: ConvNeXt, keep_layer_scale: Container[str] = ()) -> tuple[FusedConvNeXt, dict[str, int]]:
    """The fused inference model and how often each fusion was applied.

    ``keep_layer_scale`` names blocks (``stages.i.j``) whose gamma stays a separate multiply.
    """
    applied: Counter = Counter()
    stem_conv, stem_norm = model.downsample_layers[0]
    stem = nn.Sequential(copy.deepcopy(stem_conv), layernorm_as_one_op(stem_norm))  # affine stays: see module doc
    applied["layernorm_as_one_op"] += 1
    downsamples = nn.ModuleList()
    for norm, conv in list(model.downsample_layers)[1:]:
        folded_norm, folded_conv = fold_layernorm_affine(layernorm_as_one_op(norm), conv)
        downsamples.append(nn.Sequential(folded_norm, folded_conv))
        applied.update(layernorm_as_one_op=1, fold_layernorm_affine=1)
    stages = nn.ModuleList()
    for i, stage in enumerate(model.stages):
        blocks = []
        for j, block in enumerate(stage):
            fused, counts = fuse_block(block, fold_gamma=f"stages.{i}.{j}" not in keep_layer_scale)
            blocks.append(fused)
            applied.update(counts)
        stages.append(nn.Sequential(*blocks))
    head_norm, head = fold_layernorm_affine(layernorm_as_one_op(model.norm, channels_last_input=True), model.head)
    applied.update(layernorm_as_one_op=1, fold_layernorm_affine=1)
    fused_model = FusedConvNeXt(stem, downsamples, stages, head_norm, head).eval()
    # Only the fusions this family has: V1 has no GRN, V2 no layer scale.
    return fused_model, {name: applied[name] for name in FUSIONS if name in applied}
