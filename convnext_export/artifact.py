"""The artifact: a model file plus the ``manifest.json`` that says how it was made.

``convnext-bench`` works from artifacts alone: the manifest carries everything needed to
rebuild the eager reference (config, weights path and sha256 or seed, preprocessing).
Artifacts are written into a temporary sibling directory and renamed into place, so an
interrupted export never leaves a half-written directory behind.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock, so no sweeping of killed exports' staging folders
    fcntl = None

from .config import ConvNeXtConfig
from .errors import InputError
from .files import json_text
from .preprocess import Preprocessing

SCHEMA = "convnext-export/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights came from: a checkpoint file (path, sha256, layout; ``hub``: the hf-hub id it was
    fetched as, the path being the hub cache's copy) or a seed."""

    seed: int | None = None
    path: str | None = None
    sha256: str | None = None
    layout: str | None = None
    hub: str | None = None

    def to_dict(self) -> dict:
        if self.path is None:
            return {"kind": "random", "seed": self.seed}
        return {"kind": "checkpoint", "path": self.path, "sha256": self.sha256, "layout": self.layout,
                **({"hub": self.hub} if self.hub else {})}

    @classmethod
    def from_dict(cls, data: dict) -> "WeightsSource":
        if data.get("kind") == "random":
            return cls(seed=int(data["seed"]))
        return cls(path=data["path"], sha256=data["sha256"], layout=data.get("layout"), hub=data.get("hub"))


@dataclass(frozen=True)
class Artifact:
    directory: Path
    model_file: str
    format: str  # "onnx" | "tensorrt"
    precision: str  # "fp32" | "fp16" | "int8"
    config: ConvNeXtConfig
    preprocessing: Preprocessing
    weights: WeightsSource
    fusions: dict[str, int]
    opset: int
    batch: int | None  # None: dynamic batch axis
    model_sha256: str
    drift: dict[str, Any] = field(default_factory=dict)
    target: str | None = None  # INT8 layout: "cpu" | "tensorrt"
    extra: dict[str, Any] = field(default_factory=dict)  # calibration, quantized layers, engine facts, ...
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    @property
    def model_path(self) -> Path:
        return self.directory / self.model_file

    @property
    def name(self) -> str:
        return self.directory.name

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "model_file": self.model_file,
            "format": self.format,
            "precision": self.precision,
            "target": self.target,
            "config": self.config.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "weights": self.weights.to_dict(),
            "fusions": self.fusions,
            "opset": self.opset,
            "batch": self.batch,
            "model_sha256": self.model_sha256,
            "drift": self.drift,
            **self.extra,
            "versions": self.versions,
            "created": self.created,
        }

    def with_changes(self, **changes: Any) -> "Artifact":
        return replace(self, **changes)


_KNOWN_KEYS = {
    "schema", "model_file", "format", "precision", "target", "config", "preprocessing", "weights",
    "fusions", "opset", "batch", "model_sha256", "drift", "versions", "created",
}


def write_manifest(artifact: Artifact) -> Path:
    path = artifact.directory / MANIFEST
    path.write_text(json_text(artifact.to_dict()))
    return path


