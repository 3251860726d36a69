"""How every service process stops: within a deadline, whatever is down.

The first SIGTERM or SIGINT asks the service to stop (it flushes what it holds, each Kafka and
ClickHouse call bounded by a timeout) and arms a deadline: a service still running
`STOP_DEADLINE_S` later logs what it could not write out and exits at once, with
`EXIT_UNFLUSHED` (or 0 when it held nothing: a library's own stop may hang on a dead broker
with nothing left to write). A second signal exits at once (a second Ctrl-C means now). Nothing
a service holds is lost by either exit: what was not written out is still in Kafka,
uncommitted, and is consumed again by the next start.

Exit statuses of the services: 0 when everything held was written out, `EXIT_UNFLUSHED` when
something was not (the last log line says what), 2 for a configuration error,
`EXIT_SECOND_SIGNAL` when a second signal cut the stop short. The runner reads them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

STOP_DEADLINE_S = 6.0  # the runner gives its services 7 s, then SIGKILL: they exit on their own first
EXIT_UNFLUSHED = 3
EXIT_SECOND_SIGNAL = 130  # as a shell reports a process ended by Ctrl-C

log = logging.getLogger("cosnap.stopping")


class Shutdown:
    """The stop of one service process. `request()` (from a signal handler, or from a library's
    own handler: uvicorn's, Faust's) calls `on_stop` with the signal the first time and arms the
    deadline; the second time it exits at once. `unflushed()` says what the service still holds
    ("" when nothing): at the deadline, the process exits with EXIT_UNFLUSHED and that in its
    last line, or with 0 when it holds nothing (a library's stop hung on a dead broker, say)."""

    def __init__(
        self,
        on_stop: Callable[[int], None],
        unflushed: Callable[[], str] = lambda: "",
        deadline_s: float = STOP_DEADLINE_S,
    ) -> None:
        self._on_stop = on_stop
        self._unflushed = unflushed
        self._deadline_s = deadline_s
        self._requested = False  # a flag, not an Event: request() may run in a signal handler

    def request(self, signum: int) -> None:
        if self._requested:
            log.warning("signal %d again: exiting now", signum)
            os._exit(EXIT_SECOND_SIGNAL)
        self._requested = True
        log.info("signal %d: stopping (at most %.0f s)", signum, self._deadline_s)
        deadline = threading.Timer(self._deadline_s, self._expire)
        deadline.daemon = True
        deadline.start()
        self._on_stop(signum)

    def _expire(self) -> None:
        held = self._unflushed()
        if not held:
            log.warning(
                "did not stop within %.0f s: exiting now; nothing was left unwritten", self._deadline_s
            )
            os._exit(0)  # the handlers flush every record: the line above is out
        log.error(
            "did not stop within %.0f s: exiting now; not written out: %s (consumed again from Kafka "
            "at the next start)",
            self._deadline_s,
            held,
        )
        os._exit(EXIT_UNFLUSHED)

    def install(self) -> None:
        """Handle SIGTERM and SIGINT with `request` (for services whose main loop is ours)."""

        def _handler(signum: int, _frame: FrameType | None) -> None:
            self.request(signum)

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
