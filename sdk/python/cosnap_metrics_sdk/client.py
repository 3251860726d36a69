"""`MetricsClient`: the four BusinessMetricsService calls, buffered and sent in the background.

The caller's thread only encodes an event and appends it to a bounded buffer. One daemon thread
per client sends batches to the ingest API and retries what Kafka could not take yet (429, 5xx,
network errors) with the same event_ids, so a retry never counts an event twice.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import threading
import time
import weakref
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Literal

import httpx

from cosnap_metrics_sdk.backoff import Backoff
from cosnap_metrics_sdk.buffer import EventBuffer, PendingEvent
from cosnap_metrics_sdk.events import (
    CRITICAL_SEVERITY,
    EncodedEvent,
    EventContext,
    Unit,
    encode_event,
    exact_amount,
    finite_number,
)
from cosnap_metrics_sdk.guide import Breadcrumbs, BusinessMetrics, initialised_sentry
from cosnap_metrics_sdk.transport import (
    ENVELOPE_BYTES,
    MAX_BATCH_EVENTS,
    MAX_BODY_BYTES,
    HttpTransport,
    Outcome,
    SendResult,
)

SDK_VERSION = "0.1.0"
log = logging.getLogger("cosnap_metrics_sdk")

# A full buffer drops an event per track call; say so once, then at most this often.
_DROP_WARNING_INTERVAL_S = 10.0
_LOGGED_REJECTIONS = 5


class MetricsClient:
    """Buffers events in memory and sends them to `{url}/v1/events` from a daemon thread.

    - `track_*` never blocks on the network and never raises for transport problems; they raise
      TypeError/ValueError only for invalid arguments (a float amount, an amount the API refuses
      (beyond ±1e9, more than 9 decimals, an exponent beyond ±64), a naive timestamp or one out
      of range in UTC, a non-finite value, non-string tags).
    - A batch is sent every `flush_interval` seconds, as soon as `flush_at` events are waiting,
      and at once after a revenue event or a performance event with severity "critical".
    - At most `max_buffer` events wait (plus one batch in flight); when full the oldest is
      dropped, counted in `dropped`, and a warning is logged.
    - 202: done (per-item rejections are logged and counted in `rejected`, not retried).
      400/401/403/413/415 and other 4xx: the batch is logged and dropped (`rejected`).
      408/429/5xx/network errors: the same events are re-buffered and retried with exponential
      backoff and jitter (`backoff_initial` doubling to `backoff_cap` seconds), or after the
      server's `Retry-After`; a batch failing more than `max_retries` times is dropped (None:
      retry until `close()` gives up).
    - `close()` (also called by the context manager and at interpreter exit) sends what is
      buffered and stops the thread.
    - `business_metrics` has the monitoring guide's calls (`track_revenue_event`, ...) over these.
    - Each tracked event leaves a breadcrumb (category "business-metrics") with `sentry`, by
      default with `sentry_sdk` when it is installed and initialised; `sentry=False` for none.

    All public methods are thread-safe.
    """

    def __init__(
        self,
        url: str,
        write_key: str,
        *,
        flush_interval: float = 30.0,
        flush_at: int = 100,
        max_buffer: int = 10_000,
        max_batch: int = 500,
        max_retries: int | None = None,
        source: str = "backend",
        environment: str | None = None,
        release: str | None = None,
        request_timeout: float = 15.0,
        backoff_initial: float = 0.5,
        backoff_cap: float = 30.0,
        shutdown_timeout: float = 10.0,
        http_transport: httpx.BaseTransport | None = None,
        sentry: Breadcrumbs | Literal[False] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if not write_key:
            raise ValueError("write_key is empty")
        if not (flush_interval > 0 and math.isfinite(flush_interval)):
            raise ValueError("flush_interval must be a positive number of seconds")
        if flush_at < 1 or max_buffer < 1:
            raise ValueError("flush_at and max_buffer must be at least 1")
        if not 1 <= max_batch <= MAX_BATCH_EVENTS:
            raise ValueError(f"max_batch must be within 1..{MAX_BATCH_EVENTS} (the API's limit)")
        if max_retries is not None and max_retries < 0:
            raise ValueError("max_retries must be >= 0 or None")
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")

        self._context = EventContext(source=source, environment=environment, release=release)
        self._sentry = sentry
        self.business_metrics = BusinessMetrics(self._context, self._track)
        self._flush_interval = flush_interval
        self._flush_at = flush_at
        self._max_batch = max_batch
        self._max_retries = max_retries
        self._shutdown_timeout = shutdown_timeout
        self._backoff = Backoff(backoff_initial, backoff_cap)
        self._sender = HttpTransport(
            url,
            write_key,
            timeout=request_timeout,
            user_agent=f"cosnap-metrics-sdk-python/{SDK_VERSION}",
            transport=http_transport,
        )

        # Everything below is guarded by `_lock`; `_changed` wakes the worker and flush() callers.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._buffer = EventBuffer(max_buffer)
        self._in_flight: list[PendingEvent] = []
        self._flush_through = 0  # events with seq <= this are due now
        self._next_interval = time.monotonic() + flush_interval
        self._retry_at = 0.0
        self._failures = 0  # consecutive failed attempts, for the backoff
        self._closing = False
        self._stopped = False  # close() timed out: the worker must leave now
        self._left_at_close = 0  # events buffered or in flight when close() gave up
        self._delivered = 0
        self._rejected = 0
        self._dropped = 0
        self._last_drop_warning = -math.inf

        self._worker = threading.Thread(target=self._run, name="cosnap-metrics-sdk", daemon=True)
        self._worker.start()
        _live_clients.add(self)

    # -- the four calls ---------------------------------------------------------------------

    def track_revenue(
        self,
        name: str,
        amount: Decimal | str,
        currency: str,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        session_id: str | None = None,
        tags: dict[str, str] | None = None,
        timestamp: datetime | None = None,
    ) -> str:
        """Buffer a revenue event and ask for an immediate flush; return its event_id.

        `amount` is sent as a decimal string so every digit survives; a float raises TypeError.
        Never blocks on the network.
        """
        fields = {"name": name, "amount": exact_amount(amount), "currency": currency}
        return self._track(
            encode_event(
                self._context,
                "revenue",
                fields,
                user_id=user_id,
                anonymous_id=anonymous_id,
                session_id=session_id,
                tags=tags,
                timestamp=timestamp,
                urgent=True,
            )
        )

    def track_conversion_step(
        self,
        funnel: str,
        step: str,
        step_index: int | None = None,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        session_id: str | None = None,
        tags: dict[str, str] | None = None,
        timestamp: datetime | None = None,
    ) -> str:
        """Buffer a funnel step (the API needs `user_id` or `anonymous_id`); return its event_id.
        Never blocks on the network."""
        if step_index is not None and (isinstance(step_index, bool) or not isinstance(step_index, int)):
            raise TypeError("step_index must be an int")
        return self._track(
            encode_event(
                self._context,
                "conversion",
                {"funnel": funnel, "step": step, "step_index": step_index},
                user_id=user_id,
                anonymous_id=anonymous_id,
                session_id=session_id,
                tags=tags,
                timestamp=timestamp,
            )
        )

    def track_feature_usage(
        self,
        feature: str,
        action: str,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        session_id: str | None = None,
        tags: dict[str, str] | None = None,
        timestamp: datetime | None = None,
    ) -> str:
        """Buffer a feature-usage event; return its event_id. Never blocks on the network."""
        return self._track(
            encode_event(
                self._context,
                "feature",
                {"feature": feature, "action": action},
                user_id=user_id,
                anonymous_id=anonymous_id,
                session_id=session_id,
                tags=tags,
                timestamp=timestamp,
            )
        )

    def track_performance(
        self,
        metric: str,
        value: float,
        unit: Unit | str = "ms",
        severity: str | None = None,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        session_id: str | None = None,
        tags: dict[str, str] | None = None,
        timestamp: datetime | None = None,
    ) -> str:
        """Buffer a measurement; `severity` goes to tags["severity"], and "critical" asks for an
        immediate flush. Return its event_id. A non-finite value raises ValueError. Never blocks
        on the network."""
        return self._track(
            encode_event(
                self._context,
                "performance",
                {"metric": metric, "value": finite_number(value, "value"), "unit": unit},
                user_id=user_id,
                anonymous_id=anonymous_id,
                session_id=session_id,
                tags=tags,
                timestamp=timestamp,
                extra_tags={"severity": severity} if severity is not None else None,
                urgent=severity == CRITICAL_SEVERITY,
            )
        )

    # -- delivery control -------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every event tracked before this call has been answered by the API
        (accepted or refused) or dropped, or until `timeout` seconds have passed (None: no limit).

        Returns True when nothing tracked before the call is still waiting; see `delivered`,
        `rejected` and `dropped` for what happened to the events.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            target = self._buffer.last_seq
            self._flush_through = max(self._flush_through, target)
            self._changed.notify_all()
            while True:
                oldest = self._oldest_pending()
                if oldest is None or oldest > target:
                    return True
                if self._stopped or not self._worker.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Send everything buffered, then stop the background thread. Blocks up to `timeout`
        seconds (None: until delivered, however long retries take); events still undelivered
        then are dropped and logged. Returns True when nothing was left behind.

        Idempotent. Events tracked after close() are dropped (and counted in `dropped`).
        """
        with self._changed:
            if not self._closing:
                self._closing = True
                self._flush_through = self._buffer.last_seq
                self._changed.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)
        lost = 0
        with self._changed:
            if self._worker.is_alive() and not self._stopped:
                self._stopped = True
                left = self._buffer.clear()
                self._dropped += len(left)  # an in-flight batch is counted when its answer comes
                lost = len(left) + len(self._in_flight)
                self._left_at_close = lost
                self._changed.notify_all()
            clean = self._left_at_close == 0
        _live_clients.discard(self)
        if lost:
            log.error("closed after %.1fs with %d events not delivered", timeout or 0.0, lost)
        return clean

    def __enter__(self) -> MetricsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(self._shutdown_timeout)

    # -- counters -----------------------------------------------------------------------------

    @property
    def delivered(self) -> int:
        """Events the API accepted (they are durably in Kafka)."""
        with self._lock:
            return self._delivered

    @property
    def rejected(self) -> int:
        """Events the API refused (invalid items, invalid batches, bad write key); never retried."""
        with self._lock:
            return self._rejected

    @property
    def dropped(self) -> int:
        """Events lost in the client: buffer full, retries exhausted, tracked after or left at
        close()."""
        with self._lock:
            return self._dropped

    @property
    def pending(self) -> int:
        """Events buffered or in flight."""
        with self._lock:
            return len(self._buffer) + len(self._in_flight)

    # -- the caller's side --------------------------------------------------------------------

    def _track(self, event: EncodedEvent) -> str:
        warn_dropped = 0
        with self._changed:
            if self._closing:
                self._dropped += 1
                dropped_after_close = True
            else:
                dropped_after_close = False
                overflow = self._buffer.append(event)
                if event.urgent:
                    self._flush_through = self._buffer.last_seq
                if overflow:
                    self._dropped += len(overflow)
                    now = time.monotonic()
                    if now - self._last_drop_warning >= _DROP_WARNING_INTERVAL_S:
                        self._last_drop_warning = now
                        warn_dropped = self._dropped
                if event.urgent or len(self._buffer) >= self._flush_at:
                    self._changed.notify_all()
        if dropped_after_close:
            log.warning("event %s tracked after close(): dropped", event.event_id)
            return event.event_id
        if warn_dropped:
            log.warning("buffer full: dropped the oldest events; %d dropped so far", warn_dropped)
        self._breadcrumb(event)
        return event.event_id

    def _breadcrumb(self, event: EncodedEvent) -> None:
        """A Sentry breadcrumb of a tracked event, when the app runs Sentry; never raises."""
        sentry = initialised_sentry() if self._sentry is None else self._sentry
        if not sentry:
            return
        data = json.loads(event.body)
        data.pop("timestamp", None)
        what = (
            data.get("name")
            or data.get("metric")
            or data.get("feature")
            or f"{data.get('funnel')}/{data.get('step')}"
        )
        critical = data.get("tags", {}).get("severity") == CRITICAL_SEVERITY
        try:
            sentry.add_breadcrumb(
                {
                    "category": "business-metrics",
                    "type": "info",
                    "level": "error" if critical else "info",
                    "message": f"{data['type']} {what}",
                    "data": data,
                }
            )
        except Exception:  # a failing Sentry must not break tracking
            log.debug("sentry breadcrumb failed", exc_info=True)

    def _oldest_pending(self) -> int | None:
        # In-flight events are older than every buffered one (they were taken from the front).
        if self._in_flight:
            return self._in_flight[0].seq
        return self._buffer.oldest_seq

    # -- the worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._settle(batch, self._send(batch))
        finally:
            self._sender.close()
            with self._changed:
                self._changed.notify_all()

    def _next_batch(self) -> list[PendingEvent] | None:
        """Block until a batch is due (or the client stops: None) and take it from the buffer."""
        with self._changed:
            while True:
                if self._stopped:
                    return None
                now = time.monotonic()
                if now >= self._next_interval:
                    self._flush_through = max(self._flush_through, self._buffer.last_seq)
                    self._next_interval = now + self._flush_interval
                oldest = self._buffer.oldest_seq
                if oldest is None:
                    if self._closing:
                        return None
                    self._changed.wait(self._next_interval - now)
                elif now < self._retry_at:
                    self._changed.wait(self._retry_at - now)
                elif oldest <= self._flush_through or len(self._buffer) >= self._flush_at:
                    self._in_flight = self._buffer.take(self._max_batch, MAX_BODY_BYTES - ENVELOPE_BYTES)
                    return self._in_flight
                else:
                    self._changed.wait(self._next_interval - now)

    def _send(self, batch: list[PendingEvent]) -> SendResult:
        """POST one batch; blocks up to the request timeout, never raises."""
        try:
            return self._sender.send([pending.event.body for pending in batch])
        except Exception as exc:  # a bug must not kill the thread that holds the events
            log.exception("unexpected error sending %d events", len(batch))
            return SendResult(Outcome.RETRY, detail=repr(exc))

    def _settle(self, batch: list[PendingEvent], result: SendResult) -> None:
        """Record the API's answer for a batch: count it, or put it back for a retry."""
        delay = 0.0
        lost: list[PendingEvent] = []
        with self._changed:
            self._in_flight = []
            if result.outcome is Outcome.RETRY:
                self._failures += 1
                for pending in batch:
                    pending.attempts += 1
                if self._stopped:
                    lost = batch
                else:
                    limit = self._max_retries
                    lost = [p for p in batch if limit is not None and p.attempts > limit]
                    retry = [p for p in batch if limit is None or p.attempts <= limit]
                    lost += self._buffer.requeue(retry)
                    delay = self._backoff.delay(self._failures, result.retry_after)
                    self._retry_at = time.monotonic() + delay
                self._dropped += len(lost)
            else:
                self._failures = 0
                self._retry_at = 0.0
                refused = len(batch) if result.outcome is Outcome.REFUSED else len(result.rejected)
                self._rejected += refused
                self._delivered += len(batch) - refused
            self._changed.notify_all()
        self._log_result(batch, result, delay, len(lost))

    def _log_result(self, batch: list[PendingEvent], result: SendResult, delay: float, lost: int) -> None:
        what = f"HTTP {result.status}" if result.status is not None else result.detail
        if result.outcome is Outcome.RETRY:
            if lost:
                log.error("%s: %d events dropped (buffer full, out of retries, or closed)", what, lost)
            if lost < len(batch):
                log.warning(
                    "%s: %d events kept for retry in %.1fs (%s)",
                    what,
                    len(batch) - lost,
                    delay,
                    result.detail or "no detail",
                )
            return
        reasons = "; ".join(
            f"{batch[r.index].event.event_id if 0 <= r.index < len(batch) else '?'}: {r.reason}"
            for r in result.rejected[:_LOGGED_REJECTIONS]
        )
        if result.outcome is Outcome.REFUSED:
            log.error(
                "%s: the API refused a batch of %d events, dropped: %s",
                what,
                len(batch),
                reasons or result.detail,
            )
        elif result.rejected:
            log.warning(
                "the API rejected %d of %d events (not retried): %s",
                len(result.rejected),
                len(batch),
                reasons,
            )


_live_clients: weakref.WeakSet[MetricsClient] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """Flush every open client when the interpreter exits (each up to its shutdown_timeout)."""
    for client in list(_live_clients):
        client.close(client._shutdown_timeout)
