import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from convnext_export.artifact import SCHEMA, read_artifact
from convnext_export.cli import export_command

from helpers import make_trained_like, relative_drift

REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference" / "convnext_atto_cifar10.pth"


def invoke(*args: str):
    return CliRunner().invoke(export_command, list(args), catch_exceptions=False)


def _no_partial_dirs(parent: Path) -> bool:
    return not any(".partial" in p.name or p.name.endswith(".old") for p in parent.iterdir())


def test_export_writes_model_and_manifest(tmp_path):
    out = tmp_path / "atto"
    result = invoke("--size", "atto", "--image-size", "64", "--num-classes", "10", "--out", str(out), "--seed", "5")
    assert result.exit_code == 0, result.output
    for word in ("model", "ops", "fusions", "drift", "LayerNormalization 17", "fold_layer_scale x12"):
        assert word in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema"] == SCHEMA and manifest["precision"] == "fp32"
    assert manifest["weights"] == {"kind": "random", "seed": 5}
    assert manifest["config"]["name"] == "atto" and manifest["config"]["num_classes"] == 10
    assert manifest["preprocessing"]["image_size"] == 64
    assert manifest["drift"]["relative_max_abs"] <= 1e-4
    assert manifest["fusions"]["layernorm_as_one_op"] == 17
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest["versions"])
    artifact = read_artifact(out)  # sha256 verified
    assert artifact.batch is None and artifact.opset == 20


def test_json_to_stdout_is_clean_json(tmp_path):
    result = CliRunner().invoke(
        export_command, ["--size", "atto", "--image-size", "32", "--out", str(tmp_path / "a"), "--json", "-", "--quiet"]
    )
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["manifest"]["config"]["name"] == "atto" and summary["op_census"]["Gelu"] == 12


