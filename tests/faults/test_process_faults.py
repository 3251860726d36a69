"""kill -9 of each of the pipeline's services under load, each started again at once, on the
file's three-node cluster: the worker (windows resume from its checkpoint), the sink (the store's
process) and the ingest with a request in flight (the client retries it under the same
event_ids). Nothing acknowledged is lost and nothing is counted twice (tests/faults/harness.py)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import Pipeline, wait_for
from tests.faults.harness import LOAD_AROUND_S, Load, recovery_s, settle_and_measure, windows_recovery_s

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.faults, pytest.mark.timeout(420)]


@pytest.mark.parametrize("service", ["streams", "sink", "ingest"])
def test_kill_9_of_a_service_under_load_loses_nothing(faulted: Pipeline, service: str) -> None:
    with Load(faulted, f"fault-kill-{service}") as load:
        time.sleep(LOAD_AROUND_S)
        if service == "ingest":  # mid-request: the load's client is waiting for an answer
            assert wait_for(load.in_flight.is_set, 30, interval=0.001)
        log = faulted.logs / f"{service}.log"
        logged = log.stat().st_size
        process = faulted.processes.pop(service)
        process.kill()
        process.wait()
        restarted = time.monotonic()
        faulted.start(service)
        if service == "streams":
            recovered = windows_recovery_s(faulted, load, restarted)
        else:
            recovered = recovery_s(faulted, load, restarted)
        time.sleep(LOAD_AROUND_S)
    figures = settle_and_measure(faulted, load, f"kill -9 of the {service}, restarted", recovered)
    if service == "ingest":  # the request cut off was sent again
        assert load.statuses[None] >= 1 and figures.retries >= 1, load.statuses
    if service == "streams":  # the worker started again resumed its windows from its checkpoint
        assert b"from its checkpoint" in log.read_bytes()[logged:]
