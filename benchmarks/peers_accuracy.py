"""Speed at equal accuracy: each INT8 peer's top-1 and agreement with eager on both trained references, on this
host's integer kernels, beside its ConvNeXt-T speedup from peers.py's timing in the same invocation.

    python benchmarks/peers_accuracy.py --markdown benchmarks/results/peers_accuracy.md \
        --json benchmarks/results/peers_accuracy.json

Accuracy: for each CIFAR-10 reference (ConvNeXt-atto, 64 px, int8_isa.REFERENCES) every INT8 peer
(int8_peers.py) is built from the same checkpoint and calibrated on the same images: the 256 (default
--calib-size) of ../shared/data/cifar10/train that `convnext-export --weights REF --int8 --calib-data
.../cifar10/train` calibrates on (load_calibration_data, seed 0; this project's export also checks its model on
1,000 hold-out train images, part of its default recipe). Each runs the 8,000 test images (int8_isa.test_set)
with its real kernels on this host: ONNX Runtime at its default graph optimizations (its integer kernels),
inductor's oneDNN int8 kernels, OpenVINO's CPU plugin. Top-1 vs the labels, and top-1 agreement with eager FP32
(int8_isa.scores). A peer that fails becomes a row with its error.

Speed: peers.py on ConvNeXt-T (trained-like random weights, batch 1, alternating blocks, ORT spinning off) in the
same invocation: ConvNeXt-atto at 64 px runs too little work per call to rank runtimes. --no-speed skips it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convnext_export.bench.environment import environment, host_line
from convnext_export.bench.timing import TimingPlan, paired_speedup
from convnext_export.calibration.data import DEFAULT_CALIB_SIZE, load_calibration_data
from convnext_export.calibration.int8 import Int8Options
from convnext_export.isa import detect_host
from convnext_export.pipeline import eager_runner, load_reference
from int8_isa import DATA, REFERENCES, scores, test_set
from int8_peers import PeerSource, nncf_int8, ort_quantize_static, ours, pt2e_int8, timm_model_for
from peers import INT8_ORT_PEERS, NNCF_INT8, OURS_INT8, PT2E_INT8, Peer, build_peers, guarded, measure
from peers import markdown as speed_markdown

EVAL_BATCH = 250  # divides the 8,000 test images


@dataclass(frozen=True)
class Reference:
    """One trained reference with its test set and the eager logits every peer is compared with."""

    name: str
    source: PeerSource
    images: np.ndarray
    labels: np.ndarray
    eager: np.ndarray
    eager_top1: float


def load(name: str, weights: Path, calib_size: int, limit: int | None, threads: int, work: Path) -> Reference:
    reference = load_reference(None, weights, None, 0)
    images, labels = test_set(weights)
    if limit:  # smoke runs: images of every class (the test set is class-ordered)
        subset = np.linspace(0, len(images) - 1, limit).round().astype(int)
        images, labels = images[subset], labels[subset]
    print(f"{name}: eager FP32 on {len(images)} test images ...", file=sys.stderr, flush=True)
    eager = eager_runner(reference.model, batch_size=EVAL_BATCH)(images)
    calibration = load_calibration_data(reference.preprocessing, DATA / "train", calib_size, seed=0).images
    timm_model = timm_model_for(weights, reference.config.name, reference.config.num_classes)
    with torch.inference_mode():
        timm_gap = float((timm_model(torch.from_numpy(images[:32])) - torch.from_numpy(eager[:32])).abs().max())
    print(f"{name}: timm's model vs eager, max |logit diff| on 32 images {timm_gap:.1e}", file=sys.stderr)
    folder = work / weights.stem
    folder.mkdir()
    source = PeerSource(weights, reference.model, timm_model, calibration, folder, threads, dynamic_batch=True)
    return Reference(name, source, images, labels, eager, float((eager.argmax(1) == labels).mean()))


def int8_peers(reference: Reference, calib_size: int) -> list[Peer]:
    source = reference.source
    probe = source.example.numpy()
    count = len(source.calibration)
    int8 = Int8Options(calib_data=DATA / "train", calib_size=calib_size)
    builders = [(OURS_INT8, f"default --int8 (target cpu), {count} calibration + 1,000 hold-out images",
                 lambda: ours(source, "int8", int8))]
    builders += [(name, how, lambda options=options: ort_quantize_static(source, **options))
                 for name, how, options in INT8_ORT_PEERS]
    builders += [(PT2E_INT8, "torchao PT2E, default x86 config, freezing on, dynamic batch", lambda: pt2e_int8(source)),
                 (NNCF_INT8, "nncf.quantize defaults", lambda: nncf_int8(source))]
    return [guarded(name, f"{how}, {count} calibration images" if name != OURS_INT8 else how, build, probe)
            for name, how, build in builders]


def evaluate(reference: Reference, peer: Peer) -> dict:
    """The peer's scores on the reference's test images, run in batches, progress on stderr."""
    started, outputs, total = time.perf_counter(), [], len(reference.images)
    for start in range(0, total, EVAL_BATCH):
        outputs.append(peer.run(np.ascontiguousarray(reference.images[start:start + EVAL_BATCH])))
        print(f"  {reference.name} / {peer.name}: {min(start + EVAL_BATCH, total)}/{total}", file=sys.stderr,
              end="\r", flush=True)
    row = scores(np.concatenate(outputs), reference.labels, reference.eager)
    print(f"  {reference.name} / {peer.name}: top-1 {row['top1']:.2%}, agreement {row['agreement']:.2%} "
          f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return {**row, "eval_s": time.perf_counter() - started}


def accuracy(calib_size: int, limit: int | None, threads: int, work: Path) -> tuple[list[dict], dict]:
    rows, eager_top1 = [], {}
    for name, weights in REFERENCES.items():
        reference = load(name, weights, calib_size, limit, threads, work)
        eager_top1[name] = reference.eager_top1
        for peer in int8_peers(reference, calib_size):
            row = {"model": name, "peer": peer.name, "how": peer.how, "setup_s": peer.setup_s, "error": peer.error}
            if peer.run is not None:
                try:
                    row.update(evaluate(reference, peer))
                except Exception as error:  # noqa: BLE001 - a peer's failure is a result
                    row["error"] = f"{type(error).__name__}: {str(error).strip()[:160]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows, eager_top1


def speed(threads: int, iters: int, seed: int, work: Path) -> tuple[dict, list[Peer]]:
    """peers.py's ConvNeXt-T timing; each peer's speedup vs eager and vs this project's INT8 (paired, same run)."""
    plan = TimingPlan(warmup=10, iters=iters, block=5)
    peers, drift_images = build_peers("tiny", threads, seed, work)
    timings = measure(peers, drift_images, 224, plan, seed)
    speeds = {}
    for peer in peers:
        if peer.run is None:
            speeds[peer.name] = {"error": peer.error}
            continue
        speeds[peer.name] = {"p50_ms": peer.results["latency_ms"]["p50"], "vs_eager": peer.results["speedup"]}
        if OURS_INT8 in timings:
            speeds[peer.name]["vs_ours"] = paired_speedup(timings[OURS_INT8], timings[peer.name])
    return speeds, peers


