"""Harness for the bad-input tables: each case runs a command and must fail cleanly.

A case passes when the command exits with its expected code, prints no traceback, names what went wrong,
leaves every input file as it was (same bytes), and leaves nothing behind: no staging folder beside --out,
nothing in its own TMPDIR. A case runs the command in this process through click's CliRunner (an exception
other than the command's own exit is a traceback; a timer fails a hang), in its own working directory, TMPDIR
and COLUMNS; one marked ``process=True`` (what only a real process shows: a segfault, a hang on a FIFO, an
import that fails through PYTHONPATH, environment read at import) runs the installed console script in a
subprocess with a timeout. In-process keeps the ~100 cases within CI's budget: each subprocess imports torch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "benchmarks" / "reference" / "convnext_atto_cifar10.pth"
TIMEOUT_S = 120
# ONNX Runtime 1.32 writes its telemetry session id to $TMPDIR/.ses when it is imported (native code, outside
# anything this package controls): not a leftover of the command.
ORT_TELEMETRY_FILES = frozenset({".ses"})


@dataclass(frozen=True)
class BadInput:
    """One bad input: the command line ({work} is the case's folder), what it must exit with and say."""

    id: str
    command: str  # "convnext-export" | "convnext-bench"
    args: tuple[str, ...]
    exit_code: int
    says: tuple[str, ...]  # substrings the output must contain (case-insensitive)
    setup: Callable[[Path], None] | None = None  # builds the case's inputs inside {work}
    outputs: tuple[str, ...] = field(default=())  # paths under {work} the command may create (e.g. --out)
    process: bool = False  # run the installed console script in a subprocess (see the module docstring)


def _console_script(name: str) -> str:
    script = Path(sys.executable).with_name(name)
    return str(script) if script.exists() else shutil.which(name) or name


def _snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, str]:
    files = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip) or not path.is_file():
            continue
        files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def _in_subprocess(case: BadInput, args: list[str], work: Path, scratch: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(scratch), "COLUMNS": "120", "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    try:
        return subprocess.run([_console_script(case.command), *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{case.id}: hung (no exit within {TIMEOUT_S} s): {case.command} {' '.join(args)}")


class _Hung(Exception):
    pass


def _in_process(case: BadInput, args: list[str], work: Path, scratch: Path) -> subprocess.CompletedProcess:
    from click.testing import CliRunner

    from convnext_export.cli import bench_command, export_command

    command = {"convnext-export": export_command, "convnext-bench": bench_command}[case.command]
    saved_env = {name: os.environ.get(name) for name in ("TMPDIR", "COLUMNS")}
    saved_cwd, saved_tempdir = os.getcwd(), tempfile.tempdir

    def hung(signum, frame):
        raise _Hung()

    previous = signal.signal(signal.SIGALRM, hung)
    os.environ.update(TMPDIR=str(scratch), COLUMNS="120")
    tempfile.tempdir = str(scratch)
    os.chdir(work)
    signal.alarm(TIMEOUT_S)
    try:
        result = CliRunner().invoke(command, args, prog_name=case.command, catch_exceptions=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(saved_cwd)
        tempfile.tempdir = saved_tempdir
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if isinstance(result.exception, _Hung):
        raise AssertionError(f"{case.id}: hung (no exit within {TIMEOUT_S} s): {case.command} {' '.join(args)}")
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += "".join(traceback.format_exception(*result.exc_info))  # a traceback the user would have seen
    return subprocess.CompletedProcess([case.command, *args], result.exit_code, output, "")


def run_bad_input(case: BadInput, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run one case and assert everything the table promises; returns the finished process."""
    work = tmp_path / "work"
    scratch = tmp_path / "tmpdir"
    work.mkdir()
    scratch.mkdir()
    if case.setup is not None:
        case.setup(work)
    outputs = tuple(work / p for p in case.outputs)
    before = _snapshot(work, outputs)
    args = [a.replace("{work}", str(work)) for a in case.args]
    done = (_in_subprocess if case.process else _in_process)(case, args, work, scratch)
    output = done.stdout + done.stderr
    shown = f"{case.id}: {case.command} {' '.join(args)}\nexit {done.returncode}\n{output[-3000:]}"
    assert done.returncode >= 0, f"killed by signal {-done.returncode}\n{shown}"
    assert "Traceback (most recent call last)" not in output, shown
    assert done.returncode == case.exit_code, shown
    for phrase in case.says:
        assert phrase.lower() in output.lower(), f"missing {phrase!r}\n{shown}"
    after = _snapshot(work, outputs)
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert not changed, f"inputs changed or deleted: {changed}\n{shown}"
    leftovers = [p.name for p in work.rglob("*") if ".partial" in p.name or p.name.endswith((".lock", ".old"))]
    assert not leftovers, f"left behind: {leftovers}\n{shown}"
    left = [p.name for p in scratch.iterdir() if p.name not in ORT_TELEMETRY_FILES]
    assert not left, f"left in TMPDIR: {left}\n{shown}"
    return done
