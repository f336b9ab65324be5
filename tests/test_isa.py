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
from convnext_export.calibration.recipe import isa_report
from convnext_export.isa import (ISA_CHOICES, X86_PATHS, HostIsa, IsaTarget, PATHS, artifact_isa_warning,
                                 detect_host, integer_path, resolve_isa)
from convnext_export.model import build_model
from convnext_export.pipeline import eager_runner, tool_versions
from convnext_export.preprocess import Preprocessing

from helpers import make_trained_like

SIZE = 32
PRE = Preprocessing(image_size=SIZE, crop_pct=1.0)
ZEN4 = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"}
# CONVNEXT_EXPORT_CPU_FLAGS of a VNNI host (Zen 4) and of an AVX2-only one; "avx512_vnni avx2" without avx512bw
# is an AVX2 path to ONNX Runtime (its AVX-512 VNNI kernels need AVX-512 BW).
HOST_FLAGS = {"avx512_vnni": " ".join(sorted(ZEN4)), "avx2 (vnni flag without avx512bw)": "avx512_vnni avx2",
              "avx2": "avx2 fma"}


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


@pytest.mark.parametrize("flags", HOST_FLAGS.values(), ids=HOST_FLAGS.keys())
def test_default_isa_is_every_x86_path_whatever_the_host(flags, monkeypatch):
    monkeypatch.setenv("CONVNEXT_EXPORT_CPU_FLAGS", flags)
    assert Int8Options().isa is None
    target = resolve_isa(int8_step.DEFAULT_ISA)
    assert target.name == "x86" and target.saturating and target.runs_on == X86_PATHS
    report = isa_report(target, detect_host(), 7)
    assert report["portable"] and report["made_for"] == "x86"
    for path in X86_PATHS:  # no x86 host warns about a portable artifact
        assert artifact_isa_warning("a", "int8", "cpu", report, host(path)) is None


def test_artifact_isa_warnings():
    made_for_vnni = {"made_for": "avx512_vnni", "runs_on": ["amx", "avx512_vnni", "avx_vnni"], "weight_bits": 8}
    warning = artifact_isa_warning("a", "int8", "cpu", made_for_vnni, host("avx2"))
    assert "made for avx512_vnni" in warning and "--isa avx2" in warning and "default --isa x86" in warning
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


def _exact_host(monkeypatch):
    """This host's integer kernels accumulate exactly (the simulated Q/DQ), whatever the CPU under the test is."""
    real_runner = onnxruntime_runner
    monkeypatch.setattr(int8_step, "onnxruntime_runner", lambda batch, kernels="integer": real_runner(batch, "simulated"))


@pytest.mark.parametrize("flags", HOST_FLAGS.values(), ids=HOST_FLAGS.keys())
def test_default_int8_is_portable_and_validated_on_both_kernel_families(graph, tmp_path, monkeypatch, flags):
    monkeypatch.setenv("CONVNEXT_EXPORT_CPU_FLAGS", flags)
    result, _ = _build(graph, tmp_path / "model.onnx")
    isa, check = result.report["isa"], result.report["kernel_validation"]
    assert isa["made_for"] == "x86" and isa["portable"] and isa["runs_on"] == list(X86_PATHS)
    assert isa["weight_bits"] == 7 and isa["host"]["integer_path"] == integer_path(set(flags.split())).name
    codes = _weight_codes(result.path)
    assert codes and all(np.abs(c.astype(int)).max() <= 64 and not unsafe_pairs(c).any() for c in codes.values())
    saturating = "host" if detect_host().path.saturates else "emulated_saturating"
    assert check["judged"] == {"exact": "simulated" if saturating == "host" else "host", "saturating": saturating}
    assert saturating in check["runs"] and check["costly"] == []


