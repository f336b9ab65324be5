"""Labeled top-1/top-5 accuracy of any batch runner (eager model or ONNX Runtime session) on a dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .datasets import ImageDataset
from .errors import InputError


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float | None  # None when the model has fewer than 5 classes
    count: int

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_accuracy(
    run_batch: Callable[[np.ndarray], np.ndarray],
    dataset: ImageDataset,
    *,
    batch_size: int = 64,
    progress: bool = True,
    description: str = "accuracy",
) -> Accuracy:
    """Top-1/top-5 of ``run_batch`` (float32 (N,3,H,W) -> logits (N,K)) over a labeled dataset.

    Ties count against the model (a label is within top-k only if fewer than k other classes
    score at least as high), and a row with NaN counts as wrong, so a constant or broken
    output scores 0 rather than passing by luck.
    """
    if dataset.labels is None:
        raise InputError(f"{dataset.path} has no labels ({dataset.kind}); accuracy needs a labeled dataset")
    console = Console(stderr=True)
    hits1 = hits5 = count = 0
    num_classes = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not (progress and console.is_terminal)) as bar:
        task = bar.add_task(description, total=len(dataset))
        for batch in dataset.batches(batch_size):
            logits = np.asarray(run_batch(batch.images))
            num_classes = _check_logits(logits, batch.labels, dataset)
            ranks = _label_ranks(logits, batch.labels)
            hits1 += int((ranks < 1).sum())
            hits5 += int((ranks < 5).sum())
            count += len(ranks)
            bar.update(task, advance=len(ranks), description=f"{description} top-1 {hits1 / count:.2%}")
    if count == 0:
        raise InputError(f"{dataset.path}: no readable images to evaluate")
    return Accuracy(top1=hits1 / count, top5=hits5 / count if num_classes >= 5 else None, count=count)


def torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """A batch runner for an eager model (put in eval mode): no_grad, float32 logits as NumPy."""
    model.eval()
    parameter = next(model.parameters())

    @torch.no_grad()
    def run_batch(images: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(np.ascontiguousarray(images)).to(parameter.device, parameter.dtype)
        return model(inputs).float().cpu().numpy()

    return run_batch


def _label_ranks(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row, how many other classes score at least as high as the true label (0 = top-1)."""
    rows = np.arange(len(labels))
    true_scores = logits[rows, labels][:, None]
    ranks = (logits >= true_scores).sum(axis=1) - 1
    return np.where(np.isnan(logits).any(axis=1), logits.shape[1], ranks)


def _check_logits(logits: np.ndarray, labels: np.ndarray, dataset: ImageDataset) -> int:
    if logits.ndim != 2 or len(logits) != len(labels):
        raise InputError(f"the model returned shape {logits.shape} for {len(labels)} images; expected (N, classes)")
    num_classes = logits.shape[1]
    if dataset.classes is not None and len(dataset.classes) != num_classes:
        raise InputError(
            f"{dataset.path} has {len(dataset.classes)} classes but the model predicts {num_classes}; "
            "evaluate a model on the dataset it was trained for"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise InputError(f"{dataset.path} has labels outside 0..{num_classes - 1} of the model's classes")
    return num_classes
