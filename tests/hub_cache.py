"""A Hugging Face Hub cache built on disk, as huggingface_hub lays it out, for offline tests of hf-hub: ids."""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch

REVISION = "0123456789abcdef0123456789abcdef01234567"  # a commit hash, as refs/main holds


def add_to_cache(cache: Path, repo_id: str, files: dict[str, bytes | dict]) -> Path:
    """models--OWNER--NAME/{refs/main, snapshots/REV/FILE}: bytes as given, dicts of tensors as safetensors.
    Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    for name, content in files.items():
        if isinstance(content, dict):
            safetensors.torch.save_file({k: v.contiguous() for k, v in content.items()}, str(snapshot / name))
        else:
            (snapshot / name).write_bytes(content)
    return snapshot


def timm_config(architecture: str, image_size: int, crop_pct: float, interpolation: str,
                mean: tuple[float, ...], std: tuple[float, ...], num_classes: int) -> bytes:
    """config.json as timm pushes it to the hub (architecture, num_classes, pretrained_cfg)."""
    return json.dumps({
        "architecture": architecture, "num_classes": num_classes, "num_features": 320,
        "pretrained_cfg": {"tag": "test", "custom_load": False, "input_size": [3, image_size, image_size],
                           "fixed_input_size": False, "interpolation": interpolation, "crop_pct": crop_pct,
                           "crop_mode": "center", "mean": list(mean), "std": list(std), "num_classes": num_classes,
                           "pool_size": [2, 2], "first_conv": "stem.0", "classifier": "head.fc"},
    }).encode()


def timm_atto_state_dict(num_classes: int, seed: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """timm's own ConvNeXt-atto with random, trained-like weights, and its (timm-layout) state dict."""
    import timm
    from helpers import make_trained_like

    model = make_trained_like(timm.create_model("convnext_atto", pretrained=False, num_classes=num_classes),
                              seed=seed).eval()
    return model, model.state_dict()
