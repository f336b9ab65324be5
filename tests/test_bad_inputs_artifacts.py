"""Bad artifacts and calibration caches through the installed console scripts (tests/bad_input.py).

Every doctored artifact and cache is made from one real export of ConvNeXt-atto at 32 px (FP32 and INT8,
made once per session): an artifact is never benched as something it is not, a cache is never applied when
its checksum or values are wrong, and neither ever gives a traceback, a half-written output or a changed input.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import onnx
import pytest

from convnext_export.artifact import MANIFEST, file_sha256
from convnext_export.calibration.cache import CACHE_FILE, cache_checksum
from convnext_export.calibration.int8 import Int8Options
from convnext_export.pipeline import ExportRequest, PreprocessingOverrides, export_artifact

from bad_input import BadInput, run_bad_input

CALIB_SIZE = "32"  # hold-out 4: the exports of the cache cases stay fast
EXPORT = ("--size", "atto", "--image-size", "32", "--num-classes", "10", "--int8", "--calib-size", CALIB_SIZE)
BENCH = ("--backends", "onnxruntime", "--no-cold-start", "--iters", "2", "--warmup", "0", "--threads", "1")


@functools.cache
def exports() -> dict[str, Path]:
    """One FP32 and one INT8 export of random-weight atto at 32 px (10 classes), and a resnet18 ONNX."""
    root = Path(tempfile.mkdtemp(prefix="convnext-bad-artifacts-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    common = dict(size="atto", num_classes=10, preprocessing=PreprocessingOverrides(image_size=32))
    fp32 = export_artifact(ExportRequest(**common, out=root / "fp32")).artifact.directory
    int8 = export_artifact(ExportRequest(**common, precision="int8", int8=Int8Options(calib_size=int(CALIB_SIZE)),
                                         out=root / "int8")).artifact.directory
    other = export_artifact(ExportRequest(**common, seed=1, precision="int8",
                                          int8=Int8Options(calib_size=int(CALIB_SIZE)), out=root / "other"))
    return {"fp32": fp32, "int8": int8, "other_cache": other.artifact.directory / CACHE_FILE,
            "resnet18": _resnet18(root / "resnet18.onnx")}


def _resnet18(path: Path) -> Path:
    import torch
    import torchvision

    model = torchvision.models.resnet18(num_classes=10).eval()
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


# -- doctorings ----------------------------------------------------------------------------------------------


def _artifact(work: Path, source: str = "fp32") -> Path:
    return Path(shutil.copytree(exports()[source], work / "art"))


def _edit_manifest(work: Path, source: str = "fp32", **changes) -> Path:
    directory = _artifact(work, source)
    manifest = json.loads((directory / MANIFEST).read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        section = manifest
        for name in parents:
            section = section[name]
        section[leaf] = value
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return directory


def _replace_model(work: Path, data: bytes) -> None:
    """model.onnx replaced by ``data``, the manifest's sha256 updated to match it."""
    directory = _artifact(work)
    (directory / "model.onnx").write_bytes(data)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["model_sha256"] = file_sha256(directory / "model.onnx")
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))


def precision_edited(work: Path) -> None:
    _edit_manifest(work, precision="int8", target="cpu")


def image_size_edited(work: Path) -> None:
    _edit_manifest(work, preprocessing__image_size=64)


def num_classes_edited(work: Path) -> None:
    _edit_manifest(work, config__num_classes=1000)


def resnet18_with_sha(work: Path) -> None:
    _replace_model(work, exports()["resnet18"].read_bytes())


def corrupt_with_sha(work: Path) -> None:
    data = bytearray((exports()["fp32"] / "model.onnx").read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)  # the graph's first half zeroed: not a protobuf any more
    _replace_model(work, bytes(data))


def truncated_with_sha(work: Path) -> None:
    _replace_model(work, (exports()["fp32"] / "model.onnx").read_bytes()[:-100_000])


def truncated(work: Path) -> None:
    directory = _artifact(work)
    data = (directory / "model.onnx").read_bytes()
    (directory / "model.onnx").write_bytes(data[: len(data) // 2])


def model_missing(work: Path) -> None:
    (_artifact(work) / "model.onnx").unlink()


def other_schema(work: Path) -> None:
    _edit_manifest(work, schema="convnext-export/9")


def manifest_nan(work: Path) -> None:
    directory = _artifact(work)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["drift"]["cosine_min"] = float("nan")
    (directory / MANIFEST).write_text(json.dumps(manifest))  # Python writes NaN, which is not JSON


def _without_fingerprint(work: Path, **changes) -> None:
    directory = _edit_manifest(work, **changes)
    manifest = json.loads((directory / MANIFEST).read_text())
    del manifest["fingerprint"]
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))


def old_manifest(work: Path) -> None:
    _without_fingerprint(work)


def old_manifest_precision_edited(work: Path) -> None:
    _without_fingerprint(work, precision="int8", target="cpu")


