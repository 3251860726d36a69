"""Logs of every service: one JSON object per line on stderr, or text for a person to read.

Under `cosnap-metrics run` (`COSNAP_LOG_DIR` set) every record goes to the service's own file,
`<dir>/<service>.jsonl` (JSON lines, rotated at `LOG_FILE_BYTES`, 20 MiB, `LOG_FILES_KEPT`
older files kept: at most 80 MiB a service), and stderr, the runner's terminal, gets only what
a person should read there (`ConsoleFilter`): the services' state changes and their warnings,
each kind at most once a minute. The libraries' chatter (aiokafka, kafka-python, Faust,
librdkafka, uvicorn) stays in the file. A service started with `--log-format json` (the
runner's `--log-format json` passes it on; docker-compose sets it) writes every record to
stderr as JSON as well.

A JSON line holds `timestamp` (UTC, milliseconds), `level`, `logger`, `message` and `service`,
then the context the call passed in `extra=` (`request_id`, `request_ids`, `topic`, `partition`,
`offset`, `table`, ...), and `exception` with the traceback when there is one. The message is the
same text in both formats, so a phrase found in one is found in the other.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from schemas.settings import LogFormat, LogLevel

# Every attribute a LogRecord has without `extra=` (and uvicorn's copy of its message in terminal
# colours); anything else on a record is context.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


# `extra=CONSOLE` marks an INFO record for the terminal under the runner (a state change: Kafka
# back, a service ready); warnings and errors of the pipeline's own loggers go there unmarked.
CONSOLE = {"_console": True}
CONSOLE_REPEAT_S = 60.0  # the same kind of line reaches the terminal at most this often
LOG_FILE_BYTES = 20 * 1024 * 1024  # a service's log file is rotated at this size, 3 kept
LOG_FILES_KEPT = 3


def context(record: logging.LogRecord) -> dict[str, Any]:
    """The fields the logging call added with `extra=`."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
            + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self._service,
        }
        line |= {k: v for k, v in context(record).items() if k not in line}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # Values json cannot hold (a TopicPartition, a Path) are written as their str().
        return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...`: the context fields follow the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name for it
        fields = "".join(f" {k}={v}" for k, v in context(record).items())
        return super().formatMessage(record) + fields


class ConsoleFormatter(logging.Formatter):
    """`[service] message` for a state change, `[service] WARNING message` for the rest; a
    traceback stays in the log file, which the line names."""

    def __init__(self, service: str, log_file: Path) -> None:
        super().__init__()
        self._service = service
        self._log_file = log_file

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname} "
        held, seconds = getattr(record, "_held_back", (0, 0.0))
        more = f" ({held} more like it in the last {seconds:.0f} s)" if held else ""
        where = f" (traceback in {self._log_file})" if record.exc_info else ""
        return f"[{self._service}] {level}{record.getMessage()}{more}{where}"


class ConsoleFilter(logging.Filter):
    """What reaches the terminal under the runner: records of the pipeline's own loggers
    (`cosnap.*`) at WARNING and above or marked `extra=CONSOLE`, and CRITICAL records of anyone.
    A kind of line (its logger and message template) passes at most once per `repeat_s`; the
    next one that passes says how many were held back (they are all in the log file)."""

    def __init__(self, repeat_s: float = CONSOLE_REPEAT_S) -> None:
        super().__init__()
        self._repeat_s = repeat_s
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}  # kind -> last shown, held back

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "cosnap" or record.name.startswith("cosnap.")
        wanted = ours and (record.levelno >= logging.WARNING or getattr(record, "_console", False))
        if not wanted and record.levelno < logging.CRITICAL:
            return False
        kind = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            shown, held = self._seen.get(kind, (-self._repeat_s, 0))
            if now - shown < self._repeat_s:
                self._seen[kind] = (shown, held + 1)
                return False
            self._seen[kind] = (now, 0)
        record.__dict__["_held_back"] = (held, now - shown)  # for ConsoleFormatter
        return True


def configure_logging(
    service: str,
    level: LogLevel,
    log_format: LogFormat,
    log_dir: Path | None = None,
    *,
    console_share: bool = True,
) -> None:
    """Send every record of the process (libraries' too, Python warnings, uncaught exceptions)
    to stderr in `log_format`; with `log_dir`, to `<log_dir>/<service>.jsonl` too, and to stderr
    only the console's share (ConsoleFilter) unless `console_share` is False (`--log-format`
    given: every record there in `log_format`). Called once, first thing, by each service
    command."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if log_format == "json" else TextFormatter())
    handlers: list[logging.Handler] = [handler]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_file = log_dir / f"{service}.jsonl"
        to_file = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILES_KEPT
        )
        to_file.setFormatter(JsonFormatter(service))
        if console_share:
            handler.setFormatter(ConsoleFormatter(service, log_file))
            handler.addFilter(ConsoleFilter())
        handlers.append(to_file)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)
    # kafka-python narrates every connection at INFO; its warnings are what an operator needs.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level]))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("cosnap").critical("uncaught exception, exiting", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or args.exc_type is SystemExit:
        return
    logging.getLogger("cosnap").error(
        "uncaught exception in thread %s",
        args.thread.name if args.thread else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
