"""A progress line on stderr every few seconds for long loops (conversions of real datasets take hours)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """``update()`` per item; prints "label: done/total (rate/s), skipped n" at most every ``interval_s``."""

    def __init__(self, *, label: str, total: int | None = None, interval_s: float = 5.0, stream: TextIO | None = None):
        self.label = label
        self.total = total
        self.interval_s = interval_s
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.skipped = 0
        self._start = self._last = time.monotonic()

    def update(self, *, done: int = 1, skipped: int = 0) -> None:
        self.done += done
        self.skipped += skipped
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._print(now)

    def _print(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self._start, 1e-9)
        of_total = f"/{self.total}" if self.total is not None else ""
        state = "done in %.1fs" % elapsed if final else "%.0f/s" % (self.done / elapsed)
        print(f"[prepare] {self.label}: {self.done}{of_total} ({state}), skipped {self.skipped}",
              file=self.stream, flush=True)

    def close(self) -> None:
        self._print(time.monotonic(), final=True)
