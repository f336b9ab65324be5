"""Progress of long steps: a ``progress(label, done, total)`` callback, and the one rich bar both commands show.

The library reports through the callback only (``no_progress`` by default); the CLI passes a
``ProgressBars``: one transient rich ``Progress`` with a row per label, disabled under
``--quiet`` and when ``--json -`` owns stdout.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

ProgressCallback = Callable[[str, int, int], None]


def no_progress(label: str, done: int, total: int) -> None:
    """The default callback: report nothing."""


class ProgressBars:
    """A rich progress bar per label, as a ``progress(label, done, total)`` callback (a context manager)."""

    def __init__(self, console: Console, disabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, transient=True, disable=disabled)
        self.tasks: dict[str, int] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total)
        self.bar.update(self.tasks[label], completed=done, total=max(total, done))

    def __enter__(self) -> "ProgressBars":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        self.bar.__exit__(*exc)
        return False
