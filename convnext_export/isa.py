"""Which integer-matmul path a CPU gives ONNX Runtime's u8 x s8 kernels, and whether it saturates.

ONNX Runtime (MLAS) picks its int8 GEMM / conv kernels from the CPU's features, best first:
AMX tiles, AVX-512 VNNI, AVX-VNNI (all accumulate u8 x s8 products exactly in int32), then
AVX-512 BW and AVX2, which use ``vpmaddubsw``: two products summed into a *saturating* int16
(``calibration/saturation.py``). The OS's CPU flags say which the host has (``/proc/cpuinfo``
on Linux; ``py-cpuinfo`` elsewhere when installed); anything else is named as unknown.
``CONVNEXT_EXPORT_CPU_FLAGS`` (space-separated flags) overrides them: for hosts whose OS reports
features its kernels cannot use, and for running the tests as on another CPU.

An INT8 artifact is made for every x86 path by default (``DEFAULT_ISA``, ``--isa x86``: "portable"),
whatever machine builds it: an artifact is built on one CPU (CI, a workstation) and deployed on
others nobody checked. ``--isa host`` (or a named path) makes the host-only form instead.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from .errors import InputError


@dataclass(frozen=True)
class IntegerPath:
    """One family of u8 x s8 kernels."""

    name: str
    saturates: bool | None  # None: not an x86 path this tool knows
    kernel: str

    def to_dict(self) -> dict:
        return {"name": self.name, "saturates": self.saturates, "kernel": self.kernel}


PATHS = {path.name: path for path in (
    IntegerPath("amx", False, "AMX int8 tiles, exact int32 accumulation"),
    IntegerPath("avx512_vnni", False, "AVX-512 VNNI vpdpbusd, exact int32 accumulation"),
    IntegerPath("avx_vnni", False, "AVX-VNNI vpdpbusd, exact int32 accumulation"),
    IntegerPath("avx512bw", True, "AVX-512 BW vpmaddubsw, u8 x s8 pairs summed into a saturating int16"),
    IntegerPath("avx2", True, "AVX2 vpmaddubsw, u8 x s8 pairs summed into a saturating int16"),
    IntegerPath("unknown", None, "not an x86 path this tool knows (no AVX2, or not x86)"),
)}
# The flags each path needs, in ONNX Runtime's order of preference.
PATH_FLAGS = (("amx", ("amx_int8", "amx_tile")), ("avx512_vnni", ("avx512_vnni", "avx512bw")),
              ("avx_vnni", ("avx_vnni",)), ("avx512bw", ("avx512bw",)), ("avx2", ("avx2",)))
X86_PATHS = tuple(name for name, _ in PATH_FLAGS)
FLAGS_VARIABLE = "CONVNEXT_EXPORT_CPU_FLAGS"
ALL_X86 = "x86"  # made for every x86 path: overflow-safe wherever a path saturates
DEFAULT_ISA = ALL_X86  # portable by default: the artifact holds on whichever x86 CPU it is deployed
ISA_CHOICES = (ALL_X86, "host", *X86_PATHS)
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def accumulation(saturates: bool | None) -> str:
    """A path's accumulation in a few words, as reports print it (``IntegerPath.saturates``)."""
    return {True: "saturating u8 x s8 pairs", False: "exact int32", None: "not validated"}[saturates]


@dataclass(frozen=True)
class HostIsa:
    """The host CPU as ONNX Runtime's int8 kernels see it."""

    path: IntegerPath
    model: str
    architecture: str
    flags: tuple[str, ...]  # the RELEVANT_FLAGS present
    source: str  # where the flags came from

    def to_dict(self) -> dict:
        return {"integer_path": self.path.name, "saturates": self.path.saturates, "kernel": self.path.kernel,
                "cpu": self.model, "architecture": self.architecture, "flags": list(self.flags), "source": self.source}


def _proc_cpuinfo() -> tuple[str, set[str]] | None:
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read()
    except OSError:
        return None
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return (model, flags) if flags else None


def _py_cpuinfo() -> tuple[str, set[str]] | None:
    try:
        import cpuinfo  # py-cpuinfo, optional
    except ImportError:
        return None
    info = cpuinfo.get_cpu_info()
    aliases = {"avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni"}
    return info.get("brand_raw", ""), {aliases.get(flag, flag) for flag in info.get("flags", [])}


