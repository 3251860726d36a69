"""The Python SDK with hypothesis-generated arguments, good and bad: every `track_*` call either
raises a clear TypeError/ValueError at the call site or buffers an event; on the real ingest API,
the events of good calls are accepted whatever their neighbours, nothing gets a 5xx, and a body
the API refused (4xx) is never sent again."""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest
from cosnap_metrics_sdk import MetricsClient
from hypothesis import given
from hypothesis import strategies as st

from cosnap_metrics.broker import KafkaBroker
from tests.conftest import Pipeline, make_pipeline
from tests.ingest.contract_strategies import fuzz_settings, weird_strings
from tests.sdk.conftest import ScriptedApi

NAME = st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True)
OTHER_TYPES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.builds(object),
    st.decimals(),
)
HASHABLE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.builds(object))
DATETIMES = st.one_of(
    st.datetimes(timezones=st.timezones() | st.just(UTC)),
    st.datetimes(),  # naive
    st.sampled_from(
        [
            datetime.max.replace(tzinfo=timezone(timedelta(hours=-14))),
            datetime.min.replace(tzinfo=timezone(timedelta(hours=14))),
            datetime.max.replace(tzinfo=UTC),
            datetime.min.replace(tzinfo=UTC),
        ]
    ),
)
DECIMALS = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["1e999999999", "-1e999999999", "0E+100000000", "1E+40", "1_000", " 1 ", "\u0661", "sNaN"]
    ).map(Decimal),
)


