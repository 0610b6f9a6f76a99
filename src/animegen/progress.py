"""Progress of long work: a tqdm bar on a terminal, otherwise one line per phase (what it computes, i of n, the
estimated time left) at its start, every ``LINE_EVERY_S`` seconds and at its end. Everything goes to stderr, so a
command's stdout (tables, paths) stays clean.

    with Progress("inception features of data/mlds", total=35492, unit="img") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

``note(message)`` prints a one-off line (e.g. that a cache is reused) the same way.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

LINE_EVERY_S = 30.0  # without a terminal: a line at most this often (plus the first and the last)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def note(message: str, enabled: bool = True, stream: TextIO | None = None) -> None:
    """One line of progress information on stderr (nothing when not ``enabled``)."""
    if enabled:
        out = stream or sys.stderr
        print(message, file=out, flush=True)


class Progress:
    """The progress of one phase of ``total`` units (None: unknown); see the module docstring.

    ``enabled=False`` shows nothing; ``tty`` forces the bar (True) or the lines (False) instead of asking the
    stream whether it is a terminal."""

    def __init__(self, desc: str, total: int | None, unit: str = "img", enabled: bool = True,
                 stream: TextIO | None = None, tty: bool | None = None):
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self._t0 = self._last = time.perf_counter()
        self._bar: Any = None
        self._closed = False
        if not enabled:
            return
        if tty is None:
            tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=self.stream,
                             dynamic_ncols=True, mininterval=0.5)
        else:
            self._line("started")

    def _line(self, state: str) -> None:
        elapsed = time.perf_counter() - self._t0
        count = f"{self.done:,}" + (f" of {self.total:,}" if self.total is not None else "") + f" {self.unit}"
        if state == "done":
            tail = f"done in {_duration(elapsed)}"
        elif self.done and self.total:
            left = elapsed * (self.total - self.done) / self.done
            tail = f"{self.done / self.total:.0%}, about {_duration(left)} left"
        else:
            tail = state
        print(f"{self.desc}: {count} ({tail})", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
        elif time.perf_counter() - self._last >= LINE_EVERY_S and (self.total is None or self.done < self.total):
            self._last = time.perf_counter()
            self._line("running")

    def close(self) -> None:
        if self._closed or not self.enabled:
            self._closed = True
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            self._line("done")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()
        self._closed = True


def track(items: Iterable[Any], desc: str, total: int | None, unit: str = "img", enabled: bool = True,
          size=len) -> Iterator[Any]:
    """``items`` passed through unchanged, counting ``size(item)`` units of each into a :class:`Progress`."""
    with Progress(desc, total, unit, enabled) as bar:
        for item in items:
            yield item
            bar.update(size(item))
