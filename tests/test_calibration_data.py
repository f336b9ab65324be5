"""What the calibration step says about the images it could and could not use: numbers that add up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from convnext_export.calibration.data import load_calibration_data
from convnext_export.preprocess import Preprocessing

SMALL = Preprocessing(image_size=32, crop_pct=1.0)


def _folder(tmp_path: Path, good: int, corrupt: int) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(good):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    for i in range(corrupt):
        (folder / f"broken{i}.jpg").write_bytes(rng.bytes(500))
    return folder


def test_fewer_images_than_asked_with_a_corrupt_one_adds_up(tmp_path):
    folder, logged = _folder(tmp_path, good=20, corrupt=1), []
    data = load_calibration_data(SMALL, folder, size=256, log=logged.append)
    assert len(data.images) + len(data.holdout) == 20
    assert logged == [
        f"warning: {folder}: skipped 1 file(s): 1 could not be decoded as an image (broken0.jpg)",
        f"--calib-size 256 + --holdout 1000: {folder} has only 21 image files, and 1 of them could not be decoded (broken0.jpg) and "
        f"was skipped; using 20: {len(data.images)} to calibrate, {len(data.holdout)} held out to validate",
    ]
    assert (len(data.images), len(data.holdout)) == (16, 4)


def test_corrupt_images_among_those_chosen_are_counted_and_named(tmp_path):
    folder, logged = _folder(tmp_path, good=30, corrupt=2), []
    data = load_calibration_data(SMALL, folder, size=24, holdout=8, log=logged.append)
    assert len(data.images) + len(data.holdout) == 30
    assert logged[-1] == (f"--calib-size 24 + --holdout 8: 2 of the 32 image files chosen from {folder} could not be decoded "
                          f"(broken0.jpg, broken1.jpg) and were skipped; using 30: {len(data.images)} to calibrate, "
                          f"{len(data.holdout)} held out to validate")


def test_enough_readable_images_need_no_note(tmp_path):
    folder, logged = _folder(tmp_path, good=12, corrupt=0), []
    data = load_calibration_data(SMALL, folder, size=8, holdout=4, log=logged.append)
    assert logged == [] and (len(data.images), len(data.holdout)) == (8, 4)
