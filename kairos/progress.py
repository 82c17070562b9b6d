"""The ``kairos`` command's display: rich progress bars for the jobs' tasks, and quiet dependencies.

:class:`RichProgress` renders :class:`pipelines.progress.Progress` calls: each task is a bar with
its count, total, rate and the note of its last unit (a view's change points, a fold's AUC), and
log lines print above the bars. On a terminal the bars move; in a log (CI, a pipe) rich prints
each bar once, when it ends.

:func:`quiet_dependencies` sends what Spark's JVM, MLflow, Feast and the Python warnings write to
stderr into a log file for the length of a step, so that a user reads Kairos's output rather
than log4j's; the path is printed, and an error is raised as usual after stderr is restored.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as Bars
from rich.progress import Task as BarTask
from rich.text import Text

from pipelines.progress import Progress, Task

LOGS = "logs"  # under data_dir: where quiet_dependencies writes (a fresh demo keeps it)


class RateColumn(ProgressColumn):
    """Units per second, in the task's own unit (rich's speed column counts bytes)."""

    def render(self, task: BarTask) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.finished and task.elapsed:
            speed = task.completed / task.elapsed
        unit = task.fields.get("unit", "")
        if speed is None:
            return Text("")
        return Text(f"{speed:,.1f} {unit}/s" if speed < 10 else f"{speed:,.0f} {unit}/s", style="progress.data.speed")


class _BarTask(Task):
    def __init__(self, owner: RichProgress, task_id: TaskID, description: str, total: float | None,
                 unit: str) -> None:
        super().__init__(description, total, unit)
        self.owner, self.id = owner, task_id

    def advance(self, amount: float = 1, note: str = "") -> None:
        super().advance(amount, note)
        self.owner.bars.update(self.id, advance=amount)
        if note:
            self.owner.log(f"   {self.description}: {note}")


class RichProgress(Progress):
    """:class:`pipelines.progress.Progress` on a rich ``console`` (stdout by default).

    On a terminal each task is a live bar (count, total, unit, rate, elapsed time), and the notes and log lines
    print above the bars. Elsewhere (a pipe, a CI log) live bars would only be drawn once, at the end, so a task
    prints its notes as lines and a closing line with its count and rate, like the base class."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        super().__init__(self._print)
        self.live = self.console.is_terminal
        self.bars = Bars(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(bar_width=30),
                         MofNCompleteColumn(), TextColumn("{task.fields[unit]}"), RateColumn(), TimeElapsedColumn(),
                         console=self.console)
        self._open = 0

    def _print(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def new_task(self, description: str, total: float | None, unit: str) -> Task:
        if not self.live:
            return super().new_task(description, total, unit)
        if self._open == 0:
            self.bars.start()
        self._open += 1
        task_id = self.bars.add_task(description, total=total, unit=unit)
        return _BarTask(self, task_id, description, total, unit)

    def end_task(self, task: Task) -> None:
        if not isinstance(task, _BarTask):
            return super().end_task(task)
        self.bars.update(task.id, total=task.done if task.total is None else task.total, completed=task.done)
        self.bars.stop_task(task.id)
        self._open -= 1
        if self._open == 0:
            self.bars.stop()
            for t in list(self.bars.task_ids):  # drawn for good; the next step starts a fresh display
                self.bars.remove_task(t)


@contextmanager
def quiet_dependencies(log_path: Path, *, console: Console | None = None) -> Iterator[Path]:
    """Send stderr (the JVM's, MLflow's, warnings) to ``log_path`` while the block runs; stdout is untouched."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "ab") as fh:
        os.dup2(fh.fileno(), 2)
        levels = {name: logging.getLogger(name).level for name in ("mlflow", "alembic", "py4j", "feast", "bentoml")}
        for name in levels:
            logging.getLogger(name).setLevel(logging.ERROR)
        # MLflow sets its loggers' level from this when it is imported, which may be inside the block
        ours = "MLFLOW_LOGGING_LEVEL" not in os.environ
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                yield log_path
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            if ours:
                os.environ.pop("MLFLOW_LOGGING_LEVEL", None)
