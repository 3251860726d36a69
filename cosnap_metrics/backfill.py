"""`cosnap-metrics import FILE...`: events from files posted to the ingest API, resumably.

The HTTP API is the only door: batches of a file's events (cosnap_metrics/event_files.py) go to
`POST /v1/events` with a write key, a few requests at a time, so an imported event meets the
validation, time policy and idempotency (its `event_id`) of any client's. What the API rejects,
and what could not be read, is counted by reason and written with its line number and reason to
`<file>.rejected.ndjson`. `429` and `503` (and a lost connection or another 5xx) are retried
after their `Retry-After`, never counted as rejects; the import stops when nothing has been
acknowledged for `retry_for` seconds, resumable.

Resume: a state file per (file content, ingest URL, write key) in `<data dir>/imports/` holds
the file's SHA-256, the line ranges whose every event was acknowledged, and the counts. Ctrl-C
stops reading, lets the requests on the wire finish, saves the state and exits 130; the same
command then posts only what was not acknowledged, and once a file is done, running it again
posts nothing. `--restart` ignores the state and posts every line again (under the same ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from cosnap_metrics.event_files import EventFile, EventFileError, Format, Record, file_digest
from cosnap_metrics.progress import ProgressLine
from ingest.body import MAX_BODY_BYTES
from schemas.errors import CosnapError

_BODY_CAP = MAX_BODY_BYTES - 64  # room for the batch's brackets
_SAVE_EVERY_S = 0.5
_TOO_OLD = "timestamp too old"
EXIT_INTERRUPTED = 130


class BackfillStopped(CosnapError):
    """The import cannot go on: the ingest refused the write key or stayed unreachable."""

    def __init__(self, reason: str, *, usage: bool = False) -> None:
        super().__init__(reason)
        self.usage = usage  # the command was wrong (a refused key), rather than the pipeline down


class Interrupted(CosnapError):
    """Ctrl-C (or SIGTERM): the state is saved, the same command resumes."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the events go: the ingest API's base URL and a write key."""

    url: str
    write_key: str

    def key_hash(self) -> str:
        return hashlib.sha256(self.write_key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ImportOptions:
    state_dir: Path
    batch: int = 500  # events per request (the API takes up to 1,000 and 1 MiB)
    concurrency: int = 4  # requests in flight
    max_rate: float = 0.0  # events per second, 0 = as fast as the API takes them
    restart: bool = False
    rejected: Path | None = None  # default: <file>.rejected.ndjson
    fmt: Format | None = None  # default: detected from the content
    retry_for: float = 300.0  # give up after this long without an acknowledged batch


class ImportState(BaseModel):
    """What the state file holds (JSON): enough to resume and to report."""

    digest: str
    path: str
    url: str
    done: list[tuple[int, int]] = []  # line ranges, inclusive, every event in them acknowledged
    accepted: int = 0
    rejected: dict[str, int] = {}
    rejected_path: str = ""
    rejected_bytes: int = 0  # the rejected file's size when the state was saved
    finished: bool = False
    started_at: datetime
    updated_at: datetime


@dataclass
class FileSummary:
    path: Path
    events: int  # events of the file seen so far (accepted + rejected)
    accepted: int
    rejected: dict[str, int]
    rejected_path: Path | None
    posted: int = 0  # events posted by this run
    seconds: float = 0.0  # this run's time from the first line read to the last answer
    resumed_at: int = 0  # the first line this run could post (0: from the start)
    retries: int = 0  # requests answered 429/503/5xx or lost, then sent again
    already_imported: bool = False
    interrupted: bool = False
    stopped: str = ""  # why the import could not go on

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "events": self.events,
            "accepted": self.accepted,
            "rejected": self.rejected_total,
            "rejected_by_reason": self.rejected,
            "rejected_file": str(self.rejected_path) if self.rejected_path else None,
            "posted": self.posted,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.posted / self.seconds, 1) if self.seconds else 0.0,
            "resumed_at_line": self.resumed_at,
            "retries": self.retries,
            "already_imported": self.already_imported,
            "interrupted": self.interrupted,
            "stopped": self.stopped or None,
        }

    def text(self) -> str:
        """The summary a person reads: counts, rejects by reason, where the rejected lines are."""
        head = (
            f"{self.path}: {self.events:,} events, {self.accepted:,} accepted, "
            f"{self.rejected_total:,} rejected"
        )
        if self.already_imported:
            lines = [f"{head} (already imported: nothing posted; --restart posts every line again)"]
        else:
            rate = f" ({self.posted / self.seconds:,.0f} events/s)" if self.seconds else ""
            resumed = f", resumed at line {self.resumed_at:,}" if self.resumed_at > 1 else ""
            lines = [f"{head}; {self.posted:,} posted in {self.seconds:.1f} s{rate}{resumed}"]
        for reason, count in sorted(self.rejected.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  {count:>9,}  {reason}")
        if self.rejected_total and self.rejected_path is not None:
            lines.append(f"  rejected lines with their reasons: {self.rejected_path}")
        if _TOO_OLD in self.rejected:
            lines.append(
                "  the ingest refuses events older than its acceptance horizon "
                "(COSNAP_MAX_EVENT_AGE_S, 30 days by default)"
            )
        if self.retries:
            lines.append(f"  {self.retries:,} requests were sent again (429/503 or no answer)")
        if self.interrupted:
            lines.append("  interrupted: the same command resumes where this run stopped")
        if self.stopped:
            lines.append(f"  stopped: {self.stopped}")
        return "\n".join(lines)


def add_range(ranges: list[tuple[int, int]], first: int, last: int) -> list[tuple[int, int]]:
    """`ranges` (sorted, disjoint, inclusive) with [first, last] added, touching ranges merged."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted([*ranges, (first, last)]):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@dataclass
class Batch:
    """A request's worth of a file: `first`..`last` are the lines it answers for (with the blank
    and already-done lines before its first event), `records` the events posted in body order."""

    first: int
    last: int
    position: int  # the file's byte offset once its last line was read
    records: list[Record] = field(default_factory=list)
    unreadable: list[Record] = field(default_factory=list)
    parts: list[bytes] = field(default_factory=list)
    size: int = 0


Rejected = tuple[Record, str, str]  # the record, the reason, more detail (may be empty)


def _body(parts: list[bytes]) -> bytes:
    return b'{"events":[' + b",".join(parts) + b"]}"


def _retry_after(response: httpx.Response, fallback: float) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.0), 60.0)
    except ValueError:
        return fallback


class FileImport:
    """One file's import: reads batches, posts them `concurrency` at a time, keeps the state.
    `stopping` is set on Ctrl-C: no new request is sent, those on the wire are answered."""

    def __init__(
        self,
        path: Path,
        target: Target,
        options: ImportOptions,
        progress: ProgressLine,
        stopping: asyncio.Event,
    ) -> None:
        self.path = path
        self.target = target
        self.options = options
        self.progress = progress
        self.stopping = stopping
        self.digest = file_digest(path)
        key = hashlib.sha256(f"{self.digest}\n{target.url}\n{target.key_hash()}".encode()).hexdigest()
        self.state_path = options.state_dir / f"{key[:32]}.json"
        self.rejected_path = options.rejected or path.with_name(path.name + ".rejected.ndjson")
        self.state = self._load_state()
        self.already_imported = self.state.finished
        self.resumed_at = 0
        self.posted = 0
        self.retries = 0
        self.counted = 0  # events answered in this run (posted or unreadable)
        self._rejected_file: IO[bytes] | None = None
        self._saved_at = 0.0
        self._started = self._last_progress = self._shown_at = time.monotonic()
        self._size = self._start_position = self._position = 0

    def _load_state(self) -> ImportState:
        now = datetime.now(UTC)
        fresh = ImportState(
            digest=self.digest,
            path=str(self.path),
            url=self.target.url,
            rejected_path=str(self.rejected_path),
            started_at=now,
            updated_at=now,
        )
        if self.options.restart or not self.state_path.exists():
            return fresh
        try:
            state = ImportState.model_validate_json(self.state_path.read_bytes())
        except (OSError, ValidationError):
            return fresh  # unreadable: start over (the ids are the same, the table collapses them)
        if state.digest != self.digest or (not state.done and not state.finished):
            return fresh
        if state.rejected_path != str(self.rejected_path) and not state.finished:
            # Rejects of the earlier run stay in their file; this run's go to the new one.
            state.rejected_path, state.rejected_bytes = str(self.rejected_path), -1
        return state

    def save_state(self) -> None:
        if self._rejected_file is not None:
            self._rejected_file.flush()
            self.state.rejected_bytes = self._rejected_file.tell()
        self.state.updated_at = datetime.now(UTC)
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(self.state.model_dump_json(indent=1).encode())
        tmp.replace(self.state_path)
        self._saved_at = time.monotonic()

    def summary(self, *, interrupted: bool = False, stopped: str = "") -> FileSummary:
        rejected = dict(self.state.rejected)
        return FileSummary(
            path=self.path,
            events=self.state.accepted + sum(rejected.values()),
            accepted=self.state.accepted,
            rejected=rejected,
            rejected_path=Path(self.state.rejected_path) if self.state.rejected_path else None,
            posted=self.posted,
            seconds=time.monotonic() - self._started,
            resumed_at=self.resumed_at,
            retries=self.retries,
            already_imported=self.already_imported,
            interrupted=interrupted,
            stopped=stopped,
        )

    # -- the rejected file ------------------------------------------------------------------

    def _open_rejected(self) -> None:
        """On a fresh import an old rejected file is removed; on a resume it is cut back to
        what the saved state counts (a crash may have written more)."""
        path = Path(self.state.rejected_path)
        if not self.state.done or self.state.rejected_bytes < 0:
            path.unlink(missing_ok=True)
            self.state.rejected_bytes = 0
        elif path.exists() and path.stat().st_size > self.state.rejected_bytes:
            with path.open("r+b") as file:
                file.truncate(self.state.rejected_bytes)

    def _reject(self, record: Record, reason: str, detail: str = "") -> None:
        if self._rejected_file is None:
            self._rejected_file = Path(self.state.rejected_path).open("ab")  # noqa: SIM115 - kept open
        entry: dict[str, Any] = {"line": record.line, "reason": reason}
        if detail:
            entry["detail"] = detail
        if record.event is not None:
            entry["event"] = record.event
        else:
            entry["raw"] = record.raw
        self._rejected_file.write(orjson.dumps(entry) + b"\n")
        self.state.rejected[reason] = self.state.rejected.get(reason, 0) + 1

    # -- reading -----------------------------------------------------------------------------

    def _batches(self, source: EventFile) -> Iterator[Batch]:
        done = list(self.state.done)
        start = 1  # the first line the next batch answers for
        batch: Batch | None = None
        for record in source.records():
            while done and done[0][1] < record.line:
                done.pop(0)
            if done and done[0][0] <= record.line:
                continue  # acknowledged in an earlier run
            if not self.resumed_at and self.state.done:
                self.resumed_at = record.line
            if batch is None:
                batch = Batch(start, record.line, 0)
            if record.event is None:
                batch.unreadable.append(record)
            else:
                part = orjson.dumps(record.event)
                if len(part) > _BODY_CAP:
                    too_big = Record(record.line, None, "event over the API's 1 MiB body limit", record.event)
                    batch.unreadable.append(too_big)
                else:
                    if batch.records and batch.size + len(part) + 1 > _BODY_CAP:
                        batch.last, batch.position = record.line - 1, source.position
                        yield batch
                        start = record.line
                        batch = Batch(start, record.line, 0)
                    batch.records.append(record)
                    batch.parts.append(part)
                    batch.size += len(part) + 1
            batch.last = record.line
            if len(batch.records) >= self.options.batch:
                batch.position = source.position
                yield batch
                start = record.line + 1
                batch = None
        if batch is not None:
            batch.position = source.position
            yield batch

    async def _read(self, source: EventFile, queue: asyncio.Queue[Batch | None]) -> bool:
        """Queue the file's batches, then one None per sender; True if every batch was queued."""
        events = 0
        complete = True
        for batch in self._batches(source):
            if not events:
                self._start_position = max(0, source.position - 1)
            events += len(batch.records) + len(batch.unreadable)
            if self.options.max_rate:
                ahead = self._started + events / self.options.max_rate - time.monotonic()
                if ahead > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), ahead)
            if self.stopping.is_set():
                complete = False
                break
            await queue.put(batch)
        for _ in range(self.options.concurrency):
            await queue.put(None)
        return complete

    # -- posting -----------------------------------------------------------------------------

    async def _post(
        self, client: httpx.AsyncClient, records: list[Record], parts: list[bytes], rejects: list[Rejected]
    ) -> int | None:
        """Post one body until it is answered: the number of events accepted, its rejects added
        to `rejects`. None when the import stops first (then nothing more of it was accepted:
        it was refused with 429/503, or not sent)."""
        backoff = 0.5
        while not self.stopping.is_set():
            wait, why = backoff, ""
            try:
                response = await client.post(
                    "/v1/events", content=_body(parts), headers={"Content-Type": "application/json"}
                )
            except httpx.TransportError as exc:
                why = f"the ingest does not answer ({exc!r})"
            else:
                try:
                    answer = response.json()
                except ValueError:
                    answer = {"detail": response.text[:200]}
                status = response.status_code
                if status in (202, 400) and isinstance(answer, dict) and "rejected" in answer:
                    for rejection in answer["rejected"]:
                        rejects.append((records[int(rejection["index"])], str(rejection["reason"]), ""))
                    return int(answer["accepted"])
                detail = str(answer.get("detail") if isinstance(answer, dict) else answer)
                if status == 429 or status >= 500:
                    wait = _retry_after(response, backoff)
                    why = "" if status == 429 else f"the ingest answered {status}: {detail}"
                elif status in (400, 413):  # refused as a whole: halve it down to the culprit
                    if len(records) == 1:
                        rejects.append((records[0], detail, ""))
                        return 0
                    half = len(records) // 2
                    first = await self._post(client, records[:half], parts[:half], rejects)
                    if first is None:
                        return None
                    second = await self._post(client, records[half:], parts[half:], rejects)
                    return None if second is None else first + second
                else:
                    raise BackfillStopped(
                        f"the ingest answered {status}: {detail}", usage=status in (401, 403)
                    )
            self.retries += 1
            if time.monotonic() - self._last_progress > self.options.retry_for:
                raise BackfillStopped(
                    f"nothing acknowledged by the ingest for {self.options.retry_for:.0f} s"
                    + (f" ({why})" if why else "")
                )
            if why:  # a 429 is the rate limit doing its work: the progress line shows the pace
                self.progress.note(f"{why}; sending again in {wait:.1f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)
            backoff = min(backoff * 2, 30.0)
        return None

    async def _sender(self, client: httpx.AsyncClient, queue: asyncio.Queue[Batch | None]) -> None:
        while (batch := await queue.get()) is not None:
            rejects: list[Rejected] = [(r, r.problem or "unreadable", r.detail) for r in batch.unreadable]
            accepted = 0
            if batch.records:
                answered = None
                if not self.stopping.is_set():
                    answered = await self._post(client, batch.records, batch.parts, rejects)
                if answered is None:
                    continue  # stopping: the batch stays unacknowledged, a resume posts it
                accepted = answered
            # Counted once the whole batch is answered, so that a resume never counts twice.
            self.state.accepted += accepted
            for record, reason, detail in sorted(rejects, key=lambda reject: reject[0].line):
                self._reject(record, reason, detail)
            self.posted += len(batch.records)
            self.counted += len(batch.records) + len(batch.unreadable)
            self.state.done = add_range(self.state.done, batch.first, batch.last)
            self._position = max(self._position, batch.position)
            self._last_progress = time.monotonic()
            if self._last_progress - self._saved_at >= _SAVE_EVERY_S:
                self.save_state()
            self._show()

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._shown_at < 0.2:
            return
        self._shown_at = now
        elapsed = now - self._started
        rate = self.counted / elapsed if elapsed > 0 else 0.0
        fraction = (self._position - self._start_position) / max(self._size - self._start_position, 1)
        eta = f"{elapsed / fraction * (1 - fraction):,.0f} s" if fraction > 0 else "?"
        rejected = sum(self.state.rejected.values())
        self.progress.update(
            f"{self.path.name}: {self.counted:,} events  {rate:,.0f}/s  ETA {eta}  rejected {rejected:,}",
            self._position / self._size if self._size else None,
        )

    async def run(self) -> FileSummary:
        """Import the file. Raises Interrupted (Ctrl-C) or BackfillStopped, the state saved."""
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        with self.state_path.with_suffix(".lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes
            except BlockingIOError:
                raise BackfillStopped(
                    f"another import of {self.path} to {self.target.url} is running", usage=True
                ) from None
            self.state = self._load_state()  # as the last import left it
            self.already_imported = self.state.finished
            if self.state.finished:
                return self.summary()
            return await self._run()

    async def _run(self) -> FileSummary:
        self._open_rejected()
        source = EventFile(self.path, self.options.fmt)
        self._size = source.size
        self._started = self._last_progress = time.monotonic()
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(self.options.concurrency)
        client = httpx.AsyncClient(
            base_url=self.target.url,
            headers={"Authorization": f"Bearer {self.target.write_key}"},
            timeout=60,
            limits=httpx.Limits(max_connections=self.options.concurrency),
        )
        tasks: list[asyncio.Task[Any]] = []
        try:
            reader = asyncio.create_task(self._read(source, queue))
            tasks = [reader] + [
                asyncio.create_task(self._sender(client, queue)) for _ in range(self.options.concurrency)
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if reader.result() and not self.stopping.is_set():
                self.state.finished = True
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.aclose()
            source.close()
            self.save_state()
            if self._rejected_file is not None:
                self._rejected_file.close()
            self._show(force=True)
        if self.stopping.is_set():
            raise Interrupted(str(self.path))
        return self.summary()


async def _import_files(
    paths: Sequence[Path], target: Target, options: ImportOptions, out: TextIO, as_json: bool
) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    main = asyncio.current_task()
    progress = ProgressLine("import")

    def on_signal() -> None:
        if stopping.is_set() and main is not None:
            main.cancel()  # the second Ctrl-C: requests on the wire are dropped
            return
        stopping.set()
        progress.note("stopping: waiting for the requests on the wire (Ctrl-C again to quit at once)")

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    worst = 0
    try:
        for path in paths:
            if stopping.is_set():
                return EXIT_INTERRUPTED
            importer = FileImport(path, target, options, progress, stopping)
            stop = 0
            try:
                summary = await importer.run()
            except (Interrupted, asyncio.CancelledError):
                summary, stop = importer.summary(interrupted=True), EXIT_INTERRUPTED
            except BackfillStopped as exc:
                reason = str(exc) if exc.usage else f"{exc}; the same command resumes"
                summary, stop = importer.summary(stopped=reason), 2 if exc.usage else 1
            progress.finish(
                f"{path.name}: already imported"
                if summary.already_imported
                else f"{path.name}: {importer.counted:,} events answered in {summary.seconds:.1f} s"
            )
            print(
                orjson.dumps(summary.as_json()).decode() if as_json else summary.text(), file=out, flush=True
            )
            if stop:
                return stop
            worst = max(worst, 1 if summary.rejected_total else 0)
    except EventFileError as exc:
        progress.finish(f"error: {exc}")
        return 2
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return worst


def run_import(
    paths: Sequence[Path], target: Target, options: ImportOptions, out: TextIO, *, as_json: bool = False
) -> int:
    """Import `paths` one after the other, a summary per file on `out`, progress on stderr.
    Returns 0 when every event was accepted, 1 if any was rejected (or the ingest stayed
    unreachable), 2 when the command was wrong (a file that is not one of events, a refused
    write key), 130 when interrupted (the same command resumes)."""
    return asyncio.run(_import_files(paths, target, options, out, as_json))
