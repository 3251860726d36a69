"""An outage as states: one line when the dependency goes, one when it is back, a reminder now
and then with what is held, and /health's words for it."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from plumbing.outage import Outage, unreachable


def test_an_outage_is_two_lines_and_a_reminder_whatever_the_calls(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    outage = Outage("Kafka", logging.getLogger("cosnap.sink"), lambda: "12 rows", remind_every_s=0.2)
    assert outage.problem() is None
    for _ in range(100):
        outage.down("127.0.0.1:9092: Connection refused")
    time.sleep(0.25)
    outage.down("127.0.0.1:9092: Connection refused")
    problem = outage.problem()
    assert problem is not None and problem.startswith("Kafka unreachable since 20")
    assert problem.endswith("(0 s): 127.0.0.1:9092: Connection refused")
    outage.up()
    outage.up()
    assert outage.problem() is None and outage.since is None
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "Kafka unreachable: 127.0.0.1:9092: Connection refused"),
        ("WARNING", "Kafka still unreachable, for 0 s; holding 12 rows"),
        ("INFO", "Kafka reachable again, after 0 s"),
    ]
    assert caplog.records[2].__dict__["_console"]  # a state change: shown under the runner


def test_the_probe_says_why_a_broker_cannot_be_reached() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert unreachable(f"127.0.0.1:{port}") is None
    assert unreachable(f"127.0.0.1:{port}") == f"127.0.0.1:{port}: Connection refused"