def maybe(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly good values, sometimes bad ones of any kind."""
    return st.one_of(good, good, good, bad)


def text_or_bad(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return maybe(good, st.one_of(weird_strings, OTHER_TYPES))


COMMON = st.fixed_dictionaries(
    {},
    optional={
        "user_id": maybe(st.text(min_size=1, max_size=20), st.one_of(weird_strings, OTHER_TYPES)),
        "anonymous_id": maybe(st.text(min_size=1, max_size=20), OTHER_TYPES),
        "session_id": maybe(st.text(min_size=1, max_size=20), OTHER_TYPES),
        "tags": maybe(
            st.dictionaries(NAME, st.text(max_size=20), max_size=5),
            st.one_of(
                st.dictionaries(
                    st.one_of(weird_strings, HASHABLE), st.one_of(weird_strings, OTHER_TYPES), max_size=4
                ),
                st.dictionaries(NAME, st.text(max_size=2), min_size=33, max_size=40),
                OTHER_TYPES,
            ),
        ),
        "timestamp": maybe(st.just(None), st.one_of(DATETIMES, OTHER_TYPES, weird_strings)),
    },
)


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """One track_* call: (method, args, kwargs)."""
    kind = draw(st.sampled_from(["revenue", "conversion", "feature", "performance"]))
    common = draw(COMMON)
    if kind == "revenue":
        amount = draw(
            maybe(
                st.decimals(min_value=-(10**6), max_value=10**6, places=2).map(str),
                st.one_of(DECIMALS, st.floats(), weird_strings, OTHER_TYPES),
            )
        )
        currency = draw(text_or_bad(st.sampled_from(["USD", "EUR", "JPY"])))
        return "track_revenue", (draw(text_or_bad(NAME)), amount, currency), common
    if kind == "conversion":
        index = draw(maybe(st.integers(0, 1000) | st.none(), st.one_of(st.integers(), OTHER_TYPES)))
        common.setdefault("user_id", "u1")
        return "track_conversion_step", (draw(text_or_bad(NAME)), draw(text_or_bad(NAME)), index), common
    if kind == "feature":
        return "track_feature_usage", (draw(text_or_bad(NAME)), draw(text_or_bad(NAME))), common
    value = draw(
        maybe(st.floats(-1e6, 1e6), st.one_of(st.floats(), st.integers(), OTHER_TYPES, weird_strings))
    )
    unit = draw(text_or_bad(st.sampled_from(["ms", "s", "bytes", "count", "percent"])))
    severity = draw(maybe(st.sampled_from([None, "info", "critical"]), st.one_of(weird_strings, OTHER_TYPES)))
    return "track_performance", (draw(text_or_bad(NAME)), value, unit, severity), common


def call(
    client: MetricsClient, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str | Exception:
    """The call's event_id, or the TypeError/ValueError it raised (anything else fails)."""
    try:
        return getattr(client, method)(*args, **kwargs)  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        assert str(exc), f"{type(exc).__name__} without a message for {method}{args} {kwargs}"
        return exc


# -- at the call site (a local stand-in API answers 202) -----------------------------------------


@pytest.fixture
def local_api() -> Iterator[ScriptedApi]:
    server = ScriptedApi()
    yield server
    server.close()


def test_a_call_raises_a_clear_error_or_buffers_an_event(local_api: ScriptedApi) -> None:
    """Every generated call; then one flush: every event in a body the stand-in API parsed (no
    NaN, no lone surrogate), none dropped. One client for all calls (making one costs more than
    a call)."""
    client = MetricsClient(local_api.url, "key", flush_interval=3600.0, flush_at=10_000, max_retries=0)
    ids: list[str] = []
    errors: list[Exception] = []

    @fuzz_settings(1500)
    @given(made=calls())
    def track(made: tuple[str, tuple[Any, ...], dict[str, Any]]) -> None:
        outcome = call(client, *made)
        if isinstance(outcome, str):
            assert len(outcome) == 32 and all(c in "0123456789abcdef" for c in outcome)
            ids.append(outcome)
        else:
            errors.append(outcome)

    try:
        track()
        assert ids and errors, "the calls made both events and errors"
        assert client.flush(timeout=60)
        assert client.dropped == 0
        assert sorted(local_api.event_ids()) == sorted(ids)
    finally:
        client.close(timeout=5)


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "error"),
    [
        # found by the test above: an AttributeError and OverflowErrors escaped the call
        ("track_feature_usage", ("share", "clicked"), {"timestamp": True}, TypeError),
        (
            "track_feature_usage",
            ("share", "clicked"),
            {"timestamp": datetime.max.replace(tzinfo=timezone(timedelta(hours=-14)))},
            ValueError,
        ),
        ("track_performance", ("api.latency", 10**400), {}, ValueError),
        # issue 12's amount: the API answered 500, which the SDK retried for ever
        ("track_revenue", ("n", "1e999999999", "USD"), {}, ValueError),
        ("track_revenue", ("n", Decimal("-1e999999999"), "USD"), {}, ValueError),
    ],
)
def test_examples_found_by_fuzzing(
    local_api: ScriptedApi, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    client = MetricsClient(local_api.url, "key", flush_interval=3600.0, flush_at=10_000)
    try:
        with pytest.raises(error) as raised:
            getattr(client, method)(*args, **kwargs)
        assert type(raised.value) is error and str(raised.value)
    finally:
        client.close(timeout=5)


# -- on the real ingest API ------------------------------------------------------------------------


class Recording(httpx.HTTPTransport):
    """The real HTTP transport, keeping every request's body and its answer."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[tuple[bytes, int, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        with self._lock:
            self.exchanges.append((request.content, response.status_code, response.json()))
        return response


@pytest.fixture(scope="module")
def ingest(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    pipeline = make_pipeline(kafka, tmp_path_factory.mktemp("sdk-fuzz"))
    pipeline.env |= {"COSNAP_RATE_LIMIT_EVENTS_PER_S": "0"}
    pipeline.start("ingest")
    yield pipeline
    pipeline.close()


@pytest.mark.kafka
@fuzz_settings(150)
@given(made=st.lists(calls(), min_size=1, max_size=12))
def test_good_calls_are_accepted_whatever_their_neighbours(
    ingest: Pipeline, made: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
) -> None:
    wire = Recording()
    client = MetricsClient(
        ingest.ingest_url,
        ingest.write_key,
        flush_interval=3600.0,
        flush_at=10_000,
        http_transport=wire,
        max_retries=0,
    )
    good_ids = set()
    try:
        for method, args, kwargs in made:
            outcome = call(client, method, args, kwargs)
            if isinstance(outcome, str) and _good_call(method, args, kwargs):
                good_ids.add(outcome)
        assert client.flush(timeout=60), "events still pending: a retry that does not end"
    finally:
        client.close(timeout=5)
    assert client.dropped == 0
    sent_ids: list[str] = []
    for body, status, answer in wire.exchanges:
        events = json.loads(body)["events"]
        ids = [event["event_id"] for event in events]
        assert status in (202, 400, 413), (status, answer)
        assert not set(ids) & set(sent_ids), "events sent again after an answer that was not a retry"
        sent_ids += ids
        rejected = {r["index"] for r in answer.get("rejected", [])}
        for index, event_id in enumerate(ids):
            if event_id in good_ids:
                assert status == 202 and index not in rejected, (answer, events[index])
    assert good_ids <= set(sent_ids)


NAME_PATTERN = re.compile(r"[a-z][a-z0-9_.]{0,20}")


def _good_call(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether every argument was one of the good values (then the API must accept the event)."""
    names = list(args[:2]) if method in ("track_conversion_step", "track_feature_usage") else [args[0]]
    if not all(isinstance(name, str) and NAME_PATTERN.fullmatch(name) for name in names):
        return False
    if method == "track_revenue":
        amount, currency = args[1], args[2]
        plain = isinstance(amount, str) and re.fullmatch(r"-?[0-9]+(\.[0-9]{1,2})?", amount)
        if not (plain and currency in ("USD", "EUR", "JPY")):
            return False
    if method == "track_conversion_step":
        index = args[2]
        if not (index is None or (type(index) is int and 0 <= index <= 1000)):
            return False
        if not any(isinstance(kwargs.get(key), str) for key in ("user_id", "anonymous_id")):
            return False
    if method == "track_performance":
        value, unit, severity = args[1:]
        if not (type(value) is float and math.isfinite(value) and abs(value) <= 1e6):
            return False
        if unit not in ("ms", "s", "bytes", "count", "percent") or severity not in (None, "info", "critical"):
            return False
    for key in ("user_id", "anonymous_id", "session_id"):
        value = kwargs.get(key)
        if value is not None and not (isinstance(value, str) and 1 <= len(value) <= 20):
            return False
    tags = kwargs.get("tags")
    if tags is not None and not (
        isinstance(tags, dict)
        and len(tags) <= 5
        and all(
            isinstance(k, str) and NAME_PATTERN.fullmatch(k) and isinstance(v, str) for k, v in tags.items()
        )
    ):
        return False
    return kwargs.get("timestamp") is None
