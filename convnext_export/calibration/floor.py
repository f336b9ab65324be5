"""The INT8 accuracy floor: every INT8 export, either target, ``--max-drift`` or not, must hold it on the hold-out.

It is a floor against a broken calibration (a damaged or doctored cache, ranges from the wrong images,
a recipe bug), not a quality budget (``--max-drift`` is that): the INT8 model's logits must point where
the eager model's do, on every run that stands for the kernels the artifact is made for (the host's
integer kernels and the judged runs of ``validation.check_kernels``).

- cosine of logits with eager, averaged over the hold-out, at least ``min_cosine``;
- top-1 agreement with eager at least ``min_agreement``, unless the hold-out is too small to tell: an
  export fails only when its disagreements are too many for a model at the floor to give by chance
  (one-sided binomial test at ``SIGNIFICANCE``), so a 4- or 32-image synthetic hold-out, whose agreement
  moves by 25 or 3 points per image, does not flake, while 1,000 real images resolve a few points.

Measured (below), the floor sits far below every honest export and far above a broken one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConvNeXtExportError, InputError

# Measured with this tool's default --int8 on the Intel Xeon host of 2026-12-06 (int8 kernels: amx, exact int32),
# hold-out runs on the host's integer kernels and the simulated Q/DQ graph (identical to 4 decimals here):
#   top-1 agreement / mean cosine of logits with eager             hold-out
#   official-layout CIFAR-10 reference, --target cpu               99.20% / 0.99975   1,000 real images
#   official-layout CIFAR-10 reference, --target tensorrt          99.30% / 0.99975   1,000 real images
#   timm conv_mlp CIFAR-10 reference, --target cpu                 99.40% / 0.99986   1,000 real images
#   timm conv_mlp CIFAR-10 reference, --target tensorrt            99.20% / 0.99984   1,000 real images
#   random-weight tiny @224 (make run), synthetic, cpu / tensorrt  96.88% / 0.99969   32 synthetic images
#   random-weight tiny @224, seed 1                                100% / 0.99968
#   random-weight atto @224, seeds 0-1 cpu, seed 0 tensorrt        96.88% / 0.99963-0.99969
#   random-weight atto @32, seeds 0-5                              93.75-100% / 0.99967-0.99970 (one image: 3.1 pt)
#   random-weight atto @32, 10 classes, --calib-size 24, seeds 0-2 100% / 0.99903-0.99959 (4 hold-out images)
#   official reference with its cache's ranges set to +-1e-6       10.60% / -0.0014 host, -0.0054 simulated (min -0.832)
# (references: --weights benchmarks/reference/*.pth --int8 --calib-data ../shared/data/cifar10/train).
# The cosine floor leaves 0.1, ~300x the honest exports' deficit (3e-4), and the doctored cache misses it by ~0.9;
# on 1,000 images the agreement test fails a model below ~87%, on 32 synthetic images below ~69%.
DEFAULT_MIN_AGREEMENT = 0.90
DEFAULT_MIN_COSINE = 0.90
MEASURED_AGREEMENT = ("measured 99.2-99.4% for the CIFAR-10 references on 1,000 real images, 93.8-100% for "
                      "random-weight tiny/atto on 32 synthetic ones, 10.6% with a doctored cache")
MEASURED_COSINE = ("measured 0.9997-0.9999 for the references, 0.9990-0.9997 for random-weight tiny/atto, -0.001 "
                   "with a doctored cache")
SIGNIFICANCE = 1e-3  # chance that a model exactly at the agreement floor fails it


@dataclass(frozen=True)
class AccuracyFloor:
    """The least an INT8 model must keep of the eager model's predictions on the hold-out; ``min_agreement``
    None: the default, or a lower ``--max-drift`` budget (``resolved``)."""

    min_agreement: float | None = None
    min_cosine: float = DEFAULT_MIN_COSINE

    def resolved(self, max_drift: float | None) -> "AccuracyFloor":
        """The floor an export holds: --min-agreement when given; else the default, lowered to a --max-drift below it
        (the user's own agreement budget)."""
        if self.min_agreement is not None:
            return self
        lowered = min(DEFAULT_MIN_AGREEMENT, max_drift) if max_drift is not None else DEFAULT_MIN_AGREEMENT
        return AccuracyFloor(lowered, self.min_cosine)

    def validate(self) -> None:
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise InputError(f"--min-agreement {self.min_agreement}: give a top-1 agreement with eager in [0, 1] "
                             f"(default {DEFAULT_MIN_AGREEMENT}; 0 turns the agreement floor off)")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise InputError(f"--min-cosine {self.min_cosine}: give a mean cosine of logits with eager in [-1, 1] "
                             f"(default {DEFAULT_MIN_COSINE}; -1 turns the cosine floor off)")

    def to_dict(self) -> dict:
        return {"min_top1_agreement": self.min_agreement, "min_cosine_mean": self.min_cosine,
                "agreement_test": f"fails when P(Binomial(n, 1 - min_top1_agreement) >= disagreements) < "
                                  f"{SIGNIFICANCE:g}"}


def disagreement_p_value(disagreements: int, images: int, min_agreement: float) -> float:
    """P(X >= disagreements) for X ~ Binomial(images, 1 - min_agreement): how often a model exactly at the
    floor disagrees this much on this many images."""
    p = 1.0 - min_agreement
    if disagreements <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(images + 1) - math.lgamma(k + 1) - math.lgamma(images - k + 1) + k * log_p
             + (images - k) * log_q for k in range(disagreements, images + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def below_agreement_floor(agreement: float, images: int, min_agreement: float) -> bool:
    """Whether ``agreement`` on ``images`` hold-out images is below the floor beyond sampling noise."""
    disagreements = round((1.0 - agreement) * images)
    return agreement < min_agreement and disagreement_p_value(disagreements, images, min_agreement) < SIGNIFICANCE


RUN_LABELS = {"host": "this host's integer kernels", "simulated": "the simulated Q/DQ graph",
              "emulated_saturating": "the emulated AVX2 / AVX-512 BW kernels"}


def floor_misses(runs: dict[str, dict], floor: AccuracyFloor) -> list[str]:
    """What each run (a validation.KERNELS name -> its drift metrics) misses of the floor, one phrase each."""
    misses = []
    for run, drift in runs.items():
        name = f"on {RUN_LABELS.get(run, run)}"
        images, agreement, cosine = drift["samples"], drift["top1_agreement"], drift["cosine_mean"]
        if not cosine >= floor.min_cosine:  # NaN fails too
            misses.append(f"{name}: mean cosine of logits with eager {cosine:.4f} < {floor.min_cosine}")
        if not math.isfinite(agreement) or below_agreement_floor(agreement, images, floor.min_agreement):
            misses.append(f"{name}: top-1 agreement {agreement:.1%} of {images} hold-out images < "
                          f"{floor.min_agreement:.0%} (beyond chance, p < {SIGNIFICANCE:g})")
    return misses


def check_accuracy_floor(runs: dict[str, dict], floor: AccuracyFloor, synthetic: bool, cache: Path | None) -> dict:
    """The manifest's record of the floor when every run holds it; otherwise ConvNeXtExportError (exit 1) naming
    what would help. ``cache``: where the ranges came from when a calibration cache was reused."""
    floor = floor.resolved(None)
    misses = floor_misses(runs, floor)
    if misses:
        remedies = ([f"delete the calibration cache its ranges came from ({cache}) to recalibrate"] if cache else []) + [
            "--calib-data with a few hundred real images of the model's domain" if synthetic
            else "more --calib-data images (--calib-size)",
            "another --calib-method (minmax, entropy)",
            f"--max-drift {max(floor.min_agreement, 0.9):g} to move the most sensitive blocks back to float",
            "--isa x86 (7-bit weights that no x86 integer path saturates)",
            "--fp16 (no integer kernels)"]
        raise ConvNeXtExportError(
            f"INT8 falls below the accuracy floor on the hold-out: {'; '.join(misses)}. The quantized model does not "
            f"compute what the eager model computes. Try: {'; '.join(remedies)}. If this is expected, lower the floor "
            f"with --min-agreement / --min-cosine. Nothing was written.")
    return {**floor.to_dict(), "runs": {name: {"top1_agreement": d["top1_agreement"], "cosine_mean": d["cosine_mean"],
                                               "images": d["samples"]} for name, d in runs.items()}}
