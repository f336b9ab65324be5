"""Command line: parse, call one library function, print."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .calibration.data import DEFAULT_CALIB_SIZE, DEFAULT_HOLDOUT
from .calibration.floor import (DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_COSINE, MEASURED_AGREEMENT as FLOOR_MEASURED_AGREEMENT,
                                MEASURED_COSINE as FLOOR_MEASURED_COSINE, SIGNIFICANCE as FLOOR_SIGNIFICANCE)
from .calibration.int8 import DEFAULT_METHOD
from .calibration.ranges import CALIBRATION_METHODS, DEFAULT_PERCENTILE
from .calibration.recipe import TARGETS
from .calibration.sigmoid_gelu import GELU_FORMS
from .drift import drift_meaning
from .export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from .files import write_atomically
from .isa import ISA_CHOICES
from .options import (EXIT_CODES_EPILOG, MODEL_NAMES, WEIGHTS, CommandError, float_triple, json_option, quiet_option,
                      reports_errors, seed_option, threads_option, version_option, write_json)
from .api import benchmark, export_request
from .pipeline import ExportResult, export_artifact
from .preprocess import INTERPOLATIONS
from .progress import ProgressBars
from .tensorrt.profiles import DEFAULT_MAX_BATCH


# Where preprocessing comes from when no option sets it (pipeline.load_reference).
WEIGHTS_PREPROCESSING = "the weights'"


def _console(quiet: bool, json_path: str | None) -> Console:
    # With --json - the summary owns stdout; human output goes to stderr.
    return Console(stderr=json_path == "-", quiet=quiet, highlight=False, log_path=False)


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_EPILOG)
@click.option("--size", metavar="NAME", default=None,
              help=f"Model: {MODEL_NAMES} [default: tiny; inferred from --weights].")
@click.option("--weights", type=WEIGHTS, default=None,
              help="Checkpoint (.pth/.pt/.bin/.safetensors) in the official, timm, torchvision or Hugging Face "
                   "layout, or published weights as hf-hub:OWNER/NAME[@REVISION], e.g. "
                   "hf-hub:timm/convnext_tiny.fb_in1k (pip install 'convnext-export[hub]') "
                   "[default: seeded random weights].")
@click.option("--num-classes", type=int, default=None, help="Classes (default 1000, or the checkpoint's).")
@click.option("--image-size", type=click.IntRange(min=32), default=None,
              help=f"Input resolution. Unset preprocessing options take what the weights name: a pretrained tag in "
                   f"--size, the hub's config.json, a <checkpoint>.json or reference.json sidecar, the torchvision "
                   f"layout's [default: {WEIGHTS_PREPROCESSING}, else 224].")
@click.option("--crop-pct", type=click.FloatRange(0, 1, min_open=True), default=None,
              help=f"Center-crop fraction: the short side is resized to image-size / crop-pct, then cropped "
                   f"[default: {WEIGHTS_PREPROCESSING}, else 0.875].")
@click.option("--interpolation", type=click.Choice(list(INTERPOLATIONS)), default=None,
              help=f"Resize filter [default: {WEIGHTS_PREPROCESSING}, else bicubic].")
@click.option("--mean", callback=float_triple, default=None,
              help=f"Normalization mean, e.g. 0.485,0.456,0.406 [default: {WEIGHTS_PREPROCESSING}, else ImageNet's].")
@click.option("--std", callback=float_triple, default=None,
              help=f"Normalization std, e.g. 0.229,0.224,0.225 [default: {WEIGHTS_PREPROCESSING}, else ImageNet's].")
@click.option("--opset", type=click.IntRange(min=MIN_OPSET, max=MAX_OPSET), default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (17-19 decompose GELU).")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Static batch size (default: dynamic).")
@seed_option
@click.option("--no-fuse", is_flag=True, help="Export the faithful, unfused graph.")
@click.option("--fp16", is_flag=True, help="FP16 model (LayerNorm in FP32, FP32 inputs/outputs).")
@click.option("--fp16-io", is_flag=True, help="With --fp16: FP16 inputs and outputs too.")
@click.option("--int8", is_flag=True, help="Calibrated INT8 Q/DQ model.")
@click.option("--target", type=click.Choice(TARGETS), default=None,
              help="INT8 Q/DQ layout: cpu (u8 activations: ONNX Runtime's fast x86 integer kernels) or tensorrt "
                   "(symmetric int8, zero point 0; implied by --trt) [default: cpu].")
@click.option("--calib-data", type=click.Path(path_type=Path), default=None,
              help="Calibration images: a folder (class subfolders or flat), or a .npy/.npz array "
                   "(default: synthetic noise, with a warning).")
@click.option("--calib-size", type=click.IntRange(min=1), default=None,
              help=f"Calibration images, a seeded subset of --calib-data; --holdout more images validate the result "
                   f"[default: {DEFAULT_CALIB_SIZE}].")
@click.option("--calib-method", type=click.Choice(CALIBRATION_METHODS), default=None,
              help=f"How ranges are set from the activations [default: {DEFAULT_METHOD}].")
@click.option("--calib-percentile", type=float, default=None,
              help=f"Percentile kept by --calib-method percentile [default: {DEFAULT_PERCENTILE}].")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Keep nodes matching PATTERN float (fnmatch on names like 'stages.3.*', '*.pwconv2/Conv', "
                   "'head'); repeatable.")
@click.option("--max-drift", type=float, default=None, metavar="AGREEMENT",
              help="Minimum top-1 agreement with eager on the hold-out (e.g. 0.99): the most sensitive blocks "
                   "move back to float until it holds; exit 1 if it cannot. Without it every INT8 export still "
                   "holds the accuracy floor (--min-agreement, --min-cosine).")
@click.option("--gelu", type=click.Choice(GELU_FORMS), default=None,
              help="INT8 on --target cpu: 'sigmoid' runs GELU as x*sigmoid(1.702x) in ONNX Runtime's u8 lookup-table "
                   "kernels, pwconv2's bias corrected on the calibration images: ~1.1x faster INT8 here, top-1 "
                   "agreement with eager ~0.2 point lower (benchmarks/results/int8_gelu.md) [default: exact].")
@click.option("--isa", type=click.Choice(ISA_CHOICES), default=None,
              help="INT8 on --target cpu: the x86 integer paths the weights are made and validated for. x86 "
                   "(portable, the default, whatever CPU builds it): 7-bit overflow-safe weights that hold on every "
                   "x86 CPU, VNNI / AMX and AVX2 / AVX-512 BW (whose u8 x s8 pairs saturate int16) alike, checked "
                   "at export on this host's kernels and emulated saturating ones (CIFAR-10 references: 98.9-99.1% top-1 agreement "
                   "with eager on every kind), same speed as 8-bit on VNNI. "
                   "host: this CPU's path only (8-bit weights on a VNNI / AMX host, which lose 5-8 points of "
                   "agreement on AVX2 CPUs); or one path: avx512_vnni / avx_vnni / amx (8-bit), avx2 / avx512bw "
                   "(7-bit) (benchmarks/results/int8_isa.md) [default: x86].")
@click.option("--holdout", type=click.IntRange(min=1), default=None,
              help="Images held out to validate the INT8 model on real and simulated kernels, beside --calib-size "
                   f"[default: {DEFAULT_HOLDOUT} where --calib-data has them; 1/8 of synthetic data].")
@click.option("--calib-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Calibration cache to reuse when its key matches (recomputed and rewritten otherwise); "
                   "by default the cache in the --out directory being replaced is tried. A cache whose checksum "
                   "or values are wrong is never applied: named here it stops the export (exit 2: delete it to "
                   "recalibrate); found in --out it is recomputed with a warning.")
@click.option("--min-agreement", type=float, default=None, metavar="AGREEMENT",
              help="INT8 accuracy floor: top-1 agreement with eager on the hold-out below which the export fails "
                   f"(exit 1, nothing written) when the hold-out resolves it (binomial test, p < {FLOOR_SIGNIFICANCE:g}) "
                   f"[default: {DEFAULT_MIN_AGREEMENT}, or a lower --max-drift]. 0 turns it off. "
                   f"Measured: {FLOOR_MEASURED_AGREEMENT}.")
@click.option("--min-cosine", type=float, default=None, metavar="COSINE",
              help="INT8 accuracy floor: mean cosine of logits with eager on the hold-out below which the export "
                   f"fails [default: {DEFAULT_MIN_COSINE}]. -1 turns it off. Measured: {FLOOR_MEASURED_COSINE}.")
@click.option("--trt", is_flag=True,
              help="Also build model.engine with TensorRT 10/11 from the final ONNX (strongly typed: the ONNX's "
                   "FP16 casts / INT8 Q/DQ decide precision). Needs an NVIDIA GPU and "
                   "pip install 'convnext-export[tensorrt]'.")
@click.option("--min-batch", type=int, default=None,
              help="--trt, dynamic batch: smallest batch the engine takes [default: 1].")
@click.option("--opt-batch", type=int, default=None,
              help="--trt, dynamic batch: batch TensorRT tunes for [default: --min-batch].")
@click.option("--max-batch", type=int, default=None,
              help=f"--trt, dynamic batch: largest batch the engine takes [default: max({DEFAULT_MAX_BATCH}, --opt-batch)].")
@click.option("--workspace", default=None, metavar="SIZE",
              help="--trt: builder workspace limit, e.g. 512MiB or 4GiB (default: TensorRT's, the GPU's memory).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="--trt: timing cache file, reused when present and rewritten after the build (faster rebuilds).")
@click.option("--builder-opt-level", type=click.IntRange(0, 5), default=None,
              help="--trt: TensorRT builder optimization level 0-5 (default 3: TensorRT's).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory (default artifacts/convnext_<size>-<precision>/).")
@click.option("--force", is_flag=True,
              help="Replace a non-empty --out directory. Never one that is, holds or lies in an input (--weights, "
                   "--calib-data, --calib-cache), nor the current directory, a git work tree, the package or home "
                   "(exit 2); one export at a time writes an --out (a second is refused, exit 2).")
@quiet_option
@json_option
@version_option
@reports_errors
def export_command(size, weights, num_classes, image_size, crop_pct, interpolation, mean, std, opset, batch, seed,
                   no_fuse, fp16, fp16_io, int8, target, calib_data, calib_size, calib_method, calib_percentile,
                   exclude, max_drift, gelu, isa, holdout, calib_cache, min_agreement, min_cosine, trt, min_batch, opt_batch, max_batch, workspace, timing_cache,
                   builder_opt_level, out, force, quiet, json_path) -> None:
    """Export a ConvNeXt to fused ONNX with a manifest, checked against the eager model."""
    request = export_request(
        size=size, weights=weights, num_classes=num_classes, image_size=image_size, crop_pct=crop_pct,
        interpolation=interpolation, mean=mean, std=std, opset=opset, batch=batch, seed=seed, fuse=not no_fuse,
        fp16=fp16, fp16_io=fp16_io, int8=int8, target=target, calib_data=calib_data, calib_size=calib_size,
        calib_method=calib_method, calib_percentile=calib_percentile, exclude=exclude, max_drift=max_drift, gelu=gelu,
        isa=isa, holdout=holdout, calib_cache=calib_cache, min_agreement=min_agreement,
        min_cosine=min_cosine, trt=trt, min_batch=min_batch, opt_batch=opt_batch,
        max_batch=max_batch, workspace=workspace, timing_cache=timing_cache, builder_opt_level=builder_opt_level,
        out=out, force=force)
    console = _console(quiet, json_path)
    with ProgressBars(console, disabled=quiet or json_path == "-") as progress:
        result = export_artifact(request, log=lambda message: console.log(escape(message)), progress=progress)
    print_export_summary(console, result)
    write_json(json_path, export_summary(result))


def export_summary(result: ExportResult) -> dict:
    return result.to_dict()


def print_export_summary(console: Console, result: ExportResult) -> None:
    artifact = result.artifact
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("model", f"{artifact.model_path} ({result.size_bytes / 1e6:.1f} MB)")
    table.add_row("config", f"{artifact.config.name}, {artifact.config.num_classes} classes, "
                            f"{artifact.preprocessing.image_size}px, {artifact.precision}, opset {artifact.opset}")
    weights = artifact.weights
    table.add_row("weights", (f"{weights.hub}: " if weights.hub else "") + f"{weights.path} ({weights.layout} layout)"
                  if weights.path else f"random, seed {weights.seed}")
    table.add_row("ops", ", ".join(f"{op} {n}" for op, n in result.op_census.items()))
    applied = [f"{name} x{n}" for name, n in artifact.fusions.items() if n]
    table.add_row("fusions", ", ".join(applied) or "none (--no-fuse)")
    for name, value in precision_rows(artifact):
        table.add_row(name, value)
    table.add_row("drift", drift_summary(artifact.drift))
    for name, value in engine_rows(artifact):
        table.add_row(name, value)
    table.add_row("time", f"{result.seconds:.1f} s")
    console.print(table)


def engine_rows(artifact) -> list[tuple[str, str]]:
    """Summary rows for --trt: the engine, where it may run, how much of it TensorRT ran in INT8, its drift."""
    engine = artifact.extra.get("tensorrt")
    if not engine:
        return []
    target, build, report = engine["built_for"], engine["build"], engine["precision"]
    profile = build["profile"]
    rows = [("engine", f"{artifact.directory / engine['engine_file']} ({engine['engine_bytes'] / 1e6:.1f} MB), "
                       f"TensorRT {target['tensorrt_version']} on {target['gpu_name']} "
                       f"(compute capability {target['compute_capability']}), batch {profile['min']}..{profile['max']} "
                       f"opt {profile['opt']}, built in {build['seconds']:.1f} s")]
    counts = ", ".join(f"{precision} {n}" for precision, n in report["by_precision"].items())
    shares = []
    if report["int8_layer_share"] is not None:
        shares.append(f"INT8 {report['int8_layer_share']:.0%} of layers")
    if report["int8_compute_share"] is not None:
        shares.append(f"{report['int8_compute_share']:.0%} of conv/matmul layers")
    rows.append(("engine layers", f"{report['layers']} layers ({counts})" + (f"; {', '.join(shares)}" if shares else "")
                 + (f"; {len(report['opaque_layers'])} opaque Myelin region(s)" if report["opaque_layers"] else "")))
    if artifact.precision == "int8":
        fallback = ", ".join(f"{f['node']} ({f['precision']})" for f in report["int8_fallback"]) or "none"
        rows.append(("INT8 fallback", f"quantized convs TensorRT ran in another precision: {fallback}"
                     + (f"; {len(report['int8_unattributed'])} not attributable by name"
                        if report["int8_unattributed"] else "")))
    # the engine is checked on seeded noise (tensorrt.engine_step); export_artifact records what that means
    drift = engine["drift"]
    meaning = drift.get("meaning") or drift_meaning(artifact.weights.to_dict()["kind"], "synthetic", drift["samples"])
    rows.append(("engine drift", drift_summary({**drift, "meaning": meaning})))
    return rows


def drift_summary(drift: dict) -> str:
    """Drift vs eager with what it means (drift.drift_meaning): a plumbing check or a measurement on real images."""
    return (f"{drift['meaning']['text']}: {drift['relative_max_abs']:.2e} relative max-abs vs eager, cosine "
            f"{drift['cosine_min']:.6f}, top-1 agreement {drift['top1_agreement']:.1%} on {drift['inputs']}")


def isa_rows(extra: dict) -> list[tuple[str, str]]:
    """Summary rows for the integer path the INT8 weights are made for and the real-vs-simulated kernel check."""
    isa, check = extra.get("isa"), extra.get("kernel_validation")
    rows = []
    if isa:
        host = isa["host"]
        form = "portable, every x86 CPU" if isa.get("portable") else "host-only"
        rows.append(("isa", f"made for {isa['made_for']} ({form}; {isa['weight_bits']}-bit weights), holds on "
                            f"{', '.join(isa['runs_on'])}; host {host['cpu']}: {host['integer_path']}"))
    if check:
        runs = ", ".join(f"{name.replace('_', ' ')} {run['top1_agreement']:.2%}"
                         + (f" (gap {run['gap_top1_agreement']:+.2%})" if name != "simulated" else "")
                         for name, run in check["runs"].items())
        verdict = "repaired: " + check["repaired"]["fix"] if check.get("repaired") else (
            f"the integer kernels give the same answers as the exact Q/DQ arithmetic (simulated): none loses more "
            f"than {check['tolerance']:.1%} of top-1 agreement with eager against it")
        rows.append(("kernels", f"top-1 agreement on {check['holdout_images']} hold-out images: {runs}; {verdict}"))
        rows.append(("hold-out", check["holdout_note"]))
    floor = extra.get("accuracy_floor")
    if floor:
        lowest = min(floor["runs"].values(), key=lambda run: run["top1_agreement"])
        rows.append(("floor", f"top-1 agreement >= {floor['min_top1_agreement']:.0%} (binomial test) and mean cosine "
                              f">= {floor['min_cosine_mean']} on every judged run: held (lowest "
                              f"{lowest['top1_agreement']:.2%}, cosine "
                              f"{min(run['cosine_mean'] for run in floor['runs'].values()):.4f})"))
    return rows


def precision_rows(artifact) -> list[tuple[str, str]]:
    """Summary rows for the precision step: layout, calibration, what is INT8, fallback, FP16 checks."""
    extra, rows = artifact.extra, []
    quantized, calibration, fp16 = extra.get("quantized"), extra.get("calibration"), extra.get("fp16")
    if quantized:
        rows.append(("precision", f"int8 for {artifact.target}: {quantized['activations']} activations, "
                                  f"{quantized['weights']} weights"))
    if calibration:
        method = calibration["method"] + (f" {calibration['percentile']}" if "percentile" in calibration else "")
        source = "synthetic noise" if calibration["kind"] == "synthetic" else calibration["path"]
        rows.append(("calibration", f"{method} on {calibration['calibration_images']} images from {source}, "
                                    f"{calibration['holdout_images']} held out; {calibration['cache']}"))
    if quantized:
        counts = ", ".join(f"{cls} {n}" for cls, n in quantized["counts"].items())
        floats = quantized["float"]
        stream = floats.get("residual_stream_stages")
        stream_note = f", residual stream of stages {', '.join(map(str, stream))}" if stream else ""
        rows.append(("quantized", f"{counts}; float: {', '.join(floats['classes']) or 'nothing else'}{stream_note}"
                                  + (f", {len(floats['excluded'])} excluded node(s)" if floats["excluded"] else "")
                                  + f" ({quantized['float_mac_fraction']:.1%} of MACs float)"))
        gelu = quantized.get("gelu", {})
        if gelu.get("form") == "sigmoid":
            rows.append(("gelu", f"{gelu['formula']} in u8 lookup tables, {gelu['islands']} block(s); pwconv2 bias "
                                 f"corrected on {gelu['bias_correction_images']} images"))
        elif "sigmoid_rejected" in gelu:
            rows.append(("gelu", f"exact: the sigmoid form reached {gelu['sigmoid_rejected']['top1_agreement']:.2%} "
                                 f"agreement on the hold-out, below --max-drift"))
        rows.extend(isa_rows(extra))
        fallback = quantized.get("fallback")
        if fallback:
            moved = ", ".join(m["unit"] for m in fallback["moved"]) or "none needed"
            rows.append(("fallback", f"budget top-1 agreement >= {fallback['budget_top1_agreement']}: moved to float: "
                                     f"{moved}"))
    if fp16:
        kept = len(fp16["layer_scale_kept_separate"])
        activations = fp16["activations"]
        rows.append(("precision", f"fp16 ({fp16['io']} I/O), LayerNorm in "
                                  f"{', '.join(fp16['layernorm_compute_types'])}; layer scale separate in {kept} block(s)"))
        rows.append(("fp16 range", f"{len(activations['overflow'])} tensor(s) over 65504, "
                                   f"{len(activations['underflow'])} with >1% subnormal values; worst weight energy "
                                   f"loss {fp16['weights']['worst'][0]['energy_loss']:.1e}" if fp16['weights']['worst']
                                   else "no weights converted"))
    return rows


def main() -> None:  # console-script entry point
    export_command(prog_name="convnext-export")


if __name__ == "__main__":
    sys.exit(main())


# --- convnext-bench ---------------------------------------------------------------------------


def _batch_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        batches = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        batches = ()
    if not batches or any(b < 1 for b in batches):
        raise click.BadParameter(f"{value!r}: give batch sizes >= 1, comma-separated, e.g. 1,8")
    return tuple(dict.fromkeys(batches))


def _backend_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from .backends import backend_names

    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [name for name in names if name not in backend_names()]
    if unknown or not names:
        raise click.BadParameter(f"unknown backend {', '.join(map(repr, unknown)) or 'list'}; "
                                 f"valid backends: {', '.join(backend_names())}")
    return names


def _default_backends() -> str:
    from .backends import default_backend_names

    return ",".join(default_backend_names())


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_EPILOG)
@click.argument("artifact_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--size", metavar="NAME", default=None,
              help=f"Model of the default set (FP32, INT8) exported when no ARTIFACT_DIR is given: {MODEL_NAMES} "
                   "[default: tiny; inferred from --weights].")
@click.option("--image-size", type=click.IntRange(min=32), default=None,
              help=f"Resolution of the default set [default: {WEIGHTS_PREPROCESSING}, else 224].")
@click.option("--weights", type=WEIGHTS, default=None,
              help="Checkpoint file or hf-hub:OWNER/NAME id for the default set [default: seeded random weights].")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the default set's exports here (default: a temporary directory).")
@click.option("--backends", default=_default_backends(), show_default=True, callback=_backend_list,
              help="Comma list; torch (eager) is always measured as the reference. Not installed: listed as skipped.")
@click.option("--batch", "batches", default=None, callback=_batch_list,
              help="Batch sizes, e.g. 1,8; without it, 1 and each static-batch artifact at its own batch "
                   "[default: 1 + static batches].")
@threads_option
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs per variant.")
@click.option("--iters", type=click.IntRange(min=1), default=50, show_default=True, help="Timed runs per variant, at least.")
@click.option("--min-time", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds of timed runs per variant, at least (more rounds until reached).")
@click.option("--block", type=click.IntRange(min=1), default=5, show_default=True,
              help="Consecutive runs of one variant before the next takes its turn.")
@click.option("--cold-start/--no-cold-start", default=True, show_default=True,
              help="Measure cold start and peak memory in a fresh process per artifact and backend.")
@click.option("--cuda-graph", is_flag=True,
              help="GPU rows: capture each backend's device work in a CUDA graph and time its replays.")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Images (class folders, ImageNet synset files, .npy/.npz): drift, and accuracy where labeled.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Images for drift/accuracy (default: all of --data, or 16 random).")
@seed_option
@click.option("--profile", "profile_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write a profiler trace per row into DIR (a separate pass after timing).")
@json_option
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write the report as Markdown (for PR comments) to FILE ('-' for stdout).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a latency-vs-accuracy (Pareto) PNG to FILE.")
@quiet_option
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="A previous --json report: exit 1 when a matching row regressed, 3 when the gate could not "
                   "decide (contended rows, non-finite figures, nothing gated). Repeatable, one per kind of CPU: "
                   "the gate uses the one recorded on this machine's kernel family (float and int8).")
@click.option("--max-regression", default="10%", show_default=True,
              help="With --baseline: tolerated regression beyond the spread both runs measured (e.g. 10% or 0.1).")
@click.option("--absolute", is_flag=True,
              help="With --baseline: gate on milliseconds instead of speedup vs eager (dedicated hardware).")
@click.option("--from-json", "from_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Report (and gate) an earlier --json run instead of running the benchmark.")
@click.option("--allow-missing", is_flag=True, help="With --baseline: rows missing on either side do not fail the gate.")
@version_option
@click.pass_context
@reports_errors
def bench_command(ctx, artifact_dirs, size, image_size, weights, work, backends, batches, threads, warmup, iters, min_time,
                  block, cold_start, cuda_graph, data, limit, seed, profile_dir, json_path, markdown_path, plot_path, quiet, baseline,
                  max_regression, absolute, from_json, allow_missing) -> None:
    """Time artifacts on every backend beside the eager model, measure their drift, report, gate.

    Other work running beside the bench (runnable threads, CPU steal, the eager model's own variation) is
    measured before and while timing; rows timed on a contended machine are flagged, their speedups not to be
    trusted, and the gate neither passes nor fails on them (exit 3).
    """
    if json_path == "-" and markdown_path == "-":
        raise click.UsageError("--json - and --markdown - both want stdout; write one of them to a file")
    _refuse_ignored_options(ctx, artifact_dirs or from_json, baseline)
    console = _console(quiet, "-" if "-" in (json_path, markdown_path) else None)
    if not console.is_terminal and "COLUMNS" not in os.environ:  # logs and CI: room for the whole table
        console.width = max(console.width, 150)
    with ProgressBars(console, disabled=quiet or "-" in (json_path, markdown_path) or from_json is not None) as progress:
        report = benchmark(artifact_dirs, size=size, image_size=image_size, weights=weights, work=work,
                           backends=backends,
                           batches=batches, threads=threads, warmup=warmup, iters=iters, min_time=min_time,
                           block=block, cold_start=cold_start, cuda_graph=cuda_graph, data=data, limit=limit, seed=seed,
                           profile_dir=profile_dir, baseline=baseline, max_regression=max_regression,
                           absolute=absolute, allow_missing=allow_missing, from_json=from_json,
                           log=lambda message: console.log(escape(message)), progress=progress)
    _bench_outputs(report, console, json_path, markdown_path, plot_path)
    from .bench.runner import unmeasured_artifacts

    unmeasured = unmeasured_artifacts(report)
    if unmeasured:
        raise CommandError("nothing was measured of " + "; ".join(
            f"{name} ({'; '.join(reasons) or 'no backend ran it'})" for name, reasons in unmeasured.items())
            + ": the report has no row for it. Fix what the reason names (--backends, --batch, the artifact) "
              "and rerun", 1)
    if baseline:
        _bench_verdict(report["gate"], console)


def _refuse_ignored_options(ctx: click.Context, benched: object, baselines: tuple[Path, ...]) -> None:
    """Options that would be silently ignored are usage errors naming what they apply to."""
    explicit = {name for name in ctx.params
                if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    flag = {"size": "--size", "image_size": "--image-size", "weights": "--weights", "work": "--work"}
    given = [flag[name] for name in flag if name in explicit]
    if benched and given:
        raise click.UsageError(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to the default set "
                               "exported when no ARTIFACT_DIR (or --from-json) is given; an artifact is benched as "
                               "it was exported: re-export it with convnext-export to change it, or drop "
                               f"{', '.join(given)}")
    gate_only = [f"--{name.replace('_', '-')}" for name in ("max_regression", "absolute", "allow_missing")
                 if name in explicit]
    if gate_only and not baselines:
        raise click.UsageError(f"{', '.join(gate_only)} appl{'y' if len(gate_only) > 1 else 'ies'} to the latency "
                               "gate only: add --baseline FILE (an earlier --json report)")


def _bench_outputs(report: dict, console: Console, json_path, markdown_path, plot_path) -> None:
    from .bench.plot import plot_pareto
    from .bench.report import markdown_report, print_report

    print_report(console, report)
    if markdown_path:
        text = markdown_report(report)
        if markdown_path == "-":
            sys.stdout.write(text)
        else:
            try:
                write_atomically(markdown_path, text)
            except OSError as error:
                raise CommandError(f"--markdown {markdown_path}: cannot write ({error.strerror})", 1) from None
    if plot_path:
        plot_pareto(report, plot_path)
        console.log(f"plot written to {plot_path}")
    write_json(json_path, report)


def _bench_verdict(gate: dict, console: Console) -> None:
    """Exit 1 with the table of regressions (or missing rows), 3 when it could not gate, 0 with a summary."""
    from .bench.gate import COULD_NOT_GATE
    from .bench.report import print_gate

    print_gate(console, gate, gate["baseline"])
    if gate["status"] == "could-not-gate":
        raise CommandError("could not gate: " + "; ".join(gate["could_not_gate"]), COULD_NOT_GATE)
    if not gate["passed"]:
        regressed = [c["row"] for c in gate["compared"] if c["regressed"]]
        missing = gate["missing_in_current"] + gate["missing_in_baseline"]
        reasons = ([f"regressed: {', '.join(regressed)}"] if regressed else []) + (
            [f"missing rows: {', '.join(missing)} (--allow-missing to accept)"] if missing else [])
        raise CommandError("latency gate failed: " + "; ".join(reasons), 1)


def bench_main() -> None:  # console-script entry point
    bench_command(prog_name="convnext-bench")