def integer_path(flags: set[str] | frozenset[str], architecture: str = "x86_64") -> IntegerPath:
    """The u8 x s8 kernel family ONNX Runtime picks for these CPU flags."""
    if architecture.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return PATHS["unknown"]
    for name, needed in PATH_FLAGS:
        if all(flag in flags for flag in needed):
            return PATHS[name]
    return PATHS["unknown"]


def detect_host(flags: set[str] | None = None, model: str | None = None) -> HostIsa:
    """The host's integer path from the OS's CPU flags (or the given ``flags``, for tests)."""
    architecture = platform.machine()
    source = "given"
    override = os.environ.get(FLAGS_VARIABLE)
    if flags is None and override is not None:
        flags, source = set(override.split()), FLAGS_VARIABLE
        found = _proc_cpuinfo()
        model = model or (found[0] if found else None)
    if flags is None:
        found = _proc_cpuinfo()
        source = "/proc/cpuinfo"
        if found is None:
            found = _py_cpuinfo()
            source = "py-cpuinfo"
        if found is None:
            return HostIsa(PATHS["unknown"], platform.processor() or architecture, architecture, (),
                           "none: no /proc/cpuinfo and py-cpuinfo is not installed")
        model, flags = found[0] if model is None else model, found[1]
    present = tuple(flag for flag in RELEVANT_FLAGS if flag in flags)
    return HostIsa(integer_path(set(flags), architecture), model or platform.processor() or architecture,
                   architecture, present, source)


@dataclass(frozen=True)
class IsaTarget:
    """What an INT8 artifact is made for: one integer path, or every x86 path (``x86``)."""

    name: str  # a PATHS name or ALL_X86
    host: HostIsa

    @property
    def saturating(self) -> bool:
        """Whether some path the artifact is made for sums u8 x s8 pairs into a saturating int16 (or may)."""
        if self.name == ALL_X86:
            return True
        return PATHS[self.name].saturates is not False

    @property
    def runs_on(self) -> tuple[str, ...]:
        """The integer paths on which the artifact keeps its validated accuracy."""
        if self.saturating:
            return X86_PATHS
        return tuple(name for name, path in PATHS.items() if path.saturates is False)

    def to_dict(self) -> dict:
        return {"made_for": self.name, "runs_on": list(self.runs_on), "host": self.host.to_dict()}


def resolve_isa(choice: str, host: HostIsa | None = None) -> IsaTarget:
    """``--isa``: ``x86`` (every x86 path, the default), ``host`` (the detected path only), or one integer path."""
    if choice not in ISA_CHOICES:
        raise InputError(f"--isa {choice!r}: use one of {', '.join(ISA_CHOICES)} "
                         f"(x86 = every x86 CPU, the default; host = this machine's only)")
    host = host or detect_host()
    return IsaTarget(host.path.name if choice == "host" else choice, host)


def artifact_isa_warning(name: str, precision: str, target: str | None, isa: dict | None,
                         host: HostIsa) -> str | None:
    """A warning when an INT8 artifact runs on integer kernels it was not made and validated for, else None."""
    if precision != "int8":
        return None
    path = host.path
    if path.saturates is None:
        return (f"{name}: this host's integer path is unknown ({host.architecture}, {host.model}): ONNX Runtime's "
                f"int8 kernels here were never validated by convnext-export; trust its drift rows, not its manifest")
    if target == "tensorrt":
        if path.saturates:
            return (f"{name}: a TensorRT-layout INT8 artifact run by ONNX Runtime on this host's {path.name} kernels, "
                    f"which saturate u8 x s8 pairs: its drift here is not TensorRT's (int32 accumulation)")
        return None
    if isa is None:
        if not path.saturates:
            return None
        return (f"{name}: its manifest names no integer path (exported before convnext-export tracked ISAs), so "
                f"its weights may be full-range int8, which this host's {path.name} kernels saturate ({path.kernel}): "
                f"expect lower accuracy; re-export with `convnext-export ... --int8` (its default --isa x86 holds on every "
                f"x86 CPU)")
    if path.name in isa.get("runs_on", ()):
        return None
    return (f"{name}: made for {isa.get('made_for')} ({isa.get('weight_bits')}-bit weights, holds on "
            f"{', '.join(isa.get('runs_on', ())) or 'nothing listed'}), but this host runs {path.name} "
            f"({path.kernel}): expect lower accuracy, measured in its drift rows; re-export with the default --isa x86 "
            f"(every x86 CPU), or --isa {path.name} for this host")
