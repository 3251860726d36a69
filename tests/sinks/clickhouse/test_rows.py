"""Event rows are the events' own JSON with the record's project, partition and offset added."""

from __future__ import annotations

import orjson
import pytest

from sinks.clickhouse.rows import event_rows

EVENTS = [
    {"event_id": "a", "type": "feature", "feature": "f", "action": "x", "tags": {"k": "}"}},
    {"event_id": "b", "type": "revenue", "name": "n", "amount": "9.99", "currency": "USD", "tags": {}},
]


def test_each_event_keeps_its_fields_and_gets_the_records() -> None:
    value = orjson.dumps({"v": 1, "project": 'p"1', "events": EVENTS})
    rows = [orjson.loads(row) for row in event_rows(value, 3, 41)]
    assert rows == [event | {"project": 'p"1', "kafka_partition": 3, "kafka_offset": 41} for event in EVENTS]


def test_whitespace_and_an_empty_event_still_make_json() -> None:
    value = b'{ "project" : "p", "events" : [ {"event_id": "a" } , {} ] }'
    rows = [orjson.loads(row) for row in event_rows(value, 0, 7)]
    shared = {"project": "p", "kafka_partition": 0, "kafka_offset": 7}
    assert rows == [{"event_id": "a"} | shared, shared]


@pytest.mark.parametrize(
    "value",
    [b"not json", b'{"events": []}', b'{"project": "p", "events": {}}', b'{"project": "p", "events": [1]}'],
)
def test_a_record_that_is_no_envelope_of_objects_is_a_type_error(value: bytes) -> None:
    with pytest.raises(TypeError):
        event_rows(value, 0, 0)