def fingerprint_edited(work: Path) -> None:
    directory = _artifact(work)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["fingerprint"]["op_census"]["Conv"] += 1
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))


def int8_markers_stripped(work: Path) -> None:
    """An INT8 artifact whose model.onnx is swapped for the FP32 one (sha updated): the graph has no Q/DQ."""
    directory = _artifact(work, "int8")
    shutil.copy(exports()["fp32"] / "model.onnx", directory / "model.onnx")
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["model_sha256"] = file_sha256(directory / "model.onnx")
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _cache(work: Path, edit, checksum: bool = False, text: str | None = None) -> None:
    cache = json.loads((exports()["int8"] / CACHE_FILE).read_text())
    edit(cache)
    if checksum:
        cache["checksum"] = cache_checksum(cache)
    (work / "cache.json").write_text(text if text is not None else json.dumps(cache))


def _tiny_ranges(cache: dict) -> None:
    cache["ranges"] = {name: [-1e-6, 1e-6] for name in cache["ranges"]}


def cache_edited(work: Path) -> None:
    _cache(work, _tiny_ranges)


def cache_edited_with_checksum(work: Path) -> None:
    _cache(work, _tiny_ranges, checksum=True)


def cache_nan(work: Path) -> None:
    def edit(cache):
        name = sorted(cache["ranges"])[0]
        cache["ranges"][name] = [float("nan"), 1.0]
    _cache(work, edit)


def cache_wrong_types(work: Path) -> None:
    def edit(cache):
        name = sorted(cache["ranges"])[0]
        cache["ranges"][name] = ["low", "high"]
    _cache(work, edit, checksum=True)


def cache_scales_wrong_types(work: Path) -> None:
    def edit(cache):
        cache["stream_scales"] = {"0": "ones"}
    _cache(work, edit, checksum=True)


def cache_not_json(work: Path) -> None:
    _cache(work, lambda cache: None, text='{"schema": "convnext-export/calibration/3", "ranges": {')


def cache_not_a_cache(work: Path) -> None:
    (work / "cache.json").write_text(json.dumps({"schema": "polygraphy/calibration", "ranges": {}}))


def cache_no_checksum(work: Path) -> None:
    _cache(work, lambda cache: cache.pop("checksum"))


def cache_of_another_model(work: Path) -> None:
    shutil.copy(exports()["other_cache"], work / "cache.json")


def replaced_artifact_cache_edited(work: Path) -> None:
    directory = Path(shutil.copytree(exports()["int8"], work / "out"))
    cache = json.loads((directory / CACHE_FILE).read_text())
    _tiny_ranges(cache)
    (directory / CACHE_FILE).write_text(json.dumps(cache))


