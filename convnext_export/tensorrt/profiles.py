"""The optimization profile of the batch axis, from --batch / --min-batch / --opt-batch / --max-batch."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

DEFAULT_MIN_BATCH = 1
DEFAULT_MAX_BATCH = 32  # the largest batch a dynamic engine accepts unless --max-batch says otherwise


@dataclass(frozen=True)
class BatchProfile:
    """min <= opt <= max batch sizes; TensorRT picks kernels for ``opt`` valid over [min, max]."""

    min: int
    opt: int
    max: int

    def shapes(self, image_size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) NCHW shapes for ``IOptimizationProfile.set_shape``."""
        return tuple((batch, 3, image_size, image_size) for batch in (self.min, self.opt, self.max))  # type: ignore[return-value]

    def accepts(self, batch: int) -> bool:
        return self.min <= batch <= self.max

    def to_dict(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @classmethod
    def from_dict(cls, data: dict) -> BatchProfile:
        return cls(int(data["min"]), int(data["opt"]), int(data["max"]))


def batch_profile(static_batch: int | None, min_batch: int | None = None, opt_batch: int | None = None,
                  max_batch: int | None = None) -> BatchProfile:
    """The profile for an export: a static --batch N is the profile N/N/N; a dynamic one fills what is not given.

    Unset values default to min 1, opt = min, max = max(32, opt); values given must satisfy
    1 <= min <= opt <= max (``InputError`` naming the options otherwise).
    """
    given = {"--min-batch": min_batch, "--opt-batch": opt_batch, "--max-batch": max_batch}
    for flag, value in given.items():
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: batch sizes must be >= 1")
    if static_batch is not None:
        clashing = [f"{flag} {value}" for flag, value in given.items() if value not in (None, static_batch)]
        if clashing:
            raise InputError(f"{', '.join(clashing)}: the export has a static --batch {static_batch}, so the engine's "
                             f"profile is {static_batch}; drop --batch for a dynamic batch axis, or drop these options")
        return BatchProfile(static_batch, static_batch, static_batch)
    low = min_batch if min_batch is not None else DEFAULT_MIN_BATCH
    opt = opt_batch if opt_batch is not None else low
    high = max_batch if max_batch is not None else max(DEFAULT_MAX_BATCH, opt)
    if not low <= opt <= high:
        raise InputError(f"batch profile min {low} / opt {opt} / max {high}: needs min <= opt <= max "
                         f"(set --min-batch, --opt-batch, --max-batch accordingly, e.g. 1 / 8 / 32)")
    return BatchProfile(low, opt, high)
