"""The memory an export needs at a resolution, checked before it starts.

Activations grow with the square of ``--image-size`` and the export runs several images at once
through the eager model and ONNX Runtime, so an input size the machine cannot hold would sit at
"exporting" until it swaps or is killed. The estimate is the biggest activation, stage 0's MLP
hidden tensor (4 x dims[0] channels at 1/4 resolution), times how many of them the export's
precision step holds at its peak, fitted to the peak RSS of exports on this project's machine
(torch 2.14, onnxruntime 1.32): within 5% for FP32 atto 1024/2048 px and tiny 1024 px, FP16 atto
1024 px and INT8 atto 512/1024 px, 12% over for FP32 atto 1024 px at --batch 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .config import ConvNeXtConfig
from .errors import InputError

BASE_BYTES = 1 << 30  # torch, onnx and ONNX Runtime loaded, a small export done: ~1.0 GB peak RSS measured
FLOAT_BYTES = 4
WARN_IMAGE_SIZE = 1024  # beyond it exports take minutes on a CPU even when they fit
REFERENCE_IMAGE_SIZE = 224
# Copies of the biggest activation per image at the peak, and images run at once without --batch:
# FP32 runs 4 drift images (eager and ONNX Runtime), FP16 8 validation images and checks every
# activation for overflow, INT8 collects every tensor's range and checks the hold-out (measured ~80
# copies in all, plus the calibration images it holds).
_PEAK_COPIES = {"fp32": (4, 4), "fp16": (10, 8), "int8": (20, 4)}
# The weights are held as the eager model, its fused copy, the traced program, the ONNX proto and its
# serialized bytes, and ONNX Runtime's session: the fit above covers 1,000-class heads, a wider head adds this.
WEIGHT_COPIES = 6
ONNX_LIMIT_BYTES = 2**31 - 1  # a protobuf (one .onnx file without external data) holds at most 2 GiB


def parameter_count(config: ConvNeXtConfig) -> int:
    """Parameters of the (unfused) ConvNeXt: stem, downsamples, blocks, head norm and classifier."""
    dims = config.dims
    count = 3 * 16 * dims[0] + dims[0] + 2 * dims[0]  # stem conv 4x4 + LayerNorm
    for stage, (depth, dim) in enumerate(zip(config.depths, dims)):
        if stage:
            count += 2 * dims[stage - 1] + 4 * dims[stage - 1] * dim + dim  # LayerNorm + conv 2x2
        # dwconv, LayerNorm, pwconv1, pwconv2, then V1's layer scale (C) or V2's GRN gamma and beta (2 x 4C)
        block_extra = 2 * 4 * dim if config.uses_grn else dim
        count += depth * (49 * dim + dim + 2 * dim + 4 * dim * dim + 4 * dim + 4 * dim * dim + dim + block_extra)
    return count + 2 * dims[-1] + dims[-1] * config.num_classes + config.num_classes


def head_bytes(config: ConvNeXtConfig) -> int:
    """Memory the classifier's weights take at the peak beyond a 1,000-class head (see WEIGHT_COPIES)."""
    return FLOAT_BYTES * WEIGHT_COPIES * (config.dims[-1] + 1) * max(config.num_classes - 1000, 0)


def biggest_activation(config: ConvNeXtConfig, image_size: int) -> int:
    """Elements per image of the largest tensor: a stage's MLP hidden layer (4 x its width), or the input."""
    side, largest = image_size // 4, 3 * image_size * image_size
    for dim in config.dims:
        largest = max(largest, 4 * dim * side * side)
        side //= 2
    return largest


def export_memory_bytes(config: ConvNeXtConfig, image_size: int, precision: str, batch: int | None,
                        calib_size: int = 0) -> int:
    """Estimated peak memory of exporting ``config`` at ``image_size`` (see the module docstring)."""
    copies, images = _PEAK_COPIES[precision]
    activations = FLOAT_BYTES * biggest_activation(config, image_size) * copies * (batch or images)
    held = FLOAT_BYTES * 3 * image_size * image_size * calib_size if precision == "int8" else 0
    return BASE_BYTES + activations + held + head_bytes(config)


def machine_memory() -> tuple[int | None, int | None]:
    """(total, available) bytes: physical RAM or a smaller cgroup limit, and what is free now (None: unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(limit_file).read_text().strip())  # "max" (no limit) fails int()
        except (OSError, ValueError):
            continue
        total = min(total, limit) if total else limit
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is not None and total is not None:
        available = min(available, total)
    return total, available


def _gb(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


def check_export_memory(config: ConvNeXtConfig, image_size: int, precision: str, batch: int | None,
                        calib_size: int = 0, log: Callable[[str], None] = lambda message: None,
                        memory: tuple[int | None, int | None] | None = None) -> None:
    """Refuse (InputError) an export that cannot fit in the machine's memory; warn when it is large or slow."""
    weights = FLOAT_BYTES * parameter_count(config)
    if weights > ONNX_LIMIT_BYTES:
        headless = parameter_count(config.with_classes(0))
        remedy = (f"use fewer --num-classes (at most {(ONNX_LIMIT_BYTES // FLOAT_BYTES - headless) // (config.dims[-1] + 1):,} "
                  f"here)" if FLOAT_BYTES * headless < ONNX_LIMIT_BYTES else
                  "this tool writes single-file ONNX, so it cannot export this size yet: use a smaller one "
                  "(xlarge and v2-large fit)")
        raise InputError(f"{config.title} with {config.num_classes:,} classes has {_gb(weights)} of weights, "
                         f"more than the 2 GiB one ONNX file holds; {remedy}")
    total, available = memory or machine_memory()
    needed = export_memory_bytes(config, image_size, precision, batch, calib_size)
    per_image = FLOAT_BYTES * biggest_activation(config, image_size)
    held = needed - export_memory_bytes(config, image_size, precision, batch)  # the calibration images
    detail = (f"about {_gb(needed)} of memory (its biggest activation is {_gb(per_image)} per image"
              + (f"; the {calib_size} calibration images take {_gb(held)}" if held else "") + ")")
    if total is not None and needed > total:
        fits = [size for size in range(32, image_size, 32)
                if export_memory_bytes(config, size, precision, batch, calib_size) <= total]
        remedies = [f"--image-size {fits[-1]} or less"] if fits else []
        if batch is None or batch > 1:
            single = export_memory_bytes(config, image_size, precision, 1, calib_size)
            if single <= total:
                remedies.append(f"--batch 1 (about {_gb(single)})")
        if held:
            remedies.append("a smaller --calib-size (or --holdout)")
        if head_bytes(config) > needed // 4:
            remedies.append(f"fewer --num-classes than {config.num_classes:,}")
        remedies.append(f"a smaller --size than {config.name}")
        options = f"{', '.join(remedies[:-1])} or {remedies[-1]}" if len(remedies) > 1 else remedies[0]
        raise InputError(f"--image-size {image_size}: exporting ConvNeXt-{config.name} would need {detail}, more "
                         f"than this machine's {_gb(total)}; use {options}")
    reasons = []
    if available is not None and needed > available:
        reasons.append(f"more than the {_gb(available)} free now: expect swapping or the out-of-memory killer")
    if image_size > WARN_IMAGE_SIZE:
        factor = (image_size / REFERENCE_IMAGE_SIZE) ** 2
        reasons.append(f"it will be slow ({factor:.0f}x the compute of {REFERENCE_IMAGE_SIZE} px)")
    if reasons:
        log(f"warning: --image-size {image_size} needs {detail}; {'; '.join(reasons)}")
