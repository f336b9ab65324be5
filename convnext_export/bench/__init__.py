"""convnext-bench: latency, drift and accuracy of artifacts on every backend, reports and a latency gate.

``Bench(request).run()`` returns a report dict of schema ``convnext-bench/1`` (``schema.json``
beside this file documents every field); ``report``, ``plot`` and ``gate`` read only that dict.
Nothing is imported here eagerly: the cold-start child (``python -m ...bench.coldstart``)
must not pay for torch when it measures another runtime.
"""

from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("schema.json")

__all__ = ["SCHEMA", "SCHEMA_PATH", "Bench", "BenchRequest", "TimingPlan"]


def __getattr__(name: str):
    if name in ("SCHEMA", "Bench", "BenchRequest"):
        from . import runner

        return getattr(runner, name)
    if name == "TimingPlan":
        from .timing import TimingPlan

        return TimingPlan
    raise AttributeError(name)
