"""The faithful ConvNeXt V1 and V2 (facebookresearch/ConvNeXt models/convnext.py, ConvNeXt-V2 models/convnextv2.py).

Parameter names follow the official checkpoints, so the official layout loads as is and
every other layout is a rename onto it (see ``checkpoints``). This is the eager reference
that every export is compared with; ``fusion`` derives the inference graph from it.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ConvNeXtConfig


class LayerNorm2d(nn.Module):
    """The official channels-first LayerNorm, written out as the paper's code does."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class DropPath(nn.Module):
    """Stochastic depth per sample; the identity at inference."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2) on channels-last data, the official code's formula.

    G = ||x||_2 over H, W (per sample and channel); N = G / (mean_c G + eps); out = gamma (x N) + beta + x.
    gamma and beta start at 0, so GRN starts as the identity.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * n) + self.beta + x


class Block(nn.Module):
    """dwconv 7x7 -> LayerNorm -> Linear C->4C -> GELU -> [GRN, V2] -> Linear 4C->C -> [gamma, V1] -> + x."""

    def __init__(self, dim: int, layer_scale_init: float | None, eps: float, drop_path: float = 0.0,
                 grn_eps: float | None = None) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = None if grn_eps is None else GRN(4 * dim, grn_eps)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = None if layer_scale_init is None else nn.Parameter(layer_scale_init * torch.ones(dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)
        x = self.act(self.pwconv1(self.norm(x)))
        if self.grn is not None:
            x = self.grn(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


class ConvNeXt(nn.Module):
    def __init__(self, config: ConvNeXtConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.config = config
        dims, eps = config.dims, config.norm_eps
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps))]
            + [
                nn.Sequential(LayerNorm2d(dims[i - 1], eps), nn.Conv2d(dims[i - 1], dims[i], kernel_size=2, stride=2))
                for i in range(1, 4)
            ]
        )
        rates = torch.linspace(0, drop_path_rate, config.num_blocks).tolist()
        self.stages = nn.ModuleList()
        first = 0
        for depth, dim in zip(config.depths, dims):
            self.stages.append(
                nn.Sequential(*[Block(dim, config.layer_scale_init, eps, rates[first + j],
                                      config.grn_eps if config.uses_grn else None) for j in range(depth)])
            )
            first += depth
        self.norm = nn.LayerNorm(dims[-1], eps=config.head_norm_eps)
        self.head = nn.Linear(dims[-1], config.num_classes)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.forward_features(x).mean((-2, -1))))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def build_model(config: ConvNeXtConfig, seed: int = 0) -> ConvNeXt:
    """A ConvNeXt with seeded random weights, in eval mode."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = ConvNeXt(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()
