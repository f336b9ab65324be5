"""Checkpoint loading, checked against the peer implementations' own forward passes."""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import pathlib
import re

import numpy as np
import pytest
import safetensors.torch
import torch

from convnext_export.checkpoints import detect_layout, file_sha256, load_checkpoint, read_state_dict, to_official
from convnext_export.errors import InputError
from helpers import logits, relative_drift, trained_like

timm = pytest.importorskip("timm")

TOLERANCE = 1e-5  # relative max-abs drift of the logits


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def timm_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of timm's checkpoint_filter_fn, written independently for the test."""
    renames = [
        (r"^stem\.", "downsample_layers.0."),
        (r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
        (r"\.conv_dw\.", ".dwconv."),
        (r"\.mlp\.fc([12])\.", r".pwconv\1."),
        (r"^head\.norm\.", "norm."),
        (r"^head\.fc\.", "head."),
    ]
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[key] = value.flatten(1) if value.ndim == 4 and "pwconv" in key else value
    return out


@pytest.fixture(scope="module")
def timm_tiny(tmp_path_factory):
    model = trained_like(timm.create_model("convnext_tiny", pretrained=False), seed=1)
    path = tmp_path_factory.mktemp("timm_tiny") / "convnext_tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def timm_atto(tmp_path_factory):
    """timm's conv_mlp variant with a 7-class head: model, its state dict, its logits on images()."""
    model = trained_like(timm.create_model("convnext_atto", pretrained=False, num_classes=7), seed=2)
    state_dict = {key: value.clone() for key, value in model.state_dict().items()}
    return model, state_dict, logits(model, images())


# --- layouts against their own implementations ---------------------------------------------


def test_timm_tiny_matches_timm(timm_tiny):
    model, path = timm_tiny
    loaded = load_checkpoint(path)
    assert loaded.layout == "timm"
    assert loaded.config.name == "tiny"
    assert loaded.config.num_classes == model.num_classes
    assert relative_drift(logits(loaded.model, images()), logits(model, images())) < TOLERANCE


def test_timm_atto_conv_mlp_matches_timm(timm_atto, tmp_path):
    model, state_dict, reference = timm_atto
    assert state_dict["stages.0.blocks.0.mlp.fc1.weight"].ndim == 4  # the conv_mlp layout is exercised
    path = tmp_path / "atto.pth"
    torch.save(state_dict, path)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.config.name) == ("timm", "atto")
    assert loaded.config.depths == tuple(len(stage.blocks) for stage in model.stages)
    assert loaded.config.dims == tuple(stage.blocks[0].conv_dw.out_channels for stage in model.stages)
    assert loaded.config.num_classes == 7
    assert not loaded.model.training and loaded.model.head.weight.dtype == torch.float32
    assert relative_drift(logits(loaded.model, images()), reference) < TOLERANCE


def test_torchvision_tiny_matches_torchvision(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    model = trained_like(torchvision.models.convnext_tiny(weights=None), seed=3)
    path = tmp_path / "convnext_tiny-tv.pth"
    torch.save(model.state_dict(), path)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.config.name, loaded.config.num_classes) == ("torchvision", "tiny", 1000)
    assert relative_drift(logits(loaded.model, images()), logits(model, images())) < TOLERANCE


def test_official_layout_in_training_wrapper_matches_timm(timm_tiny, tmp_path):
    model, _ = timm_tiny
    official = timm_to_official(model.state_dict())
    # The test's inverse map is itself checked against timm's converter from the official layout.
    back = timm.models.convnext.checkpoint_filter_fn(dict(official), model)
    assert back.keys() == model.state_dict().keys()
    path = tmp_path / "checkpoint-best.pth"
    torch.save({"model": official, "args": argparse.Namespace(model="convnext_tiny", lr=4e-3), "epoch": 3}, path)
    loaded = load_checkpoint(path, size="tiny", num_classes=1000)
    assert (loaded.layout, loaded.config.name) == ("official", "tiny")
    assert relative_drift(logits(loaded.model, images()), logits(model, images())) < TOLERANCE