def read_artifact(directory: str | Path, verify: bool = True, log: Callable[[str], None] = lambda message: None
                  ) -> Artifact:
    """Load an artifact directory; with ``verify`` the model file must match its sha256, load, and be what the
    manifest says it is (``fingerprint.verify_model``; ``log`` hears what an older manifest left unchecked)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise InputError(f"{directory}: no {MANIFEST} here; point at a directory written by convnext-export")
    try:
        data = json.loads(path.read_text(), parse_constant=_not_json)
    except OSError as error:
        raise InputError(f"{path}: cannot read the manifest ({error.strerror}); check its permissions, or "
                         f"{reexport_hint(directory, None)}") from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError, NaN / Infinity
        raise InputError(f"{path}: the manifest is not valid JSON ({error}), so the artifact is damaged; "
                         f"{reexport_hint(directory, None)}") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(schema, str) or not schema.startswith("convnext-export/"):
        raise InputError(f"{path}: not a convnext-export manifest (schema {schema!r}); point at a directory written "
                         f"by convnext-export, or {reexport_hint(directory, data)}")
    if schema != SCHEMA:
        raise InputError(f"{path}: manifest schema {schema!r} is not {SCHEMA!r}; upgrade convnext-export or "
                         f"{reexport_hint(directory, data)}")
    try:
        artifact = Artifact(
            directory=directory,
            model_file=data["model_file"],
            format=data["format"],
            precision=data["precision"],
            target=data.get("target"),
            config=ConvNeXtConfig.from_dict(data["config"]),
            preprocessing=Preprocessing.from_dict(data["preprocessing"]),
            weights=WeightsSource.from_dict(data["weights"]),
            fusions=data["fusions"],
            opset=int(data["opset"]),
            batch=data["batch"],
            model_sha256=data["model_sha256"],
            drift=data.get("drift", {}),
            extra={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
            versions=data.get("versions", {}),
            created=data.get("created", ""),
        )
    except (KeyError, TypeError, ValueError) as error:
        problem = f"it lacks the key {error.args[0]!r}" if isinstance(error, KeyError) else f"{error}"
        raise InputError(f"{path}: the manifest is incomplete or malformed ({problem}); "
                         f"{reexport_hint(directory, data)}") from None
    if verify:
        if not artifact.model_path.is_file():
            raise InputError(f"{artifact.model_path}: the model file named in the manifest is missing; "
                             f"{reexport_hint(directory, data)}")
        actual = file_sha256(artifact.model_path)
        if actual != artifact.model_sha256:
            raise InputError(
                f"{artifact.model_path}: sha256 {actual[:12]}... does not match the manifest's "
                f"{artifact.model_sha256[:12]}...; the file changed after export: {reexport_hint(directory, data)}"
            )
        from .fingerprint import verify_model

        verify_model(artifact, log)
    return artifact


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


def reexport_hint(directory: Path, data: object) -> str:
    """'re-export it with convnext-export ...': as much of the original command as a (damaged) manifest still says."""
    data = data if isinstance(data, dict) else {}
    section = lambda key: data.get(key) if isinstance(data.get(key), dict) else {}  # noqa: E731
    args = ["convnext-export"]
    if section("weights").get("path"):
        args += ["--weights", str(section("weights")["path"])]
    else:
        args += ["--size", str(section("config").get("name") or "SIZE")]
    if section("preprocessing").get("image_size"):
        args += ["--image-size", str(section("preprocessing")["image_size"])]
    if data.get("precision") in ("fp16", "int8"):
        args.append(f"--{data['precision']}")
    args += ["--out", str(directory), "--force"]
    unknown = "SIZE" in args
    return (f"re-export it: {shlex.join(args)} (" + ("SIZE or --weights FILE as it was made from, " if unknown else "")
            + "plus any other options it was made with)")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse an existing non-empty directory unless forced (a usage error, before any work)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"--out {out}: directory exists and is not empty; pass --force to replace it")


def _lock_owner(parent: Path, prefix: str) -> tuple[int, Path]:
    """A new lock file in ``parent``, held (flock) by this process until it closes it or dies."""
    while True:
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=".lock", dir=parent)
        fcntl.flock(handle, fcntl.LOCK_EX)
        if os.fstat(handle).st_nlink:  # not unlinked by a sweep between mkstemp and flock
            return handle, Path(name)
        os.close(handle)


def sweep_stale_staging(out: Path, log: Callable[[str], None] = lambda message: None) -> list[Path]:
    """Remove the staging folders of ``out`` that an export killed outright (SIGKILL, power loss) left behind.

    A staging folder ``.NAME.pid<PID>.<random>.partial`` comes with a ``.lock`` file its export holds a
    flock on for as long as it runs; the kernel releases the lock when that process dies, so a lock this
    process can take belongs to no live export (in any container sharing the directory), whatever its PID
    has become since. Folders without a lock file (older versions) are left alone. A previous artifact
    moved aside (``.old``) just before the kill is put back when ``out`` is missing.
    """
    if fcntl is None or not out.parent.is_dir():
        return []
    removed = []
    for lock in sorted(out.parent.glob(f".{glob.escape(out.name)}.pid*.lock")):
        try:
            handle = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while a live export holds it
            staging, trash = lock.with_suffix(".partial"), lock.with_suffix(".old")
            if trash.is_dir() and not out.exists():
                os.replace(trash, out)
                log(f"restored {out} from {trash.name}: an export replacing it was killed mid-rename")
            for leftover in (staging, trash):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                    if not leftover.exists():
                        removed.append(leftover)
                        log(f"removed {leftover}, left by an export to {out} that was killed")
            lock.unlink(missing_ok=True)
        except OSError:
            continue  # held by a live export, or in a directory this process cannot change
        finally:
            os.close(handle)
    return removed


def unwritable_out(out: Path, error: OSError) -> InputError:
    """The usage error for an ``--out`` whose parent cannot take the export's files."""
    where = next(p for p in (out.parent, *out.parent.parents) if p.exists())  # what refused the write
    problem = "is a file, not a directory" if not where.is_dir() else f"cannot be written to ({error.strerror})"
    return InputError(f"--out {out}: {where} {problem}; choose an --out directory you can write to")


