"""One progress-bar factory for every long loop (training epochs, predict, cam, audit, caching).

On a terminal: a transient rich bar on stderr. Elsewhere (nohup, a log file, CI) a rich bar would
print nothing useful, so a plain line goes to stderr every `every` seconds instead (a job shorter
than that prints nothing), or, for training (`every_steps`), a heartbeat every N steps that ends
with the whole run's progress and ETA (`RunClock`). `show=False` silences both; `on_advance` is
called either way (training's per-step logging).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from maskkit.contract.files import console

PLAIN_EVERY_S = 30.0


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class RunClock:
    """The whole run's progress, for the heartbeat's ETA: `first_step` steps were done (an earlier
    session, when resuming) when this one started, `total_steps` is the plan."""

    first_step: int
    total_steps: int
    started: float = field(default_factory=time.perf_counter)

    def line(self, step: int, now: float) -> str:
        """'run 150/1000 steps (15%), ETA 3m20s' at global step `step` and time `now` (validation time included)."""
        done = step - self.first_step
        left = max(self.total_steps - step, 0)
        eta = duration(left * (now - self.started) / done) if done > 0 else "?"
        share = step / self.total_steps if self.total_steps else 1.0
        return f"run {step}/{self.total_steps} steps ({share:.0%}), ETA {eta}"


def _rich_template(template: str) -> str:
    """'loss {loss:.3f}' -> 'loss {task.fields[loss]:.3f}' (rich's TextColumn formats task fields)."""
    return re.sub(r"\{(\w+)", r"{task.fields[\1]", template)


class ProgressBar:
    """`bar.advance(n, **fields)` after each unit of work; use as a context manager (or call close)."""

    def __init__(self, description: str, total: int, fields: str = "", completed: int = 0,
                 show: bool | None = None, every: float = PLAIN_EVERY_S, every_steps: int | None = None,
                 clock: RunClock | None = None, clock_offset: int = 0,
                 on_advance: Callable[[int, dict], None] | None = None, **initial: object) -> None:
        self.description, self.total, self.done = description, int(total), int(completed)
        self.template, self.fields = fields, dict(initial)
        self.every, self.started = every, time.perf_counter()
        self.every_steps, self.clock, self.clock_offset, self.on_advance = every_steps, clock, clock_offset, on_advance
        self.last_line, self.last_done = self.started, self.done
        self.rich = None
        if show is False:
            self.mode = "off"
        elif console.is_terminal:  # show True or None: a bar on a terminal, plain lines in a log
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
        if self.on_advance is not None:
            self.on_advance(self.done, fields)
        if self.mode == "rich":
            self.rich.update(self.task, advance=n, **fields)
        elif self.mode == "plain":
            now = time.perf_counter()
            if self._line_due(now):
                self.last_line, self.last_done = now, self.done
                console.print(self.plain_line(now), markup=False, highlight=False)

    def _line_due(self, now: float) -> bool:
        if self.every_steps is not None:
            return self.done - self.last_done >= self.every_steps or self.done == self.total
        return now - self.last_line >= self.every

    def plain_line(self, now: float) -> str:
        """'epoch 2/10: 50/100 (50%, 12s)  loss 0.5', and for a run (`clock`) indented under the
        epoch lines: '  epoch 2/10: ...  run 150/1000 steps (15%), ETA 3m20s'."""
        share = self.done / self.total if self.total else 1.0
        extra = ("  " + self.template.format(**self.fields)) if self.template else ""
        run = f"  {self.clock.line(self.clock_offset + self.done, now)}" if self.clock is not None else ""
        indent = "  " if self.clock is not None else ""
        return (f"{indent}{self.description}: {self.done}/{self.total} ({share:.0%}, "
                f"{now - self.started:.0f}s){extra}{run}")

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
    """A ProgressBar; `fields` is a format template over keyword fields, e.g. 'loss {loss:.3f}'
    (keywords of ProgressBar, like every_steps or clock, pass through)."""
    return ProgressBar(description, total, fields=fields, completed=completed, show=show, **initial)
