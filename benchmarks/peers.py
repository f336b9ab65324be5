"""Peers: this project's artifacts beside what a user would otherwise do, timed in ONE run.

    python benchmarks/peers.py [--size tiny] [--threads 2] [--iters 60] [--markdown peers.md] [--json peers.json]

ConvNeXt at batch 1 on this CPU. Every variant starts from the same weights: a ConvNeXt with
seeded random weights made trained-like (layer scales ~U(0.2, 1), LayerNorm affines away from
1/0; the 1e-6 layer-scale init would make every block nearly the identity and hide INT8
error), saved as an official-layout checkpoint that both this project and timm load. Variants:

- eager FP32 (the reference every speedup and drift is measured against);
- this project's FP32 and INT8 artifacts in ONNX Runtime (CPU), the FP32 one also in OpenVINO
  (INT8 calibrated on 32 images of the same ImageNet sample folder as the other INT8 peers);
- timm's ConvNeXt + ``torch.onnx.export`` (default opset and opset 20) + ONNX Runtime;
- ONNX Runtime ``quantize_static`` with its defaults on that export (calibration: 32 real images), and with
  ``per_channel=True, reduce_range=True`` (what ORT's docs suggest for CPUs without VNNI);
- ``torch.compile`` (inductor, defaults) of the eager model;
- PyTorch's x86 INT8: PT2E with ``X86InductorQuantizer`` (torchao), then ``torch.compile``
  with inductor freezing on, as its tutorial does;
- BF16 autocast of the eager model (this CPU has AVX-512 BF16);
- OpenVINO from the PyTorch model at its default precision (BF16 on this CPU), and NNCF INT8
  (``nncf.quantize`` defaults, same 32 calibration images).

Timing: all variants in one alternating-block measurement (``convnext_export.bench.timing``),
each ONNX Runtime session with the same threads and intra-op spinning off (spinning made ORT
look ~40% faster than it is by slowing whatever ran next), OpenVINO with the same thread
count. Speedup = paired per-round median vs eager. Drift = logits vs eager on 16 real
ImageNet sample images. A peer that fails to build or run becomes a row with its error.
The INT8 peers are built by int8_peers.py, as peers_accuracy.py builds them on the trained references.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convnext_export.backends.onnxruntime import OnnxRuntimeBackend
from convnext_export.bench.environment import environment, host_line
from convnext_export.bench.timing import TimingPlan, input_pool, latency_stats, measure_alternating, paired_speedup
from convnext_export.calibration.int8 import Int8Options
from convnext_export.config import get_config
from convnext_export.drift import drift_metrics
from convnext_export.model import build_model
from convnext_export.preprocess import Preprocessing
from int8_peers import (PeerSource, nncf_int8, openvino_runner, ort_quantize_static, ours, pt2e_int8, timm_model_for,
                        timm_onnx, torch_runner)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"
CALIBRATION_IMAGES, DRIFT_IMAGES = 32, 16
OURS_INT8 = "convnext-export INT8 + ORT"
PT2E_INT8 = "PT2E X86InductorQuantizer INT8 + torch.compile"
NNCF_INT8 = "OpenVINO + NNCF INT8"
# ONNX Runtime's quantize_static: its defaults, and what its docs suggest for CPUs without VNNI
INT8_ORT_PEERS = (("ORT quantize_static (defaults)", "QDQ, defaults of onnxruntime.quantization", {}),
                  ("ORT quantize_static (per_channel, reduce_range)",
                   "QDQ, per_channel=True, reduce_range=True (ORT docs, non-VNNI)",
                   {"per_channel": True, "reduce_range": True}))


@dataclass
class Peer:
    name: str
    how: str
    run: Callable[[np.ndarray], np.ndarray] | None = None
    error: str | None = None
    setup_s: float = 0.0
    results: dict = field(default_factory=dict)


@torch.no_grad()
def trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Layer scales ~U(0.2, 1), LayerNorm weights ~1 + 0.3 N, biases ~0.1 N (in place)."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if name.endswith("gamma"):
            parameter.copy_(torch.rand(parameter.shape, generator=generator) * 0.8 + 0.2)
    for module in model.modules():
        if "LayerNorm" in type(module).__name__:
            module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model


def real_images(count: int, offset: int, preprocessing: Preprocessing) -> np.ndarray:
    from convnext_export.datasets import open_dataset

    dataset = open_dataset(DATA, preprocessing)
    images = np.concatenate([batch.images for batch in dataset.batches(32)])
    if len(images) < offset + count:
        raise SystemExit(f"{DATA}: needs {offset + count} images, has {len(images)}")
    return images[offset:offset + count]


def guarded(name: str, how: str, build: Callable[[], Callable[[np.ndarray], np.ndarray]], probe: np.ndarray) -> Peer:
    """Build a peer and run it once; any failure becomes the row's error, never a crash."""
    started = time.perf_counter()
    print(f"building {name} ...", file=sys.stderr, flush=True)
    try:
        run = build()
        run(probe)
        return Peer(name, how, run, setup_s=time.perf_counter() - started)
    except Exception as error:  # noqa: BLE001 - a peer's failure is a result
        traceback.print_exc(file=sys.stderr)
        message = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        return Peer(name, how, error=f"{type(error).__name__}: {message}", setup_s=time.perf_counter() - started)


