"""ClickHouse's HTTP interface over the embedded store, for analysts' own tools.

clickhouse-connect (and pandas through it), the `@clickhouse/client` package, Grafana's
ClickHouse datasource and DBeaver speak ClickHouse's HTTP protocol; chDB has no server, so the
query service answers the part of the protocol those clients use for reading:

- `GET|HEAD /ping` → `Ok.`;
- `GET|POST /`: the statement in `query` and/or the body (joined as ClickHouse joins them),
  `database`, `default_format` (or `X-ClickHouse-Format`; a `FORMAT` clause wins), query
  parameters `param_<name>`, the client's formatting settings (`reader.CLIENT_SETTINGS`),
  request bodies compressed with gzip, deflate, br, zstd or lz4, answers compressed the same
  way when the client sets `enable_http_compression=1`;
- who reads: Basic auth, `X-ClickHouse-User`/`X-ClickHouse-Key` or `user`/`password`: user =
  project, password = a read key of that project (`cosnap-metrics keys create --read`); user
  `default` with the query token reads every project.

Every read runs in a session of its own whose limits, `readonly = 1` and, for a read key, row
filters on every table with a `project` column (`additional_table_filters`) are set before the
statement and cannot be changed by it: the engine, not a reading of the SQL, keeps a project
to its own rows. The guard (`sinks.query.sql_guard`) still refuses table functions that reach
outside the store. Errors come back as ClickHouse writes them (`Code: N. DB::Exception: ...
(NAME)`, header `X-ClickHouse-Exception-Code`), always with a 4xx status.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import cramjam
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from plumbing.keys import KeyStore
from sinks.query.app import read_while_connected
from sinks.query.errors import QueryRefused, ReadCancelled, ReadersBusy, ReadFailed, ReadLimitHit
from sinks.query.native_blocks import UnsupportedType, at_revision
from sinks.query.reader import RawRead, Reader, client_setting

ADMIN_USER = "default"
SERVER_NAME = "cosnap-metrics"
MAX_QUERY_BYTES = 1_000_000
# URL parameters that are part of the protocol, not settings of the read.
_PROTOCOL_PARAMS = frozenset(
    {
        "query", "database", "default_format", "user", "password", "query_id", "session_id",
        "session_timeout", "session_check", "compress", "quota_key", "buffer_size", "role",
        "wait_end_of_query", "client_protocol_version",
    }
)  # fmt: skip
_DECOMPRESS: dict[str, Callable[[bytes], Any]] = {
    "gzip": cramjam.gzip.decompress,
    "deflate": zlib.decompress,  # HTTP's deflate is zlib's format
    "br": cramjam.brotli.decompress,
    "zstd": cramjam.zstd.decompress,
    "lz4": cramjam.lz4.decompress,
}
_COMPRESS: dict[str, Callable[[bytes], Any]] = {
    "gzip": cramjam.gzip.compress,
    "deflate": zlib.compress,
    "br": cramjam.brotli.compress,
    "zstd": cramjam.zstd.compress,
    "lz4": cramjam.lz4.compress,
}


class ProtocolError(Exception):
    """A request the interface refuses before any read: ClickHouse's error name, code and status."""

    def __init__(self, message: str, name: str, code: int, status: int) -> None:
        super().__init__(message)
        self.name, self.code, self.status = name, code, status


def _error(message: str, name: str, code: int, status: int) -> Response:
    return PlainTextResponse(
        f"Code: {code}. DB::Exception: {message}. ({name})\n",
        status_code=status,
        headers={"X-ClickHouse-Exception-Code": str(code), "X-ClickHouse-Server-Display-Name": SERVER_NAME},
    )


