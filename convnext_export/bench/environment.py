"""The machine a benchmark ran on: CPU and its flags, threads, runtime versions, GPU and driver."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess

# CPU features that decide which kernels runtimes pick (INT8 VNNI, BF16, AMX).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
PACKAGES = {"torch": "torch", "onnxruntime": "onnxruntime", "onnxruntime-gpu": "onnxruntime-gpu",
            "onnx": "onnx", "openvino": "openvino", "tensorrt": "tensorrt", "numpy": "numpy",
            "convnext_export": "convnext-export"}


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "architecture": platform.machine(),
            "flags": [flag for flag in CPU_FLAGS if flag in flags]}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for key, distribution in PACKAGES.items():
        try:
            versions[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def gpu_info() -> list[dict]:
    """GPUs and driver from nvidia-smi, where there is one."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, driver, memory = (part.strip() for part in line.split(",", 2))
        gpus.append({"name": name, "driver": driver, "memory": memory})
    return gpus


def environment(threads: int) -> dict:
    from ..isa import detect_host

    return {
        "cpu": cpu_info(),
        "integer_path": detect_host().to_dict(),
        "threads": threads,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": package_versions(),
        "gpus": gpu_info(),
    }


def same_machine(a: dict, b: dict) -> list[str]:
    """Differences that make absolute timings of two environments incomparable."""
    notes = []
    for label, get in (("CPU", lambda e: e.get("cpu", {}).get("model")), ("cores", lambda e: e.get("cpu", {}).get("cores")),
                       ("threads", lambda e: e.get("threads")), ("GPUs", lambda e: [g.get("name") for g in e.get("gpus", [])])):
        if get(a) != get(b):
            notes.append(f"{label}: baseline {get(a)!r}, this run {get(b)!r}")
    return notes


def host_line() -> str:
    """One line naming the CPU and its int8 kernel family: every benchmark result starts with it."""
    from ..isa import accumulation, detect_host

    host = detect_host()
    return (f"Host: {host.model}, {os.cpu_count()} cores, int8 kernels {host.path.name} "
            f"({accumulation(host.path.saturates)}); "
            f"flags {', '.join(host.flags) or 'none of ' + '/'.join(('avx2', 'avx512*', 'vnni', 'amx'))}")
