"""ClickHouse's HTTP interface over the embedded store (`sinks.query.clickhouse_http`), proven with
the real clients analysts run: clickhouse-connect (rows, parameters, pandas, Arrow, streaming),
the `@clickhouse/client` npm package and clickhouse-go over HTTP (Grafana's plugin's client).
A read key reads its own project's rows only, in every table and view, whatever the statement:
the engine filters them (`additional_table_filters`, set on a read-only session), not a reading
of the SQL. Write keys read nothing; read keys write nothing."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import clickhouse_connect
import cramjam
import httpx
import pyarrow.ipc
import pyarrow.parquet
import pytest
import uvicorn
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plumbing.clickhouse import connect
from plumbing.keys import KeyStore
from sinks.clickhouse.ddl import apply_migrations
from sinks.query.clickhouse_http import create_clickhouse_http_app
from sinks.query.reader import Reader, ReadLimits
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[3]
GO_READ = ROOT / "tests" / "sinks" / "query" / "clickhouse_go" / "clickhouse-go-read"  # make clickhouse-go
# The raw bytes of every encoding offered (httpx decodes gzip and deflate by itself).
DECOMPRESS = {
    "gzip": cramjam.gzip.decompress,
    "deflate": zlib.decompress,
    "br": cramjam.brotli.decompress,
    "zstd": cramjam.zstd.decompress,
    "lz4": cramjam.lz4.decompress,
}
PROJECTS = ("p1", "p2", "p'3")  # the third one's name needs quoting in the engine's filter
TOKEN = "t" * 43


@dataclass
class Store:
    url: str
    writer: Client
    read_keys: dict[str, str]
    write_key: str
    port: int

    def client(self, project: str, **kwargs: object) -> Client:
        return clickhouse_connect.get_client(
            host="127.0.0.1", port=self.port, username=project, password=self.read_keys[project], **kwargs
        )

    def get(self, params: dict[str, str], **kwargs: object) -> httpx.Response:
        kwargs.setdefault("timeout", 30)
        return httpx.get(f"http://127.0.0.1:{self.port}/", params=params, **kwargs)  # type: ignore[arg-type]


def _fill(writer: Client) -> None:
    """Rows of every project in every table with a `project` column."""
    now = datetime.now(UTC).replace(microsecond=0)
    for offset, project in enumerate(PROJECTS * 2):
        writer.insert(
            "metrics.events",
            [[f"e{offset}", project, "revenue", now, now, "order", "9.99", "USD", 0, offset]],
            column_names=[
                "event_id", "project", "type", "timestamp", "received_at", "name", "amount", "currency",
                "kafka_partition", "kafka_offset",
            ],
        )  # fmt: skip
        writer.insert(  # with a time: a late event of 1970 is past the retention (docs/reference.md)
            "metrics.late_events",
            [[project, f"late{offset}", now, 0, offset]],
            column_names=["project", "event_id", "timestamp", "kafka_partition", "kafka_offset"],
        )
        writer.insert(
            "metrics.alerts",
            [[f"f{offset}", project, "firing", now]],
            column_names=["fingerprint", "project", "state", "starts_at"],
        )
        writer.insert(
            "metrics.aggregates",
            [[project, "revenue", "order", "minute", now, 1]],
            column_names=["project", "type", "name", "granularity", "window_start", "count"],
        )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    data = tmp_path_factory.mktemp("clickhouse-http")
    url = f"chdb://{data / 'clickhouse'}"
    writer = connect(url)
    apply_migrations(writer, "metrics")
    _fill(writer)
    keys = KeyStore(data / "keys.json")
    read_keys = {project: keys.create(project, read=True) for project in PROJECTS}
    write_key = keys.create("p1")
    reader = Reader(
        url, ReadLimits(timeout_s=6, max_concurrent=3)
    )  # test_a_read_goes_past_no_limit waits it out
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_clickhouse_http_app(reader, keys, TOKEN), host="127.0.0.1", port=port)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the interface did not start"
        time.sleep(0.05)
    yield Store(url, writer, read_keys, write_key, port)
    server.should_exit = True
    thread.join(10)
    reader.close()
    writer.close()


def test_ping_answers_ok_without_credentials(store: Store) -> None:
    response = httpx.get(f"http://127.0.0.1:{store.port}/ping")
    assert response.status_code == 200 and response.text == "Ok.\n"


def test_clickhouse_connect_reads_rows_parameters_pandas_arrow_and_streams(store: Store) -> None:
    client = store.client("p1")
    assert client.query(
        "SELECT {n:UInt32} + 1 AS x, {s:String} AS s", parameters={"n": 41, "s": "a'b"}
    ).result_rows == [(42, "a'b")]
    frame = client.query_df("SELECT project, event_id, amount FROM metrics.events ORDER BY event_id")
    assert list(frame["project"]) == ["p1", "p1"] and list(frame["event_id"]) == ["e0", "e3"]
    assert Decimal(str(frame["amount"][0])) == Decimal("9.99")
    table = client.query_arrow("SELECT project FROM metrics.late_events")
    assert table.column("project").to_pylist() == ["p1", "p1"]
    with client.query_rows_stream("SELECT number FROM numbers(50000)") as stream:
        assert sum(1 for _ in stream) == 50_000
    assert client.query("SELECT count() FROM metrics.windows").result_rows == [(1,)]
    pandas_client = store.client("p2", compress="gzip")
    assert pandas_client.query_df("SELECT count() AS n FROM metrics.events")["n"][0] == 2


# Statements of every shape a reader might try to see another project's rows with: the filter
# is the engine's, so each must return the reader's rows only.
PROBES = [
    "SELECT DISTINCT project FROM metrics.events",
    "SELECT project FROM metrics.events WHERE project != {me:String}",
    "SELECT project FROM (SELECT * FROM metrics.events) WHERE 1",
    "SELECT project FROM metrics.events UNION ALL SELECT project FROM metrics.late_events",
    "SELECT e.project FROM metrics.events AS e INNER JOIN metrics.alerts AS a ON a.project = e.project",
    "SELECT project FROM metrics.windows",
    "SELECT project FROM metrics.aggregates FINAL",
    "SELECT arrayJoin(groupArray(project)) AS project FROM metrics.alerts",
    "SELECT project FROM metrics.events WHERE project IN (SELECT project FROM metrics.late_events)",
    "WITH (SELECT groupUniqArray(project) FROM metrics.events) AS all SELECT arrayJoin(all) AS project",
    "SELECT any(project) AS project FROM metrics.events GROUP BY event_id",
    "SELECT project FROM metrics.events ARRAY JOIN [1, 2] AS n",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(project=st.sampled_from(PROJECTS), probe=st.sampled_from(PROBES))
def test_a_read_key_sees_its_own_project_only_whatever_the_statement(
    store: Store, project: str, probe: str
) -> None:
    client = store.client(project)
    seen = {row[0] for row in client.query(probe, parameters={"me": project}).result_rows}
    assert seen <= {project}, (probe, seen)


def test_a_read_key_cannot_lift_its_filter_or_limits(store: Store) -> None:
    client = store.client("p1")
    for setting, value in [
        ("additional_table_filters", "{}"),
        ("readonly", "0"),
        ("max_execution_time", "0"),
    ]:
        response = store.get(
            {"query": "SELECT count() FROM metrics.events", setting: value},
            auth=("p1", store.read_keys["p1"]),
        )
        assert response.status_code == 403 and "READONLY" in response.text, setting
    with pytest.raises(DatabaseError, match="SETTINGS"):
        client.query("SELECT count() FROM metrics.events SETTINGS additional_table_filters = {}")
    for statement in [
        "SELECT count() FROM merge('metrics', '^events$')",
        "INSERT INTO metrics.events (event_id, project) VALUES ('x', 'p2')",
        "CREATE TABLE metrics.x (a UInt8) ENGINE = Memory",
    ]:
        with pytest.raises(DatabaseError):
            client.query(statement)
    assert store.writer.query("SELECT count() FROM metrics.events").result_rows == [(6,)]


def test_only_a_projects_read_key_or_the_query_token_gets_in(store: Store) -> None:
    sql = {"query": "SELECT count() FROM metrics.events"}
    refused = [
        ("p1", store.read_keys["p2"]),  # another project's read key
        ("p1", store.write_key),  # write keys read nothing
        ("p1", ""),
        ("default", ""),
        ("default", "wrong"),
    ]
    for user, password in refused:
        response = store.get(sql, auth=(user, password))
        assert response.status_code == 401, (user, response.text)
        assert response.headers["X-ClickHouse-Exception-Code"] == "516"
        assert "AUTHENTICATION_FAILED" in response.text
    assert store.get(sql).status_code == 401  # no credentials at all
    everything = store.get(sql, auth=("default", TOKEN))
    assert everything.status_code == 200 and everything.text == "6\n"
    # ClickHouse's own headers and URL parameters carry credentials too.
    by_header = store.get(sql, headers={"X-ClickHouse-User": "p2", "X-ClickHouse-Key": store.read_keys["p2"]})
    by_params = store.get(sql | {"user": "p2", "password": store.read_keys["p2"]})
    assert by_header.text == by_params.text == "2\n"


@pytest.mark.parametrize(
    "output_format", ["Native", "RowBinaryWithNamesAndTypes", "JSON", "JSONEachRow", "JSONCompact",
                      "TabSeparated", "TabSeparatedWithNamesAndTypes", "CSVWithNames", "Parquet", "Arrow"],
)  # fmt: skip
def test_every_format_the_clients_ask_for_comes_back(store: Store, output_format: str) -> None:
    auth = ("p2", store.read_keys["p2"])
    sql = "SELECT event_id, project FROM metrics.events ORDER BY event_id"
    by_param = store.get({"query": sql, "default_format": output_format}, auth=auth)
    by_clause = httpx.post(
        f"http://127.0.0.1:{store.port}/", content=f"{sql} FORMAT {output_format}", auth=auth
    )
    assert by_param.status_code == by_clause.status_code == 200, by_param.text
    if not output_format.startswith("JSON"):  # JSON's statistics differ (the time it took)
        assert by_param.content == by_clause.content
    assert by_param.headers["X-ClickHouse-Format"] == output_format
    body = by_param.content
    if output_format == "Parquet":
        assert pyarrow.parquet.read_table(io.BytesIO(body)).column("project").to_pylist() == ["p2", "p2"]
    elif output_format == "Arrow":
        assert pyarrow.ipc.open_file(body).read_all().column("project").to_pylist() == ["p2", "p2"]
    elif output_format == "JSON":
        assert [row["project"] for row in json.loads(body)["data"]] == ["p2", "p2"]
    else:
        assert b"p1" not in body and b"p2" in body


def test_bodies_and_answers_are_compressed_as_the_client_asks(store: Store) -> None:
    auth = ("p1", store.read_keys["p1"])
    response = httpx.post(
        f"http://127.0.0.1:{store.port}/",
        params={"enable_http_compression": "1"},
        content=gzip.compress(b"SELECT project FROM metrics.events"),
        headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
        auth=auth,
    )
    assert response.status_code == 200 and response.headers["Content-Encoding"] == "gzip"
    assert response.text == "p1\np1\n"  # httpx decompressed it
    for encoding, decompress in DECOMPRESS.items():
        with httpx.stream(
            "GET",
            f"http://127.0.0.1:{store.port}/",
            params={"query": "SELECT project FROM metrics.events", "enable_http_compression": "1"},
            headers={"Accept-Encoding": encoding},
            auth=auth,
        ) as raw:
            assert raw.headers["Content-Encoding"] == encoding
            assert bytes(decompress(b"".join(raw.iter_raw()))) == b"p1\np1\n", encoding
    # clickhouse-connect asks for compressed answers by default, and decodes them.
    assert store.client("p1", compress=True).query("SELECT count() FROM metrics.events").result_rows == [(2,)]


def test_errors_come_back_as_clickhouse_writes_them_and_never_as_5xx(store: Store) -> None:
    auth = ("p1", store.read_keys["p1"])
    cases = {
        "SELECT (1": (400, "SYNTAX_ERROR"),
        "SELECT * FROM metrics.nothing": (404, "UNKNOWN_TABLE"),
        "SELECT * FROM file('/etc/passwd', 'LineAsString')": (403, "ACCESS_DENIED"),
        "SELECT 1; SELECT 2": (403, "ACCESS_DENIED"),
        "": (400, "SYNTAX_ERROR"),
    }
    for sql, (status, name) in cases.items():
        response = store.get({"query": sql}, auth=auth)
        assert response.status_code == status, (sql, response.text)
        assert response.text.startswith("Code: ") and f"({name})" in response.text, response.text
        assert response.headers["X-ClickHouse-Exception-Code"].isdigit()
    bad_base64 = httpx.get(
        f"http://127.0.0.1:{store.port}/",
        params={"query": "SELECT 1"},
        headers={"Authorization": "Basic %%%"},
    )
    assert bad_base64.status_code == 401
    unknown_encoding = httpx.post(
        f"http://127.0.0.1:{store.port}/",
        content=b"SELECT 1",
        headers={"Content-Encoding": "snappy"},
        auth=auth,
    )
    assert unknown_encoding.status_code == 400


def test_a_read_goes_past_no_limit(store: Store) -> None:
    response = store.get(
        {"query": "SELECT count() FROM numbers(1000000) AS a CROSS JOIN numbers(1000000) AS b"},
        auth=("p1", store.read_keys["p1"]),
        timeout=60,
    )
    assert response.status_code == 400 and "TIMEOUT_EXCEEDED" in response.text
    assert "COSNAP_QUERY_TIMEOUT_S" in response.text


def test_the_official_javascript_client_reads_its_project(store: Store) -> None:
    script = ROOT / "tests" / "sinks" / "query" / "clickhouse_js" / "read.mjs"
    run = subprocess.run(
        ["node", str(script), f"http://127.0.0.1:{store.port}", "p2", store.read_keys["p2"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["projects"] == ["p2"]
    assert answer["count"] == 2
    assert answer["param"] == "a'b"
    assert answer["ping"] is True


def go_read(port: int, project: str, key: str, statements: list[str]) -> list[dict[str, Any]]:
    """What clickhouse-go over HTTP (as Grafana's ClickHouse plugin reads) answers to each statement."""
    run = subprocess.run(
        [str(GO_READ), f"127.0.0.1:{port}", project, key],
        input="".join(json.dumps(statement) + "\n" for statement in statements),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_clickhouse_go_reads_native_blocks_of_every_common_type(store: Store) -> None:
    """clickhouse-go decodes Native at its protocol revision (block info, a serialization byte per
    column), which the service writes from the engine's revision-0 blocks."""
    statements = {
        "SELECT project, event_id FROM metrics.events ORDER BY event_id": [["p2", "e1"], ["p2", "e4"]],
        "SELECT toDecimal64(9.99, 2) AS d, 1.5 AS f,"
        " toDateTime64('2026-01-02 03:04:05.678', 3, 'UTC') AS t": [
            ["9.99", "1.5", "2026-01-02 03:04:05.678 +0000 UTC"]
        ],
        "SELECT [1, 2] AS a, ['x', 'y'] AS s, map('k', 1) AS m, tuple(1, 'a') AS t, toNullable(3) AS n,"
        " CAST(NULL, 'Nullable(String)') AS ns": [["[1 2]", "[x y]", "map[k:1]", "[1 a]", "3", "<nil>"]],
        "SELECT toLowCardinality('abc') AS lc, [toLowCardinality('q')] AS alc, toFixedString('ab', 2) AS fs,"
        " toUUID('00000000-0000-0000-0000-000000000001') AS u": [
            ["abc", "[q]", "ab", "00000000-0000-0000-0000-000000000001"]
        ],
        "SELECT count() FROM numbers(100000) WHERE toString(number) != ''": [["100000"]],
    }
    answers = go_read(store.port, "p2", store.read_keys["p2"], list(statements))
    for (statement, rows), answer in zip(statements.items(), answers, strict=True):
        assert "error" not in answer, (statement, answer)
        assert answer["rows"] == rows, statement
    many = go_read(
        store.port, "p2", store.read_keys["p2"], ["SELECT number, toString(number) FROM numbers(70000)"]
    )
    assert len(many[0]["rows"]) == 70_000 and many[0]["rows"][-1] == ["69999", "69999"]
    (refused,) = go_read(store.port, "p2", store.read_keys["p2"], ["SELECT * FROM file('/etc/passwd')"])
    assert "ACCESS_DENIED" in refused["error"]


def test_reads_whose_clients_go_away_are_killed_and_free_their_slots(store: Store) -> None:
    """Every read slot taken by a runaway read whose client then hangs up: the reads are killed
    in the engine within seconds, so the next read gets a slot (not a 429) long before the
    runaways' 20 s limit."""
    auth = ("p1", store.read_keys["p1"])
    runaway = {"query": "SELECT count() FROM numbers(1000000) AS a CROSS JOIN numbers(1000000) AS b"}

    def hang_up() -> None:
        with pytest.raises(httpx.TimeoutException):
            store.get(runaway, auth=auth, timeout=1.5)

    callers = [threading.Thread(target=hang_up) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    started = time.monotonic()
    while (answer := store.get({"query": "SELECT 1"}, auth=auth)).status_code == 429:
        assert time.monotonic() - started < 10, "the runaway reads kept their slots"
        time.sleep(0.2)
    assert answer.status_code == 200 and answer.text == "1\n"