def build_peers(size: str, threads: int, seed: int, work: Path) -> tuple[list[Peer], np.ndarray]:
    config = get_config(size)
    preprocessing = Preprocessing()
    model = trained_like(build_model(config, seed), seed)
    checkpoint = work / f"convnext_{size}.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    calibration = real_images(CALIBRATION_IMAGES, 0, preprocessing)
    probe = calibration[:1]
    torch.set_num_threads(threads)
    source = PeerSource(checkpoint, model, timm_model_for(checkpoint, size, config.num_classes), calibration, work,
                        threads)
    peers: list[Peer] = []
    add = lambda name, how, build: peers.append(guarded(name, how, build, probe))  # noqa: E731

    add("eager FP32 (reference)", "this project's faithful ConvNeXt, torch eager", lambda: torch_runner(model))
    # INT8 calibrates on the same ImageNet sample folder the other INT8 peers use (32 images).
    int8 = Int8Options(calib_data=DATA, calib_size=CALIBRATION_IMAGES)
    add("convnext-export FP32 + ORT", "fused FP32 artifact, ONNX Runtime CPU", lambda: ours(source, "fp32", int8))
    add(OURS_INT8, "INT8 artifact (target cpu), ONNX Runtime CPU", lambda: ours(source, "int8", int8))

    def ours_openvino():
        from convnext_export.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(work / "ours-fp32" / "model.onnx", threads=threads).run

    add("convnext-export FP32 + OpenVINO", "fused FP32 artifact, OpenVINO CPU at its default precision", ours_openvino)
    add("timm + torch.onnx.export (default opset) + ORT", "dynamo exporter defaults, batch 1, ORT CPU",
        lambda: OnnxRuntimeBackend(timm_onnx(source), threads=threads).run)
    add("timm + torch.onnx.export (opset 20) + ORT", "dynamo exporter, opset 20, ORT CPU",
        lambda: OnnxRuntimeBackend(timm_onnx(source, 20), threads=threads).run)
    for name, how, options in INT8_ORT_PEERS:
        add(name, f"{how}, {CALIBRATION_IMAGES} calibration images",
            lambda options=options: ort_quantize_static(source, **options))
    add("torch.compile", "inductor, default mode, eager model", lambda: torch_runner(torch.compile(copy.deepcopy(model))))
    add(PT2E_INT8, "torchao PT2E, default x86 config, freezing on", lambda: pt2e_int8(source))
    add("BF16 autocast", "torch.autocast('cpu', bfloat16), eager", lambda: torch_runner(model, autocast=True))

    def openvino_default():
        import openvino as ov

        return openvino_runner(ov.convert_model(source.timm_model, example_input=source.example), threads)

    add("OpenVINO (default precision)", "ov.convert_model(timm model), CPU, LATENCY hint", openvino_default)
    add(NNCF_INT8, f"nncf.quantize defaults, {CALIBRATION_IMAGES} calibration images", lambda: nncf_int8(source))
    drift = real_images(DRIFT_IMAGES, CALIBRATION_IMAGES, preprocessing)
    return peers, drift


