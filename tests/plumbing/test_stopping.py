"""A service stops within its deadline whatever hangs, says what it could not write out, and a
second signal ends it at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from plumbing.stopping import EXIT_SECOND_SIGNAL, EXIT_UNFLUSHED


def _service(held: str, deadline_s: float = 0.5) -> subprocess.Popen[str]:
    """A process whose stop never finishes (a library waiting for a dead broker), holding `held`."""
    script = (
        "import sys, time\n"
        "from plumbing.logs import configure_logging\n"
        "from plumbing.stopping import Shutdown\n"
        "configure_logging('sink', 'INFO', 'text')\n"
        f"Shutdown(lambda signum: None, lambda: {held!r}, deadline_s={deadline_s}).install()\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    time.sleep(1)\n"
    )
    service = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert service.stdout is not None and service.stdout.readline() == "ready\n"
    return service


@pytest.mark.parametrize(("held", "status"), [("3 rows not inserted", EXIT_UNFLUSHED), ("", 0)])
def test_a_stop_that_hangs_ends_at_the_deadline_saying_what_was_not_written(held: str, status: int) -> None:
    service = _service(held)
    service.send_signal(signal.SIGTERM)
    began = time.monotonic()
    assert service.wait(timeout=30) == status
    assert time.monotonic() - began < 5
    said = service.stderr.read() if service.stderr else ""
    assert "did not stop within 0 s: exiting now" in said
    assert ("not written out: 3 rows not inserted" in said) == bool(held)


def test_a_second_signal_exits_at_once() -> None:
    service = _service("3 rows not inserted", deadline_s=60)
    service.send_signal(signal.SIGINT)
    time.sleep(0.5)  # two signals sent at once may reach the process as one
    service.send_signal(signal.SIGINT)
    assert service.wait(timeout=30) == EXIT_SECOND_SIGNAL
