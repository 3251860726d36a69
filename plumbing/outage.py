"""A dependency's outage as states, not floods.

While Kafka is unreachable every client library of a service retries and logs each try (a
thousand lines a minute from aiokafka alone, docs/findings.md). What a person needs is the state:
one line when the dependency goes, one when it is back, and a reminder every `REMIND_EVERY_S`
with how long and what the service holds meanwhile. `Outage` keeps that state and writes those
lines; `watch_kafka` feeds it from a thread that tries a TCP connection to the brokers every
`PROBE_EVERY_S`, whatever the libraries are doing. The service's /health reads `problem()`,
which names the dependency and since when.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from plumbing.logs import CONSOLE

REMIND_EVERY_S = 60.0
PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 1.0


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class Outage:
    """Whether `dependency` is reachable, as the service last found it. `down()` and `up()` may be
    called from any thread, as often as the service likes: only changes (and the reminders) are
    logged. `held()` says what the service holds while it waits ("" when nothing worth saying)."""

    def __init__(
        self,
        dependency: str,
        logger: logging.Logger,
        held: Callable[[], str] = lambda: "",
        remind_every_s: float = REMIND_EVERY_S,
    ) -> None:
        self.dependency = dependency
        self._log = logger
        self._held = held
        self._remind_every_s = remind_every_s
        self._lock = threading.Lock()
        self._since: float | None = None  # wall time it went
        self._reason = ""
        self._reminded = 0.0  # monotonic time of the last line about it

    @property
    def since(self) -> float | None:
        """When the dependency went (wall time), or None while it is reachable."""
        return self._since

    def down(self, reason: str) -> None:
        with self._lock:
            now = time.monotonic()
            if self._since is None:
                self._since, self._reason, self._reminded = time.time(), reason, now
                self._log.warning("%s unreachable: %s", self.dependency, reason)
                return
            self._reason = reason
            if now - self._reminded < self._remind_every_s:
                return
            self._reminded = now
            held = self._held()
            self._log.warning(
                "%s still unreachable, for %s%s",
                self.dependency,
                _duration(time.time() - self._since),
                f"; holding {held}" if held else "",
            )

    def up(self) -> None:
        with self._lock:
            if self._since is None:
                return
            gone_for = time.time() - self._since
            self._since = None
        self._log.info("%s reachable again, after %s", self.dependency, _duration(gone_for), extra=CONSOLE)

    def problem(self) -> str | None:
        """`<dependency> unreachable since <UTC time> (<how long>): <reason>`, or None."""
        since = self._since
        if since is None:
            return None
        at = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.dependency} unreachable since {at} ({_duration(time.time() - since)}): {self._reason}"


def unreachable(bootstrap: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to one of the `host:port,...` servers opens, else why not."""
    errors = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
            return None
        except OSError as exc:
            errors.append(f"{server.strip()}: {exc.strerror or exc}")
    return "; ".join(errors)


def watch_kafka(bootstrap: str, outage: Outage, every_s: float = PROBE_EVERY_S) -> None:
    """Probe the brokers from a daemon thread every `every_s` until the process exits, telling
    `outage` what was found."""

    def probe() -> None:
        while True:
            reason = unreachable(bootstrap)
            if reason is None:
                outage.up()
            else:
                outage.down(reason)
            time.sleep(every_s)

    threading.Thread(target=probe, name="kafka-watch", daemon=True).start()
