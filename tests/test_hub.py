"""--weights hf-hub:OWNER/NAME: resolved through huggingface_hub against a cache the test builds (offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("huggingface_hub")
pytest.importorskip("timm")

from hub_cache import add_to_cache, timm_atto_state_dict, timm_config  # noqa: E402

from convnext_export.errors import InputError  # noqa: E402
from convnext_export.hub import HubId, parse_hub_id  # noqa: E402
from convnext_export.pipeline import load_reference  # noqa: E402

REPO_ID = "timm/convnext_atto.d2_in1k"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache, offline: huggingface_hub reads both at call time from its constants."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def timm_atto():
    return timm_atto_state_dict(num_classes=10, seed=4)


def test_hub_checkpoint_loads_as_timm_computes_with_the_hub_preprocessing(offline_hub, timm_atto):
    model, state_dict = timm_atto
    add_to_cache(offline_hub, REPO_ID, {"model.safetensors": state_dict, "config.json": timm_config(
        "convnext_atto", 64, 1.0, "bilinear", CIFAR_MEAN, CIFAR_STD, 10)})
    reference = load_reference(None, f"hf-hub:{REPO_ID}", None, 0)
    assert (reference.config.name, reference.config.num_classes, reference.weights.layout) == ("atto", 10, "timm")
    assert reference.weights.hub == f"hf-hub:{REPO_ID}"
    assert Path(reference.weights.path).is_relative_to(offline_hub.resolve())
    # config.json's pretrained_cfg, not the recorded d2_in1k tag (224 px, 0.875, bicubic, ImageNet mean/std)
    pre = reference.preprocessing
    assert (pre.image_size, pre.crop_pct, pre.interpolation, pre.mean, pre.std) == (
        64, 1.0, "bilinear", CIFAR_MEAN, CIFAR_STD)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, timms = reference.model(images).numpy(), model(images).numpy()
    assert np.abs(ours - timms).max() <= 1e-4 * np.abs(timms).max()


def test_safetensors_is_preferred_and_the_tag_table_fills_a_missing_config(offline_hub, timm_atto):
    _, state_dict = timm_atto
    other = {key: torch.zeros_like(value) if key == "head.fc.bias" else value for key, value in state_dict.items()}
    snapshot = add_to_cache(offline_hub, REPO_ID, {"model.safetensors": state_dict})
    torch.save(other, snapshot / "pytorch_model.bin")
    reference = load_reference(None, f"hf-hub:{REPO_ID}", None, 0)
    assert torch.equal(reference.model.head.bias, state_dict["head.fc.bias"])
    # no config.json in the cache: the repository's name is a recorded timm tag (timm's default_cfgs)
    pre = reference.preprocessing
    assert (pre.image_size, pre.crop_pct, pre.interpolation) == (224, 0.875, "bicubic")
    (snapshot / "model.safetensors").unlink()  # only the pickle left: it loads (weights_only, as any .bin)
    assert torch.equal(load_reference(None, f"hf-hub:{REPO_ID}", None, 0).model.head.bias, other["head.fc.bias"])


def test_size_and_tag_are_checked_against_the_hub_weights(offline_hub, timm_atto):
    _, state_dict = timm_atto
    add_to_cache(offline_hub, REPO_ID, {"model.safetensors": state_dict})
    with pytest.raises(InputError, match="size 'convnext_tiny' was requested.*ConvNeXt-atto"):
        load_reference("convnext_tiny", f"hf-hub:{REPO_ID}", None, 0)
    tagged = load_reference("convnext_atto.d2_in1k", f"hf-hub:{REPO_ID}", None, 0, )
    assert tagged.preprocessing.crop_pct == 0.875


@pytest.mark.parametrize("text, parsed", [
    ("hf-hub:timm/convnext_tiny.fb_in1k", HubId("timm/convnext_tiny.fb_in1k")),
    ("hf-hub:timm/convnext_tiny.fb_in1k@v1.0", HubId("timm/convnext_tiny.fb_in1k", "v1.0")),
])
def test_hub_ids_parse(text, parsed):
    assert parse_hub_id(text) == parsed and str(parsed) == text


@pytest.mark.parametrize("text", ["hf-hub:convnext_tiny", "hf-hub:", "hf-hub:a/b/c", "hf-hub:timm/x@", "hf-hub:t/x@a@b"])
def test_malformed_hub_ids_say_the_form(text):
    with pytest.raises(InputError, match="OWNER/NAME"):
        parse_hub_id(text)


def test_cli_exports_hub_weights_offline(tmp_path, timm_atto):
    """The installed console script with HF_HUB_OFFLINE=1 and HF_HUB_CACHE, as a user would run it."""
    model, state_dict = timm_atto
    cache = tmp_path / "hub"
    add_to_cache(cache, REPO_ID, {"model.safetensors": state_dict, "config.json": timm_config(
        "convnext_atto", 64, 1.0, "bicubic", CIFAR_MEAN, CIFAR_STD, 10)})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    script = Path(sys.executable).with_name("convnext-export")
    done = subprocess.run([str(script), "--weights", f"hf-hub:{REPO_ID}", "--out", str(tmp_path / "out"),
                           "--json", "-", "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)["manifest"]
    assert manifest["weights"]["hub"] == f"hf-hub:{REPO_ID}" and manifest["weights"]["layout"] == "timm"
    assert manifest["preprocessing"]["image_size"] == 64 and manifest["preprocessing"]["mean"] == list(CIFAR_MEAN)
    import onnxruntime

    images = np.random.default_rng(1).standard_normal((2, 3, 64, 64), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: images})[0]
    with torch.inference_mode():
        timms = model(torch.from_numpy(images)).numpy()
    assert np.abs(onnx_out - timms).max() <= 1e-4 * np.abs(timms).max()
