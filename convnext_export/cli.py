"""Command line: parse, call one library function, print."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .config import size_names
from .export import DEFAULT_OPSET, MIN_OPSET
from .options import float_triple, json_option, quiet_option, reports_errors, seed_option, write_json
from .pipeline import ExportRequest, ExportResult, PreprocessingOverrides, export_artifact
from .preprocess import INTERPOLATIONS


def _console(quiet: bool, json_path: str | None) -> Console:
    # With --json - the summary owns stdout; human output goes to stderr.
    return Console(stderr=json_path == "-", quiet=quiet, highlight=False, log_path=False)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--size", type=click.Choice(size_names()), default=None,
              help="Model size (default tiny; inferred from --weights when given).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Checkpoint (.pth/.pt/.bin/.safetensors): official, timm, torchvision or Hugging Face layout.")
@click.option("--num-classes", type=int, default=None, help="Classes (default 1000, or the checkpoint's).")
@click.option("--image-size", type=click.IntRange(min=32), default=None, help="Input resolution (default 224).")
@click.option("--crop-pct", type=click.FloatRange(0, 1, min_open=True), default=None, help="Center-crop fraction.")
@click.option("--interpolation", type=click.Choice(list(INTERPOLATIONS)), default=None)
@click.option("--mean", callback=float_triple, default=None, help="Normalization mean, e.g. 0.485,0.456,0.406.")
@click.option("--std", callback=float_triple, default=None, help="Normalization std, e.g. 0.229,0.224,0.225.")
@click.option("--opset", type=click.IntRange(min=MIN_OPSET), default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset (17-19 decompose GELU).")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Static batch size (default: dynamic).")
@seed_option
@click.option("--no-fuse", is_flag=True, help="Export the faithful, unfused graph.")
@click.option("--fp16", is_flag=True, help="FP16 model (not available yet).")
@click.option("--int8", is_flag=True, help="Calibrated INT8 Q/DQ model (not available yet).")
@click.option("--trt", is_flag=True, help="Also build a TensorRT engine (not available yet).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory (default artifacts/convnext_<size>-<precision>/).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out directory.")
@quiet_option
@json_option
@reports_errors
def export_command(size, weights, num_classes, image_size, crop_pct, interpolation, mean, std, opset, batch, seed,
                   no_fuse, fp16, int8, trt, out, force, quiet, json_path) -> None:
    """Export a ConvNeXt to fused ONNX with a manifest, checked against the eager model."""
    if fp16 and int8:
        raise click.UsageError("--fp16 and --int8 exclude each other: pick one precision")
    for flag, wanted in (("--fp16", fp16), ("--int8", int8), ("--trt", trt)):
        if wanted:
            raise click.UsageError(f"{flag} is not implemented yet in this version; export FP32 (no flag)")
    console = _console(quiet, json_path)
    request = ExportRequest(
        size=size, weights=weights, num_classes=num_classes, seed=seed, opset=opset, batch=batch, fuse=not no_fuse,
        preprocessing=PreprocessingOverrides(image_size, crop_pct, interpolation, mean, std), out=out, force=force,
    )
    with console.status("exporting", spinner="dots") if not quiet else _nullcontext():
        result = export_artifact(request, log=lambda message: console.log(message))
    print_export_summary(console, result)
    write_json(json_path, export_summary(result))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def export_summary(result: ExportResult) -> dict:
    artifact = result.artifact
    return {
        "artifact": str(artifact.directory),
        "model": str(artifact.model_path),
        "size_bytes": result.size_bytes,
        "seconds": round(result.seconds, 2),
        "op_census": result.op_census,
        "manifest": artifact.to_dict(),
    }


def print_export_summary(console: Console, result: ExportResult) -> None:
    artifact = result.artifact
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("model", f"{artifact.model_path} ({result.size_bytes / 1e6:.1f} MB)")
    table.add_row("config", f"{artifact.config.name}, {artifact.config.num_classes} classes, "
                            f"{artifact.preprocessing.image_size}px, {artifact.precision}, opset {artifact.opset}")
    weights = artifact.weights
    table.add_row("weights", f"{weights.path} ({weights.layout} layout)" if weights.path else f"random, seed {weights.seed}")
    table.add_row("ops", ", ".join(f"{op} {n}" for op, n in result.op_census.items()))
    applied = [f"{name} x{n}" for name, n in artifact.fusions.items() if n]
    table.add_row("fusions", ", ".join(applied) or "none (--no-fuse)")
    drift = artifact.drift
    table.add_row("drift", f"{drift['relative_max_abs']:.2e} relative max-abs vs eager "
                           f"(top-1 agreement {drift['top1_agreement']:.0%}, {drift['inputs']})")
    table.add_row("time", f"{result.seconds:.1f} s")
    console.print(table)


def main() -> None:  # console-script entry point
    export_command(prog_name="convnext-export")


if __name__ == "__main__":
    sys.exit(main())