def out_lock_path(out: Path) -> Path:
    """The lock file beside ``out`` that one export at a time holds while it writes ``out``."""
    return out.parent / f".{out.name}.lock"


@contextmanager
def exclusive_out(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock (flock on ``.NAME.lock`` beside it, holding our PID) or refuse (exit 2), naming the
    export that holds it. The kernel drops a killed holder's lock, so a stale file is simply taken over."""
    if fcntl is None:
        yield
        return
    path = out_lock_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(handle, 200).decode(errors="replace").strip() or "unknown"
                os.close(handle)
                raise InputError(f"--out {out}: another export ({holder}) is writing it now and holds {path}; "
                                 f"wait for it to finish, or choose another --out") from None
            try:
                if os.stat(path).st_ino == os.fstat(handle).st_ino:  # not unlinked by its last holder meanwhile
                    break
            except FileNotFoundError:
                pass
            os.close(handle)
        os.ftruncate(handle, 0)
        os.write(handle, f"pid {os.getpid()} on {os.uname().nodename}".encode())
    except OSError as error:
        raise unwritable_out(out, error) from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it: a waiting opener retries on the new file
        os.close(handle)


SCRATCH = ".scratch"


@contextmanager
def scratch_inside(staging: Path) -> Iterator[Path]:
    """Within the block every temporary file of this process (``tempfile``: ours and the libraries', e.g. ONNX
    Runtime's quantizer) goes in ``staging/.scratch``, removed at the end; a SIGKILL leaves it inside the staging
    folder, which the next export to the same --out sweeps (``sweep_stale_staging``), not in $TMPDIR."""
    scratch = staging / SCRATCH
    scratch.mkdir()
    previous, tempfile.tempdir = tempfile.tempdir, str(scratch)
    try:
        yield scratch
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def staged_directory(out: Path, force: bool, log: Callable[[str], None] = lambda message: None) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it replaces ``out`` atomically-enough.

    One export at a time writes ``out`` (``exclusive_out``: a second is refused). On any error, Ctrl-C or
    SIGTERM (see ``interrupts``) the temporary directory is removed and ``out`` is left as it was; what a
    killed export left is swept by the next export to the same ``out``.
    """
    with exclusive_out(out):
        with _staged(out, force, log) as staging:
            yield staging


@contextmanager
def _staged(out: Path, force: bool, log: Callable[[str], None]) -> Iterator[Path]:
    sweep_stale_staging(out, log)  # first: it may put back the ``out`` a killed export had moved aside
    check_output_dir(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{out.name}.pid{os.getpid()}."
        if fcntl is None:
            lock_handle, staging = None, Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=out.parent))
        else:
            lock_handle, lock = _lock_owner(out.parent, prefix)
            staging = lock.with_suffix(".partial")
            staging.mkdir()
    except OSError as error:
        raise unwritable_out(out, error) from None
    trash = staging.with_suffix(".old")
    try:
        yield staging
        if out.exists():
            os.replace(out, trash)
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if trash.is_dir() and not out.exists():  # interrupted between the two renames: put the old one back
            os.replace(trash, out)
        shutil.rmtree(trash, ignore_errors=True)  # interrupted after them: the new artifact is in place
        raise
    finally:
        if lock_handle is not None:
            lock.unlink(missing_ok=True)
            os.close(lock_handle)
