"""The committed reference models: load through the CLI with their sidecar preprocessing, and are really trained.

Two references with different activation statistics: the project's ConvNeXt in the official layout
(reference.json) and timm's conv_mlp ConvNeXt in timm's layout (convnext_atto_cifar10_timm.json).
"""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from convnext_export.cli import export_command
from convnext_export.datasets import open_dataset
from convnext_export.evaluate import evaluate_accuracy, torch_runner
from convnext_export.pipeline import load_reference, sidecar_preprocessing

REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference"

# sidecar, layout, floor for the recorded 8,000-image top-1, floor for top-1 on the seeded 500-image subset
# (measured: 78.5% / 80.8% for the first, 69.1% / 70.6% for timm's; chance is 10%)
REFERENCES = [
    pytest.param("reference.json", "official", 0.75, 0.70, id="project-official"),
    pytest.param("convnext_atto_cifar10_timm.json", "timm", 0.65, 0.60, id="timm-conv-mlp"),
]


def sidecar(name: str) -> dict:
    return json.loads((REFERENCE / name).read_text())


@pytest.mark.parametrize("name, layout, full_floor, subset_floor", REFERENCES)
def test_sidecar_says_how_it_was_made(name, layout, full_floor, subset_floor):
    info = sidecar(name)
    for key in ("checkpoint", "size", "image_size", "num_classes", "classes", "crop_pct", "interpolation", "mean",
                "std", "test_top1", "onnx_fp32_test_top1", "train_seconds", "command"):
        assert key in info, key
    assert info["layout"] == layout
    assert (REFERENCE / info["checkpoint"]).is_file()
    assert info["test_top1"] >= full_floor


@pytest.mark.parametrize("name, layout, full_floor, subset_floor", REFERENCES)
def test_checkpoint_finds_its_own_sidecar(name, layout, full_floor, subset_floor):
    found = sidecar_preprocessing(REFERENCE / sidecar(name)["checkpoint"])
    assert found is not None and found[1] == REFERENCE / name


@pytest.mark.parametrize("name, layout, full_floor, subset_floor", REFERENCES)
def test_export_reads_size_classes_and_preprocessing_from_the_checkpoint(tmp_path, name, layout, full_floor,
                                                                         subset_floor):
    info = sidecar(name)
    out = tmp_path / "ref"
    result = CliRunner().invoke(export_command, ["--weights", str(REFERENCE / info["checkpoint"]), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["name"] == info["size"] and manifest["config"]["num_classes"] == 10
    assert manifest["weights"]["layout"] == layout
    assert manifest["preprocessing"] == {k: info[k] for k in ("image_size", "crop_pct", "interpolation", "mean", "std")}


@pytest.mark.parametrize("name, layout, full_floor, subset_floor", REFERENCES)
def test_reference_is_trained_on_real_test_images(shared_data, name, layout, full_floor, subset_floor):
    reference = load_reference(None, REFERENCE / sidecar(name)["checkpoint"], None, 0)
    dataset = open_dataset(shared_data / "cifar10" / "test", reference.preprocessing, limit=500, seed=0,
                           require_labels=True)
    accuracy = evaluate_accuracy(torch_runner(reference.model), dataset, progress=False)
    assert accuracy.count == 500
    assert accuracy.top1 >= subset_floor


@torch.no_grad()
def test_timm_reference_loads_as_timm_runs_it(shared_data):
    """The project's loader (timm layout, 1x1-conv MLP reshaped) gives timm's own logits on real images."""
    timm = pytest.importorskip("timm")
    checkpoint = REFERENCE / sidecar("convnext_atto_cifar10_timm.json")["checkpoint"]
    reference = load_reference(None, checkpoint, None, 0)
    peer = timm.create_model("convnext_atto", num_classes=10).eval()
    peer.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True), strict=True)
    dataset = open_dataset(shared_data / "cifar10" / "test", reference.preprocessing, limit=16, seed=0)
    images = torch.from_numpy(next(dataset.batches(16)).images)
    expected = peer(images)
    assert expected.abs().max() > 1.0  # trained logits, not near-zero ones that would agree trivially
    torch.testing.assert_close(reference.model.eval()(images), expected, rtol=0, atol=1e-4)
