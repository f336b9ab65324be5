"""Issue 16, export side: 16-bit images read at their depth, one export per --out, SIGKILL leaves nothing unswept."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_input import ORT_TELEMETRY_FILES, REPO, _console_script
from convnext_export.datasets import open_dataset
from convnext_export.preprocess import Preprocessing

TINY = ("--size", "atto", "--image-size", "32")


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """uint16 (H, W) grey or (H, W, 3) RGB -> a 16-bit PNG, written by hand (Pillow writes no 48-bit RGB)."""
    height = pixels.shape[0]
    rows = pixels.astype(">u2").reshape(height, -1).tobytes()
    stride = len(rows) // height
    raw = b"".join(b"\x00" + rows[i * stride:(i + 1) * stride] for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", pixels.shape[1], height, 16, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def float_reference(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """float64 normalization of 16-bit pixels at full depth (no resize: the images are made at the input size)."""
    x = pixels.astype(np.float64) / 65535.0
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    x = (x - np.asarray(preprocessing.mean)) / np.asarray(preprocessing.std)
    return np.moveaxis(x, -1, 0)


def test_16_bit_pngs_are_scaled_to_8_bits_not_clipped_and_counted(tmp_path):
    """Grey (mode I;16) and 48-bit RGB PNGs agree with a float64 reading of their 16-bit values to within 8-bit
    rounding; convert("RGB") used to clip grey values above 255 (almost every pixel)."""
    preprocessing = Preprocessing(image_size=32, crop_pct=1.0)  # 32 px images: resize and crop are no-ops
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65536, (32, 32), dtype=np.uint16)
    rgb = rng.integers(0, 65536, (32, 32, 3), dtype=np.uint16)
    folder = tmp_path / "images"
    folder.mkdir()
    write_png16(folder / "grey16.png", grey)
    write_png16(folder / "rgb48.png", rgb)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "rgb8.png")
    assert Image.open(folder / "grey16.png").mode == "I;16"
    dataset = open_dataset(folder, preprocessing)
    with pytest.warns(UserWarning, match=r"2 image\(s\) of 16 bits per channel scaled to 8 bits"):
        images = np.concatenate([batch.images for batch in dataset.batches(8)])
    step = 1 / 255 / min(preprocessing.std)  # one 8-bit level, normalized
    names = [f.name for f in dataset.files()]
    # grey: rounded to the nearest 8-bit level (half a level); RGB: Pillow keeps the high byte (under one level)
    assert np.abs(images[names.index("grey16.png")] - float_reference(grey, preprocessing)).max() <= step / 2 + 1e-6
    assert np.abs(images[names.index("rgb48.png")] - float_reference(rgb, preprocessing)).max() <= step + 1e-6
    assert sorted(dataset.converted) == ["grey16.png", "rgb48.png"]


def test_16_bit_calibration_images_are_counted_in_the_manifest(tmp_path):
    from click.testing import CliRunner

    from convnext_export.cli import export_command

    rng = np.random.default_rng(1)
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(6):
        write_png16(folder / f"g{i}.png", rng.integers(0, 65536, (40, 40), dtype=np.uint16))
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "c.png")
    out = tmp_path / "int8"
    result = CliRunner().invoke(export_command, [*TINY, "--int8", "--calib-data", str(folder), "--calib-size", "4",
                                                 "--holdout", "3", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    calibration = json.loads((out / "manifest.json").read_text())["calibration"]
    assert calibration["converted_16bit_images"] == 6 and calibration["skipped_files"] == 0
    assert any("6 image(s) of 16 bits per channel scaled to 8 bits" in note for note in calibration["notes"])


def _export(out: Path, tmpdir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.Popen([_console_script("convnext-export"), *TINY, *args, "--out", str(out), "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=out.parent)


def _wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the export ended first (exit {process.returncode}): {process.stdout.read()}"
        assert time.monotonic() < deadline, "the export never reached the awaited step"
        time.sleep(0.02)


def _in_tmpdir(scratch: Path) -> list[str]:
    """What a run left in its TMPDIR, less ONNX Runtime's telemetry session file (bad_input.ORT_TELEMETRY_FILES)."""
    return sorted(p.name for p in scratch.iterdir() if p.name not in ORT_TELEMETRY_FILES)


