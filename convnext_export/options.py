"""Click options shared by the commands, defined once."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from .errors import ConvNeXtExportError
from .files import write_atomically
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
seed_option = click.option("--seed", type=int, default=0, show_default=True,
                           help="Seed for random weights and generated inputs.")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="Intra-op threads for every runtime, at most the cores (default: the cores "
                                   "other running work leaves free, measured before timing; at least 1).")


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
    return numbers  # type: ignore[return-value]


def write_json(path: str | None, payload: dict) -> None:
    if path is None:
        return
    text = json.dumps(payload, indent=2, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        write_atomically(path, text)
    except OSError as error:
        raise CommandError(f"--json {path}: cannot write ({error.strerror})", 1) from None
