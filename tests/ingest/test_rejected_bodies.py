"""A rejected body never reaches a log line or Sentry whole: what the ingest says about a refused
request or item (the response, the access log line, a Sentry event of the same process) quotes
at most a reason's worth (ingest/reasons.py: 300 characters) of what the client sent.

The real app in this process (with a fake producer: what reaches Kafka is not the question
here), with the services' logging formatter and Sentry started as the ingest starts it
(sentry_options) on a transport that records what would be sent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sentry_sdk

from ingest.app import create_app
from ingest.reasons import MAX_REASON_CHARS
from plumbing.keys import KeyStore
from plumbing.logs import JsonFormatter
from plumbing.sentry import sentry_options
from schemas.settings import IngestSettings
from schemas.topics import Topics
from tests.ingest.fakes import FakeProducer
from tests.plumbing.test_sentry import RecordingTransport

MARK = "Q" * 200_000  # what the client sent; no run of more than a reason of it may be repeated
TOO_LONG = "Q" * (MAX_REASON_CHARS + 1)


def rejected_requests(key: str) -> list[tuple[bytes, dict[str, str]]]:
    """Bodies and headers refused as a whole or item by item, each carrying MARK somewhere."""
    good = b'{"type":"feature","feature":"f","action":"a"}'
    mark = MARK.encode()
    return [
        (b'{"type":"' + mark + b'"}', {}),
        (b'{"type":"feature","feature":"f","action":"a","' + mark + b'":1}', {}),
        (b'{"type":"feature","feature":"' + mark + b'","action":"a"}', {}),
        (b'{"type":"feature","feature":"f","action":"a","tags":{"' + mark[:70] + b'":"' + mark + b'"}}', {}),
        (b'{"events":[' + good + b'],"' + mark + b'":1}', {}),
        (b'{"events":[' + good + b'],"sent_at":"' + mark + b'"}', {}),
        (b'{"events":[' + good + b", " + mark + b"]}", {}),
        (b'{"events":[' + good + b"]}" + mark, {}),
        (b'{"events":[{"type":"revenue","name":"n","currency":"USD","amount":"' + mark + b'"}]}', {}),
        (good, {"Content-Type": "application/" + MARK[:5000]}),
        (good, {"Content-Encoding": MARK[:5000]}),
        (good, {"Authorization": "Bearer " + MARK}),
        (good, {"Authorization": "Basic " + base64.b64encode(MARK.encode()).decode()}),
        (b'{"api_key":"' + mark + b'",' + good[1:], {"Authorization": ""}),
        (b'{"type":"feature","feature":"f","action":"a","user_id":"' + mark + b'"}', {}),
    ]


class Lines(logging.Handler):
    """Every record of the process, formatted as the services write them (JSON lines)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter("ingest"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def transport(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingTransport]:
    monkeypatch.setenv("COSNAP_SENTRY_DSN", "https://public@127.0.0.1/1")
    recording = RecordingTransport(forbidden=(TOO_LONG,))
    sentry_sdk.init(**sentry_options("ingest", IngestSettings()), transport=recording)
    yield recording
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


def test_rejected_bodies_are_never_logged_or_sent_to_sentry_whole(
    tmp_path: Path, lines: Lines, transport: RecordingTransport
) -> None:
    topics = Topics("rejected.")
    settings = IngestSettings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:9", topic_prefix=topics.prefix)
    key = KeyStore(settings.keys_file).create("rejects")

    async def post_all() -> list[httpx.Response]:
        app = create_app(settings, producer=FakeProducer())
        answers = []
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app, raise_app_exceptions=False), base_url="http://ingest.test"
            ) as client,
        ):
            for body, headers in rejected_requests(key):
                sent = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"} | headers
                answers.append(await client.post("/v1/events", content=body, headers=sent))
            # Then a failure of the same process (a write-keys file cut short): a Sentry event,
            # with the breadcrumbs of what was logged, for a request carrying MARK as well.
            settings.keys_file.write_text('{"keys": [')
            answers.append(
                await client.post("/v1/events", content=rejected_requests(key)[0][0], headers=sent)
            )
        return answers

    answers = asyncio.run(post_all())

    # the seventh has a valid neighbour, accepted
    assert [a.status_code for a in answers[:-1]] == [400] * 6 + [202, 400, 400, 415, 415, 401, 401, 401, 400]
    assert answers[-1].status_code == 500
    for answer in answers:
        assert TOO_LONG not in answer.text, answer.text[:300]
    logged = [line for line in lines.lines if "cosnap.ingest" in line]
    assert len(logged) >= len(answers)
    assert not [line[:300] for line in lines.lines if TOO_LONG in line]
    sentry_sdk.flush()
    assert transport.events, "the failure was reported"
    assert transport.leaks == []