def _credentials(request: Request) -> tuple[str, str]:
    """(user, password) as ClickHouse reads them: Basic auth, then its own headers, then URL."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ProtocolError(
                "the Basic credentials are not base64", "AUTHENTICATION_FAILED", 516, 401
            ) from None
        return user, password
    if "x-clickhouse-user" in request.headers:
        return request.headers["x-clickhouse-user"], request.headers.get("x-clickhouse-key", "")
    return request.query_params.get("user", ADMIN_USER), request.query_params.get("password", "")


def _reader_of(keys: KeyStore, token: str, user: str, password: str) -> str | None:
    """The project `user` may read (None: every project, the query token); ProtocolError else."""
    if user == ADMIN_USER and token and hmac.compare_digest(password.encode(), token.encode()):
        return None
    if password and keys.authenticate_read(user, password) is not None:
        return user
    raise ProtocolError(
        f"{user[:64]}: Authentication failed: password is incorrect, or there is no user with such name "
        "(user = a project, password = one of its read keys: cosnap-metrics keys create --read)",
        "AUTHENTICATION_FAILED",
        516,
        401,
    )


async def _statement(request: Request) -> str:
    """The statement: `query` and the body, joined by a newline as ClickHouse joins them."""
    body = await request.body()
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if body and encoding and encoding != "identity":
        if encoding not in _DECOMPRESS:
            raise ProtocolError(
                f"unknown Content-Encoding {encoding[:32]!r}", "UNKNOWN_COMPRESSION_METHOD", 24, 400
            )
        try:
            body = bytes(_DECOMPRESS[encoding](body))
        except Exception:
            raise ProtocolError(f"the body is not valid {encoding}", "CANNOT_DECOMPRESS", 271, 400) from None
    if request.query_params.get("decompress") == "1":
        raise ProtocolError(
            "ClickHouse's own compression of bodies is not served", "NOT_IMPLEMENTED", 48, 400
        )
    parts = [request.query_params.get("query", ""), body.decode(errors="replace")]
    sql = "\n".join(part for part in parts if part.strip())
    if not sql.strip():
        raise ProtocolError("empty query", "SYNTAX_ERROR", 62, 400)
    if len(sql) > MAX_QUERY_BYTES:
        raise ProtocolError(f"the query is over {MAX_QUERY_BYTES:,} bytes", "QUERY_IS_TOO_LARGE", 393, 400)
    return sql


def _media_type(output_format: str) -> str:
    lowered = output_format.lower()
    if lowered.startswith("json"):
        return "application/json; charset=UTF-8"
    if lowered.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if lowered.startswith("csv"):
        return "text/csv; charset=UTF-8"
    if lowered.startswith(("pretty", "vertical", "markdown")):
        return "text/plain; charset=UTF-8"
    return "application/octet-stream"


def _encoding(request: Request) -> str | None:
    """The compression the answer gets: the first the client accepts, if it asked for any."""
    if request.query_params.get("enable_http_compression") != "1":
        return None
    for item in request.headers.get("accept-encoding", "").split(","):
        name = item.split(";")[0].strip().lower()
        if name in _COMPRESS:
            return name
    return None


def create_clickhouse_http_app(reader: Reader, keys: KeyStore, token: str) -> FastAPI:
    """The ClickHouse HTTP interface over `reader` (chDB); `token` reads every project."""
    app = FastAPI(
        title="ClickHouse HTTP interface (read-only)", docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.api_route("/ping", methods=["GET", "HEAD"], response_class=PlainTextResponse)
    def ping() -> str:
        return "Ok.\n"

    @app.api_route("/", methods=["GET", "POST"])
    async def query(request: Request) -> Response:
        try:
            project = _reader_of(keys, token, *_credentials(request))
            sql = await _statement(request)
        except ProtocolError as exc:
            return _error(str(exc), exc.name, exc.code, exc.status)
        params = request.query_params
        output_format = params.get(
            "default_format", request.headers.get("x-clickhouse-format", "TabSeparated")
        )
        settings = {key: value for key, value in params.items() if key not in _PROTOCOL_PARAMS}
        refused = [key for key in settings if not key.startswith("param_") and not client_setting(key)]
        if refused:
            return _error(f"Cannot modify '{refused[0][:64]}' setting in readonly mode", "READONLY", 164, 403)
        read = RawRead(
            sql=sql,
            output_format=output_format,
            project=project,
            database=params.get("database", "") or request.headers.get("x-clickhouse-database", ""),
            params={
                key.removeprefix("param_"): value
                for key, value in settings.items()
                if key.startswith("param_")
            },
            settings={key: value for key, value in settings.items() if not key.startswith("param_")},
        )
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            result = await read_while_connected(reader, request, functools.partial(reader.run_raw, read))
        except QueryRefused as exc:
            return _error(str(exc), "ACCESS_DENIED", 497, 403)
        except ReadersBusy as exc:
            return _error(str(exc), "TOO_MANY_SIMULTANEOUS_QUERIES", 202, 429)
        except ReadCancelled as exc:
            return _error(str(exc), exc.name, exc.code, 499)
        except (ReadLimitHit, ReadFailed) as exc:
            status = 404 if exc.name in ("UNKNOWN_TABLE", "UNKNOWN_DATABASE") else 400
            return _error(str(exc), exc.name, exc.code, status)
        summary = {
            "read_rows": str(result.rows_read),
            "read_bytes": str(result.bytes_read),
            "written_rows": "0",
            "written_bytes": "0",
            "total_rows_to_read": str(result.rows_read),
            "result_rows": "0",
            "result_bytes": str(len(result.body)),
            "elapsed_ns": str(int(result.elapsed_s * 1e9)),
        }
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Format": result.output_format,
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Server-Display-Name": SERVER_NAME,
            "X-ClickHouse-Summary": orjson.dumps(summary).decode(),
        }
        body = result.body
        revision = params.get("client_protocol_version", "0")
        if result.output_format.lower() == "native" and revision.isdigit() and int(revision) > 0:
            try:
                body = at_revision(body, int(revision))
            except UnsupportedType as exc:
                return _error(
                    f"a column of type {str(exc)[:128]} is not served as Native to a protocol client; "
                    "ask for another format (RowBinaryWithNamesAndTypes, JSONEachRow, Parquet)",
                    "NOT_IMPLEMENTED",
                    48,
                    400,
                )
        encoding = _encoding(request)
        if encoding is not None:
            body = bytes(_COMPRESS[encoding](body))
            headers["Content-Encoding"] = encoding
        return Response(body, media_type=_media_type(result.output_format), headers=headers)

    return app
