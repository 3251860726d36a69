"""What the services would send to Sentry, recorded by a transport of the test's own (nothing
leaves the process): unhandled failures of the real ingest app with their request scrubbed and
the release, environment and request id set; failures logged with a record's context, as the
streams worker, the sink and the notifier log them, as tagged events; no identity of the app's
users in anything sent (a transport that fails on any of them); and `before_send` on realistic
events."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sentry_sdk
from cosnap_metrics_sdk.webhooks import signing_key
from pydantic import ValidationError
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from cosnap_metrics.broker import KafkaBroker
from ingest.app import create_app
from plumbing.keys import KeyStore
from plumbing.sentry import FILTERED, Scrubber, secret_forms, sentry_options
from schemas.records import Envelope as RecordEnvelope
from schemas.settings import CommonSettings, IngestSettings, NotifierSettings

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - a test secret


class RecordingTransport(Transport):
    """Keeps every envelope the SDK would send; `leaks` are the `forbidden` strings found in the
    bytes of any of them, as they would go over the wire."""

    def __init__(self, forbidden: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []
        self.forbidden = forbidden
        self.leaks: list[str] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)
        sent = envelope.serialize().decode()
        self.leaks += [value for value in self.forbidden if value in sent]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [dict(event) for envelope in self.envelopes if (event := envelope.get_event()) is not None]


Start = Callable[..., RecordingTransport]


@pytest.fixture
def sentry() -> Iterator[Start]:
    """Starts Sentry as a service would (sentry_options), with a recording transport."""

    def start(
        service: str, settings: CommonSettings, secrets: tuple[str, ...] = (), forbidden: tuple[str, ...] = ()
    ) -> RecordingTransport:
        transport = RecordingTransport(forbidden)
        # Tags an app served earlier in this process set while Sentry was off (no integration
        # isolating its requests) would still sit on the shared scopes.
        sentry_sdk.get_isolation_scope().clear()
        sentry_sdk.get_current_scope().clear()
        sentry_sdk.init(**sentry_options(service, settings, secrets), transport=transport)
        return transport

    yield start
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


@pytest.fixture
def observed_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COSNAP_SENTRY_DSN", "https://public@127.0.0.1/1")
    monkeypatch.setenv("COSNAP_RELEASE", "cosnap-metrics@9.9.9")
    monkeypatch.setenv("COSNAP_ENVIRONMENT", "staging")
    monkeypatch.setenv("COSNAP_DATA_DIR", str(tmp_path))


@pytest.mark.kafka
@pytest.mark.usefixtures("observed_env")
def test_a_failure_in_the_ingest_api_is_sent_with_its_request_scrubbed(
    sentry: Start, kafka: KafkaBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COSNAP_KAFKA_BOOTSTRAP", kafka.bootstrap)
    settings = IngestSettings()
    key = KeyStore(settings.keys_file).create("cosnap")
    # A write-keys file cut short (a full disk, a bad hand edit): a real failure, not bad input.
    settings.keys_file.write_text('{"keys": [{"project": "cos')
    transport = sentry("ingest", settings)
    request_id = f"req-{uuid.uuid4().hex[:8]}"

    async def post() -> httpx.Response:
        app = create_app(settings)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app, raise_app_exceptions=False), base_url="http://127.0.0.1"
            ) as client,
        ):
            return await client.post(
                "/v1/events",
                headers={
                    "Authorization": f"Bearer {key}",
                    "Cookie": "session=s3cr3t-cookie",
                    "X-Request-ID": request_id,
                },
                json={"api_key": key, "type": "feature", "feature": "share", "action": "clicked"},
            )

    response = asyncio.run(post())

    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert response.headers["X-Request-ID"] == request_id
    [event] = transport.events
    assert event["exception"]["values"][-1]["type"] == "JSONDecodeError"
    assert event["release"] == "cosnap-metrics@9.9.9"
    assert event["environment"] == "staging"
    assert event["tags"]["request_id"] == request_id
    assert event["tags"]["service"] == "ingest"
    assert event["request"]["url"].endswith("/v1/events")
    headers = {name.lower(): value for name, value in event["request"]["headers"].items()}
    assert headers["x-request-id"] == request_id
    assert headers.get("authorization", FILTERED) == FILTERED
    assert headers.get("cookie", FILTERED) == FILTERED
    sent = json.dumps(event)
    assert key not in sent  # not in the request, the exception, nor any frame's variables
    assert "s3cr3t-cookie" not in sent


# The identities of one of the app's users, as the events of the ingest carry them.
USER_EMAIL = "alice.liddell@example.com"
ANONYMOUS_ID = "anon-7f3c2e91b4"
SESSION_ID = "sess-5d8a1b0c6e"
TAG_VALUES = ("cohort-winter-4471", "bob.referrer@example.org")
CLIENT_ADDRESS = "203.0.113.77"
IDENTITIES = (USER_EMAIL, ANONYMOUS_ID, SESSION_ID, *TAG_VALUES, CLIENT_ADDRESS)


def users_event(**fields: Any) -> dict[str, Any]:
    return {
        "type": "feature",
        "feature": "share",
        "action": "clicked",
        "user_id": USER_EMAIL,
        "anonymous_id": ANONYMOUS_ID,
        "session_id": SESSION_ID,
        "tags": {"cohort": TAG_VALUES[0], "referrer": TAG_VALUES[1]},
    } | fields


@pytest.mark.kafka
@pytest.mark.usefixtures("observed_env")
def test_a_failure_after_the_ingest_read_a_body_sends_no_identity(
    sentry: Start, kafka: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSNAP_KAFKA_BOOTSTRAP", kafka.bootstrap)
    settings = IngestSettings()
    key = KeyStore(settings.keys_file).create("cosnap")
    # The key travels in the body (as navigator.sendBeacon sends it), so the request fails on the
    # cut-short keys file after the body was read and parsed: the handler's frame holds it all.
    settings.keys_file.write_text('{"keys": [{"project": "cos')
    transport = sentry("ingest", settings, forbidden=IDENTITIES)

    async def post() -> httpx.Response:
        app = create_app(settings)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app, raise_app_exceptions=False), base_url="http://127.0.0.1"
            ) as client,
        ):
            return await client.post(
                f"/v1/events?ref={USER_EMAIL}",
                headers={"X-Forwarded-For": CLIENT_ADDRESS, "X-Real-IP": CLIENT_ADDRESS},
                json={"api_key": key, "events": [users_event(), users_event(feature="export")]},
            )

    response = asyncio.run(post())

    assert response.status_code == 500
    [event] = transport.events
    assert event["exception"]["values"][-1]["type"] == "JSONDecodeError"
    assert event["request"]["url"].endswith("/v1/events")
    assert transport.leaks == []
    frames = [frame for value in event["exception"]["values"] for frame in value["stacktrace"]["frames"]]
    assert any(frame["function"] == "post_events" for frame in frames)
    assert all("vars" not in frame for frame in frames)
    assert event["request"].get("data", "") == ""  # the body: left out (Sentry marks it removed by config)
    assert key not in json.dumps(event)


def test_an_error_log_carrying_an_event_sends_no_identity(sentry: Start, observed_env: None) -> None:
    transport = sentry("sink", CommonSettings(), forbidden=IDENTITIES)
    log = logging.getLogger("cosnap.sink")
    # A record another producer wrote to the events topic: its event has a type no model takes.
    record = json.dumps({"v": 1, "project": "cosnap", "events": [users_event(type="purchase")]}).encode()
    log.warning("retrying %s", record.decode())  # below ERROR: a breadcrumb of the error below

    def decode(value: bytes) -> RecordEnvelope:
        event = json.loads(value)["events"][0]  # a local variable holding the event
        assert event["user_id"]
        return RecordEnvelope.model_validate_json(value)

    try:
        decode(record)
    except ValidationError as exc:
        # As the sink logs a record it cannot decode, here also with the record and its event.
        log.error(
            "undecodable record %s[%d]@%d: %s",
            "metrics.events.v1",
            0,
            7,
            exc,
            exc_info=exc,
            extra={
                "topic": "metrics.events.v1",
                "record": record.decode(),
                "event": users_event(type="purchase"),
                "request_ids": ["req-9"],
            },
        )

    [event] = transport.events
    assert transport.leaks == []
    assert event["tags"]["topic"] == "metrics.events.v1"
    assert event["tags"]["request_id"] == "req-9"
    assert event["exception"]["values"][-1]["type"] == "ValidationError"
    crumbs = [crumb.get("message", "") for crumb in event["breadcrumbs"]["values"]]
    assert any(message.startswith("retrying ") and "share" in message for message in crumbs)
    # What is not an identity is still there to debug with.
    assert event["extra"]["event"]["feature"] == "share"
    assert event["extra"]["event"]["tags"] == {"cohort": FILTERED, "referrer": FILTERED}
    assert "purchase" in event["extra"]["record"]


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        (
            '{"user_id": "u-1", "tags": {"plan": "pro}"}, "feature": "share"}',
            '{"user_id": "[Filtered]", "tags": {[Filtered]}, "feature": "share"}',
        ),
        (
            "FeatureEvent(user_id='u-1', anonymous_id=None, sessionId='s-1', tags={'a': 'b'}, "
            "feature='share')",
            "FeatureEvent(user_id='[Filtered]', anonymous_id=[Filtered], sessionId='[Filtered]', "
            "tags={[Filtered]}, feature='share')",
        ),
        (
            "/v1/pixel?user_id=u-1&session-id=s-1&feature=share",
            "/v1/pixel?user_id=[Filtered]&session-id=[Filtered]&feature=share",
        ),
        (
            '{"record": "{\\"anonymous_id\\": \\"a-1\\", \\"tags\\": {\\"a\\": \\"b\\"}}"}',
            '{"record": "{\\"anonymous_id\\": \\"[Filtered]\\", \\"tags\\": {[Filtered]}}"}',
        ),
        (
            "user_id\n  String too long [type=string_too_long, input_value='u-1', input_type=str]",
            "user_id\n  String too long [type=string_too_long, input_value=[Filtered], input_type=str]",
        ),
        ("mail bob+x@mail.example.co.uk or see user_id", "mail [Filtered] or see user_id"),
        (
            "connect http://cosnap:hunter2@clickhouse:8123 failed",
            "connect http://[Filtered]@clickhouse:8123 failed",
        ),
    ],
)
def test_identities_written_inside_text_are_removed(text: str, scrubbed: str) -> None:
    event = Scrubber("sink")({"message": text}, {})
    assert event["message"] == scrubbed


def test_identity_fields_and_tag_maps_are_removed_at_any_depth() -> None:
    event = {
        "release": "app@1.0.0-rc.ab",  # shaped like an e-mail address, and left as it is
        "user": {"id": "u-1", "ip_address": CLIENT_ADDRESS},
        "tags": {"request_id": "req-1"},
        "extra": {"envelope": {"events": [users_event()]}, "userId": "u-2", "by": {USER_EMAIL: 3}},
        "request": {"headers": {"X-Forwarded-For": CLIENT_ADDRESS, "User-Agent": "curl/8"}},
    }
    scrubbed = Scrubber("ingest")(event, {})
    assert scrubbed["release"] == "app@1.0.0-rc.ab"
    assert "user" not in scrubbed
    assert scrubbed["tags"] == {"request_id": "req-1", "service": "ingest"}
    [stored] = scrubbed["extra"]["envelope"]["events"]
    assert stored == users_event(
        user_id=FILTERED,
        anonymous_id=FILTERED,
        session_id=FILTERED,
        tags={"cohort": FILTERED, "referrer": FILTERED},
    )
    assert scrubbed["extra"]["userId"] == FILTERED
    assert scrubbed["extra"]["by"] == {FILTERED: 3}
    assert scrubbed["request"]["headers"] == {"X-Forwarded-For": FILTERED, "User-Agent": "curl/8"}
    breadcrumb = Scrubber("ingest").breadcrumb({"message": f"accepted {json.dumps(users_event())}"}, {})
    assert not [value for value in IDENTITIES if value in json.dumps(breadcrumb)]


def test_failures_logged_with_a_records_context_are_tagged_events(
    sentry: Start, observed_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSNAP_WEBHOOK_URLS", "https://hooks.example.com/alerts")
    monkeypatch.setenv("COSNAP_WEBHOOK_SECRET", WEBHOOK_SECRET)
    settings = NotifierSettings()
    transport = sentry("sink", settings, tuple(secret_forms(WEBHOOK_SECRET)))
    log = logging.getLogger("cosnap.sink")
    try:
        raise ValueError(f"insert rejected near {WEBHOOK_SECRET}")
    except ValueError:
        # As the sink logs a failed insert: the first failure with its traceback.
        log.error(
            "insert into metrics.events failed; retrying in 0.2s",
            exc_info=True,
            extra={
                "topic": "metrics.events.v1",
                "table": "metrics.events",
                "rows": 3,
                "offsets": {"2": [40, 42]},
                "request_ids": ["req-1"],
            },
        )
    # As the streams worker logs an envelope it could not fold, naming the requests in its header.
    log.error(
        "folding the envelope metrics.events.v1[2]@41 failed",
        extra={"topic": "metrics.events.v1", "partition": 2, "offset": 41, "request_ids": ["a", "b"]},
    )
    log.warning("retrying")  # below ERROR: a breadcrumb of the next event, not an event

    insert, fold = transport.events
    assert insert["tags"] | {"service": "sink"} == insert["tags"]
    assert {k: insert["tags"][k] for k in ("topic", "table", "request_id")} == {
        "topic": "metrics.events.v1",
        "table": "metrics.events",
        "request_id": "req-1",
    }
    assert insert["extra"]["offsets"] == {"2": [40, 42]}
    assert insert["exception"]["values"][-1]["type"] == "ValueError"
    assert WEBHOOK_SECRET.removeprefix("whsec_") not in json.dumps(insert)
    assert {k: fold["tags"][k] for k in ("partition", "offset")} == {"partition": "2", "offset": "41"}
    assert "request_id" not in fold["tags"]  # two requests: both in the extra data, neither a tag
    assert fold["extra"]["request_ids"] == ["a", "b"]


def test_settings_take_sentrys_own_variables_when_ours_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTRY_DSN", "https://public@127.0.0.1/2")
    monkeypatch.setenv("SENTRY_RELEASE", "app@1.2.3")
    monkeypatch.setenv("SENTRY_ENVIRONMENT", "canary")
    options = sentry_options("streams", CommonSettings())
    assert (options["dsn"], options["release"], options["environment"]) == (
        "https://public@127.0.0.1/2",
        "app@1.2.3",
        "canary",
    )
    monkeypatch.setenv("COSNAP_RELEASE", "cosnap@2.0.0")
    assert sentry_options("streams", CommonSettings())["release"] == "cosnap@2.0.0"
    monkeypatch.delenv("SENTRY_RELEASE")
    monkeypatch.delenv("COSNAP_RELEASE")
    assert sentry_options("streams", CommonSettings())["release"].startswith("cosnap-metrics@")


WRITE_KEY = "cmk_Zq3v9Kx2LmNo4PqRsTuVwXyZ01234567"  # a test key


def fastapi_event() -> dict[str, Any]:
    """An event as the FastAPI integration builds it (after serialization), with secrets in the
    places they turn up: headers, cookies, the body, an exception message, frame variables (an
    ASGI scope's headers print as bytes), breadcrumbs."""
    key_bytes = repr(signing_key(WEBHOOK_SECRET))
    return {
        "level": "error",
        "request": {
            "url": "http://127.0.0.1:8000/v1/events",
            "method": "POST",
            "headers": {
                "authorization": f"Basic {WRITE_KEY}:",
                "Cookie": "session=abc",
                "content-type": "application/json",
            },
            "cookies": {"session": "abc"},
            "data": {"api_key": WRITE_KEY, "events": [{"type": "feature"}]},
            "env": {"HTTP_AUTHORIZATION": f"Bearer {WRITE_KEY}"},
        },
        "exception": {
            "values": [
                {
                    "type": "ValueError",
                    "value": f"bad key {WRITE_KEY}",
                    "stacktrace": {
                        "frames": [
                            {
                                "function": "post_events",
                                "vars": {
                                    "presented": f"'{WRITE_KEY}'",
                                    "scope": {
                                        "headers": [
                                            ["b'authorization'", "b'Bearer opaque-token'"],
                                            ["b'content-type'", "b'application/json'"],
                                        ]
                                    },
                                    "key": key_bytes,
                                },
                            }
                        ]
                    },
                }
            ]
        },
        "breadcrumbs": {"values": [{"message": f"signing with {WEBHOOK_SECRET}"}]},
        "tags": {"request_id": "abc"},
        "extra": {"partition": 3, "offset": 17, "table": "metrics.events", "request_ids": ["r1"]},
    }


def test_before_send_removes_write_keys_webhook_secrets_and_auth_headers() -> None:
    scrubbed = Scrubber("notify", secret_forms(WEBHOOK_SECRET))(fastapi_event(), {})
    sent = json.dumps(scrubbed)
    for secret in [WRITE_KEY, "session=abc", "opaque-token", *secret_forms(WEBHOOK_SECRET)]:
        assert secret not in sent, secret
    request = scrubbed["request"]
    assert request["headers"] == {
        "authorization": FILTERED,
        "Cookie": FILTERED,
        "content-type": "application/json",
    }
    assert request["cookies"] == FILTERED
    assert request["env"]["HTTP_AUTHORIZATION"] == FILTERED
    assert request["data"] == {"api_key": FILTERED, "events": [{"type": "feature"}]}
    frame = scrubbed["exception"]["values"][0]["stacktrace"]["frames"][0]["vars"]
    assert frame["scope"]["headers"] == [
        ["b'authorization'", FILTERED],
        ["b'content-type'", "b'application/json'"],
    ]
    assert frame["key"] == f"b'{FILTERED}'"  # the webhook signing key's bytes
    assert scrubbed["exception"]["values"][0]["value"] == f"bad key {FILTERED}"
    # Context becomes tags; a tag already set (the request's own id) is kept.
    assert scrubbed["tags"] == {
        "request_id": "abc",
        "service": "notify",
        "partition": "3",
        "offset": "17",
        "table": "metrics.events",
    }


def test_before_send_leaves_an_event_without_secrets_as_it_was() -> None:
    event = {"message": "3 rows of cosnap-test", "extra": {"rows": 3}, "tags": {}}
    assert Scrubber("sink")(json.loads(json.dumps(event)), {}) == event | {"tags": {"service": "sink"}}
