"""Accuracy against answers known in advance, and an eager tiny ConvNeXt through torch_runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from convnext_export.config import get_config
from convnext_export.datasets import open_dataset
from convnext_export.errors import InputError
from convnext_export.evaluate import Accuracy, evaluate_accuracy, torch_runner
from convnext_export.model import build_model
from convnext_export.preprocess import Preprocessing

TINY = Preprocessing(image_size=8, crop_pct=1.0)
# The rank the fake model gives each sample's true label: 0 = top-1, 1..4 = top-5 only, >= 5 = miss.
RANKS = [0, 0, 3, 7, 0, 1, 9, 4, 5, 0, 2]


def indexed_dataset(tmp_path: Path, labels: np.ndarray):
    """Images whose every pixel is the sample's index, so a fake model can look up its answer."""
    images = np.broadcast_to(np.arange(len(labels), dtype=np.float32)[:, None, None, None], (len(labels), 3, 8, 8))
    np.savez(tmp_path / "data.npz", images=np.ascontiguousarray(images), labels=labels)
    return open_dataset(tmp_path / "data.npz", TINY)


def ranked_runner(labels: np.ndarray, ranks: list[int], num_classes: int):
    """Logits with distinct scores where sample i's true label sits at rank ranks[i]."""
    def run_batch(images: np.ndarray) -> np.ndarray:
        logits = []
        for index in images[:, 0, 0, 0].astype(int):
            others = [c for c in range(num_classes) if c != labels[index]]
            order = others[: ranks[index]] + [int(labels[index])] + others[ranks[index] :]
            row = np.empty(num_classes, np.float32)
            row[order] = np.linspace(10, 0, num_classes)
            logits.append(row)
        return np.stack(logits)

    return run_batch


def test_exact_top1_and_top5(tmp_path: Path) -> None:
    labels = np.arange(len(RANKS)) % 10
    dataset = indexed_dataset(tmp_path, labels)
    accuracy = evaluate_accuracy(ranked_runner(labels, RANKS, 10), dataset, batch_size=3, progress=False)
    assert accuracy == Accuracy(top1=4 / 11, top5=8 / 11, count=11)
    assert accuracy.to_dict() == {"top1": 4 / 11, "top5": 8 / 11, "count": 11}


def test_no_top5_below_five_classes(tmp_path: Path) -> None:
    labels = np.arange(6) % 3
    accuracy = evaluate_accuracy(ranked_runner(labels, [0, 1, 2, 0, 0, 1], 3), indexed_dataset(tmp_path, labels), progress=False)
    assert accuracy == Accuracy(top1=3 / 6, top5=None, count=6)


def test_ties_and_nan_count_as_wrong(tmp_path: Path) -> None:
    labels = np.arange(6) % 6
    dataset = indexed_dataset(tmp_path, labels)
    assert evaluate_accuracy(lambda x: np.zeros((len(x), 6), np.float32), dataset, progress=False).top1 == 0.0
    assert evaluate_accuracy(lambda x: np.full((len(x), 6), np.nan, np.float32), dataset, progress=False).top5 == 0.0


def test_unlabeled_or_mismatched_datasets_are_input_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match="labels"):
        evaluate_accuracy(lambda x: np.zeros((len(x), 10)), open_dataset(tmp_path / "x.npy", TINY), progress=False)
    dataset = indexed_dataset(tmp_path, np.array([0, 7]))
    with pytest.raises(InputError, match="labels outside"):
        evaluate_accuracy(lambda x: np.zeros((len(x), 5)), dataset, progress=False)


def test_eager_tiny_convnext_through_torch_runner(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((20, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, 20)
    np.savez(tmp_path / "data.npz", images=images, labels=labels)
    model = build_model(get_config("atto", 10))
    accuracy = evaluate_accuracy(
        torch_runner(model), open_dataset(tmp_path / "data.npz", Preprocessing(32, 1.0)), batch_size=8, progress=False
    )
    with torch.no_grad():
        top5 = model(torch.from_numpy(images)).topk(5).indices.numpy()
    assert accuracy.count == 20
    assert accuracy.top1 == np.mean(top5[:, 0] == labels)
    assert accuracy.top5 == np.mean((top5 == labels[:, None]).any(axis=1))
