"""The committed reference model: loads through the CLI with its sidecar preprocessing, and is really trained."""

import json
from pathlib import Path

from click.testing import CliRunner

from convnext_export.cli import export_command
from convnext_export.datasets import open_dataset
from convnext_export.evaluate import evaluate_accuracy, torch_runner
from convnext_export.pipeline import load_reference

REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference"


def test_reference_json_says_how_it_was_made():
    info = json.loads((REFERENCE / "reference.json").read_text())
    for key in ("checkpoint", "size", "image_size", "num_classes", "classes", "crop_pct", "interpolation", "mean",
                "std", "test_top1", "train_seconds", "command"):
        assert key in info, key
    assert (REFERENCE / info["checkpoint"]).is_file()
    assert info["test_top1"] >= 0.75


def test_export_reads_size_classes_and_preprocessing_from_the_checkpoint(tmp_path):
    info = json.loads((REFERENCE / "reference.json").read_text())
    out = tmp_path / "ref"
    result = CliRunner().invoke(export_command, ["--weights", str(REFERENCE / info["checkpoint"]), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["name"] == info["size"] and manifest["config"]["num_classes"] == 10
    assert manifest["weights"]["layout"] == "official"
    assert manifest["preprocessing"] == {k: info[k] for k in ("image_size", "crop_pct", "interpolation", "mean", "std")}


def test_reference_is_trained_on_real_test_images(shared_data):
    reference = load_reference(None, REFERENCE / "convnext_atto_cifar10.pth", None, 0)
    dataset = open_dataset(shared_data / "cifar10" / "test", reference.preprocessing, limit=500, seed=0,
                           require_labels=True)
    accuracy = evaluate_accuracy(torch_runner(reference.model), dataset, progress=False)
    assert accuracy.count == 500
    assert accuracy.top1 >= 0.70  # 78.5% on all 8,000; a 500-image subset stays well above chance (10%)