def dominating(rows: list[dict], speeds: dict) -> list[str]:
    """INT8 peers faster than this project's INT8 (same run) and at least as accurate (top-1 and agreement) on
    every reference."""
    by = {(row["model"], row["peer"]): row for row in rows}
    found = []
    for peer in {row["peer"] for row in rows} - {OURS_INT8}:
        vs_ours = speeds.get(peer, {}).get("vs_ours")
        if vs_ours is None or vs_ours["speedup"] <= 1:
            continue
        pairs = [(by.get((model, peer), {}), by.get((model, OURS_INT8), {})) for model in REFERENCES]
        if all("top1" in p and "top1" in o and p["top1"] >= o["top1"] and p["agreement"] >= o["agreement"]
               for p, o in pairs):
            found.append(peer)
    return sorted(found)


def markdown(host: dict, rows: list[dict], eager_top1: dict, speeds: dict, command: str) -> str:
    lines = [f"Host: {host['cpu']} ({host['architecture']}), integer path **{host['integer_path']}** "
             f"({host['kernel']}); flags {', '.join(host['flags'])}. One run: `{command}`.", ""]
    images = next((row["images"] for row in rows if "images" in row), 0)
    lines += [f"Speed at equal accuracy. Speed: ConvNeXt-T, batch 1, same run (peers.py), paired speedup vs eager "
              f"and vs this project's INT8 (>1: faster than it). Accuracy: top-1 on {images:,} CIFAR-10 test images "
              f"/ top-1 agreement with eager FP32, each peer calibrated on the same train images, on this host's "
              f"integer kernels ({host['integer_path']}).", ""]
    references = list(REFERENCES)
    lines += ["| INT8 peer | ConvNeXt-T speedup vs eager | vs convnext-export INT8 | "
              + " | ".join(f"{name} (eager {eager_top1.get(name, float('nan')):.2%})" for name in references) + " |",
              "|---|---:|---:|" + "---:|" * len(references)]
    by = {(row["model"], row["peer"]): row for row in rows}
    for peer in dict.fromkeys(row["peer"] for row in rows):
        speed_cell = speeds.get(peer, {})
        if "vs_eager" in speed_cell:
            s, o = speed_cell["vs_eager"], speed_cell.get("vs_ours")
            cells = [f"{s['speedup']:.2f}x ±{s['spread']:.0%}", f"{o['speedup']:.2f}x ±{o['spread']:.0%}" if o else ""]
        else:
            cells = [f"failed: {speed_cell['error']}" if "error" in speed_cell else "not timed", ""]
        for model in references:
            row = by.get((model, peer), {})
            cells.append(f"failed: {row['error']}" if row.get("error") else
                         f"{row['top1']:.2%} / {row['agreement']:.2%}" if "top1" in row else "")
        lines.append(f"| {peer} | " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    found = dominating(rows, speeds)
    lines += ["", "Faster than convnext-export INT8 and at least as accurate (top-1 and agreement) on both "
              f"references: **{', '.join(found) if found else 'none'}**."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=60, help="timed runs per variant (peers.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calib-size", type=int, default=DEFAULT_CALIB_SIZE, help="calibration images, every peer")
    parser.add_argument("--limit", type=int, default=None, help="test images (smoke runs; default all 8,000)")
    parser.add_argument("--no-speed", action="store_true", help="skip peers.py's ConvNeXt-T timing")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(host_line(), flush=True)
    if not (DATA / "train").is_dir() or not (DATA / "test").is_dir():
        raise SystemExit(f"needs CIFAR-10 at {DATA} (see ../shared/data/README.md)")
    command = "python benchmarks/peers_accuracy.py " + " ".join(sys.argv[1:])
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    speeds, timed = {}, []
    with tempfile.TemporaryDirectory(prefix="convnext-peers-accuracy-") as tmp:
        work = Path(tmp)
        rows, eager_top1 = accuracy(args.calib_size, args.limit, args.threads, work)
        if not args.no_speed:
            (work / "tiny").mkdir()
            speeds, timed = speed(args.threads, args.iters, args.seed, work / "tiny")
    host = detect_host().to_dict()
    env = {**environment(args.threads), "model": "Tiny", "image_size": 224}
    text = markdown(host, rows, eager_top1, speeds, command)  # its first line names the host and integer path
    if timed:
        text += "\nEvery variant of the ConvNeXt-T timing (drift on 16 ImageNet sample images):\n\n"
        text += speed_markdown(timed, env, command)
    elapsed = time.perf_counter() - started
    text += f"\nWall time of the run: {elapsed / 60:.1f} min.\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"host": host, "environment": env, "command": command, "wall_s": elapsed,
                                         "eager_top1": eager_top1, "accuracy": rows, "speed": speeds,
                                         "dominating": dominating(rows, speeds)}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