def test_host_isa_on_a_vnni_host_keeps_full_range_weights(graph, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVNEXT_EXPORT_CPU_FLAGS", HOST_FLAGS["avx512_vnni"])
    _exact_host(monkeypatch)
    result, _ = _build(graph, tmp_path / "model.onnx", isa="host")
    isa = result.report["isa"]
    assert isa["made_for"] == "avx512_vnni" and not isa["portable"] and isa["weight_bits"] == 8
    assert isa["runs_on"] == ["amx", "avx512_vnni", "avx_vnni"]
    assert max(np.abs(c.astype(int)).max() for c in _weight_codes(result.path).values()) == 127
    assert result.report["kernel_validation"]["judged"] == {"exact": "host"}


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


@pytest.mark.slow
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


def test_default_export_says_portable_and_no_x86_host_warns(tmp_path, monkeypatch):
    out = tmp_path / "int8"
    exported = CliRunner().invoke(export_command, ["--size", "atto", "--image-size", "32", "--int8", "--calib-size",
                                                   "16", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert "made for x86 (portable, every x86 CPU; 7-bit weights)" in " ".join(exported.output.split())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["isa"]["made_for"] == "x86" and manifest["isa"]["runs_on"] == list(X86_PATHS)
    for path in X86_PATHS:
        monkeypatch.setattr("convnext_export.bench.runner.detect_host", lambda: host(path))
        report_path = tmp_path / f"bench-{path}.json"
        benched = CliRunner().invoke(bench_command, [str(out), "--backends", "onnxruntime", "--iters", "2",
                                                     "--warmup", "0", "--no-cold-start", "--quiet",
                                                     "--json", str(report_path)])
        assert benched.exit_code == 0, benched.output
        assert not any("made for" in w for w in json.loads(report_path.read_text())["warnings"]), path


def test_export_help_names_the_portable_default():
    text = " ".join(CliRunner().invoke(export_command, ["--help"]).output.split())
    assert "x86 (portable, the default" in text and "[default: x86]" in text


def test_cpu_flags_override(monkeypatch):
    monkeypatch.setenv("CONVNEXT_EXPORT_CPU_FLAGS", "avx2 fma")
    found = detect_host()
    assert found.path.name == "avx2" and found.source == "CONVNEXT_EXPORT_CPU_FLAGS"
    assert resolve_isa("host").saturating


REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference" / "convnext_atto_cifar10.pth"
REFERENCE_TEST_IMAGES = 1000  # a seeded, class-balanced subset of the CIFAR-10 test set


@pytest.mark.slow
def test_default_int8_of_the_trained_reference_holds_on_saturating_kernels(shared_data, tmp_path, monkeypatch):
    """Built on a VNNI machine with the default --int8, the trained CIFAR-10 reference agrees with eager on >= 99%
    of held-out test images on the emulated AVX2 / AVX-512 BW kernels as on exact ones (the old default's
    8-bit weights: ~92% on the saturating kernels)."""
    from convnext_export.datasets import open_dataset
    from convnext_export.pipeline import ExportRequest, export_artifact, load_reference

    monkeypatch.setenv("CONVNEXT_EXPORT_CPU_FLAGS", HOST_FLAGS["avx512_vnni"])
    reference = load_reference(None, REFERENCE, None, 0)
    artifact = export_artifact(ExportRequest(weights=REFERENCE, precision="int8", out=tmp_path / "int8",
                                             int8=Int8Options(calib_data=shared_data / "cifar10" / "train"))).artifact
    assert artifact.extra["isa"]["made_for"] == "x86" and artifact.extra["isa"]["portable"]
    assert artifact.extra["kernel_validation"]["judged"]["saturating"] == "emulated_saturating"
    test_set = open_dataset(shared_data / "cifar10" / "test", reference.preprocessing, limit=REFERENCE_TEST_IMAGES)
    images = np.concatenate([batch.images for batch in test_set.batches(500)])
    eager = eager_runner(reference.model, batch_size=250)(images).argmax(1)
    model = onnx.load(str(artifact.model_path))
    simulated = onnxruntime_runner(None, kernels="simulated")
    for name, logits in (("exact kernels (simulated Q/DQ)", simulated(model, images)),
                         ("emulated saturating kernels", simulated(emulate_saturating_kernels(model), images))):
        agreement = float((logits.argmax(1) == eager).mean())
        assert agreement >= 0.99, f"{name}: top-1 agreement with eager {agreement:.2%}"
