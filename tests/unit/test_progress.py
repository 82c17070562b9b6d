"""Progress of long steps: lines by default, rich bars on a terminal, notes and closing counts in a log."""

from __future__ import annotations

import io

from rich.console import Console

from kairos.progress import RichProgress
from pipelines.progress import Progress, Silent, as_progress


def test_lines_give_each_note_and_a_closing_count() -> None:
    lines: list[str] = []
    progress = Progress(lines.append)
    progress.log("starting")
    with progress.task("spark steps", total=3, unit="steps") as task:
        task.advance(1, note="user_commerce: 10 change points")
        task.advance(2)
    assert lines[0] == "starting"
    assert lines[1] == "   spark steps: user_commerce: 10 change points"
    assert lines[2].startswith("   spark steps: 3/3 steps in ") and "steps/s" in lines[2]
    assert task.done == 3 and task.note == "user_commerce: 10 change points"


def test_a_task_without_a_total_counts_what_it_saw() -> None:
    lines: list[str] = []
    with Progress(lines.append).task("bytewax", unit="events") as task:
        task.advance(500)
        task.advance(250)
    assert lines[-1].startswith("   bytewax: 750 events in ")


def test_a_failed_task_still_reports_how_far_it_got() -> None:
    lines: list[str] = []
    try:
        with Progress(lines.append).task("replay", total=10, unit="events") as task:
            task.advance(4)
            raise RuntimeError("broker down")
    except RuntimeError:
        pass
    assert lines[-1].startswith("   replay: 4/10 events")


def test_as_progress_takes_a_callback_a_progress_or_nothing() -> None:
    lines: list[str] = []
    as_progress(lines.append).log("a")
    assert lines == ["a"]
    mine = Progress(lines.append)
    assert as_progress(mine) is mine
    silent = as_progress(None)
    assert isinstance(silent, Silent)
    with silent.task("x", total=1) as task:
        task.advance()  # nothing to see, nothing raised


def test_rich_progress_in_a_log_prints_lines() -> None:
    out = io.StringIO()
    progress = RichProgress(Console(file=out, force_terminal=False, width=120))
    with progress.task("compare", total=2, unit="views") as task:
        task.advance(1, note="user_commerce: 12 keys")
        task.advance(1, note="session_activity: 30 keys")
    text = out.getvalue()
    assert "compare: user_commerce: 12 keys" in text and "compare: session_activity: 30 keys" in text
    assert "compare: 2/2 views in " in text
    assert "\x1b[" not in text  # no terminal control codes in a log


def test_rich_progress_on_a_terminal_draws_a_bar_with_count_unit_and_rate() -> None:
    out = io.StringIO()
    progress = RichProgress(Console(file=out, force_terminal=True, width=140))
    progress.log("before the bars")
    with progress.task("bytewax replay", total=9000, unit="events") as task:
        for _ in range(9):
            task.advance(1000)
    text = out.getvalue()
    assert "before the bars" in text and "bytewax replay" in text
    assert "9000/9000" in text and "events/s" in text
    assert not progress.bars.task_ids  # drawn for good: the next step starts a fresh display


def test_a_long_task_without_notes_says_how_far_it_is() -> None:
    lines: list[str] = []
    with Progress(lines.append, every=0.0).task("bytewax replay", total=300, unit="events") as task:
        task.advance(100)
        task.advance(100)
    assert lines[0].startswith("   bytewax replay: 100/300 events (")
    assert lines[1].startswith("   bytewax replay: 200/300 events (")
    assert lines[2].startswith("   bytewax replay: 200/300 events in ")


def test_quiet_periods_print_nothing_between_the_ends() -> None:
    lines: list[str] = []
    with Progress(lines.append, every=3600.0).task("replay", total=2, unit="events") as task:
        task.advance(1)
        task.advance(1)
    assert len(lines) == 1 and lines[0].startswith("   replay: 2/2 events in ")
