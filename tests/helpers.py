"""Shared test helpers: trained-like weights, so the 1e-6 layer-scale init hides no mistake."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def make_trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Layer scales ~ U(0.2, 1), GRN gamma ~ 0.5 N and beta ~ 0.1 N, LayerNorm weights ~ 1 + 0.3 N, biases ~ 0.1 N,
    in place."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if ".grn." in f".{name}":  # V2's GRN (ours gamma/beta, timm's and HF's weight/bias): 0 at init = identity
            scale = 0.5 if leaf in ("gamma", "weight") else 0.1
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
        elif leaf in ("gamma", "layer_scale", "layer_scale_parameter"):
            parameter.copy_(torch.rand(parameter.shape, generator=generator) * 0.8 + 0.2)
    for module in model.modules():
        if "LayerNorm" in type(module).__name__ and getattr(module, "weight", None) is not None:
            module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model


def relative_drift(out, ref) -> float:
    out = np.asarray(out.detach() if isinstance(out, torch.Tensor) else out, np.float64)
    ref = np.asarray(ref.detach() if isinstance(ref, torch.Tensor) else ref, np.float64)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def trained_like(model: nn.Module, seed: int) -> nn.Module:
    """The shared trained-like weights, plus non-zero conv/linear biases so a misplaced bias shows; eval mode."""
    make_trained_like(model, seed)
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(0.02 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A model's logits, whether it returns them or a transformers output holding them."""
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


HEAVY_SIZES = {"small", "base", "large", "xlarge", "v2-small", "v2-base", "v2-large", "v2-huge"}


def sizes_marking_heavy_slow(names: list[str]) -> list:
    """pytest params over sizes, the heavy ones marked ``slow``."""
    import pytest

    return [pytest.param(s, marks=pytest.mark.slow) if s in HEAVY_SIZES else s for s in names]
