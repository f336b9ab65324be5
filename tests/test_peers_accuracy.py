"""benchmarks/peers_accuracy.py: its scores agree with the package's labeled accuracy, its timm peer loads the
official reference as the project's model runs it, and its verdict flags only a peer faster AND as accurate."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from convnext_export.datasets import open_dataset
from convnext_export.evaluate import evaluate_accuracy
from convnext_export.pipeline import eager_runner, load_reference

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the benchmark scripts import each other by module name

from peers_accuracy import OURS_INT8, REFERENCES, Reference, dominating, evaluate  # noqa: E402


def row(model: str, peer: str, top1: float, agreement: float) -> dict:
    return {"model": model, "peer": peer, "top1": top1, "agreement": agreement}


def test_verdict_needs_faster_and_as_accurate_on_every_reference():
    first, second = REFERENCES
    rows = [row(first, OURS_INT8, 0.78, 0.99), row(second, OURS_INT8, 0.69, 0.99),
            row(first, "fast, worse on one", 0.79, 0.995), row(second, "fast, worse on one", 0.69, 0.98),
            row(first, "fast, as good", 0.78, 0.99), row(second, "fast, as good", 0.70, 0.991),
            row(first, "slow, better", 0.80, 1.0), row(second, "slow, better", 0.70, 1.0),
            row(first, "fast, failed on one", 0.80, 1.0), {"model": second, "peer": "fast, failed on one", "error": "x"}]
    speeds = {name: {"vs_ours": {"speedup": speedup, "spread": 0.05}} for name, speedup in (
        ("fast, worse on one", 1.2), ("fast, as good", 1.1), ("slow, better", 0.8), ("fast, failed on one", 1.5))}
    assert dominating(rows, speeds) == ["fast, as good"]


@torch.no_grad()
def test_scores_of_an_int8_peer_agree_with_labeled_accuracy(shared_data, tmp_path):
    """A real INT8 peer (ORT quantize_static on timm's model of the official-layout reference) scored by the
    benchmark's batched evaluation: top-1 as the package's evaluate_accuracy counts it, agreement as argmax."""
    pytest.importorskip("timm")
    pytest.importorskip("onnxruntime.quantization")
    from int8_peers import PeerSource, ort_quantize_static, timm_model_for
    from peers import guarded

    checkpoint = REFERENCES["official (24 ep.)"]
    reference = load_reference(None, checkpoint, None, 0)
    dataset = open_dataset(shared_data / "cifar10" / "test", reference.preprocessing, limit=60, seed=0,
                           require_labels=True)
    batch = next(dataset.batches(len(dataset)))
    eager = eager_runner(reference.model)(batch.images)
    timm_model = timm_model_for(checkpoint, "atto", 10)  # timm's conv_mlp model from the official layout
    torch.testing.assert_close(timm_model(torch.from_numpy(batch.images)).numpy(), eager, rtol=0, atol=1e-4)

    source = PeerSource(checkpoint, reference.model, timm_model, batch.images[:8], tmp_path, 1, dynamic_batch=True)
    peer = guarded("ORT quantize_static", "defaults", lambda: ort_quantize_static(source), batch.images[:2])
    assert peer.error is None
    scored = evaluate(Reference("official", source, batch.images, batch.labels, eager, 0.0), peer)

    logits = peer.run(batch.images)
    assert not np.allclose(logits, eager, atol=1e-3)  # really quantized
    assert scored["images"] == 60
    assert scored["top1"] == pytest.approx(evaluate_accuracy(peer.run, dataset, batch_size=7, progress=False).top1)
    assert scored["agreement"] == pytest.approx(float((logits.argmax(1) == eager.argmax(1)).mean()))
    assert scored["top1"] > 0.5  # 10 classes: a broken peer would be near chance
