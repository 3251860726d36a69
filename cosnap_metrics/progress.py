"""Progress of long operations (the Kafka download, `demo`, benchmarks) on stderr.

On a terminal the line is redrawn in place, with a bar when the share done is known. Anywhere
else (a log file, CI) redrawing would pile up carriage returns, so the line is written whole at
most every `every_s` seconds and once at the end: a log holds a handful of progress lines.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_BAR = 24


class ProgressLine:
    """Called from one thread; `update` never blocks beyond writing a line."""

    def __init__(self, label: str, *, stream: TextIO | None = None, every_s: float = 5.0) -> None:
        self._label = label
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._every_s = every_s
        self._shown_at: float | None = None

    def update(self, text: str, fraction: float | None = None) -> None:
        """Show `text` as the current state (`fraction`: the share done, 0 to 1, when known)."""
        if self._tty:
            bar = "" if fraction is None else f"[{'#' * round(_BAR * min(fraction, 1.0)):<{_BAR}}] "
            self._stream.write(f"\r\x1b[K[{self._label}] {bar}{text}")
            self._stream.flush()
            return
        now = time.monotonic()
        if self._shown_at is None or now - self._shown_at >= self._every_s:
            self._shown_at = now
            self.note(text)

    def note(self, text: str) -> None:
        """A line of its own (a phase starts, a round's result), below the progress line."""
        if self._tty:
            self._stream.write("\r\x1b[K")
        self._stream.write(f"[{self._label}] {text}\n")
        self._stream.flush()

    def finish(self, text: str) -> None:
        """The final state: always written, and the line ends."""
        self.note(text)
        self._shown_at = None
