"""Alert changes, closed windows and late records leave the worker (streams/publishing.py), without
Kafka: what Kafka refuses is sent again until it takes it, and is counted once it has."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from streams.checkpoint import PARTITION_HEADER
from streams.publishing import AlertPublisher, LatePublisher, WindowPublisher
from streams.windows import ClosedWindows
from tests.streams.fakes import QUICK, FakeBatchProducer, FakeSender


def transitions(rule: str, state: str) -> float:
    labels = {"rule": rule, "state": state}
    return REGISTRY.get_sample_value("cosnap_streams_alert_transitions_total", labels) or 0.0


def windows_emitted(granularity: str) -> float:
    labels = {"granularity": granularity}
    return REGISTRY.get_sample_value("cosnap_streams_windows_emitted_total", labels) or 0.0


def change(number: int, rule: str = "publishing-test", state: str = "firing") -> dict[str, Any]:
    return {"fingerprint": f"fp{number}", "rule": rule, "state": state, "labels": {"n": str(number)}}


def batch(number: int, size: int, granularity: str = "10s") -> ClosedWindows:
    return ClosedWindows(granularity, [(f"w{number}.{i}".encode(), b"{}") for i in range(size)])


# -- alert changes -------------------------------------------------------------------------------


def test_alert_changes_go_out_in_order_keyed_by_fingerprint_with_their_events_partition() -> None:
    sender = FakeSender()
    changes = [change(1), change(2, state="resolved")]

    asyncio.run(AlertPublisher(sender, "alerts", QUICK).publish(4, changes))

    assert [(r.topic, r.key, orjson.loads(r.value)) for r in sender.acknowledged] == [
        ("alerts", b"fp1", changes[0]),
        ("alerts", b"fp2", changes[1]),
    ]
    assert {r.headers for r in sender.acknowledged} == {((PARTITION_HEADER, b"4"),)}


@settings(max_examples=40, deadline=None)
@given(count=st.integers(1, 5), refusals=st.integers(0, 8))
def test_alert_changes_kafka_refuses_are_sent_again_until_it_takes_them_all_then_counted_once(
    count: int, refusals: int
) -> None:
    sender = FakeSender()
    sender.refusals = refusals
    changes = [change(n, rule="retried-rule") for n in range(count)]
    before = transitions("retried-rule", "firing")

    asyncio.run(AlertPublisher(sender, "alerts", QUICK).publish(0, changes))

    assert len(sender.refused) == refusals
    last_attempt = [orjson.loads(r.value) for r in sender.acknowledged[-count:]]
    assert last_attempt == changes
    assert transitions("retried-rule", "firing") - before == count


def test_alert_changes_are_not_counted_before_kafka_acknowledged_them() -> None:
    async def scenario() -> None:
        sender = FakeSender()
        sender.holding = True
        before = transitions("held-rule", "firing")
        publishing = asyncio.create_task(
            AlertPublisher(sender, "alerts", QUICK).publish(0, [change(1, rule="held-rule")])
        )
        await asyncio.sleep(0.01)
        assert not publishing.done() and len(sender.held) == 1
        assert transitions("held-rule", "firing") == before
        sender.release()
        await publishing
        assert transitions("held-rule", "firing") == before + 1

    asyncio.run(scenario())


# -- closed windows ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 7), max_size=12),
    refusals=st.integers(0, 6),
    max_in_flight=st.integers(1, 20),
)
def test_every_batch_of_windows_is_acknowledged_exactly_once_whatever_kafka_refuses(
    sizes: list[int], refusals: int, max_in_flight: int
) -> None:
    producer = FakeBatchProducer()
    producer.refusals = refusals
    batches = [batch(n, size, "1h") for n, size in enumerate(sizes)]
    before = windows_emitted("1h")

    asyncio.run(WindowPublisher(producer, "aggregates", QUICK, max_in_flight).publish(iter(batches)))

    assert Counter(map(tuple, producer.acknowledged)) == Counter(tuple(b.records) for b in batches)
    assert windows_emitted("1h") - before == sum(sizes)
    # A batch goes out whole, and a refused one again whole: records are never split or reordered.
    assert all(tuple(p) in {tuple(b.records) for b in batches} for p in producer.produced)
    # At most one batch more than `max_in_flight` records is ever waiting for Kafka.
    assert producer.most_in_flight < max_in_flight + max(sizes, default=0)


def test_a_batch_of_windows_kafka_refused_is_sent_again_and_counted_only_once_taken() -> None:
    async def scenario() -> None:
        producer = FakeBatchProducer()
        producer.refusals = 1
        before = windows_emitted("1m")
        await WindowPublisher(producer, "aggregates", QUICK).publish([batch(1, 3, "1m"), batch(2, 2, "1m")])
        first, second = batch(1, 3).records, batch(2, 2).records
        assert producer.produced == [first, second, first]  # the refused one again, as it was
        assert producer.acknowledged == [second, first]
        assert windows_emitted("1m") - before == 5

    asyncio.run(scenario())


def test_windows_are_drawn_from_closing_partitions_only_while_few_enough_wait_for_kafka() -> None:
    drawn: list[int] = []

    def closing() -> Iterator[ClosedWindows]:
        for n in range(3):
            drawn.append(n)
            yield batch(n, 2)

    async def scenario() -> None:
        producer = FakeBatchProducer()
        producer.holding = True
        publishing = asyncio.create_task(WindowPublisher(producer, "aggregates", QUICK, 2).publish(closing()))
        await asyncio.sleep(0.01)
        assert drawn == [0] and len(producer.produced) == 1
        producer.release()
        producer.holding = True
        await asyncio.sleep(0.01)
        assert drawn == [0, 1]
        producer.release()
        await publishing
        assert drawn == [0, 1, 2] and len(producer.acknowledged) == 3

    asyncio.run(scenario())


# -- late records --------------------------------------------------------------------------------


def late(project: str, offset: int) -> bytes:
    return orjson.dumps({"v": 1, "project": project, "partition": 0, "offset": offset, "events": []})


def test_late_records_go_out_keyed_by_their_project() -> None:
    sender = FakeSender()
    records = [late("cosnap", 1), late("other", 2)]

    assert asyncio.run(LatePublisher(sender, "late").publish(records))

    assert [(r.topic, r.key, r.value) for r in sender.acknowledged] == [
        ("late", b"cosnap", records[0]),
        ("late", b"other", records[1]),
    ]


def test_late_records_kafka_refused_are_reported_and_not_retried_here() -> None:
    """They stay in the checkpoint that holds them, and go with the next one."""
    sender = FakeSender()
    sender.refusals = 1

    assert not asyncio.run(LatePublisher(sender, "late").publish([late("cosnap", 1), late("cosnap", 2)]))

    assert len(sender.refused) == 1 and len(sender.acknowledged) <= 1
