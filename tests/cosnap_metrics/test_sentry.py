"""What the services would send to Sentry, recorded by a transport of the test's own (nothing
leaves the process): unhandled failures of the real ingest app with their request scrubbed and
the release, environment and request id set; failures logged with a record's context, as the
streams worker, the sink and the notifier log them, as tagged events; and `before_send` on
realistic events."""

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
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from cosnap_metrics.broker import KafkaBroker
from cosnap_metrics.sentry import FILTERED, Scrubber, secret_forms, sentry_options
from ingest.app import create_app
from ingest.keys import KeyStore
from schemas.settings import CommonSettings, IngestSettings, NotifierSettings

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - a test secret


class RecordingTransport(Transport):
    """Keeps every envelope the SDK would send."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for envelope in self.envelopes if (event := envelope.get_event()) is not None]


Start = Callable[..., RecordingTransport]


@pytest.fixture
def sentry() -> Iterator[Start]:
    """Starts Sentry as a service would (sentry_options), with a recording transport."""

    def start(service: str, settings: CommonSettings, secrets: tuple[str, ...] = ()) -> RecordingTransport:
        transport = RecordingTransport()
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


WRITE_KEY = "cmk_Zq3v9Kx2LmNo4PqRsTuVwXyZ01234567"  # noqa: S105 - a test key


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
