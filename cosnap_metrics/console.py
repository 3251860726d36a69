"""The console of `cosnap-metrics run` after its banner: one line per service state change and a
short status line every few seconds, read from the services' own `/health` and `/metrics`.

Every `STATUS_EVERY_S` a daemon thread asks each service for its health (a line when its state
changes: `[run] streams is healthy`; on a Kafka cluster the nodes too: `[run] kafka is 2 of 3
nodes up; kafka-2 is down (killed by SIGKILL)`) and for its Prometheus metrics, from which it makes the
status line:

    [run] in 12.0 ev/s | lag 0 | windows 1,234 | alerts firing 1 | errors 0

- `in`: events the ingest acknowledged per second since the previous reading;
- `lag`: records of the events topic the worker has not folded in yet;
- `windows`: final windows the worker emitted since it started;
- `alerts firing`: rules' groups that went firing and not resolved since the worker started;
- `errors`: ingest answers of 5xx, failed ClickHouse inserts, records the sink or the notifier
  dead-lettered, since each started.

On a terminal the status line is redrawn in place (cosnap_metrics/progress.py); elsewhere (a
log file, CI) it is written as a line of its own when it changed, at most every
`STATUS_LINE_EVERY_S`, and at least once every `STATUS_REPEAT_S`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TextIO

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cosnap_metrics.progress import ProgressLine

STATUS_EVERY_S = 5.0  # how often health and metrics are read
STATUS_LINE_EVERY_S = 10.0  # a changed status line is written at most this often off a terminal
STATUS_REPEAT_S = 60.0  # ... and an unchanged one again after this long
READ_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Endpoints:
    """Where one service answers: its health (JSON with a `status`) and its metrics."""

    health: str
    metrics: str


@dataclass(frozen=True)
class Reading:
    """The figures of the status line at one moment (monotonic seconds `at`)."""

    at: float
    accepted: float  # events the ingest acknowledged, since it started
    lag: float
    windows: float
    firing: float
    errors: float


def totals(exposition: str) -> dict[str, float]:
    """The sum over labels of every sample in a Prometheus text exposition, by sample name (a
    counter's `_total` name); `name{label="value"}` keys hold the sums of one label's value."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            keys = [sample.name] + [f'{sample.name}{{{k}="{v}"}}' for k, v in sample.labels.items()]
            for key in keys:
                sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def _errors_5xx(exposition: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "cosnap_ingest_requests_total" and sample.labels.get("status", "").startswith("5")
    )


def reading(at: float, expositions: Iterable[str]) -> Reading:
    """The status line's figures from the services' `/metrics` texts (those that answered)."""
    texts = list(expositions)
    sums: dict[str, float] = {}
    for text in texts:
        for key, value in totals(text).items():
            sums[key] = sums.get(key, 0.0) + value

    def total(name: str) -> float:
        return sums.get(name, 0.0)

    firing = total('cosnap_streams_alert_transitions_total{state="firing"}') - total(
        'cosnap_streams_alert_transitions_total{state="resolved"}'
    )
    errors = (
        sum(_errors_5xx(text) for text in texts)
        + total("cosnap_sink_insert_errors_total")
        + total("cosnap_sink_dead_letters_total")
        + total("cosnap_notify_dead_letters_total")
    )
    return Reading(
        at=at,
        accepted=total("cosnap_ingest_events_accepted_total"),
        lag=total("cosnap_streams_consumer_lag_records"),
        windows=total("cosnap_streams_windows_emitted_total"),
        firing=max(firing, 0.0),
        errors=errors,
    )


def status_text(previous: Reading | None, current: Reading) -> str:
    """`in 12.0 ev/s | lag 0 | windows 1,234 | alerts firing 1 | errors 0`; the rate is over
    the time since `previous` (0 without one, or when the ingest's count went back: a restart)."""
    rate = 0.0
    if previous is not None and current.at > previous.at and current.accepted >= previous.accepted:
        rate = (current.accepted - previous.accepted) / (current.at - previous.at)
    return (
        f"in {rate:,.1f} ev/s | lag {current.lag:,.0f} | windows {current.windows:,.0f} | "
        f"alerts firing {current.firing:,.0f} | errors {current.errors:,.0f}"
    )


def _state(client: httpx.Client, url: str) -> str:
    """A service's state as its health endpoint tells it (`healthy`, `ready`, `degraded: ...`),
    or `not answering`."""
    try:
        response = client.get(url)
    except httpx.HTTPError:
        return "not answering"
    try:
        report = response.json()
    except ValueError:
        return f"answering {response.status_code}"
    status = str(report.get("status", response.status_code))
    problems = report.get("problems") or []
    return f"{status}: {'; '.join(map(str, problems))}" if problems else status


class Console:
    """The runner's console after the banner; `start()` runs it on a daemon thread until
    `stop()`. Its lines go to `stream` (the runner's stdout) under the label `run`."""

    def __init__(
        self,
        services: Mapping[str, Endpoints],
        stream: TextIO,
        every_s: float = STATUS_EVERY_S,
        states: Mapping[str, Callable[[], str]] | None = None,
    ) -> None:
        """`states`: parts that are not services, by name, each with a function that tells its
        state (the runner's Kafka nodes): a line when it changes, like a service's."""
        self._services = dict(services)
        self._own_states = dict(states or {})
        self._every_s = every_s
        self._line = ProgressLine("run", stream=stream, every_s=0.0)
        self._tty = stream.isatty()
        self._states: dict[str, str] = {}
        self._previous: Reading | None = None
        self._shown: tuple[str, float] | None = None  # the status text last written, and when
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """No line after this returns; a status line being redrawn is ended."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * READ_TIMEOUT_S * (len(self._services) + 1))
        if self._tty and self._shown is not None:
            self._line.finish(self._shown[0])

    def _run(self) -> None:
        with httpx.Client(timeout=READ_TIMEOUT_S) as client:
            while not self._stopped.wait(self._every_s):
                self.tick(client)

    def tick(self, client: httpx.Client) -> None:
        """Read every service once: state changes as lines, then the status line."""
        for name, state_of in self._own_states.items():
            self._tell(name, state_of())
        expositions = []
        for name, endpoints in self._services.items():
            self._tell(name, _state(client, endpoints.health))
            try:
                response = client.get(endpoints.metrics)
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                expositions.append(response.text)
        current = reading(time.monotonic(), expositions)
        text = status_text(self._previous, current)
        self._previous = current
        if not self._stopped.is_set():
            self._show(text, current.at)

    def _tell(self, name: str, state: str) -> None:
        """A line when `name`'s state is not the one told last."""
        if state != self._states.get(name):
            self._states[name] = state
            if not self._stopped.is_set():
                self._line.note(f"{name} is {state}")

    def _show(self, text: str, now: float) -> None:
        if self._tty:
            self._line.update(text)
        elif self._shown is None or (
            (text != self._shown[0] and now - self._shown[1] >= STATUS_LINE_EVERY_S)
            or now - self._shown[1] >= STATUS_REPEAT_S
        ):
            self._line.note(text)
        else:
            return
        self._shown = (text, now)
