"""INT8 on each x86 integer path: accuracy of the weight forms on every kind of kernel, on both trained
reference models, and the speed cost of the overflow-safe form.

Accuracy: each reference (CIFAR-10 ConvNeXt-atto in benchmarks/reference/) is exported with
`convnext-export --weights REF --int8 --calib-data ../shared/data/cifar10/train` (default 256
calibration images) twice: the default (`--isa x86`, portable: 7-bit overflow-safe weights, validated
at export on this host's kernels and on emulated saturating ones) and the host-only form of a VNNI / AMX
host (`--isa avx512_vnni`: 8-bit weights, what `--isa host` gives there, whatever this host is);
`--forms` adds two rejected forms made from the 8-bit model (u8 x u8 weights, and 8-bit weights with
only the unsafe pairs limited). Every model runs the 8,000 test images on:

  simulated      ONNX Runtime with graph optimizations off: the Q/DQ arithmetic, no integer kernel
  host           ONNX Runtime's integer kernels on this machine (its integer path is printed)
  emulated AVX2  the saturating u8 x s8 pair sums of AVX2 / AVX-512 BW, emulated (kernel_emulation.py)
  qemu AVX2      ONNX Runtime's own AVX2 kernels under `qemu-x86_64 -cpu Haswell` (no VNNI), on --qemu
                 test images spread evenly over the class-ordered test set (slow: ~0.1 s per image
                 here); 0 skips it

It also counts, per reference, the integer layers whose 8-bit weights cannot saturate for any input
(every same-sign pair |w_i| + |w_j| <= 128): the layers a mixed form could keep 8-bit.

Speed: ConvNeXt-T (random weights, synthetic calibration) INT8 with 8-bit and 7-bit weights (and u8 x u8)
against eager PyTorch FP32, batch 1, in alternating blocks (ONNX Runtime spinning off), --repeats times
(--accuracy-only skips it: on a busy machine its milliseconds mean little). Timing on qemu is
meaningless, so speed is reported for the host's integer path only.

    python benchmarks/int8_isa.py --qemu 1000 --repeats 3 --markdown benchmarks/results/int8_isa.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from convnext_export.backends.onnxruntime import OnnxRuntimeBackend
from convnext_export.backends.torch_eager import TorchBackend
from convnext_export.bench.environment import host_line
from convnext_export.bench.timing import TimingPlan, input_pool, measure_alternating, paired_speedup
from convnext_export.calibration.int8 import Int8Options, onnxruntime_runner
from convnext_export.calibration.kernel_emulation import emulate_saturating_kernels
from convnext_export.calibration.overflow import limit_weight_pairs, unsigned_weights
from convnext_export.calibration.qdq_weights import quantized_weights, read_array
from convnext_export.calibration.saturation import reduction_order, unsafe_pairs
from convnext_export.config import get_config
from convnext_export.datasets import open_dataset
from convnext_export.isa import detect_host
from convnext_export.model import build_model
from convnext_export.pipeline import ExportRequest, eager_runner, export_artifact, load_reference

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "cifar10"
REFERENCES = {"official (24 ep.)": HERE / "reference" / "convnext_atto_cifar10.pth",
              "timm conv_mlp": HERE / "reference" / "convnext_atto_cifar10_timm.pth"}
REFERENCE_KEYS = {"official": "official (24 ep.)", "timm": "timm conv_mlp"}
QEMU_RUNNER = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i:i + 50]})[0]
                                     for i in range(0, len(x), 50)]))
"""


DEFAULT_FORM = "7-bit, default --isa x86 (portable)"
HOST_FORM = "8-bit, --isa host on VNNI (host-only)"


def safe_8bit_layers(model: onnx.ModelProto) -> dict:
    """Integer layers (not depthwise) whose 8-bit weights cannot saturate a u8 x s8 pair sum for any input."""
    layers = [w for w in quantized_weights(model) if not w.depthwise]
    safe = [w.name for w in layers
            if not unsafe_pairs(reduction_order(read_array(model, w.codes_name), w.op_type, w.trans_b)).any()]
    return {"layers": len(layers), "safe": safe}


def test_set(weights: Path) -> tuple[np.ndarray, np.ndarray]:
    preprocessing = load_reference(None, weights, None, 0).preprocessing
    dataset = open_dataset(DATA / "test", preprocessing)
    images, labels = zip(*((b.images, b.labels) for b in dataset.batches(500)))
    return np.concatenate(images), np.concatenate(labels)


def qemu_logits(model: onnx.ModelProto, images: np.ndarray, work: Path) -> np.ndarray:
    onnx.save(model, work / "qemu.onnx")
    np.save(work / "qemu_x.npy", images)
    (work / "qemu_runner.py").write_text(QEMU_RUNNER)
    subprocess.run([shutil.which("qemu-x86_64"), "-cpu", "Haswell", sys.executable, str(work / "qemu_runner.py"),
                    str(work / "qemu.onnx"), str(work / "qemu_x.npy"), str(work / "qemu_y.npy")],
                   check=True, capture_output=True)
    return np.load(work / "qemu_y.npy")


