"""How long steps report what they are doing: lines of log, and counted tasks with totals.

The jobs (a Spark backfill per view, a stream replay, the training folds, parity) take a
:class:`Progress`. This base prints lines and a closing line per task; the ``kairos`` command
renders the same calls as rich progress bars (:class:`kairos.progress.RichProgress`), and a
test can collect the lines. A job never knows which one it was given.

A plain ``Callable[[str], None]`` (``print``, ``list.append``) is accepted wherever a
:class:`Progress` is (:func:`as_progress`), so a caller that only wants lines passes a function.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Task:
    """One counted task: ``advance`` as units finish; a note says what the last unit was."""

    def __init__(self, description: str, total: float | None, unit: str) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done = 0.0
        self.note = ""
        self.started = time.perf_counter()

    def advance(self, amount: float = 1, note: str = "") -> None:
        self.done += amount
        if note:
            self.note = note

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def summary(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        of = f"/{self.total:,.0f}" if self.total is not None else ""
        per = f"{rate:,.2f}" if rate < 10 else f"{rate:,.0f}"
        return f"{self.description}: {self.done:,.0f}{of} {self.unit} in {self.seconds:.1f}s ({per} {self.unit}/s)"


class Progress:
    """Lines to ``write`` (default ``print``); a task writes its notes as they come (or how far it is, every
    ``every`` seconds, if it gives none) and a summary at the end."""

    def __init__(self, write: Callable[[str], None] = print, *, notes: bool = True, every: float = 10.0) -> None:
        self.write = write
        self.notes = notes
        self.every = every  # seconds between "how far" lines of a task that gives no notes

    def log(self, message: str) -> None:
        self.write(message)

    def __call__(self, message: str) -> None:  # so a Progress is also a line callback
        self.log(message)

    @contextmanager
    def task(self, description: str, total: float | None = None, unit: str = "") -> Iterator[Task]:
        task = self.new_task(description, total, unit)
        try:
            yield task
        finally:
            self.end_task(task)

    # hooks a renderer overrides
    def new_task(self, description: str, total: float | None, unit: str) -> Task:
        write, notes, every = self.write, self.notes, self.every

        class Lines(Task):
            last = time.perf_counter()

            def advance(self, amount: float = 1, note: str = "") -> None:
                super().advance(amount, note)
                if note and notes:
                    write(f"   {description}: {note}")
                elif time.perf_counter() - self.last >= every:  # a long task without notes: say how far it is
                    of = f"/{self.total:,.0f}" if self.total is not None else ""
                    write(f"   {description}: {self.done:,.0f}{of} {self.unit} ({self.seconds:.0f}s)")
                else:
                    return
                self.last = time.perf_counter()

        return Lines(description, total, unit)

    def end_task(self, task: Task) -> None:
        self.write(f"   {task.summary()}")


class Silent(Progress):
    """Reports nothing."""

    def __init__(self) -> None:
        super().__init__(lambda _message: None)


def as_progress(progress: Progress | Callable[[str], None] | None) -> Progress:
    """A :class:`Progress` from a Progress, a line callback (``print``, ``lines.append``) or ``None`` (silent)."""
    if progress is None:
        return Silent()
    if isinstance(progress, Progress):
        return progress
    return Progress(progress)
