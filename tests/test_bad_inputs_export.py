"""Bad inputs to convnext-export (issue 16): each exits 2 with a message naming the input, never a traceback or a
hang, leaving every input byte-identical and nothing behind (tests/bad_input.py checks all of it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bad_input import REFERENCE, BadInput, run_bad_input

TINY = ("--size", "atto", "--image-size", "32")
INT8 = (*TINY, "--int8", "--calib-size", "4", "--holdout", "2")


def _checkpoint(work: Path) -> None:
    (work / "ck").mkdir()
    shutil.copy(REFERENCE, work / "ck" / REFERENCE.name)


def _images(work: Path, name: str = "data", count: int = 6) -> None:
    rng = np.random.default_rng(0)
    (work / name).mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(work / name / f"{i}.png")


def _array(name: str, transform=lambda a: a, npz: bool = False):
    def setup(work: Path) -> None:
        images = transform(np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
        if npz:
            with open(work / name, "wb") as handle:  # np.savez would append .npz to the name
                np.savez(handle, images=images)
        else:
            np.save(work / name, images)
    return setup


def _poison(value: float, index: tuple = (3, 1, 2, 2)):
    def transform(images: np.ndarray) -> np.ndarray:
        images[index] = value
        return images
    return transform


def _state_dict(edit=lambda sd: sd) -> callable:
    def setup(work: Path) -> None:
        state = torch.load(REFERENCE, weights_only=True)["model"]
        torch.save({"model": edit(state)}, work / "w.pth")
    return setup


def _nan_weights(state: dict) -> dict:
    state["stages.2.3.pwconv1.weight"][0, 0] = float("nan")
    state["head.bias"][1] = float("inf")
    return state


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _write(name: str, data: bytes):
    return lambda work: (work / name).write_bytes(data)


def _fifo(name: str):
    return lambda work: os.mkfifo(work / name)


def _git_tree(work: Path) -> None:
    (work / "repo" / ".git").mkdir(parents=True)
    (work / "repo" / "code.py").write_text("print('mine')\n")


def _link_to_checkpoint_folder(work: Path) -> None:
    _checkpoint(work)
    (work / "link").symlink_to(work / "ck", target_is_directory=True)


def _cache(work: Path) -> None:
    (work / "c").mkdir()
    (work / "c" / "calibration_cache.json").write_text("{}\n")


CASES = [
    # 1. inputs are never deleted: the three commands, and their kin
    BadInput("out-holds-the-weights", "convnext-export",
             ("--weights", "ck/convnext_atto_cifar10.pth", "--out", "ck", "--force"), 2,
             ("--out ck contains the --weights input",), _checkpoint),
    BadInput("out-is-the-calib-data", "convnext-export", (*INT8, "--calib-data", "data", "--out", "data", "--force"),
             2, ("--out data is the --calib-data input",), _images),
    BadInput("out-is-the-current-directory", "convnext-export", (*TINY, "--out", ".", "--force"), 2,
             ("is the current directory",)),
    BadInput("out-inside-the-calib-data", "convnext-export",
             (*INT8, "--calib-data", "data", "--out", "data/new", "--force"), 2, ("lies inside the --calib-data",),
             _images),
    BadInput("out-holds-the-calib-cache", "convnext-export",
             (*INT8, "--calib-cache", "c/calibration_cache.json", "--out", "c", "--force"), 2,
             ("contains the --calib-cache input",), _cache),
    BadInput("out-is-a-symlink-to-the-weights-folder", "convnext-export",
             ("--weights", "ck/convnext_atto_cifar10.pth", "--out", "link", "--force"), 2,
             ("contains the --weights input",), _link_to_checkpoint_folder),
    BadInput("out-is-a-git-work-tree", "convnext-export", (*TINY, "--out", "repo", "--force"), 2,
             ("is the git work tree",), _git_tree),
    # 2. non-finite anywhere
    BadInput("mean-nan", "convnext-export", (*TINY, "--mean", "nan,nan,nan", "--out", "o"), 2,
             ("--mean", "finite")),
    BadInput("std-inf", "convnext-export", (*TINY, "--std", "inf,inf,inf", "--out", "o"), 2, ("--std", "finite")),
    BadInput("std-zero", "convnext-export", (*TINY, "--std", "0.2,0,0.2", "--out", "o"), 2, ("--std", "> 0")),
    BadInput("calib-npy-nan", "convnext-export", (*INT8, "--calib-data", "x.npy", "--out", "o"), 2,
             ("--calib-data", "x.npy: image 3 holds NaN"), _array("x.npy", _poison(np.nan))),
    BadInput("calib-npz-inf", "convnext-export", (*INT8, "--calib-data", "x.npz", "--out", "o"), 2,
             ("x.npz: image 6 holds infinity",), _array("x.npz", _poison(np.inf, (6, 0, 0, 0)), npz=True)),
    BadInput("weights-nan-inf", "convnext-export", ("--weights", "w.pth", "--out", "o"), 2,
             ("2 weight tensor(s) hold NaN or infinity", "stages.2.3.pwconv1.weight", "head.bias"),
             _state_dict(_nan_weights)),
    # 3. never a traceback, never a hang
    BadInput("npz-named-npy-is-read-by-content", "convnext-export", ("--size", "atto", "--int8", "--calib-data",
             "x.npy", "--out", "o"), 2, ("holds preprocessed images of shape (8, 3, 32, 32)", "224 px"),
             _array("x.npy", npz=True)),
    BadInput("num-classes-1e12", "convnext-export", (*TINY, "--num-classes", "1e12", "--out", "o"), 2,
             ("--num-classes", "not a valid integer")),
    BadInput("num-classes-10-to-the-12", "convnext-export", (*TINY, "--num-classes", str(10**12), "--out", "o"), 2,
             ("1,000,000,000,000 classes", "2 GiB", "--num-classes")),
    BadInput("holdout-1e9", "convnext-export", (*TINY, "--int8", "--holdout", "1000000000", "--out", "o"), 2,
             ("calibration images take", "--calib-size")),
    BadInput("seed-2-to-the-64", "convnext-export", (*TINY, "--seed", str(2**64), "--out", "o"), 2,
             ("--seed", "0<=x<=9223372036854775807")),
    BadInput("int8-seed-minus-1", "convnext-export", (*INT8, "--seed", "-1", "--out", "o"), 2, ("--seed",)),
    BadInput("opset-99", "convnext-export", (*TINY, "--opset", "99", "--out", "o"), 2, ("--opset", "17<=x<=25")),
    BadInput("weights-fifo", "convnext-export", ("--weights", "w.pth", "--out", "o"), 2,
             ("not a regular file",), _fifo("w.pth"), process=True),
    BadInput("calib-data-fifo-npy", "convnext-export", (*INT8, "--calib-data", "x.npy", "--out", "o"), 2,
             ("x.npy is not a dataset",), _fifo("x.npy"), process=True),
    # checkpoints
    BadInput("weights-is-a-directory", "convnext-export", ("--weights", "ck", "--out", "o"), 2, ("is a directory",),
             _checkpoint),
    BadInput("weights-sidecar-nan-mean", "convnext-export", ("--weights", "ck/convnext_atto_cifar10.pth", "--out", "o"),
             2, ("sidecar's preprocessing cannot be used", "finite"), lambda work: (_checkpoint(work), (
                 work / "ck" / "convnext_atto_cifar10.json").write_text(
                 '{"image_size": 64, "crop_pct": 1.0, "interpolation": "bicubic", "mean": [NaN, 0.5, 0.5], '
                 '"std": [0.2, 0.2, 0.2]}'))),
    BadInput("weights-truncated", "convnext-export", ("--weights", "t.pth", "--out", "o"), 2,
             ("t.pth", "truncated"), _write("t.pth", REFERENCE.read_bytes()[:100_000])),
    BadInput("weights-wrong-layout", "convnext-export", ("--weights", "w.pth", "--out", "o"), 2,
             ("not a ConvNeXt checkpoint", "conv1.weight"),
             _state_dict(lambda sd: {"conv1.weight": sd["head.weight"], "fc.bias": sd["head.bias"]})),
    BadInput("weights-text-file", "convnext-export", ("--weights", "notes.pth", "--out", "o"), 2,
             ("it is a text file",), _write("notes.pth", b"these are my notes\n")),
    BadInput("weights-malicious-pickle", "convnext-export", ("--weights", "evil.pth", "--out", "o"), 2,
             ("refused to load", "would execute pickled code"),
             lambda work: torch.save({"model": _Exploit()}, work / "evil.pth")),
    BadInput("weights-object-array", "convnext-export", ("--weights", "obj.pth", "--out", "o"), 2,
             ("refused to load",),
             lambda work: torch.save({"model": np.array([{"a": 1}], dtype=object)}, work / "obj.pth")),
    # calibration data
    BadInput("calib-empty-folder", "convnext-export", (*INT8, "--calib-data", "empty", "--out", "o"), 2,
             ("empty holds no images",), lambda work: (work / "empty").mkdir()),
    BadInput("calib-non-images", "convnext-export", (*INT8, "--calib-data", "docs", "--out", "o"), 2,
             ("docs holds no images",),
             lambda work: ((work / "docs").mkdir(), (work / "docs" / "a.txt").write_text("text"))),
    BadInput("calib-undecodable-images", "convnext-export", (*INT8, "--calib-data", "bad", "--out", "o"), 2,
             ("none of its 2 image files could be decoded",),
             lambda work: ((work / "bad").mkdir(), (work / "bad" / "a.png").write_bytes(b"\x89PNG broken"),
                           (work / "bad" / "b.jpg").write_bytes(b"\xff\xd8 broken"))),
    BadInput("calib-npy-wrong-shape", "convnext-export", (*INT8, "--calib-data", "x.npy", "--out", "o"), 2,
             ("holds a float32 array of shape (8, 32, 32)",),
             lambda work: np.save(work / "x.npy", np.zeros((8, 32, 32), np.float32))),
    # options
    BadInput("calib-percentile-out-of-range", "convnext-export", (*INT8, "--calib-percentile", "nan", "--out", "o"),
             2, ("--calib-percentile nan",)),
    BadInput("max-drift-above-one", "convnext-export", (*INT8, "--max-drift", "2", "--out", "o"), 2,
             ("--max-drift 2.0",)),
    BadInput("batch-zero", "convnext-export", (*TINY, "--batch", "0", "--out", "o"), 2, ("--batch",)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_cleanly(case: BadInput, tmp_path: Path) -> None:
    done = run_bad_input(case, tmp_path)
    assert not (tmp_path / "work" / "pwned").exists(), done.stdout + done.stderr
