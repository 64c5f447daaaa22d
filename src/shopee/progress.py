"""Progress of long loops that shows everywhere: a bar in a terminal, lines elsewhere.

tqdm draws a bar only on a terminal; in a log file, under ``nohup`` or a scheduler its bar is
off and a long epoch would print nothing for minutes. ``Progress`` keeps the bar on a terminal
and, off one, logs a line every ``fraction`` of the work (10 %) or every ``seconds`` (60), which
ever comes first (to ``log``, default ``print``), but never two within ``min_seconds`` (2 s, or
``$SHOPEE_PROGRESS_MIN_SECONDS``): a loop of a few seconds says nothing. On a terminal
``log_with_bar`` (a log file only, say) still gets the lines, so ``train.log`` tells the same
story either way.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
Log = Callable[[str], None]


def _print(message: str) -> None:
    print(message, flush=True)


def on_terminal() -> bool:
    """tqdm draws its bar on stderr: is that a terminal (and tqdm not switched off)?"""
    disabled = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return not disabled and sys.stderr.isatty()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress(Generic[T]):
    """Iterate ``iterable`` showing progress (or, with no iterable, call ``update`` per step and
    ``close`` at the end); ``set_postfix`` adds a note such as the running loss."""

    def __init__(
        self,
        iterable: Iterable[T] | None,
        desc: str,
        *,
        total: int | None = None,
        unit: str = "it",
        log: Log | None = None,
        log_with_bar: Log | None = None,
        fraction: float = 0.1,
        seconds: float = 60.0,
        min_seconds: float | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.iterable = iterable
        self.desc = desc
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.unit = unit
        self.terminal = on_terminal() if terminal is None else terminal
        self.log = log or _print
        self.log_with_bar = log_with_bar
        self.fraction = fraction
        self.seconds = seconds
        if min_seconds is None:
            min_seconds = float(os.environ.get("SHOPEE_PROGRESS_MIN_SECONDS", 2.0))
        self.min_seconds = min_seconds
        self.postfix = ""
        self.done = 0
        self._bar = None
        self._started = self._last = time.perf_counter()
        self._next_share = fraction

    def set_postfix(self, text: str) -> None:
        self.postfix = text

    def line(self, elapsed: float) -> str:
        if self.total:
            share = self.done / self.total
            eta = f", ETA {_duration(elapsed / share - elapsed)}" if share > 0 else ""
            where = f"{100 * share:.0f}% ({self.done}/{self.total} {self.unit}, {_duration(elapsed)}{eta})"
        else:
            where = f"{self.done} {self.unit} ({_duration(elapsed)})"
        return f"{self.desc}: {where}" + (f" {self.postfix}" if self.postfix else "")

    def _emit(self, elapsed: float) -> None:
        message = self.line(elapsed)
        if not self.terminal:
            self.log(message)
        elif self.log_with_bar is not None:
            self.log_with_bar(message)

    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""
        if self.terminal and self._bar is None:
            self._bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, leave=False, mininterval=1.0)
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if self.postfix:
                self._bar.set_postfix_str(self.postfix, refresh=False)
        now = time.perf_counter()
        share = self.done / self.total if self.total else None
        finished = share is not None and share >= 1
        crossed = share is not None and share >= self._next_share
        quiet = now - self._last < self.min_seconds
        if not finished and not quiet and (crossed or now - self._last >= self.seconds):
            self._emit(now - self._started)
            self._last = now
        while share is not None and share >= self._next_share:
            self._next_share += self.fraction

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress(None, ...) counts steps with update(); there is nothing to iterate")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()
