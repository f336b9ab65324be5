"""`--gelu exact` vs `--gelu sigmoid` INT8 (--target cpu): accuracy on the reference, speed on ConvNeXt-T.

    python benchmarks/int8_gelu.py [--calib-size 512] [--repeats 3] [--limit N]

Accuracy: the CIFAR-10 reference exported INT8 both ways (calibrated on --calib-size train images),
plus the sigmoid form without pwconv2's bias correction (the library's rewrite applied to the exact
artifact with ``correct_bias=False``), each evaluated on the test folder: top-1 and top-1 agreement
with eager. Speed: ConvNeXt-T (random weights, 64 synthetic calibration images) both ways, timed
with eager PyTorch FP32 in alternating blocks of 5 (batch 1, 2 threads, ONNX Runtime spinning off),
--repeats fresh rounds; the speedups' medians and spreads over the repeats are printed. A third speed
row, "table kernel (bound)", is the exact model with Gelu swapped for LeakyRelu, which ONNX Runtime runs
as one u8 table kernel: what a GELU table kernel (which ONNX Runtime lacks) would give, speed only.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from calibration_methods import DATA, HERE, test_logits
from convnext_export.backends.onnxruntime import SPINNING, SPINNING_POLICIES, OnnxRuntimeBackend
from convnext_export.backends.torch_eager import TorchBackend
from convnext_export.bench.environment import host_line
from convnext_export.bench.timing import TimingPlan, input_pool, measure_alternating, paired_speedup
from convnext_export.calibration.int8 import Int8Options
from convnext_export.calibration.sigmoid_gelu import apply_sigmoid_gelu
from convnext_export.config import get_config
from convnext_export.datasets import open_dataset
from convnext_export.drift import topk_agreement
from convnext_export.evaluate import torch_runner
from convnext_export.model import build_model
from convnext_export.pipeline import ExportRequest, export_artifact, load_reference

FORMS = ("exact", "sigmoid")
TABLE_BOUND = "table kernel (bound)"


def accuracy_rows(work: Path, calib_size: int, limit: int | None, threads: int) -> dict[str, dict]:
    checkpoint = HERE / "reference" / "convnext_atto_cifar10.pth"
    reference = load_reference(None, checkpoint, None, 0)
    dataset = open_dataset(DATA / "test", reference.preprocessing, limit=limit, require_labels=True)
    _, eager = test_logits(torch_runner(reference.model), dataset, "eager")
    models = {}
    for form in FORMS:
        artifact = export_artifact(ExportRequest(
            weights=checkpoint, out=work / f"ref-{form}", precision="int8",
            int8=Int8Options(calib_data=DATA / "train", calib_size=calib_size, gelu=form))).artifact
        models[form] = artifact.model_path
    uncorrected, _ = apply_sigmoid_gelu(onnx.load(str(models["exact"])), np.empty((0,)), None, correct_bias=False)
    models["sigmoid, no bias correction"] = work / "ref-uncorrected.onnx"
    onnx.save(uncorrected, str(models["sigmoid, no bias correction"]))
    rows = {}
    for label, path in models.items():
        accuracy, logits = test_logits(OnnxRuntimeBackend(path, threads=threads).run, dataset, label)
        rows[label] = {"top1": accuracy.top1, "agreement": topk_agreement(logits, eager, 1),
                       "images": accuracy.count}
        print(f"{label}: top-1 {accuracy.top1:.2%}, agreement {rows[label]['agreement']:.2%}", flush=True)
    return rows


def table_kernel_bound(exact: Path, out: Path) -> Path:
    """The exact INT8 model with Gelu swapped for LeakyRelu, which ONNX Runtime runs as one u8 table kernel
    (QLinearLeakyRelu): the speed a GELU table kernel would give, with the wrong function (speed only)."""
    model = onnx.load(str(exact))
    for node in model.graph.node:
        if node.op_type == "Gelu":
            node.op_type = "LeakyRelu"
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("alpha", 0.01))
    onnx.save(model, str(out))
    return out


def speed_rounds(work: Path, repeats: int, iters: int, threads: int, spinning: str) -> list[dict[str, float]]:
    paths = {form: export_artifact(ExportRequest(size="tiny", seed=0, out=work / f"tiny-{form}", precision="int8",
                                                 int8=Int8Options(calib_size=64, gelu=form))).artifact.model_path
             for form in FORMS}
    paths[TABLE_BOUND] = table_kernel_bound(paths["exact"], work / "tiny-table-bound.onnx")
    eager = TorchBackend(build_model(get_config("tiny"), seed=0), threads=threads)
    rounds = []
    for repeat in range(repeats):
        variants = {"eager": eager.run, **{f"int8 {form}": OnnxRuntimeBackend(path, threads=threads,
                                                                              spinning=spinning).run
                                           for form, path in paths.items()}}
        plan = TimingPlan(warmup=5, iters=iters, block=5, pool=8)
        timings = measure_alternating(variants, input_pool(1, 224, plan.pool, repeat), plan)
        row = {"eager ms": float(np.median(timings["eager"].samples))}
        for form in paths:
            row[f"{form} ms"] = float(np.median(timings[f"int8 {form}"].samples))
            row[form] = paired_speedup(timings["eager"], timings[f"int8 {form}"])["speedup"]
        rounds.append(row)
        print(f"run {repeat + 1}: eager {row['eager ms']:.1f} ms, " +
              ", ".join(f"INT8 {form} {row[form]:.2f}x" for form in paths), flush=True)
    return rounds


def print_accuracy(rows: dict[str, dict], calib_size: int) -> None:
    images = next(iter(rows.values()))["images"]
    print(f"\nAccuracy: CIFAR-10 reference (ConvNeXt-atto), {images} test images, INT8 --target cpu calibrated on "
          f"{calib_size} train images.\n")
    print("| GELU | top-1 | top-1 agreement with eager |\n|---|---|---|")
    for label, row in rows.items():
        print(f"| {label} | {row['top1']:.2%} | {row['agreement']:.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-size", type=int, default=512)
    parser.add_argument("--limit", type=int, default=None, help="test images (default: all 8,000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spinning", choices=SPINNING_POLICIES, default=SPINNING,
                        help=f"ONNX Runtime intra-op spinning (default {SPINNING}; 'on' is ONNX Runtime's own default)")
    parser.add_argument("--speed-only", action="store_true", help="skip the accuracy part")
    args = parser.parse_args()
    print(host_line(), flush=True)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {} if args.speed_only else accuracy_rows(Path(tmp), args.calib_size, args.limit, args.threads)
        rounds = speed_rounds(Path(tmp), args.repeats, args.iters, args.threads, args.spinning)
    if rows:
        print_accuracy(rows, args.calib_size)
    print(f"\nSpeed: ConvNeXt-T batch 1, {args.threads} threads, ONNX Runtime spinning {args.spinning}, alternating "
          f"blocks of 5, {args.iters} runs per variant per repeat, {args.repeats} repeat(s).\n")
    print("| GELU | INT8 p50 ms (run 1) | speedup vs eager FP32 (median) | spread over repeats |\n|---|---|---|---|")
    for form in (*FORMS, TABLE_BOUND):
        values = [r[form] for r in rounds]
        print(f"| {form} | {rounds[0][f'{form} ms']:.1f} | {np.median(values):.2f}x | "
              f"{min(values):.2f}-{max(values):.2f}x |")
    ratio = [r["sigmoid"] / r["exact"] for r in rounds]
    print(f"\nsigmoid / exact: {np.median(ratio):.2f}x ({min(ratio):.2f}-{max(ratio):.2f}x)")


if __name__ == "__main__":
    main()
