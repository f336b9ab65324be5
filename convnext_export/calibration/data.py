"""Calibration images: a seeded subset of any dataset form, or seeded noise; split into
calibration batches and a hold-out that validates the quantized model.

Everything downstream sees an iterable of float32 (N, 3, H, W) batches; only ``ranges``
adapts it to ONNX Runtime's reader.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..preprocess import Preprocessing

DEFAULT_CALIB_SIZE = 256
# Real images held out beside the calibration images to validate the INT8 model. A loss of agreement
# with eager is resolvable when it is RESOLVING_DISAGREEMENTS images or more (below that, Poisson noise
# of the few disagreements a good model has hides it): 1,000 images resolve a 1-point loss.
DEFAULT_HOLDOUT = 1000
RESOLVING_DISAGREEMENTS = 10
HOLDOUT_FRACTION = 1 / 8  # synthetic data, and real data with fewer images than calibration + hold-out
MIN_HOLDOUT = 4
SYNTHETIC_WARNING = ("calibrating on synthetic noise: its activation ranges are not representative of real "
                     "images; pass --calib-data with a few hundred images of the model's domain")


@dataclass(frozen=True)
class CalibrationData:
    """Images that set the ranges (``images``), images that check them (``holdout``), and their provenance."""

    images: np.ndarray
    holdout: np.ndarray
    provenance: dict
    notes: tuple[str, ...] = field(default=())

    @property
    def synthetic(self) -> bool:
        return self.provenance["kind"] == "synthetic"

    def batches(self, batch_size: int, pad: bool = False) -> Iterator[np.ndarray]:
        """Calibration images in batches of ``batch_size`` (``pad``: all full, for a static-batch graph)."""
        yield from fixed_batches(self.images, batch_size, pad)

    def describe(self) -> dict:
        """What the manifest records: provenance with the file list reduced to a digest."""
        summary = {k: v for k, v in self.provenance.items() if k != "files"}
        if "files" in self.provenance:
            summary["files_sha256"] = hashlib.sha256(json.dumps(self.provenance["files"]).encode()).hexdigest()
        return {**summary, "calibration_images": len(self.images), "holdout_images": len(self.holdout)}


def fixed_batches(images: np.ndarray, batch_size: int, pad: bool) -> Iterator[np.ndarray]:
    """Consecutive batches; with ``pad`` every batch has exactly ``batch_size`` rows (the last repeats its final image)."""
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if pad and len(batch) < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), axis=0)])
        yield np.ascontiguousarray(batch)


def run_batched(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int | None,
                default_batch: int = 16) -> np.ndarray:
    """Outputs of ``run`` over all images; a static graph batch is filled by padding, the padding dropped."""
    size = batch or default_batch
    outputs = [np.asarray(run(chunk))[: min(size, len(images) - start)]
               for start, chunk in zip(range(0, len(images), size), fixed_batches(images, size, pad=batch is not None))]
    return np.concatenate(outputs)


def holdout_count(total: int) -> int:
    """1/8 of the images, at least 4, never more than half (0 when there is only one image)."""
    return min(max(math.ceil(total * HOLDOUT_FRACTION), MIN_HOLDOUT), total // 2)


def synthetic_images(preprocessing: Preprocessing, count: int, seed: int) -> np.ndarray:
    """Seeded standard-normal images: the scale of normalized pixels, none of their structure."""
    rng = np.random.default_rng(seed)
    size = preprocessing.image_size
    return rng.standard_normal((count, 3, size, size), dtype=np.float32)


def resolvable_loss(holdout: int) -> float:
    """The smallest loss of top-1 agreement a hold-out of this many images resolves (RESOLVING_DISAGREEMENTS)."""
    return min(1.0, RESOLVING_DISAGREEMENTS / max(holdout, 1))


def holdout_description(data: "CalibrationData") -> dict:
    """What the hold-out can tell: its size, the agreement loss it resolves, and in words what it is."""
    held = len(data.holdout)
    loss = resolvable_loss(held)
    if data.synthetic:
        note = (f"{held} hold-out images of synthetic noise: agreement on them is a plumbing check, not an accuracy "
                f"figure; give --calib-data with real images")
    elif loss > resolvable_loss(DEFAULT_HOLDOUT):
        requested = data.provenance.get("requested_holdout") or DEFAULT_HOLDOUT
        why = (f"--calib-data has only {data.provenance.get('count', held)} images"
               if held < requested else f"--holdout {requested} was asked for")
        note = (f"only {held} real images were held out to check the INT8 model, so it can only show a loss of "
                f"top-1 agreement with eager of {loss:.1%} or more, not {resolvable_loss(DEFAULT_HOLDOUT):.0%} "
                f"({why}; {DEFAULT_HOLDOUT} images beyond --calib-size show a 1% loss)")
    else:
        note = (f"{held} real images held out to check the INT8 model: it shows any loss of top-1 agreement with "
                f"eager of {loss:.1%} or more")
    return {"holdout_images": held, "resolves_agreement_loss": loss, "holdout_note": note}


def holdout_split(available: int, calib_size: int, holdout: int | None) -> int:
    """How many of ``available`` images to hold out: ``holdout`` when calibration can keep ``calib_size`` beside
    it, else what is left after calibration, at least 1/8 (never more than half)."""
    if holdout is None:
        return holdout_count(available)
    if available >= calib_size + holdout:
        return holdout
    return min(max(available - calib_size, holdout_count(available)), holdout, available // 2 if available > 1 else 0)


def _split(images: np.ndarray, seed: int, held: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed + 7919).permutation(len(images))
    return images[np.sort(order[held:])], images[np.sort(order[:held])]


def file_provenance(files: list[Path], root: Path) -> list[list]:
    """[relative name, size, mtime] per file: what the cache key hashes."""
    rows = []
    for file in files:
        stat = os.stat(file)
        name = str(file.relative_to(root)) if file != root and root in file.parents else file.name
        rows.append([name, stat.st_size, int(stat.st_mtime_ns)])
    return rows


def load_calibration_data(preprocessing: Preprocessing, path: Path | None, size: int = DEFAULT_CALIB_SIZE,
                          seed: int = 0, log: Callable[[str], None] = lambda message: None,
                          holdout: int | None = None) -> CalibrationData:
    """``size`` seeded calibration images from ``path`` (any form ``open_dataset`` reads) and ``holdout`` more to
    validate on (default ``DEFAULT_HOLDOUT``; fewer where the data has fewer, see ``holdout_split``). With no
    ``path``, seeded noise: ``holdout`` more images, or by default 1/8 of ``size`` held out (a plumbing check)."""
    if size < 1:
        raise InputError(f"--calib-size {size}: calibrate on at least 1 image (default {DEFAULT_CALIB_SIZE})")
    if holdout is not None and holdout < 1:
        raise InputError(f"--holdout {holdout}: validate on at least 1 image (default {DEFAULT_HOLDOUT})")
    if path is None:
        log(f"warning: {SYNTHETIC_WARNING}")
        images = synthetic_images(preprocessing, size + (holdout or 0), seed)
        calibration, holdout_images = _split(images, seed, holdout or holdout_count(size))
        provenance = {"kind": "synthetic", "seed": seed, "count": size}
        return CalibrationData(calibration, holdout_images, provenance, (SYNTHETIC_WARNING,))
    from ..datasets import open_dataset

    path = Path(path)
    holdout = DEFAULT_HOLDOUT if holdout is None else holdout
    wanted = size + holdout
    try:
        dataset = open_dataset(path, preprocessing, limit=wanted, seed=seed)
    except InputError as error:
        raise InputError(f"--calib-data: {error}") from None
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chunks = [batch.images for batch in dataset.batches(64)]
    for warning in caught:
        log(f"warning: {warning.message}")
        notes.append(str(warning.message))
    if not chunks:
        raise InputError(f"--calib-data {path}: none of its {len(dataset)} image files could be decoded "
                         f"({', '.join(dataset.undecodable[:5])}{', ...' if len(dataset.undecodable) > 5 else ''}); "
                         f"give a folder of JPEG/PNG images or a .npy/.npz array")
    images = np.concatenate(chunks).astype(np.float32, copy=False)
    calibration, holdout_images = _split(images, seed, holdout_split(len(images), size, holdout))
    if len(images) < wanted:
        bad = dataset.undecodable
        named = (f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}) and "
                 f"{'was' if len(bad) == 1 else 'were'} skipped")
        if len(dataset) < wanted:
            found = f"{path} has only {len(dataset)} image files" + (
                f", and {len(bad)} of them could not be decoded {named}" if bad else "")
        else:
            found = f"{len(bad)} of the {len(dataset)} image files chosen from {path} could not be decoded {named}"
        note = (f"--calib-size {size} + --holdout {holdout}: {found}; using {len(images)}: {len(calibration)} to "
                f"calibrate, {len(holdout_images)} held out to validate")
        log(note)
        notes.append(note)
    if len(holdout_images) == 0:
        note = "only one calibration image: the export is validated on that same image"
        log(f"warning: {note}")
        notes.append(note)
        holdout_images = calibration
    files = dataset.files()
    root = path if path.is_dir() else path.parent
    provenance = {"kind": "dataset", "path": str(path.resolve()), "form": dataset.kind, "seed": seed,
                  "count": len(images), "requested": size, "requested_holdout": holdout,
                  "skipped_files": dataset.skipped, "converted_16bit_images": len(dataset.converted),
                  "files": file_provenance(files, root)}
    return CalibrationData(calibration, holdout_images, provenance, tuple(notes))