def test_no_fuse_static_batch_and_opset(tmp_path):
    out = tmp_path / "faithful"
    result = invoke("--size", "atto", "--image-size", "32", "--no-fuse", "--batch", "3", "--opset", "18",
                    "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["batch"] == 3 and manifest["opset"] == 18 and not any(manifest["fusions"].values())
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [3, 3, 32, 32]


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["--size", "huge"], 2, ["huge", "atto", "xlarge"]),
        (["--weights", "does/not/exist.pth"], 2, ["does/not/exist.pth", "does not exist"]),
        (["--opset", "16"], 2, ["--opset", "17"]),
        (["--int8", "--fp16"], 2, ["--fp16", "--int8"]),
        (["--batch", "0"], 2, ["--batch"]),
        (["--mean", "0.5,0.5"], 2, ["three comma-separated"]),
    ],
)
def test_usage_errors(args, code, words, tmp_path):
    result = CliRunner().invoke(export_command, args + ["--out", str(tmp_path / "x")])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output
    assert not (tmp_path / "x").exists()


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    checkpoint = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, checkpoint)
    result = CliRunner().invoke(export_command, ["--weights", str(checkpoint), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "resnet.pth" in result.output and "conv1.weight" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists() and _no_partial_dirs(tmp_path)


def test_mis_shaped_checkpoint_names_the_key(tmp_path):
    from convnext_export.config import get_config
    from convnext_export.model import build_model

    state = build_model(get_config("atto", 10)).state_dict()
    state["stages.1.0.pwconv1.weight"] = torch.zeros(320, 81)
    checkpoint = tmp_path / "bad.pth"
    torch.save({"model": state}, checkpoint)
    result = CliRunner().invoke(export_command, ["--weights", str(checkpoint), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "stages.1.0.pwconv1.weight" in result.output and "(320, 81)" in result.output
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(export_command, ["--size", "atto", "--image-size", "32", "--out", str(out)])
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    result = CliRunner().invoke(export_command, ["--size", "atto", "--image-size", "32", "--out", str(out), "--force", "-q"])
    assert result.exit_code == 0 and not (out / "keep.txt").exists() and (out / "model.onnx").is_file()
    assert _no_partial_dirs(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; the read-only check needs a normal user")
def test_unwritable_out_is_a_usage_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = CliRunner().invoke(export_command, ["--size", "atto", "--image-size", "32", "--out", str(locked / "a")])
    assert result.exit_code == 2, result.output
    assert f"{locked} cannot be written to (Permission denied)" in result.output
    assert "choose an --out directory you can write to" in result.output


def test_out_the_filesystem_refuses_is_a_usage_error_naming_the_directory(tmp_path, monkeypatch):
    """As root (where the chmod test above skips) the refusal is simulated where the staging folder is made."""
    import convnext_export.artifact as artifact

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(artifact.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(artifact.tempfile, "mkdtemp", refuse)
    result = CliRunner().invoke(export_command, ["--size", "atto", "--image-size", "32", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2, result.output
    assert f"--out {tmp_path / 'a'}: {tmp_path} cannot be written to (Permission denied); choose an --out directory " \
           "you can write to" in " ".join(result.output.split())
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []


def test_out_under_a_file_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(export_command, ["--size", "atto", "--image-size", "32", "--out", str(blocker / "a")])
    assert result.exit_code == 2, result.output
    assert f"{blocker} is a file, not a directory" in result.output and "Traceback" not in result.output


def test_help_documents_the_exit_codes():
    from convnext_export.cli import bench_command

    for command in (export_command, bench_command):
        text = CliRunner().invoke(command, ["--help"]).output
        for line in ("0    done", "1    failure", "2    usage error or bad input", "130  interrupted (Ctrl-C)",
                     "143  terminated (SIGTERM"):
            assert line in text, (command.name, text[-600:])


def test_ctrl_c_during_export_exits_130_and_leaves_nothing(tmp_path, monkeypatch):
    import convnext_export.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "check_fp32_drift", interrupted)
    result = CliRunner().invoke(export_command, ["--size", "atto", "--image-size", "32", "--out", str(tmp_path / "a")])
    assert result.exit_code == 130 and "Aborted: interrupted (Ctrl-C)" in result.output
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_export_leaves_nothing(tmp_path, monkeypatch):
    import convnext_export.pipeline as pipeline

    def too_far(drift, limit=1e-4):
        from convnext_export.errors import ConvNeXtExportError
        raise ConvNeXtExportError("FP32 ONNX drift 1e-2 vs eager exceeds 1e-4: the export is wrong, nothing was written")

    monkeypatch.setattr(pipeline, "check_fp32_drift", too_far)
    out = tmp_path / "never"
    result = CliRunner().invoke(export_command, ["--size", "atto", "--image-size", "32", "--out", str(out)])
    assert result.exit_code == 1 and "exceeds 1e-4" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_timm_checkpoint_through_onnx_matches_timm(tmp_path):
    timm = pytest.importorskip("timm")
    reference = make_trained_like(timm.create_model("convnext_tiny", pretrained=False, num_classes=10), seed=4).eval()
    checkpoint = tmp_path / "timm_tiny.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(checkpoint))
    out = tmp_path / "tiny"
    result = invoke("--weights", str(checkpoint), "--image-size", "64", "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"]["layout"] == "timm" and manifest["config"]["name"] == "tiny"
    assert manifest["config"]["num_classes"] == 10
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = reference(x).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert relative_drift(session.run(None, {"input": x.numpy()})[0], expected) <= 1e-4


def test_installed_console_script_runs(tmp_path):
    script = shutil.which("convnext-export", path=str(Path(sys.executable).parent))
    assert script, "convnext-export is not installed in this environment (pip install -e .)"
    out = tmp_path / "sub"
    done = subprocess.run([script, "--size", "atto", "--image-size", "32", "--out", str(out), "--json", "-", "-q"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["manifest"]["precision"] == "fp32"
    bad = subprocess.run([script, "--size", "huge"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "atto" in bad.stderr


def _words(output: str) -> str:
    """The summary as one line: rich wraps long cells over several lines."""
    return " ".join(output.split())


def test_random_weights_int8_summary_calls_its_drift_a_plumbing_check(tmp_path):
    """make run's first job (random weights, synthetic calibration): its agreement is not shown as accuracy."""
    out = tmp_path / "int8"
    result = invoke("--size", "atto", "--image-size", "32", "--num-classes", "10", "--int8", "--calib-size", "24",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    held = manifest["drift"]["samples"]
    assert ("drift plumbing check, not an accuracy figure (random, untrained weights on "
            f"{held} synthetic noise images)") in _words(result.output)
    assert manifest["drift"]["meaning"] == {
        "kind": "plumbing-check", "weights": "random", "inputs": "synthetic", "images": held,
        "text": f"plumbing check, not an accuracy figure (random, untrained weights on {held} synthetic noise images)"}
    assert manifest["fp32_drift"]["meaning"]["kind"] == "plumbing-check"


def test_trained_reference_with_real_calibration_reports_a_measurement(shared_data, tmp_path):
    """make run's second job, smaller: the committed CIFAR-10 reference calibrated and checked on real images."""
    out = tmp_path / "reference"
    result = invoke("--weights", str(REFERENCE), "--int8", "--calib-data", str(shared_data / "cifar10" / "train"),
                    "--calib-size", "32", "--holdout", "48", "--out", str(out))
    assert result.exit_code == 0, result.output
    words = _words(result.output)
    assert "drift measured on 48 real images with checkpoint weights" in words
    assert "plumbing" not in words and "not an accuracy figure" not in words
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["drift"]["meaning"]["kind"] == "real-images" and manifest["drift"]["samples"] == 48
    assert manifest["weights"]["kind"] == "checkpoint" and manifest["calibration"]["kind"] == "dataset"

    # The bench's per-stage drift of this artifact: its residual streams are equalized (x / s inside each stage),
    # and the stage outputs are compared with eager in the model's units, not the equalized ones (that compared
    # x / s with x: cosine 0.72-0.94 on a model agreeing 99% with eager).
    from convnext_export.bench.stages import stage_drift, stream_restore_scales
    from convnext_export.datasets import open_dataset
    from convnext_export.pipeline import rebuild_reference

    artifact = read_artifact(out)
    assert sorted(stream_restore_scales(onnx.load(str(artifact.model_path)), 4)) == [0, 1, 2, 3]
    test = open_dataset(shared_data / "cifar10" / "test", artifact.preprocessing, limit=16)
    images = np.concatenate([batch.images for batch in test.batches(16)])
    stages = stage_drift(artifact, rebuild_reference(artifact), images)
    assert all(stage["cosine_mean"] > 0.99 and stage["relative_rms"] < 0.15 for stage in stages), stages


def _staging_of(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("signum, code, words", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                 (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_signal_mid_export_removes_the_staging_folder_and_exits_128_plus_signal(signum, code, words, tmp_path):
    """What `timeout`, CI and `docker stop` (SIGTERM) or Ctrl-C (SIGINT) do to a running export."""
    script = shutil.which("convnext-export", path=str(Path(sys.executable).parent))
    out = tmp_path / "term"
    # SIG_DFL: a child of a non-interactive shell may start with SIGINT ignored, and Python then keeps ignoring it
    process = subprocess.Popen([script, "--size", "atto", "--image-size", "64", "--out", str(out), "-q"],
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not any(p.suffix == ".partial" for p in _staging_of(out)) and process.poll() is None:
        assert time.monotonic() < deadline, "the export never created its staging folder"
        time.sleep(0.05)
    assert process.poll() is None, "the export finished before it could be interrupted"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert f"Aborted: {words}" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # no artifact, no .term.*.partial, no lock


def test_a_killed_exports_staging_folder_is_swept_by_the_next_export(tmp_path):
    """SIGKILL cannot be cleaned up after: the next export to the same --out removes what it left."""
    owner = subprocess.Popen([sys.executable, "-c", STAGING_OWNER, str(tmp_path / "k")], stdout=subprocess.PIPE,
                             text=True)
    staging = Path(owner.stdout.readline().strip())
    assert staging.is_dir() and staging.name.startswith(".k.pid")
    owner.kill()
    owner.wait(timeout=60)
    assert staging.is_dir()  # what the audit found: a killed export's folder stays behind
    result = invoke("--size", "atto", "--image-size", "32", "--out", str(tmp_path / "k"))
    assert result.exit_code == 0, result.output
    assert f"removed{staging},leftbyanexportto" in "".join(result.output.split())  # rich wraps long paths
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_a_live_exports_staging_folder_is_left_alone(tmp_path):
    """Another export still running into the same --out keeps its folder, and a second export to it is refused
    naming the first (issue 16: both used to exit 0, the second replacing the first)."""
    from convnext_export.artifact import staged_directory, sweep_stale_staging
    from convnext_export.errors import InputError

    owner = subprocess.Popen([sys.executable, "-c", STAGING_OWNER, str(tmp_path / "k")], stdout=subprocess.PIPE,
                             text=True)
    try:
        staging = Path(owner.stdout.readline().strip())
        assert sweep_stale_staging(tmp_path / "k") == [] and staging.is_dir()
        with pytest.raises(InputError, match=f"another export \\(pid {owner.pid} on "):
            with staged_directory(tmp_path / "k", force=False):
                pass
        assert staging.is_dir() and not (tmp_path / "k").exists()
        with staged_directory(tmp_path / "other", force=False) as mine:  # another --out beside it is free
            (mine / "model.onnx").write_text("mine")
        assert (tmp_path / "other" / "model.onnx").read_text() == "mine"
    finally:
        owner.kill()
        owner.wait(timeout=60)
    assert sweep_stale_staging(tmp_path / "k") == [staging] and not staging.exists()


def test_an_artifact_moved_aside_by_a_killed_export_is_put_back(tmp_path):
    """Killed between moving the old artifact aside and renaming the new one in: the old one returns."""
    from convnext_export.artifact import sweep_stale_staging

    lock, trash, staging = (tmp_path / f".k.pid999999.abcdefgh.{end}" for end in ("lock", "old", "partial"))
    lock.write_text("")  # nobody holds it: its process is gone
    trash.mkdir()
    (trash / "model.onnx").write_text("previous")
    staging.mkdir()
    logged = []
    assert sweep_stale_staging(tmp_path / "k", logged.append) == [staging]
    assert (tmp_path / "k" / "model.onnx").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]
    assert logged[0] == f"restored {tmp_path / 'k'} from .k.pid999999.abcdefgh.old: an export replacing it was " \
                        "killed mid-rename"


STAGING_OWNER = """  # a process that stages an export into argv[1] and waits
import sys, time
from pathlib import Path
from convnext_export.artifact import staged_directory
with staged_directory(Path(sys.argv[1]), force=False) as staging:
    (staging / "model.onnx").write_bytes(b"half")
    print(staging, flush=True)
    time.sleep(600)
"""


def test_calib_data_array_is_checked_against_the_models_input_size(tmp_path):
    """A (16,3,64,64) array calibrates a 64 px export; one of another size is refused naming 64, not 224."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x64.npy", rng.standard_normal((16, 3, 64, 64), dtype=np.float32))
    np.save(tmp_path / "x48.npy", rng.standard_normal((16, 3, 48, 48), dtype=np.float32))
    wrong = invoke("--size", "atto", "--image-size", "64", "--int8", "--calib-data", str(tmp_path / "x48.npy"),
                   "--out", str(tmp_path / "wrong"))
    assert wrong.exit_code == 2 and not (tmp_path / "wrong").exists()
    message = " ".join(wrong.output.split())
    assert f"--calib-data: {tmp_path / 'x48.npy'} holds preprocessed images of shape (16, 3, 48, 48)" in message
    assert "the model takes 64 px inputs, (16, 3, 64, 64): preprocess them at 64 px" in message
    assert "224" not in message
    out = tmp_path / "int8"
    result = invoke("--size", "atto", "--image-size", "64", "--int8", "--calib-data", str(tmp_path / "x64.npy"),
                    "--calib-size", "16", "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    calibration = json.loads((out / "manifest.json").read_text())["calibration"]
    assert calibration["form"] == "array" and calibration["calibration_images"] + calibration["holdout_images"] == 16


def test_calib_data_follows_the_checkpoints_sidecar_resolution(tmp_path):
    """The reference checkpoint's reference.json says 64 px: no --image-size, and a 224 px array is the wrong one."""
    checkpoint = Path(__file__).resolve().parents[1] / "benchmarks" / "reference" / "convnext_atto_cifar10.pth"
    np.save(tmp_path / "x224.npy", np.zeros((4, 3, 224, 224), np.float32))
    result = invoke("--weights", str(checkpoint), "--int8", "--calib-data", str(tmp_path / "x224.npy"),
                    "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "the model takes 64 px inputs, (4, 3, 64, 64)" in " ".join(result.output.split())


REFERENCE_CHECKPOINT = Path(__file__).resolve().parents[1] / "benchmarks" / "reference" / "convnext_atto_cifar10.pth"


@pytest.mark.parametrize("name, content, words", [
    ("notes.pth", b"hello world, not a checkpoint\n",
     ["is not a PyTorch checkpoint: it is a text file (it starts with 'hello world, not a checkpoint')",
      "--weights takes a checkpoint written by torch.save (.pth, .pt, .bin, .pth.tar, .ckpt) or a .safetensors file"]),
    ("model.pth", b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1747\n",
     ["is not a PyTorch checkpoint: it is a Git LFS pointer, not the weights (run git lfs pull"]),
    ("model.safetensors", b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
     ["is not a safetensors checkpoint: it is an HTML page (a failed or redirected download?)"]),
    ("corrupt.safetensors", bytes(range(256)) * 8,
     ["cannot read", "as a safetensors file (", "it is truncated or damaged; download it again, or re-save the "
      "weights with safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"]),
    ("truncated.pth", REFERENCE_CHECKPOINT.read_bytes()[:5000],
     ["cannot read", "as a PyTorch checkpoint (", "it is truncated, damaged or not written by torch.save; download "
      "it again, or re-save the weights with torch.save(model.state_dict(), 'weights.pth')"]),
])
def test_a_file_that_is_not_a_usable_checkpoint_says_what_it_is_and_what_works(name, content, words, tmp_path):
    checkpoint = tmp_path / name
    checkpoint.write_bytes(content)
    result = CliRunner().invoke(export_command, ["--weights", str(checkpoint), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert message.startswith(f"Error: {checkpoint} is not") or message.startswith(f"Error: cannot read {checkpoint}")
    for word in words:
        assert word in message, message
    assert "KeyError" not in message and "Traceback" not in result.output and not (tmp_path / "o").exists()
