"""How far an artifact's outputs are from the eager reference on the same inputs."""

from __future__ import annotations

import numpy as np


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def topk_agreement(out: np.ndarray, ref: np.ndarray, k: int) -> float:
    """Fraction of samples whose reference top-1 class is in the output's top-k (k=1: same argmax)."""
    k = min(k, ref.shape[1])
    top = np.argsort(-out, axis=1)[:, :k]
    return float(np.mean([r in row for r, row in zip(ref.argmax(1), top)]))


def drift_metrics(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Relative max-abs (the project's headline drift), max/mean abs, cosine, top-1/5 agreement, KL."""
    out64, ref64 = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    diff = np.abs(out64 - ref64)
    flat_o, flat_r = out64.reshape(len(out64), -1), ref64.reshape(len(ref64), -1)
    cosine = (flat_o * flat_r).sum(1) / np.maximum(np.linalg.norm(flat_o, axis=1) * np.linalg.norm(flat_r, axis=1), 1e-30)
    p, q = _softmax(ref64), _softmax(out64)
    kl = (p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30)))).sum(1)
    return {
        "relative_max_abs": float(diff.max() / max(np.abs(ref64).max(), 1e-30)),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "top1_agreement": topk_agreement(out64, ref64, 1),
        "top5_agreement": topk_agreement(out64, ref64, 5),
        "kl_mean": float(kl.mean()),
        "samples": int(len(ref64)),
    }


PLUMBING = "plumbing-check"
REAL_IMAGES = "real-images"


def drift_meaning(weights: str, inputs: str, images: int) -> dict[str, str | int]:
    """What a drift / top-1 agreement figure can tell, the one place every printer takes it from.

    ``weights``: the manifest's weights kind ("random" or "checkpoint"); ``inputs``: "synthetic"
    (seeded noise: no --calib-data at export, no --data at bench) or "real" (images from a dataset).
    Only a checkpoint on real images says something about the model on its task; random weights or
    noise only show that the artifact computes what the eager model computes (a plumbing check).
    """
    if weights not in ("random", "checkpoint") or inputs not in ("synthetic", "real"):
        raise ValueError(f"drift_meaning: weights {weights!r} (random|checkpoint), inputs {inputs!r} (synthetic|real)")
    if weights == "checkpoint" and inputs == "real":
        kind, text = REAL_IMAGES, f"measured on {images} real images with checkpoint weights"
    else:
        what = ("random, untrained weights" if weights == "random" else "checkpoint weights") + " on " + (
            f"{images} synthetic noise images" if inputs == "synthetic" else f"{images} real images")
        kind, text = PLUMBING, f"plumbing check, not an accuracy figure ({what})"
    return {"kind": kind, "weights": weights, "inputs": inputs, "images": images, "text": text}
