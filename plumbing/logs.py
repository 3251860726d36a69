"""Logs of every service: one JSON object per line on stderr, or text for a person to read.

A JSON line holds `timestamp` (UTC, milliseconds), `level`, `logger`, `message` and `service`,
then the context the call passed in `extra=` (`request_id`, `request_ids`, `topic`, `partition`,
`offset`, `table`, ...), and `exception` with the traceback when there is one. The message is the
same text in both formats, so a phrase found in one is found in the other.
"""

from __future__ import annotations

import logging
import sys
import threading
from datetime import UTC, datetime
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


def configure_logging(service: str, level: LogLevel, log_format: LogFormat) -> None:
    """Send every record of the process (libraries' too, Python warnings, uncaught exceptions)
    to stderr in `log_format`. Called once, first thing, by each service command."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
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