def measure(peers: list[Peer], drift_images: np.ndarray, image_size: int, plan: TimingPlan, seed: int) -> dict:
    """Drift vs eager and alternating-block timing of every live peer; returns the timings by peer name."""
    eager = peers[0]
    reference = np.concatenate([eager.run(image[None]) for image in drift_images])
    for peer in peers:
        if peer.run is None:
            continue
        try:
            outputs = np.concatenate([peer.run(image[None]) for image in drift_images])
            peer.results["drift"] = drift_metrics(outputs, reference)
        except Exception as error:  # noqa: BLE001
            peer.error, peer.run = f"{type(error).__name__}: {str(error)[:160]}", None
    live = [p for p in peers if p.run is not None]
    pool = input_pool(1, image_size, plan.pool, seed)
    timings = measure_alternating({p.name: p.run for p in live}, pool, plan,
                                  on_round=lambda r: print(f"round {r}", file=sys.stderr, end="\r", flush=True))
    for peer in live:
        peer.results["latency_ms"] = latency_stats(timings[peer.name].samples, 1)
        peer.results["speedup"] = paired_speedup(timings[eager.name], timings[peer.name])
    return timings


def markdown(peers: list[Peer], env: dict, command: str) -> str:
    lines = [
        f"ConvNeXt-{env['model']} at {env['image_size']} px, batch 1, {env['threads']} threads, {env['cpu']['model']} "
        f"({', '.join(env['cpu']['flags'])}); torch {env['versions']['torch']}, onnxruntime "
        f"{env['versions']['onnxruntime']}, openvino {env['versions']['openvino']}. One run: `{command}`.",
        "",
        "| variant | how | p50 ms | speedup vs eager | drift (rel. max-abs) | top-1 agree | top-5 agree | KL |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for peer in peers:
        if peer.error:
            lines.append(f"| {peer.name} | {peer.how} | failed: {peer.error.replace('|', '/')} | | | | | |")
            continue
        lat, speed, drift = peer.results["latency_ms"], peer.results["speedup"], peer.results["drift"]
        reference = peer is peers[0]
        lines.append(
            f"| {peer.name} | {peer.how} | {lat['p50']:.1f} | {speed['speedup']:.2f}x ±{speed['spread']:.0%} | "
            + ("ref | ref | ref | ref |" if reference else
               f"{drift['relative_max_abs']:.1e} | {drift['top1_agreement']:.0%} | {drift['top5_agreement']:.0%} | "
               f"{drift['kl_mean']:.1e} |"))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(host_line(), flush=True)
    if not DATA.is_dir():
        raise SystemExit(f"needs the ImageNet samples at {DATA} (see ../shared/data/README.md)")
    command = "python benchmarks/peers.py " + " ".join(sys.argv[1:])
    plan = TimingPlan(warmup=args.warmup, iters=args.iters, block=5)
    with tempfile.TemporaryDirectory(prefix="convnext-peers-") as tmp:
        peers, drift_images = build_peers(args.size, args.threads, args.seed, Path(tmp))
        measure(peers, drift_images, 224, plan, args.seed)
    env = {**environment(args.threads), "model": args.size[0].upper() + args.size[1:], "image_size": 224}
    table = markdown(peers, env, command)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "command": command, "timing": plan.describe(),
                                         "python": platform.python_version(),
                                         "peers": [{"name": p.name, "how": p.how, "error": p.error,
                                                    "setup_s": p.setup_s, **p.results} for p in peers]},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
