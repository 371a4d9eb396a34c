"""Tables and progress that read the same on a terminal, in a pipe and in a batch job's log.

On a terminal a table is drawn by rich and progress is a live bar. Anywhere else (``| less``,
``> file``, an sbatch or Ray job log) a table prints whole as aligned plain text, never cut to a
width, and progress is one log line on stderr every ``$HARNESS_PROGRESS_SECONDS`` (30 s), and
every ``$HARNESS_PROGRESS_CELLS`` finished cells if set, with done, failed, running, rate and ETA:
a live bar there shows nothing until the run ends.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

SECTION = None  # a row that is None separates two groups of rows
MIN_COLUMN_WIDTH = 8  # below this many characters per column a terminal table is printed as plain text
PROGRESS_SECONDS = 30.0  # default interval of the progress lines in a log


def print_table(
    console: Console,
    columns: Sequence[str],
    rows: Iterable[Sequence[str] | None],
    title: str | None = None,
    right: Iterable[str] = (),
) -> None:
    """Every value whole: a rich table on a terminal wide enough for it, aligned plain text otherwise.

    ``rows`` hold strings (shown as they are, never read as markup); ``SECTION`` separates groups;
    columns named in ``right`` are right-aligned (numbers).
    """
    rows = list(rows)
    right = set(right)
    if console.is_terminal and len(columns) * MIN_COLUMN_WIDTH <= console.width:
        table = Table(title=Text(title) if title else None, title_justify="left")  # a title is never markup
        for column in columns:
            table.add_column(column, justify="right" if column in right else "left", overflow="fold")
        for row in rows:
            if row is SECTION:
                table.add_section()
            else:
                table.add_row(*(Text(value) for value in row))
        console.print(table)
        return
    console.file.write(plain_table(columns, rows, title, right))
    console.file.flush()


def plain_table(
    columns: Sequence[str], rows: Sequence[Sequence[str] | None], title: str | None = None, right: Iterable[str] = ()
) -> str:
    """The table as text: a header, a rule, one line per row, columns as wide as their widest value."""
    right = set(right)
    body = [row for row in rows if row is not SECTION]
    widths = [max([len(column), *(len(row[i]) for row in body)]) for i, column in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        cells = [
            value.rjust(width) if column in right else value.ljust(width)
            for column, value, width in zip(columns, values, widths, strict=True)
        ]
        return "  ".join(cells).rstrip()

    lines = [title] if title else []
    lines += [line(columns), "  ".join("-" * width for width in widths)]
    lines += ["" if row is SECTION else line(row) for row in rows]
    return "\n".join(lines) + "\n"


class ProgressReport:
    """A matrix's progress: a live bar on a terminal, a log line every ``seconds`` on stderr otherwise."""

    def __init__(self, console: Console, total: int, seconds: float | None = None, cells: int | None = None) -> None:
        self.console = console
        self.total = total
        self.seconds = seconds if seconds is not None else _setting("HARNESS_PROGRESS_SECONDS", PROGRESS_SECONDS)
        self.cells = cells if cells is not None else int(_setting("HARNESS_PROGRESS_CELLS", 0))  # 0: by time only
        self.start = time.monotonic()
        self.last_line = -math.inf
        self.last_finished = 0
        self.state = {"finished": 0, "failed": 0, "running": 0, "description": "cells"}
        self.bar: Progress | None = None
        if console.is_terminal:
            columns = (
                TextColumn("{task.description}", style="progress.description", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("running {task.fields[running]} · failed {task.fields[failed]}", markup=False),
                TimeElapsedColumn(),
                TextColumn("ETA", markup=False),
                TimeRemainingColumn(),
            )
            self.bar = Progress(*columns, console=console, transient=False)
            self.task = self.bar.add_task("cells", total=total, running=0, failed=0)

    def __enter__(self) -> ProgressReport:
        if self.bar:
            self.bar.start()
        else:
            self._log()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.stop()
        else:
            self._log()

    def update(self, finished: int, failed: int, running: int, description: str = "cells") -> None:
        self.state = {"finished": finished, "failed": failed, "running": running, "description": description}
        if self.bar:
            self.bar.update(self.task, completed=finished, running=running, failed=failed, description=description)
        elif time.monotonic() - self.last_line >= self.seconds or 0 < self.cells <= finished - self.last_finished:
            self._log()

    def print(self, message: str) -> None:
        """A line of its own (a failed cell), above the bar on a terminal."""
        if self.bar:
            self.bar.console.print(message, highlight=False, markup=False, soft_wrap=True)
        else:
            self.console.file.write(message + "\n")
            self.console.file.flush()

    def line(self) -> str:
        """``cells 120/2000 done, 2 failed, 8 running, 1.30 cells/s, ETA 0:24:05`` (the log form)."""
        s = self.state
        elapsed = time.monotonic() - self.start
        rate = s["finished"] / elapsed if elapsed > 0 else 0.0
        left = self.total - s["finished"]
        eta = _duration(left / rate) if rate > 0 else "unknown" if left else "0:00:00"
        what = "" if s["description"] == "cells" else f" ({s['description']})"
        return (
            f"cells {s['finished']}/{self.total} done{what}, {s['failed']} failed, {s['running']} running, "
            f"{rate:.2f} cells/s, elapsed {_duration(elapsed)}, ETA {eta}"
        )

    def _log(self) -> None:
        self.last_line = time.monotonic()
        self.last_finished = self.state["finished"]
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        sys.stderr.write(f"{stamp} {self.line()}\n")
        sys.stderr.flush()


def _setting(variable: str, default: float) -> float:
    """A non-negative number from the environment; unset or unreadable: ``default``."""
    try:
        return max(float(os.environ[variable]), 0.0)
    except (KeyError, ValueError):
        return default


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