def test_huggingface_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.ConvNextConfig(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768], num_labels=10)
    model = trained_like(transformers.ConvNextForImageClassification(hf_config), seed=4)
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(model.state_dict(), path)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.config.name, loaded.config.num_classes) == ("huggingface", "tiny", 10)
    assert loaded.config.head_norm_eps == hf_config.layer_norm_eps == loaded.model.norm.eps
    assert loaded.config.norm_eps == 1e-6
    assert relative_drift(logits(loaded.model, images()), logits(model, images())) < TOLERANCE
    # The same weights without the ``convnext.`` prefix are recognised and renamed identically.
    state_dict = model.state_dict()
    bare = {key.removeprefix("convnext."): value for key, value in state_dict.items()}
    assert detect_layout(bare) == "huggingface"
    assert to_official(bare, "huggingface").keys() == to_official(state_dict, "huggingface").keys()


def test_huggingface_save_directory_supplies_layer_norm_eps(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.ConvNextConfig(depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320], num_labels=3,
                                            layer_norm_eps=1e-5)
    transformers.ConvNextForImageClassification(hf_config).save_pretrained(tmp_path)  # config.json + model.safetensors
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert loaded.config.head_norm_eps == 1e-5 == loaded.model.norm.eps


# --- wrappers and file formats ---------------------------------------------------------------


class _ArbitraryDict(collections.OrderedDict):
    """A class the loader has no reason to trust."""


class _RunsCodeOnLoad:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


WRAPPERS = {
    "plain.pt": lambda sd: sd,
    "timm-train.pth.tar": lambda sd: {"state_dict": sd, "epoch": 5, "optimizer": {"state": {}, "param_groups": []}},
    "ema-only.pth": lambda sd: {"model_ema": sd},
    "dataparallel.bin": lambda sd: {f"module.{key}": value for key, value in sd.items()},
    "lightning.ckpt": lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": 10},
    "lightning-extra.ckpt": lambda sd: {
        "state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "criterion.weight": torch.ones(7)}
    },
    "numpy-extras.pth": lambda sd: {
        "model": sd,
        "args": argparse.Namespace(lr=1e-3),
        "max_accuracy": np.float64(81.5),
        "step": np.int64(3),
        "dtype": np.dtype("float32"),
    },
}


def assert_same_tensors(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_wrapped_checkpoints_unwrap_to_the_weights(name, timm_atto, tmp_path):
    _, state_dict, _ = timm_atto
    path = tmp_path / name
    torch.save(WRAPPERS[name](state_dict), path)
    assert_same_tensors(read_state_dict(path), state_dict)


def test_safetensors_file_reads(timm_atto, tmp_path):
    _, state_dict, _ = timm_atto
    path = tmp_path / "atto.safetensors"
    safetensors.torch.save_file(state_dict, path)
    assert_same_tensors(read_state_dict(path), state_dict)


def test_plain_weights_preferred_over_ema(timm_atto, tmp_path):
    _, state_dict, _ = timm_atto
    ema = {key: value * 0.5 for key, value in state_dict.items()}
    for plain_key, ema_key in [("model", "model_ema"), ("state_dict", "state_dict_ema")]:
        path = tmp_path / f"{plain_key}-and-ema.pth"
        torch.save({ema_key: ema, plain_key: state_dict}, path)  # EMA first: order must not matter
        assert_same_tensors(read_state_dict(path), state_dict)


def test_wrapped_checkpoint_loads_end_to_end(timm_atto, tmp_path):
    _, state_dict, reference = timm_atto
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(WRAPPERS["numpy-extras.pth"]({f"module.{k}": v for k, v in state_dict.items()}), path)
    loaded = load_checkpoint(path)
    assert (loaded.layout, loaded.config.name) == ("timm", "atto")
    assert relative_drift(logits(loaded.model, images()), reference) < TOLERANCE


def test_file_sha256_is_of_the_file_bytes(timm_atto, tmp_path):
    path = tmp_path / "atto.pth"
    torch.save(timm_atto[1], path)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == expected
    assert load_checkpoint(path).sha256 == expected


# --- errors a user can act on ---------------------------------------------------------------


def save(tmp_path: pathlib.Path, payload: object, name: str = "ckpt.pth") -> pathlib.Path:
    path = tmp_path / name
    torch.save(payload, path)
    return path


def test_explicit_size_and_classes_must_agree(timm_atto, tmp_path):
    path = save(tmp_path, timm_atto[1])
    with pytest.raises(InputError, match=r"'tiny'.*ConvNeXt-atto"):
        load_checkpoint(path, size="tiny")
    with pytest.raises(InputError, match="has 7 classes"):
        load_checkpoint(path, num_classes=1000)
    with pytest.raises(InputError, match="valid sizes"):
        load_checkpoint(path, size="gigantic")
    assert load_checkpoint(path, size="atto", num_classes=7).config.name == "atto"


def test_unregistered_size_lists_what_was_found(tmp_path):
    model = timm.models.convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), num_classes=3)
    with pytest.raises(InputError) as error:
        load_checkpoint(save(tmp_path, model.state_dict()))
    message = str(error.value)
    assert "[1, 1, 2, 1]" in message and "[8, 16, 32, 64]" in message
    assert "atto" in message and "xlarge" in message


