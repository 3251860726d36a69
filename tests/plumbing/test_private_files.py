"""Files and tokens: what the services write (stored events, worker state, keys, the query
token) is readable by their user only, from creation; keys and tokens appear whole or not at
all, an empty token never opens the query service, concurrent `keys create` lose no key, and
the query service answers requests addressed to this machine only (no DNS rebinding)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from cosnap_metrics.broker import KafkaBroker
from plumbing.keys import DEV_KEY_FILE, KeyStore, ensure_dev_key
from plumbing.private_files import create_private, private_dir, replace_private
from schemas.settings import SinkSettings
from sinks.query.host_check import LOOPBACK_HOSTS, HostCheck
from sinks.query.service import MIN_TOKEN_CHARS, query_token
from tests.conftest import Pipeline, wait_for


def _open_to_others(root: Path) -> list[str]:
    """Every directory or file under `root` (and `root`) that its group or others may use."""
    paths = [root, *root.rglob("*")]
    return [
        f"{oct(stat.S_IMODE(mode))} {path}"
        for path in paths
        if not path.is_symlink() and (mode := path.stat().st_mode) & 0o077
    ]


@pytest.fixture
def open_umask() -> Iterator[None]:
    """This process's umask lets everyone read what it creates, for the test's duration."""
    previous = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(previous)


def _create_keys(store_path: str, count: int) -> list[str]:
    store = KeyStore(Path(store_path))
    return [store.create(f"project-{os.getpid()}") for _ in range(count)]


def test_concurrent_key_creations_lose_no_key(tmp_path: Path) -> None:
    path = tmp_path / "data" / "write-keys.json"
    workers, each = 4, 30
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        created = [key for keys in pool.starmap(_create_keys, [(str(path), each)] * workers) for key in keys]
    assert len(set(created)) == workers * each
    store = KeyStore(path)
    assert [key for key in created if store.authenticate(key) is None] == []
    assert _open_to_others(path.parent) == []


@pytest.mark.usefixtures("open_umask")
def test_keys_tokens_and_the_data_directory_are_private_whatever_the_umask(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)  # as an older release left it
    assert private_dir(data) == data
    store = KeyStore(data / "write-keys.json")
    key = ensure_dev_key(store, data)
    assert (data / DEV_KEY_FILE).read_text() == key + "\n"
    assert ensure_dev_key(store, data) == key
    token = query_token(SinkSettings(data_dir=data))
    assert create_private(data / "once", "first\n")
    assert not create_private(data / "once", "second\n")  # the first stays
    assert (data / "once").read_text() == "first\n"
    replace_private(data / "once", "third\n")
    assert (data / "once").read_text() == "third\n"
    assert sorted(p.name for p in data.iterdir()) == [
        DEV_KEY_FILE,
        "once",
        "query-token",
        "write-keys.json",
        "write-keys.json.lock",
    ]  # no temporary file left behind
    assert _open_to_others(data) == []
    assert len(token) >= MIN_TOKEN_CHARS


def test_an_empty_query_token_file_gets_a_token_and_a_good_one_is_kept(tmp_path: Path) -> None:
    settings = SinkSettings(data_dir=tmp_path / "data")
    first = query_token(settings)
    assert len(first) >= MIN_TOKEN_CHARS
    assert query_token(settings) == first
    # An empty file (created, then cut short before the token was written) never means "no token".
    settings.query_token_file.write_text("")
    second = query_token(settings)
    assert len(second) >= MIN_TOKEN_CHARS and second != first
    assert settings.query_token_file.read_text().strip() == second
    settings.query_token_file.write_text("  \n")
    assert len(query_token(settings)) >= MIN_TOKEN_CHARS


def _guarded() -> HostCheck:
    async def query(_request: object) -> PlainTextResponse:
        return PlainTextResponse("rows")

    app = Starlette(routes=[Route("/v1/query", query, methods=["POST"]), Route("/health", query)])
    return HostCheck(app, allowed_hosts={*LOOPBACK_HOSTS, "metrics.internal"}, paths=["/v1/query"])


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8124", 200),
        ("localhost:8124", 200),
        ("LOCALHOST", 200),
        ("[::1]:8124", 200),
        ("metrics.internal:8124", 200),  # the host the service was told to listen on
        ("rebound.example:8124", 403),  # a page's own name, resolved to 127.0.0.1
        ("127.0.0.1.rebound.example", 403),
        ("localhost.", 403),
        ("[::1", 403),
        ("", 403),
    ],
)
def test_the_query_path_answers_requests_addressed_to_this_machine_only(host: str, status: int) -> None:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(_guarded())
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.post("/v1/query", headers={"Host": host}, content=b"{}")

    response = asyncio.run(post())
    assert response.status_code == status
    assert (response.text == "rows") == (status == 200)


@pytest.mark.kafka
def test_the_pipelines_files_are_private_and_its_query_service_refuses_other_hosts_and_empty_tokens(
    pipeline: Pipeline, kafka: KafkaBroker
) -> None:
    pipeline.data_dir.chmod(0o755)  # as an older release made it
    (pipeline.data_dir / "query-token").write_text("")  # created, but the token never written
    pipeline.start("sink", "streams", "ingest")
    event_id = f"e-{uuid.uuid4().hex}"
    pipeline.post(
        [
            {
                "type": "feature",
                "feature": "share",
                "action": "clicked",
                "event_id": event_id,
                "timestamp": datetime.now(UTC).isoformat(),
            }
        ]
    )
    sql = f"SELECT count() FROM metrics.events WHERE event_id = '{event_id}'"  # noqa: S608 - our own id
    assert wait_for(lambda: pipeline.query(sql) == [[1]], timeout=60)

    token = (pipeline.data_dir / "query-token").read_text().strip()
    assert len(token) >= MIN_TOKEN_CHARS
    port = pipeline.query_url.rsplit(":", 1)[1]
    url = f"{pipeline.query_url}/v1/query"
    body = {"sql": sql}
    rebound = httpx.post(
        url, json=body, headers={"Host": f"rebound.example:{port}", "Authorization": f"Bearer {token}"}
    )
    assert rebound.status_code == 403 and "rows" not in rebound.json()
    assert httpx.post(url, json=body).status_code == 401  # presents the empty token
    by_name = httpx.post(
        url, json=body, headers={"Host": f"localhost:{port}", "Authorization": f"Bearer {token}"}
    )
    assert by_name.status_code == 200 and by_name.json()["rows"] == [[1]]

    # Stored events, chDB's parts, the worker's state, keys and token: the user's alone.
    assert _open_to_others(pipeline.data_dir) == []
    # The broker's segments (it was started by this test session, whose umask is open).
    assert _open_to_others(kafka.config.data_dir) == []