CACHE_SAYS = ("--calib-cache", "cache.json", "delete it")
CASES = [
    # artifacts, checked by convnext-bench before any timing
    BadInput("bench-precision-edited-fp32-to-int8", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("art", "'precision' is 'int8'", "the graph is fp32", "0 QuantizeLinear"), precision_edited),
    BadInput("bench-int8-model-swapped-for-fp32", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("'precision' is 'int8'", "the graph is fp32", "precision_markers"), int8_markers_stripped),
    BadInput("bench-resnet18-with-sha-updated", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("art", "does not describe", "ConvNeXt-atto", "no stem conv weight", "op_census"), resnet18_with_sha),
    BadInput("bench-corrupt-onnx-with-sha-updated", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("model.onnx", "does not load as an ONNX model", "re-export"), corrupt_with_sha),
    BadInput("bench-truncated-onnx-with-sha-updated", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("model.onnx", "does not load as an ONNX model"), truncated_with_sha),
    BadInput("bench-truncated-onnx", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("model.onnx", "sha256", "does not match"), truncated),
    BadInput("bench-image-size-edited", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("'preprocessing.image_size' is 64", "input height is 32"), image_size_edited),
    BadInput("bench-num-classes-edited", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("'config.num_classes' is 1000", "logits"), num_classes_edited),
    BadInput("bench-fingerprint-edited", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("fingerprint 'op_census' differs", "Conv"), fingerprint_edited),
    BadInput("bench-old-manifest-precision-edited", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("'precision' is 'int8'", "the graph is fp32"), old_manifest_precision_edited),
    BadInput("bench-old-manifest-says-what-it-could-not-check", "convnext-bench", ("{work}/art", *BENCH), 0,
             ("no fingerprint", "could not be"), old_manifest),
    BadInput("bench-model-onnx-missing", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("model.onnx", "missing", "re-export"), model_missing),
    BadInput("bench-manifest-other-schema", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("convnext-export/9", "schema"), other_schema),
    BadInput("bench-manifest-with-nan", "convnext-bench", ("{work}/art", *BENCH), 2,
             ("manifest.json", "not valid JSON", "NaN"), manifest_nan),
    BadInput("bench-nothing-measured", "convnext-bench", ("{work}/art", *BENCH[2:], "--backends", "onnxruntime-cuda"),
             1, ("nothing was measured of art", "CUDAExecutionProvider"), lambda work: _artifact(work)),
    # calibration caches named with --calib-cache: refused before any work
    BadInput("cache-checksum-mismatch", "convnext-export", (*EXPORT, "--calib-cache", "cache.json", "--out", "out"), 2,
             (*CACHE_SAYS, "checksum does not match"), cache_edited, ("out",)),
    BadInput("cache-nan-range", "convnext-export", (*EXPORT, "--calib-cache", "cache.json", "--out", "out"), 2,
             (*CACHE_SAYS, "non-finite"), cache_nan, ("out",)),
    BadInput("cache-wrongly-typed-range", "convnext-export", (*EXPORT, "--calib-cache", "cache.json", "--out", "out"),
             2, (*CACHE_SAYS, "'low', not a number"), cache_wrong_types, ("out",)),
    BadInput("cache-wrongly-typed-scales", "convnext-export", (*EXPORT, "--calib-cache", "cache.json", "--out", "out"),
             2, (*CACHE_SAYS, "stream_scales['0']"), cache_scales_wrong_types, ("out",)),
    BadInput("cache-not-json", "convnext-export", (*EXPORT, "--calib-cache", "cache.json", "--out", "out"), 2,
             (*CACHE_SAYS, "not valid JSON"), cache_not_json, ("out",)),
    BadInput("cache-not-a-calibration-cache", "convnext-export", (*EXPORT, "--calib-cache", "cache.json", "--out",
                                                                  "out"), 2,
             (*CACHE_SAYS, "not a convnext-export calibration cache"), cache_not_a_cache, ("out",)),
    BadInput("cache-without-checksum", "convnext-export", (*EXPORT, "--calib-cache", "cache.json", "--out", "out"), 2,
             (*CACHE_SAYS, "no checksum"), cache_no_checksum, ("out",)),
    # ... a cache for another model is stale, not damaged: recalibrated and rewritten, never applied
    BadInput("cache-of-another-model", "convnext-export", (*EXPORT, "--calib-cache", "cache.json", "--out", "out"), 0,
             ("does not match this export", "fused graph", "recalibrating"), cache_of_another_model,
             ("out", "cache.json")),
    # ... doctored with its checksum recomputed: the accuracy floor stops it, nothing written
    BadInput("cache-doctored-with-checksum-fails-the-floor", "convnext-export",
             (*EXPORT, "--calib-cache", "cache.json", "--out", "out"), 1,
             ("accuracy floor", "mean cosine", "delete the calibration cache", "cache.json", "--max-drift",
              "--calib-data", "--calib-method", "--isa", "--min-cosine", "nothing was written"),
             cache_edited_with_checksum, ("out",)),
    # the cache of the artifact being replaced: a damaged one is recomputed with a warning
    BadInput("replaced-artifact-cache-edited", "convnext-export", (*EXPORT, "--out", "out", "--force"), 0,
             ("warning", "cannot be trusted", "checksum does not match", "recalibrating"),
             replaced_artifact_cache_edited, ("out",)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_artifact_or_cache(case: BadInput, tmp_path: Path) -> None:
    done = run_bad_input(case, tmp_path)
    if case.exit_code != 0:
        made = [p for p in case.outputs if p != "cache.json" and (tmp_path / "work" / p).exists()]
        assert not made, f"{case.id}: wrote {made} although it failed\n{done.stdout}{done.stderr}"
    if case.id == "replaced-artifact-cache-edited":
        manifest = json.loads((tmp_path / "work" / "out" / MANIFEST).read_text())
        assert manifest["calibration"]["cache"] == "computed"  # the damaged cache was not applied
        fresh = json.loads((tmp_path / "work" / "out" / CACHE_FILE).read_text())
        assert fresh["checksum"] == cache_checksum(fresh) and fresh["ranges"] == json.loads(
            (exports()["int8"] / CACHE_FILE).read_text())["ranges"]  # recomputed: the original ranges again
    if case.id == "cache-of-another-model":
        manifest = json.loads((tmp_path / "work" / "out" / MANIFEST).read_text())
        assert manifest["calibration"]["cache"] == "computed"


def test_fresh_exports_verify_against_their_fingerprint() -> None:
    """Untouched exports load, their graphs matching their manifests; the fingerprint counts the graph's Q/DQ."""
    from convnext_export.artifact import read_artifact

    notes: list[str] = []
    for name in ("fp32", "int8"):
        artifact = read_artifact(exports()[name], log=notes.append)
        nodes = onnx.load(str(artifact.model_path)).graph.node
        markers = artifact.extra["fingerprint"]["precision_markers"]
        assert markers["QuantizeLinear"] == sum(node.op_type == "QuantizeLinear" for node in nodes)
        assert (markers["QuantizeLinear"] > 0) == (name == "int8")
    assert notes == []  # a manifest with a fingerprint leaves nothing unchecked