def scores(logits: np.ndarray, labels: np.ndarray, eager: np.ndarray) -> dict:
    return {"images": len(logits), "top1": float((logits.argmax(1) == labels).mean()),
            "eager_top1": float((eager.argmax(1) == labels).mean()),
            "agreement": float((logits.argmax(1) == eager.argmax(1)).mean())}


def accuracy(name: str, weights: Path, forms: list[str], qemu: int, work: Path) -> list[dict]:
    images, labels = test_set(weights)
    eager = eager_runner(load_reference(None, weights, None, 0).model, batch_size=250)(images)
    integer, simulated = onnxruntime_runner(None), onnxruntime_runner(None, kernels="simulated")
    models, validations = {}, {}
    for isa, form in ((None, DEFAULT_FORM), ("avx512_vnni", HOST_FORM)):
        started = time.perf_counter()
        artifact = export_artifact(ExportRequest(
            weights=weights, precision="int8", out=work / f"{isa or 'default'}", force=True,
            int8=Int8Options(calib_data=DATA / "train", isa=isa))).artifact
        print(f"{name}: exported --isa {isa or 'x86 (default)'} in {time.perf_counter() - started:.0f} s", flush=True)
        models[form] = onnx.load(str(artifact.model_path))
        check = artifact.extra["kernel_validation"]
        validations[form] = {"holdout_images": check["holdout_images"], "judged": check["judged"],
                             **{run: values["top1_agreement"] for run, values in check["runs"].items()}}
    if "u8u8" in forms:
        models["u8 x u8"] = unsigned_weights(models[HOST_FORM])
    if "pairs" in forms:
        models["8-bit, unsafe pairs limited"] = limit_weight_pairs(models[HOST_FORM])[0]
    rows = []
    for form, model in models.items():
        row = {"model": name, "weights": form, "safe_8bit_layers": safe_8bit_layers(models[HOST_FORM])}
        if form in validations:
            row["export_validation"] = validations[form]
        row["simulated"] = scores(simulated(model, images), labels, eager)
        row["host"] = scores(integer(model, images), labels, eager)
        if form != "u8 x u8":  # the emulation models u8 x s8 kernels
            row["emulated_avx2"] = scores(simulated(emulate_saturating_kernels(model), images), labels, eager)
        if qemu:
            subset = np.linspace(0, len(images) - 1, min(qemu, len(images))).round().astype(int)
            row["qemu_avx2"] = scores(qemu_logits(model, images[subset], work), labels[subset], eager[subset])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def speed(repeats: int, iters: int, threads: int, work: Path) -> list[dict]:
    torch.set_num_threads(threads)
    model = build_model(get_config("tiny"), seed=0)
    paths = {}
    for isa, form in (("avx512_vnni", "8-bit"), (None, "7-bit")):
        artifact = export_artifact(ExportRequest(size="tiny", precision="int8", out=work / f"tiny-{isa}", force=True,
                                                 int8=Int8Options(calib_size=64, isa=isa, holdout=8))).artifact
        paths[form] = artifact.model_path
    paths["u8 x u8"] = work / "tiny-u8u8.onnx"
    onnx.save(unsigned_weights(onnx.load(str(paths["8-bit"]))), str(paths["u8 x u8"]))
    plan = TimingPlan(warmup=5, iters=iters, block=5, pool=8)
    runs = []
    for repeat in range(repeats):
        variants = {"eager": TorchBackend(model, threads=threads).run}
        variants.update({form: OnnxRuntimeBackend(path, threads=threads).run for form, path in paths.items()})
        timings = measure_alternating(variants, input_pool(1, 224, plan.pool, repeat), plan)
        run = {form: {"p50_ms": float(np.median(timings[form].samples)),
                      "vs_eager": paired_speedup(timings["eager"], timings[form])["speedup"],
                      "vs_8bit": paired_speedup(timings["8-bit"], timings[form])["speedup"]}
               for form in paths}
        runs.append(run)
        print(f"speed run {repeat + 1}: " + ", ".join(f"{f} {r['vs_eager']:.2f}x eager, {r['vs_8bit']:.3f}x 8-bit"
                                                      for f, r in run.items()), flush=True)
    return runs


