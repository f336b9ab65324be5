"""Top-1 of a reference checkpoint on the CIFAR-10 test folder, through the project's own
dataset + preprocessing, for the eager model and for its exported FP32 ONNX in ONNX Runtime.

    python benchmarks/evaluate_reference.py            # updates benchmarks/reference/reference.json
    python benchmarks/evaluate_reference.py --reference benchmarks/reference/convnext_atto_cifar10_timm.json

The checkpoint is the one the sidecar names, loaded by the project's checkpoint loader, and the
preprocessing is the sidecar's, exactly as `convnext-export --weights` reads them. A timm-layout
checkpoint is also run in timm's own model on a few test images, and the largest logit difference
from the project's model is recorded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from convnext_export.backends.onnxruntime import OnnxRuntimeBackend
from convnext_export.datasets import open_dataset
from convnext_export.evaluate import evaluate_accuracy, torch_runner
from convnext_export.pipeline import ExportRequest, ReferenceModel, export_artifact, load_reference

HERE = Path(__file__).resolve().parent
PEER_IMAGES = 32


@torch.no_grad()
def timm_peer_difference(reference: ReferenceModel, checkpoint: Path, images: np.ndarray) -> float:
    """Largest |logit| difference between the project's loaded model and timm's own model on the same file."""
    import timm

    peer = timm.create_model(f"convnext_{reference.config.name}", num_classes=reference.config.num_classes).eval()
    peer.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True), strict=True)
    inputs = torch.from_numpy(images)
    return float((reference.model.eval()(inputs) - peer(inputs)).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=HERE / "reference" / "reference.json")
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "cifar10" / "test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-update", action="store_true", help="print only; leave the sidecar as it is")
    args = parser.parse_args()

    info = json.loads(args.reference.read_text())
    checkpoint = args.reference.parent / info["checkpoint"]
    reference = load_reference(None, checkpoint, None, 0)
    dataset = open_dataset(args.data, reference.preprocessing, require_labels=True)
    started = time.perf_counter()
    eager = evaluate_accuracy(torch_runner(reference.model), dataset, batch_size=100, description="eager")
    with tempfile.TemporaryDirectory() as tmp:
        artifact = export_artifact(ExportRequest(weights=checkpoint, out=Path(tmp) / "fp32")).artifact
        backend = OnnxRuntimeBackend(artifact.model_path, threads=args.threads)
        onnx = evaluate_accuracy(backend.run, dataset, batch_size=100, description="onnxruntime fp32")
    command = "python benchmarks/evaluate_reference.py"
    if args.reference.name != "reference.json":
        command += f" --reference benchmarks/reference/{args.reference.name}"
    results = {
        "test_top1": round(eager.top1, 5),
        "test_top5": round(eager.top5, 5) if eager.top5 is not None else None,
        "test_images": eager.count,
        "onnx_fp32_test_top1": round(onnx.top1, 5),
        "onnx_fp32_test_top5": round(onnx.top5, 5) if onnx.top5 is not None else None,
        "evaluation": f"{command} (project dataset + preprocessing; eager and ONNX Runtime FP32)",
    }
    if reference.weights.layout == "timm":
        peer_set = open_dataset(args.data, reference.preprocessing, limit=PEER_IMAGES, seed=0)  # class-balanced
        images = next(peer_set.batches(PEER_IMAGES)).images
        results["timm_peer_max_abs_logit_diff"] = timm_peer_difference(reference, checkpoint, images)
        results["timm_peer_images"] = len(images)
    print(json.dumps(results, indent=2))
    print(f"eager {eager.top1:.2%} vs ONNX FP32 {onnx.top1:.2%} on {eager.count} images "
          f"({(onnx.top1 - eager.top1) * 100:+.2f} points) in {time.perf_counter() - started:.0f}s")
    if not args.no_update:
        args.reference.write_text(json.dumps({**info, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