def _left(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith((".partial", ".lock", ".old")))


def test_a_second_export_to_the_same_out_is_refused_naming_the_first(tmp_path):
    """Two real exports: the second, started while the first writes --out, exits 2 naming the first's PID;
    the first (paused meanwhile) finishes and its artifact is the one in --out."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "same"
    first = _export(out, scratch)
    try:
        _wait_for(lambda: (tmp_path / ".same.lock").exists(), first)
        first.send_signal(signal.SIGSTOP)  # holds the lock for as long as the second one runs
        second = _export(out, scratch, "--seed", "1", "--force")
        output, _ = second.communicate(timeout=120)
        assert second.returncode == 2, output
        assert f"another export (pid {first.pid} on" in " ".join(output.split()) and "Traceback" not in output
        first.send_signal(signal.SIGCONT)
        output, _ = first.communicate(timeout=300)
        assert first.returncode == 0, output
    finally:
        first.kill()
        first.wait()
    assert json.loads((out / "manifest.json").read_text())["weights"]["seed"] == 0  # the first one's
    assert _left(tmp_path) == [] and _in_tmpdir(scratch) == []


def test_sigkill_mid_int8_export_leaves_nothing_a_rerun_does_not_sweep(tmp_path):
    """The FP32 working graph and ONNX Runtime's scratch live in the staging folder, not $TMPDIR: killed while
    it works, the export leaves only its staging folder and lock, and the next export to --out removes both."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "k"
    args = ("--int8", "--calib-size", "8", "--holdout", "4")
    killed = _export(out, scratch, *args)
    try:
        _wait_for(lambda: any(tmp_path.glob(".k.pid*.partial/.scratch/fp32.onnx")), killed)
        killed.kill()
        killed.wait(timeout=60)
    finally:
        killed.kill()
        killed.wait()
    assert _in_tmpdir(scratch) == []  # nothing in TMPDIR even before the sweep
    assert any(name.endswith(".partial") for name in _left(tmp_path))
    rerun = _export(out, scratch, *args)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert _left(tmp_path) == [] and _in_tmpdir(scratch) == []
    assert (out / "model.onnx").is_file() and not (out / ".scratch").exists()


def test_disk_full_while_writing_is_a_clear_failure_that_leaves_nothing(tmp_path, monkeypatch):
    """ENOSPC from the model write (half a file written first): exit 1 naming the full disk, no traceback, no
    --out, no staging folder or lock."""
    import errno

    import onnx
    from click.testing import CliRunner

    from convnext_export.cli import export_command

    def full_disk(proto, path, *args, **kwargs):
        Path(path).write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(onnx, "save", full_disk)
    out = tmp_path / "o"
    result = CliRunner().invoke(export_command, [*TINY, "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "the disk is full (No space left on device writing" in " ".join(result.output.split())
    assert "nothing was written" in result.output and result.exception is None or isinstance(result.exception,
                                                                                             SystemExit)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_non_finite_bench_data_is_refused_by_the_shared_loader(tmp_path):
    """convnext-bench --data and --calib-data read arrays through open_dataset: NaN rows are refused there."""
    from convnext_export.errors import InputError

    images = np.zeros((4, 3, 32, 32), np.float32)
    images[2, 0, 5, 5] = np.nan
    np.save(tmp_path / "x.npy", images)
    with pytest.raises(InputError, match=r"x.npy: image 2 holds NaN \(1 of its 3072 values\)"):
        open_dataset(tmp_path / "x.npy", Preprocessing(image_size=32))


def test_json_written_is_strict_json_without_nan_literals(tmp_path):
    """A NaN or infinity in a summary or manifest becomes null: every strict parser reads the file."""
    from convnext_export.files import json_text

    def strict(text: str):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON literal {name}"))

    payload = {"drift": {"cosine_min": float("nan"), "relative": [float("inf"), -float("inf"), 0.5]}, "n": 3}
    assert strict(json_text(payload)) == {"drift": {"cosine_min": None, "relative": [None, None, 0.5]}, "n": 3}