def markdown(host: dict, rows: list[dict], runs: list[dict], args) -> str:
    lines = [f"Host: {host['cpu']}, integer path **{host['integer_path']}** ({host['kernel']}); "
             f"flags {', '.join(host['flags'])}.", ""]
    if rows:
        lines += ["Top-1 on the CIFAR-10 test images (Δ vs eager) / top-1 agreement with eager; "
                  "default --int8 calibration (256 train images).", "",
                  "| reference | weights | simulated Q/DQ | host kernels | AVX2 emulated | "
                  f"AVX2 under qemu ({args.qemu} images, all classes) |", "|---|---|---|---|---|---|"]
        for row in rows:
            cells = []
            for key in ("simulated", "host", "emulated_avx2", "qemu_avx2"):
                s = row.get(key)
                cells.append(f"{s['top1']:.2%} ({100 * (s['top1'] - s['eager_top1']):+.2f}) / {s['agreement']:.2%}"
                             if s else "")
            lines.append(f"| {row['model']} | {row['weights']} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += ["Default vs host-only form, points of top-1 agreement with eager (default minus host-only):", ""]
        for model in dict.fromkeys(row["model"] for row in rows):
            pair = {row["weights"]: row for row in rows if row["model"] == model}
            if DEFAULT_FORM in pair and HOST_FORM in pair:
                deltas = ", ".join(
                    f"{key.replace('_', ' ')} {100 * (pair[DEFAULT_FORM][key]['agreement'] - pair[HOST_FORM][key]['agreement']):+.2f}"
                    for key in ("simulated", "host", "emulated_avx2", "qemu_avx2")
                    if key in pair[DEFAULT_FORM] and key in pair[HOST_FORM])
                safe = pair[HOST_FORM].get("safe_8bit_layers")
                lines.append(f"- {model}: {deltas}" + (f"; integer layers whose 8-bit weights cannot saturate: "
                                                        f"{len(safe['safe'])} of {safe['layers']}" if safe else ""))
        lines += ["", "Export-time kernel validation (the hold-out, top-1 agreement with eager on each kind of kernel "
                  "the export ran; judged: the runs standing for each kernel family the artifact is made for):", ""]
        for row in rows:
            check = row.get("export_validation")
            if check:
                kernel_runs = ", ".join(f"{k.replace('_', ' ')} {v:.2%}" for k, v in check.items()
                                        if k not in ("holdout_images", "judged"))
                judged = ", ".join(f"{family}: {run}" for family, run in check["judged"].items())
                lines.append(f"- {row['model']}, {row['weights']}: {check['holdout_images']} images: {kernel_runs} "
                             f"(judged {judged})")
        lines.append("")
    if runs:
        lines += [f"ConvNeXt-T INT8, batch 1, {args.threads} threads, alternating blocks of 5, {args.iters} runs per "
                  f"variant, {len(runs)} repeat(s), ONNX Runtime spinning off, on the host's path "
                  f"({host['integer_path']}):", "", "| weights | p50 ms (run 1) | vs eager (median) | "
                  "vs 8-bit, same run (median) | spread vs 8-bit |", "|---|---|---|---|---|"]
        for form in runs[0]:
            vs_eager = np.median([r[form]["vs_eager"] for r in runs])
            vs_8bit = [r[form]["vs_8bit"] for r in runs]
            lines.append(f"| {form} | {runs[0][form]['p50_ms']:.1f} | {vs_eager:.2f}x | {np.median(vs_8bit):.3f}x | "
                         f"{min(vs_8bit):.3f}-{max(vs_8bit):.3f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qemu", type=int, default=1000, help="test images to run under qemu's AVX2 CPU (0: skip)")
    parser.add_argument("--forms", default="u8u8,pairs", help="extra weight forms: u8u8, pairs (comma list)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--references", default="official,timm", help="which references: official, timm (comma list)")
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--accuracy-only", action="store_true")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(host_line(), flush=True)
    if args.qemu and shutil.which("qemu-x86_64") is None:
        parser.error("--qemu needs qemu-user (apt-get install qemu-user); --qemu 0 skips it")
    host = detect_host().to_dict()
    rows, runs = [], []
    with tempfile.TemporaryDirectory(prefix="int8-isa-") as tmp:
        work = Path(tmp)
        if not args.speed_only:
            for name, weights in REFERENCES.items():
                if name not in {REFERENCE_KEYS.get(key, key) for key in args.references.split(",")}:
                    continue
                if not weights.is_file():
                    print(f"skipped {name}: {weights} not found", flush=True)
                    continue
                rows += accuracy(name, weights, [f for f in args.forms.split(",") if f], args.qemu, work)
        if not args.accuracy_only:
            runs = speed(args.repeats, args.iters, args.threads, work)
    if args.json:
        args.json.write_text(json.dumps({"host": host, "accuracy": rows, "speed": runs}, indent=2) + "\n")
    text = markdown(host, rows, runs, args)
    print(text)
    if args.markdown:
        args.markdown.write_text(f"`{' '.join(['python', 'benchmarks/int8_isa.py', *sys.argv[1:]])}`\n\n" + text)


if __name__ == "__main__":
    main()
