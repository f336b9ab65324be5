"""The CPU's integer path: detection, what an INT8 artifact is made for, the export's real-vs-simulated kernel
check (its repair and its failure), and the bench's warning when an artifact runs on other kernels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import convnext_export.calibration.int8 as int8_step
from convnext_export.calibration.int8 import Int8Options, build_int8, onnxruntime_runner
from convnext_export.calibration.kernel_emulation import emulate_saturating_kernels
from convnext_export.calibration.qdq_weights import quantized_weights, read_array
from convnext_export.calibration.saturation import reduction_order, unsafe_pairs
from convnext_export.cli import bench_command, export_command
from convnext_export.config import get_config
from convnext_export.errors import ConvNeXtExportError
from convnext_export.export import export_onnx
from convnext_export.fusion import fuse_model
from convnext_export.isa import (ISA_CHOICES, HostIsa, IsaTarget, PATHS, artifact_isa_warning, detect_host,
                                 integer_path, resolve_isa)
from convnext_export.model import build_model
from convnext_export.pipeline import eager_runner, tool_versions
from convnext_export.preprocess import Preprocessing

from helpers import make_trained_like

SIZE = 32
PRE = Preprocessing(image_size=SIZE, crop_pct=1.0)
ZEN4 = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"}


def host(path: str) -> HostIsa:
    return HostIsa(PATHS[path], f"test CPU ({path})", "x86_64", (), "given")


@pytest.mark.parametrize("flags, expected", [
    (ZEN4, "avx512_vnni"),
    ({"avx2", "fma"}, "avx2"),  # Haswell .. Zen 3
    ({"avx2", "avx512f", "avx512bw"}, "avx512bw"),  # Skylake-SP: AVX-512 without VNNI
    ({"avx2", "avx_vnni"}, "avx_vnni"),  # Alder Lake
    (ZEN4 | {"amx_tile", "amx_int8"}, "amx"),  # Sapphire Rapids
    ({"sse4_2"}, "unknown"),
])
def test_integer_path_from_cpu_flags(flags, expected):
    assert integer_path(flags).name == expected


def test_non_x86_is_unknown_and_treated_as_saturating():
    assert integer_path(ZEN4, "aarch64").name == "unknown"
    target = IsaTarget("unknown", host("unknown"))
    assert target.saturating and "avx2" in target.runs_on


def test_detect_host_reads_the_os_flags(monkeypatch):
    monkeypatch.delenv("CONVNEXT_EXPORT_CPU_FLAGS", raising=False)
    found = detect_host()
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo here")
    assert found.source == "/proc/cpuinfo"
    assert found.path == integer_path(set(flags.split(":", 1)[1].split()), found.architecture)
    assert set(found.flags) <= set(flags.split())


def test_isa_targets_and_where_they_hold():
    vnni = resolve_isa("host", host("avx512_vnni"))
    assert vnni.name == "avx512_vnni" and not vnni.saturating and "avx2" not in vnni.runs_on
    for name in ("avx2", "avx512bw", "x86"):
        target = resolve_isa(name, host("avx512_vnni"))
        assert target.saturating and {"avx2", "avx512_vnni"} <= set(target.runs_on)
    with pytest.raises(Exception, match="--isa 'sse'"):
        resolve_isa("sse", host("avx2"))


def test_artifact_isa_warnings():
    made_for_vnni = {"made_for": "avx512_vnni", "runs_on": ["amx", "avx512_vnni", "avx_vnni"], "weight_bits": 8}
    warning = artifact_isa_warning("a", "int8", "cpu", made_for_vnni, host("avx2"))
    assert "made for avx512_vnni" in warning and "--isa avx2" in warning and "--isa x86" in warning
    assert artifact_isa_warning("a", "int8", "cpu", made_for_vnni, host("amx")) is None
    older = artifact_isa_warning("a", "int8", "cpu", None, host("avx512bw"))
    assert "names no integer path" in older and "re-export" in older
    assert artifact_isa_warning("a", "int8", "cpu", None, host("avx512_vnni")) is None
    assert "unknown" in artifact_isa_warning("a", "int8", "cpu", made_for_vnni, host("unknown"))
    assert "not TensorRT's" in artifact_isa_warning("a", "int8", "tensorrt", None, host("avx2"))
    assert artifact_isa_warning("a", "fp32", None, None, host("avx2")) is None


# -- the export --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """A trained-like atto at 32 px whose 8-bit INT8 model loses ~3 points of agreement on saturating kernels."""
    work = tmp_path_factory.mktemp("isa")
    model = make_trained_like(build_model(get_config("atto").with_classes(10), seed=5), seed=5)
    fused, _ = fuse_model(model)
    return {"model": model, "path": export_onnx(fused, work / "fp32.onnx", SIZE).path, "eager": eager_runner(model)}


def _build(graph, out: Path, **options):
    logs: list[str] = []
    options = {"calib_size": 64, "holdout": 200, **options}
    result = build_int8(graph["path"], out, graph["eager"], PRE, None, Int8Options(**options), "cpu", tool_versions(),
                        log=logs.append)
    return result, logs


def _weight_codes(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {w.name: reduction_order(read_array(model, w.codes_name), w.op_type, w.trans_b)
            for w in quantized_weights(model) if not w.depthwise}


def test_made_for_avx2_is_overflow_safe_and_validated_on_saturating_kernels(graph, tmp_path):
    result, logs = _build(graph, tmp_path / "model.onnx", isa="avx2")
    codes = _weight_codes(result.path)
    assert codes and all(np.abs(c.astype(int)).max() <= 64 and not unsafe_pairs(c).any() for c in codes.values())
    isa, check = result.report["isa"], result.report["kernel_validation"]
    assert isa["made_for"] == "avx2" and isa["weight_bits"] == 7 and "avx2" in isa["runs_on"]
    assert result.report["quantized"]["weight_bits"] == 7
    saturating = "host" if detect_host().path.saturates else "emulated_saturating"
    assert check["judged"]["saturating"] == saturating and saturating in check["runs"]
    assert abs(check["runs"][saturating]["gap_top1_agreement"]) <= check["tolerance"] and check["costly"] == []
    assert check["holdout_images"] == 200 and check["resolves_agreement_loss"] == pytest.approx(0.05)


def test_made_for_vnni_keeps_full_range_weights(graph, tmp_path):
    result, _ = _build(graph, tmp_path / "model.onnx", isa="avx512_vnni")
    assert max(np.abs(c.astype(int)).max() for c in _weight_codes(result.path).values()) == 127
    assert result.report["isa"]["runs_on"] == ["amx", "avx512_vnni", "avx_vnni"]
    assert result.report["kernel_validation"]["judged"] == {
        "exact": "simulated" if detect_host().path.saturates is not False else "host"}


def _saturating_host(monkeypatch, broken: bool = False):
    """This host claims VNNI, but its 'integer kernels' saturate (emulated) or are broken (logits reversed)."""
    monkeypatch.setattr(int8_step, "resolve_isa", lambda choice: IsaTarget("avx512_vnni", host("avx512_vnni")))
    real_runner = onnxruntime_runner

    def runner(batch, kernels="integer"):
        simulated = real_runner(batch, "simulated")
        if kernels == "simulated":
            return simulated
        if broken:
            return lambda model, images, **kwargs: -simulated(model, images)
        return lambda model, images, **kwargs: simulated(emulate_saturating_kernels(model), images)

    monkeypatch.setattr(int8_step, "onnxruntime_runner", runner)


def test_kernel_gap_is_reported_per_layer_and_repaired(graph, tmp_path, monkeypatch):
    _saturating_host(monkeypatch)
    result, logs = _build(graph, tmp_path / "model.onnx", calib_size=256, holdout=1000)
    check = result.report["kernel_validation"]
    repaired = check["repaired"]
    assert repaired["fix"] == "7-bit overflow-safe weights"
    assert repaired["before"]["costly"] == ["host"] and repaired["before"]["runs"]["host"]["gap_top1_agreement"] > 0.005
    assert repaired["layers"][0]["saturated_pairs"] > 0 and repaired["layers"][0]["accumulator_error"] > 0
    assert check["costly"] == [] and result.report["isa"]["weight_bits"] == 7
    assert all(np.abs(c.astype(int)).max() <= 64 for c in _weight_codes(result.path).values())
    assert any("Layers that saturate most" in line for line in logs)


def test_kernel_gap_that_cannot_be_repaired_fails_and_writes_nothing(graph, tmp_path, monkeypatch):
    _saturating_host(monkeypatch, broken=True)
    out = tmp_path / "model.onnx"
    with pytest.raises(ConvNeXtExportError) as failed:
        _build(graph, out)
    message = str(failed.value)
    assert "with 7-bit weights too" in message and "Nothing was written" in message and "--fp16" in message
    assert not out.exists()


def test_isa_options_are_validated(tmp_path):
    for args, message in [(("--isa", "avx2"), "applies to --int8 only"),
                          (("--int8", "--target", "tensorrt", "--isa", "avx2"), "applies to --target cpu"),
                          (("--int8", "--isa", "sse"), "'sse'")]:
        result = CliRunner().invoke(export_command, ["--size", "atto", "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 2 and message in result.output, result.output
    assert set(ISA_CHOICES) == {"host", "amx", "avx512_vnni", "avx_vnni", "avx512bw", "avx2", "x86"}


def test_bench_records_the_integer_path_and_warns_on_another(tmp_path, monkeypatch):
    out = tmp_path / "int8"
    exported = CliRunner().invoke(export_command, ["--size", "atto", "--image-size", "32", "--int8", "--calib-size",
                                                   "16", "--isa", "avx512_vnni", "--out", str(out), "--quiet"])
    assert exported.exit_code == 0, exported.output
    monkeypatch.setattr("convnext_export.bench.runner.detect_host", lambda: host("avx2"))
    report_path = tmp_path / "bench.json"
    benched = CliRunner().invoke(bench_command, [str(out), "--backends", "torch,onnxruntime", "--iters", "2",
                                                 "--warmup", "0", "--no-cold-start", "--json", str(report_path)])
    assert benched.exit_code == 0, benched.output
    report = json.loads(report_path.read_text())
    assert report["environment"]["integer_path"]["integer_path"] == detect_host().path.name
    assert report["artifacts"][0]["isa"]["made_for"] == "avx512_vnni"
    assert any("made for avx512_vnni" in w and "--isa avx2" in w for w in report["warnings"])
    assert "made for avx512_vnni" in benched.output


def test_cpu_flags_override(monkeypatch):
    monkeypatch.setenv("CONVNEXT_EXPORT_CPU_FLAGS", "avx2 fma")
    found = detect_host()
    assert found.path.name == "avx2" and found.source == "CONVNEXT_EXPORT_CPU_FLAGS"
    assert resolve_isa("host").saturating
