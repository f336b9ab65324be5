"""The default artifact set convnext-bench exports when it is given no ARTIFACT_DIR."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConvNeXtExportError
from ..pipeline import ExportRequest, PreprocessingOverrides, export_artifact
from .runner import Bench, BenchRequest


@dataclass(frozen=True)
class DefaultSet:
    """What to export when no artifact is given: size, resolution, weights (None: seeded random)."""

    size: str | None = "tiny"
    image_size: int | None = None
    weights: Path | None = None
    seed: int = 0
    work: Path | None = None  # keep the exports here; None: a temporary directory


def run_benchmark(request: BenchRequest, defaults: DefaultSet, log: Callable[[str], None] = lambda m: None,
                  progress: Callable[[str, int, int], None] = lambda label, done, total: None) -> dict:
    """Benchmark ``request.artifacts``, or the default set exported first when there are none."""
    if request.artifacts:
        return Bench(request, log, progress).run()
    with tempfile.TemporaryDirectory(prefix="convnext-bench-") as scratch:
        directories, skipped = export_default_set(defaults.size, defaults.image_size, defaults.weights, defaults.seed,
                                                  defaults.work or Path(scratch), log, progress)
        report = Bench(dataclasses.replace(request, artifacts=tuple(directories)), log, progress).run()
    report["skipped"] = skipped + report["skipped"]
    return report

DEFAULT_PRECISIONS = ("fp32", "int8")


def export_default_set(size: str | None, image_size: int | None, weights: Path | None, seed: int, work: Path,
                       log: Callable[[str], None] = lambda m: None,
                       progress: Callable[[str, int, int], None] = lambda label, done, total: None
                       ) -> tuple[list[Path], list[dict]]:
    """Export FP32 and INT8 (when this version can) into ``work``; return the directories and what was skipped.

    FP32 must succeed; a precision the exporter refuses (e.g. INT8 before it exists) becomes a
    skipped entry with the exporter's own message.
    """
    directories, skipped = [], []
    for precision in DEFAULT_PRECISIONS:
        request = ExportRequest(size=size, weights=weights, seed=seed, precision=precision,
                                preprocessing=PreprocessingOverrides(image_size=image_size),
                                out=work / f"convnext_{size or Path(weights).stem}-{precision}", force=True)
        log(f"exporting {size or 'model'} {precision.upper()} into {request.out}")
        try:
            result = export_artifact(request, log=log, progress=progress)
        except ConvNeXtExportError as error:
            if precision == "fp32":
                raise
            skipped.append({"artifact": request.out.name, "backend": None, "batch": None,
                            "reason": f"not exported: {error}"})
            log(f"{precision.upper()} not exported: {error}")
            continue
        directories.append(result.artifact.directory)
    return directories, skipped