def test_other_architecture_names_its_keys(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    state_dict = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(InputError, match=r"not a ConvNeXt checkpoint.*conv1\.weight"):
        load_checkpoint(save(tmp_path, state_dict))


def test_misshaped_tensor_names_key_and_both_shapes(timm_atto, tmp_path):
    state_dict = dict(timm_atto[1])
    state_dict["stages.1.blocks.0.conv_dw.weight"] = torch.zeros(80, 1, 5, 5)
    with pytest.raises(InputError) as error:
        load_checkpoint(save(tmp_path, state_dict))
    message = str(error.value)
    assert "timm layout" in message and "stages.1.blocks.0.conv_dw.weight" in message
    assert "(80, 1, 5, 5)" in message and "(80, 1, 7, 7)" in message


def test_missing_and_unexpected_keys_are_listed(timm_atto, tmp_path):
    state_dict = dict(timm_atto[1])
    del state_dict["stages.2.blocks.3.norm.bias"]
    state_dict["stages.2.blocks.3.extra.weight"] = torch.zeros(3)
    with pytest.raises(InputError) as error:
        load_checkpoint(save(tmp_path, state_dict))
    message = str(error.value)
    assert "missing keys (1): stages.2.3.norm.bias" in message
    assert "unexpected keys (1)" in message and "stages.2.blocks.3.extra.weight" in message


@pytest.mark.parametrize(
    "payload, global_name",
    [
        (lambda tmp: _ArbitraryDict({"stem.0.weight": torch.zeros(1)}), "_ArbitraryDict"),
        (lambda tmp: {"model": {"stem.0.weight": torch.zeros(1)}, "out_dir": pathlib.Path("runs")}, "Path"),
        (lambda tmp: {"model": {"stem.0.weight": torch.zeros(1)}, "hook": _RunsCodeOnLoad(tmp / "pwned")}, "mkdir"),
    ],
    ids=["class-from-test-module", "pathlib", "code-on-load"],
)
def test_pickled_code_is_refused(payload, global_name, tmp_path):
    path = save(tmp_path, payload(tmp_path))
    with pytest.raises(InputError, match="would execute pickled code") as error:
        read_state_dict(path)
    message = str(error.value)
    assert str(path) in message and global_name in message and "safetensors" in message
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "name, content",
    [
        ("missing.pth", None),
        ("notes.pth", b"hello, not a checkpoint"),
        ("empty.pt", b""),
        ("broken.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}"),
        ("weights.txt", b"anything"),
    ],
)
def test_unreadable_files_name_the_path(name, content, tmp_path):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_directory_and_tensorless_checkpoints(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        read_state_dict(tmp_path)
    with pytest.raises(InputError, match=r"no weight tensors.*epoch"):
        read_state_dict(save(tmp_path, {"epoch": 3, "args": argparse.Namespace()}))
    with pytest.raises(InputError, match="not a state dict"):
        read_state_dict(save(tmp_path, [torch.zeros(1)]))
