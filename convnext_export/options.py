"""Click options shared by the commands, defined once."""

from __future__ import annotations

import functools
import math
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import size_names
from .errors import ConvNeXtExportError
from .files import json_text, write_atomically
from .hub import HUB_PREFIX
from .interrupts import INTERRUPTED_EXIT, TERMINATED_EXIT, Terminated, signals_unwind

EXIT_CODES_EPILOG = f"""\b
Exit codes:
  0    done
  1    failure: the work could not be done (or a gate failed)
  2    usage error or bad input: an option, file or directory as given cannot be used
  3    convnext-bench --baseline could not gate: rows timed on a contended machine, non-finite
       figures, or nothing gated (a baseline from another CPU kind); the message says what to do
  {INTERRUPTED_EXIT}  interrupted (Ctrl-C)
  {TERMINATED_EXIT}  terminated (SIGTERM: timeout, CI, docker stop)
"""

quiet_option = click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (and --json -).")
json_option = click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
    help="Write a machine-readable summary to FILE ('-' for stdout).",
)
MAX_SEED = 2**63 - 1  # torch.manual_seed and NumPy both take it; seeds are offset (seed + 1) for drift inputs
seed_option = click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
                           help="Seed for random weights and generated inputs (0 to 2**63-1).")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="Intra-op threads for every runtime, at most the cores; without it, the cores "
                                   "other running work leaves free, measured before timing, at least 1 "
                                   "[default: free cores].")


# Libraries whose versions decide what an artifact computes, then the optional runtimes and the hub client.
VERSIONED = ("torch", "onnx", "onnxruntime", "onnxscript", "numpy")
OPTIONAL = ("huggingface_hub", "timm", "openvino", "tensorrt")


def version_message() -> str:
    """``--version``: this package, Python and the key libraries (from their metadata; torch is imported anyway)."""
    def version(name: str) -> str:
        if name == "torch":  # its build tag (+cpu, +cu130) is in the module's version, not the metadata's
            import torch

            return torch.__version__
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    required = ", ".join(f"{name} {version(name)}" for name in VERSIONED)
    optional = ", ".join(f"{name} {version(name)}" for name in OPTIONAL)
    return (f"%(prog)s %(version)s\npython {platform.python_version()}, {required}\noptional: {optional}")


def version_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.version_option(__version__, "--version", message=version_message(),
                                help="Show the version, with Python's and the key libraries', and exit.")(command)


MODEL_NAMES = (f"a size ({', '.join(size_names())}) or timm's name: convnext_tiny, or with a pretrained tag, "
               f"convnext_tiny.fb_in1k, whose preprocessing it selects")


class WeightsParam(click.ParamType):
    """--weights: a checkpoint file that exists, or an ``hf-hub:OWNER/NAME[@REVISION]`` id (resolved later)."""

    name = "weights"
    _file = click.Path(exists=True, dir_okay=False, path_type=Path)

    def get_metavar(self, *args: Any, **kwargs: Any) -> str:
        return "FILE|hf-hub:ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, str) and value.startswith(HUB_PREFIX):
            return value
        return self._file.convert(value, param, ctx)


WEIGHTS = WeightsParam()


class CommandError(click.ClickException):
    """A library error shown as one line, with its exit code (2 bad input, 1 failure)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's actionable errors into click errors: a message, never a traceback; Ctrl-C and
    SIGTERM unwind (removing staged output) and exit 130 and 143, as shells and CI expect."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with signals_unwind() as received:
            try:
                return command(*args, **kwargs)
            except BaseException as error:
                code = received.exit_code if received.signum is not None else (  # whatever a library made of it
                    INTERRUPTED_EXIT if isinstance(error, KeyboardInterrupt) else
                    TERMINATED_EXIT if isinstance(error, Terminated) else None)
                if code is not None:
                    how = "interrupted (Ctrl-C)" if code == INTERRUPTED_EXIT else "terminated (SIGTERM)"
                    click.echo(f"\nAborted: {how}; unfinished output was removed.", err=True)
                    raise click.exceptions.Exit(code) from None
                if isinstance(error, ConvNeXtExportError):
                    raise CommandError(str(error), error.exit_code) from None
                raise

    return wrapper


def float_triple(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 3:
        raise click.BadParameter(f"{value!r}: give three comma-separated numbers, e.g. 0.485,0.456,0.406")
    if not all(math.isfinite(n) for n in numbers):
        raise click.BadParameter(f"{value!r}: every value must be a finite number (not nan or inf), "
                                 f"e.g. 0.485,0.456,0.406")
    if param.name == "std" and min(numbers) <= 0:
        raise click.BadParameter(f"{value!r}: a standard deviation divides the pixels, so each must be > 0, "
                                 f"e.g. 0.229,0.224,0.225")
    return numbers  # type: ignore[return-value]


def write_json(path: str | None, payload: dict) -> None:
    if path is None:
        return
    text = json_text(payload)
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        write_atomically(path, text)
    except OSError as error:
        raise CommandError(f"--json {path}: cannot write ({error.strerror})", 1) from None
