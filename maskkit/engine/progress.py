"""One progress-bar factory for every long loop (training epochs, predict, cam, audit, caching).

On a terminal: a transient rich bar on stderr. Elsewhere (nohup, a log file, CI) a rich bar would
print nothing useful, so a plain line goes to stderr every `every` seconds instead; a job shorter
than that prints nothing. `show=False` silences both.
"""

from __future__ import annotations

import re
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from maskkit.contract.files import console

PLAIN_EVERY_S = 30.0


def _rich_template(template: str) -> str:
    """'loss {loss:.3f}' -> 'loss {task.fields[loss]:.3f}' (rich's TextColumn formats task fields)."""
    return re.sub(r"\{(\w+)", r"{task.fields[\1]", template)


class ProgressBar:
    """`bar.advance(n, **fields)` after each unit of work; use as a context manager (or call close)."""

    def __init__(self, description: str, total: int, fields: str = "", completed: int = 0,
                 show: bool | None = None, every: float = PLAIN_EVERY_S, **initial: object) -> None:
        self.description, self.total, self.done = description, int(total), int(completed)
        self.template, self.fields = fields, dict(initial)
        self.every, self.started = every, time.perf_counter()
        self.last_line = self.started
        self.rich = None
        if show is False:
            self.mode = "off"
        elif show or console.is_terminal:
            self.mode = "rich"
            columns = [TextColumn(description), BarColumn(), MofNCompleteColumn()]
            if fields:
                columns.append(TextColumn(_rich_template(fields)))
            self.rich = Progress(*columns, TimeRemainingColumn(), console=console, transient=True)
            self.task = self.rich.add_task(description, total=total, completed=completed, **initial)
            self.rich.start()
        else:
            self.mode = "plain"

    def advance(self, n: int = 1, **fields: object) -> None:
        self.done += n
        self.fields.update(fields)
        if self.mode == "rich":
            self.rich.update(self.task, advance=n, **fields)
        elif self.mode == "plain":
            now = time.perf_counter()
            if now - self.last_line >= self.every:
                self.last_line = now
                share = self.done / self.total if self.total else 1.0
                extra = ("  " + self.template.format(**self.fields)) if self.template else ""
                console.print(f"{self.description}: {self.done}/{self.total} ({share:.0%}, "
                              f"{now - self.started:.0f}s){extra}", markup=False, highlight=False)

    def close(self) -> None:
        if self.rich is not None:
            self.rich.stop()
            self.rich = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(description: str, total: int, fields: str = "", completed: int = 0,
                 show: bool | None = None, **initial: object) -> ProgressBar:
    """A ProgressBar; `fields` is a format template over keyword fields, e.g. 'loss {loss:.3f}'."""
    return ProgressBar(description, total, fields=fields, completed=completed, show=show, **initial)
