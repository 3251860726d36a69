"""Hypothesis strategies for the ingest contract, and the invariants every answer keeps.

- `valid_events()`: events derived from `schemas/json/event.schema.json` (every property with its
  type, pattern, length, enum and bounds), refined where the schema cannot say what the API
  accepts (amounts with at most 9 decimals within ±1e9, timestamps inside the acceptance window,
  a conversion's user_id): the API must accept every one of them.
- `mutated_items()`: a valid event with one to three fields replaced by any JSON value (every
  type, extreme numbers and exponents as JSON numbers and as strings, every Unicode category,
  timestamps at calendar and range edges) or removed, or an unknown field added.
- `Raw`: a JSON token sent as is (`1e999`, a 5,000-digit number, a lone surrogate escape),
  which no Python value serialises to; `encode()` writes a body with them.

How many examples each test draws: `examples(n)` is n times `COSNAP_FUZZ_SCALE` (default 1;
README, "Fuzzing"). With the default the examples are drawn from a fixed seed (the suite gives
the same answer every run); with `COSNAP_FUZZ_SCALE` set they are random, and a failure prints
the `@reproduce_failure` line that replays it.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import jsonschema_rs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from schemas.export import SCHEMA_DIR

SCALE = float(os.environ.get("COSNAP_FUZZ_SCALE", "1"))
EVENT_SCHEMA: dict[str, Any] = json.loads((SCHEMA_DIR / "event.schema.json").read_text())
DEFS: dict[str, Any] = EVENT_SCHEMA["$defs"]
RESPONSE_VALIDATORS = {
    "ingest": jsonschema_rs.validator_for(
        json.loads((SCHEMA_DIR / "ingest-response.schema.json").read_text())
    ),
    "error": jsonschema_rs.validator_for(json.loads((SCHEMA_DIR / "error-response.schema.json").read_text())),
}
ALLOWED_STATUSES = {202, 400, 401, 413, 415, 429}
MAX_REASON_CHARS = 512  # the longest per-item reason a person is expected to read


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


def fuzz_settings(n: int) -> settings:
    """Settings of a fuzz test drawing `examples(n)` examples."""
    return settings(
        max_examples=examples(n),
        deadline=None,
        database=None,
        derandomize="COSNAP_FUZZ_SCALE" not in os.environ,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# -- JSON with tokens no Python value writes ------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON token written into the body as it is."""

    token: str


def encode(value: Any, *, ascii_only: bool = True) -> bytes:
    """`value` as a JSON body; `Raw` tokens are spliced in. With `ascii_only` every non-ASCII
    character is a \\u escape (lone surrogates too); otherwise UTF-8, with lone surrogates as
    their (invalid) three-byte forms."""
    raws: dict[str, str] = {}

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            marker = f"@@raw{len(raws)}-{uuid.uuid4().hex}@@"
            raws[marker] = node.token
            return marker
        if isinstance(node, dict):
            return {key: swap(item) for key, item in node.items()}
        if isinstance(node, list):
            return [swap(item) for item in node]
        return node

    text = json.dumps(swap(value), ensure_ascii=ascii_only, allow_nan=True)
    for marker, token in raws.items():
        text = text.replace(f'"{marker}"', token)
    return text.encode("utf-8", "surrogatepass")


# -- strings -------------------------------------------------------------------------------------

SPECIAL_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202eabc",  # right-to-left override
    "\u200f\u200e",  # bidi marks
    "\ufeff",
    "\u2028\u2029",
    "e\u0301",  # NFD é
    "\u00e9",  # NFC é
    "\u0661\u0662\u0663",  # Arabic-Indic digits
    "\uff11\uff12",  # fullwidth digits
    "\U0001d7d9",  # mathematical double-struck one
    "\U0001f600",
    "\ud800",  # lone high surrogate
    "\udfff",  # lone low surrogate
    "\ud83d\ude00",  # a surrogate pair as two escapes
    "null",
    "true",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999999999",
    "0E+100000000",
    "x" * 129,
    "x" * 257,
    "y" * 70_000,
]

any_text = st.text(alphabet=st.characters(codec=None), max_size=40)  # every category, surrogates too
weird_strings = st.one_of(st.sampled_from(SPECIAL_STRINGS), any_text, st.text(max_size=300))


# -- numbers -------------------------------------------------------------------------------------

_EXPONENTS = st.one_of(
    st.integers(-12, 40),
    st.sampled_from([-999999999, 999999999, 100000000, -100000000, 64, 65, -64, -65, 10**18, -(10**18)]),
    st.integers(-(10**20), 10**20),
)


@st.composite
def number_texts(draw: st.DrawFn) -> str:
    """Decimal numbers as text: signs, digit counts and exponents from ordinary to absurd."""
    sign = draw(st.sampled_from(["", "-", "+"]))
    integer = draw(
        st.one_of(
            st.from_regex(r"[0-9]{1,12}", fullmatch=True), st.from_regex(r"[0-9]{1,80}", fullmatch=True)
        )
    )
    fraction = draw(st.one_of(st.just(""), st.from_regex(r"\.[0-9]{0,14}", fullmatch=True)))
    exponent = ""
    if draw(st.booleans()):
        exponent = f"{draw(st.sampled_from('eE'))}{draw(_EXPONENTS):+d}"
    return f"{sign}{integer}{fraction}{exponent}"


json_numbers = st.one_of(
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 5e-324, 1.7976931348623157e308, 1e15, 1e15 + 1, 1e9, 1e9 + 0.5, 2**53 + 1]),
)
# JSON number tokens no float or int writes: beyond a double, or with digits Python would round.
raw_numbers = st.one_of(
    number_texts().filter(
        lambda t: re.fullmatch(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?", t) is not None
    ),
    st.sampled_from(
        ["1e999", "-1e999", "1e-999", "7" * 5000, "0.1e1", "-0", "1E400", "123456789012345678901234567890"]
    ),
).map(Raw)
raw_tokens = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", '"\\ud800"', '"\\udc00x"', "[" * 300 + "]" * 300]
).map(Raw)


# -- timestamps ----------------------------------------------------------------------------------


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


@st.composite
def recent_timestamps(draw: st.DrawFn) -> str:
    """Within the acceptance window (29 days back, 9 minutes ahead), in any offset."""
    now = datetime.now(UTC)
    ts = now + timedelta(seconds=draw(st.floats(-29 * 86400, 9 * 60)))
    minutes = draw(st.integers(-14 * 60, 14 * 60))
    local = ts.astimezone(timezone(timedelta(minutes=minutes)))
    spec = draw(st.sampled_from(["seconds", "milliseconds", "microseconds"]))
    return local.isoformat(timespec=spec).replace("+00:00", draw(st.sampled_from(["Z", "+00:00"])))


TIMESTAMP_EDGES = [
    "0001-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59.999999-14:00",
    "1970-01-01T00:00:00Z",
    "2024-02-29T12:00:00Z",
    "2023-02-29T12:00:00Z",
    "2026-12-31T23:59:60Z",
    "2026-06-31T00:00:00Z",
    "2026-11-27T10:00:00+24:00",
    "2026-11-27T10:00:00+23:59",
    "2026-11-27T10:00:00-00:00",
    "2026-11-27T10:00:00+14:01",
    "2026-11-27T10:00:00",
    "2026-11-27 10:00:00Z",
    "2026-11-27T10:00:00z",
    "2026-11-27T10:00:00.123456789Z",
    "2026-W48-5T10:00:00Z",
    "2026-331T10:00:00Z",
    "20261127T100000Z",
    "T10:00:00Z",
    "2026-11-27",
    "now",
    "",
]


@st.composite
def timestamp_values(draw: st.DrawFn) -> Any:
    """Timestamps at the edges: of the calendar, of the acceptance window, of the offsets; and
    epoch numbers of every size."""
    now = datetime.now(UTC)
    window = st.sampled_from(
        [
            _iso(now + timedelta(minutes=10) - timedelta(milliseconds=5)),
            _iso(now + timedelta(minutes=10, seconds=1)),
            _iso(now - timedelta(days=30) + timedelta(seconds=5)),
            _iso(now - timedelta(days=30, seconds=1)),
        ]
    )
    epoch = st.one_of(
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.just(now.timestamp()),
        st.just(int(now.timestamp() * 1000)),
    )
    return draw(st.one_of(st.sampled_from(TIMESTAMP_EDGES), window, recent_timestamps(), epoch))


# -- any JSON ------------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), json_numbers, weird_strings, number_texts(), raw_numbers)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(weird_strings, children, max_size=4)
    ),
    max_leaves=12,
)


# -- valid events, from the JSON Schema ----------------------------------------------------------


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = DEFS[node["$ref"].rsplit("/", 1)[-1]]
    return node


_CLASS_RUN = re.compile(r"\^(\[[^\]]+\])(?:(\[[^\]]+\])\*|\+)\$")


@functools.cache
def _alphabet(char_class: str) -> str:
    return "".join(c for c in map(chr, range(128)) if re.fullmatch(char_class, c))


def pattern_strings(pattern: str, low: int, high: int) -> st.SearchStrategy[str]:
    """Strings that fullmatch `pattern` with `low` to `high` characters. The patterns of the
    event schema (`^[first][rest]*$`, `^[chars]+$`) are drawn character by character from
    their classes (as fast as st.text); any other through st.from_regex."""
    shape = _CLASS_RUN.fullmatch(pattern)
    if shape is None:
        return st.from_regex(pattern, fullmatch=True).filter(lambda s: low <= len(s) <= high)
    first = _alphabet(shape.group(1))
    rest = _alphabet(shape.group(2)) if shape.group(2) else first
    return st.builds(
        operator.add,
        st.text(first, min_size=1, max_size=1),
        st.text(rest, min_size=max(low - 1, 0), max_size=high - 1),
    )


def from_schema(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A strategy for the values `node` (a subset of JSON Schema: the one pydantic writes for the
    event models) describes."""
    node = _resolve(node)
    for key in ("anyOf", "oneOf"):
        if key in node:
            return st.one_of([from_schema(option) for option in node[key]])
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(node.get("minimum"), node.get("maximum"))
    if kind == "number":
        return st.floats(node.get("minimum"), node.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "string":
        low, high = node.get("minLength", 0), node.get("maxLength", 300)
        if node.get("format") == "date-time":
            return recent_timestamps()
        if "pattern" in node:
            return pattern_strings(node["pattern"], low, high)
        return st.text(min_size=low, max_size=high)
    if kind == "object" and "patternProperties" in node:
        [(pattern, values)] = node["patternProperties"].items()
        names = node.get("propertyNames", {})
        keys = pattern_strings(pattern, names.get("minLength", 0), names.get("maxLength", 300))
        return st.dictionaries(keys, from_schema(values), max_size=min(node.get("maxProperties", 8), 8))
    if kind == "object":
        required = set(node.get("required", ()))
        properties = node.get("properties", {})
        return st.fixed_dictionaries(
            {name: from_schema(properties[name]) for name in properties if name in required},
            optional={name: from_schema(properties[name]) for name in properties if name not in required},
        )
    raise ValueError(f"no strategy for {node}")


@st.composite
def valid_amounts(draw: st.DrawFn) -> Any:
    """What the schema's `amount` (a number or a string) means: at most 9 decimals, |a| <= 1e9."""
    nanos = draw(st.integers(-(10**18), 10**18))
    value = Decimal(nanos).scaleb(-9)
    form = draw(st.sampled_from(["plain", "sci", "number", "integer"]))
    if form == "number":
        as_float = float(value)
        if Decimal(repr(as_float)).as_tuple().exponent >= -9 and abs(as_float) <= 1e9:  # type: ignore[operator]
            return as_float
    if form == "integer":
        return int(value)
    text = format(value.normalize(), "E") if form == "sci" else format(value, "f")
    return draw(st.sampled_from(["", "+"])) + text if not text.startswith("-") else text


OVERRIDES: dict[str, st.SearchStrategy[Any]] = {
    "amount": valid_amounts(),
    "timestamp": st.one_of(st.none(), recent_timestamps()),
    "event_id": st.none(),  # the tests give each valid event an id of its own
}


KINDS = ("RevenueEvent", "ConversionEvent", "FeatureEvent", "PerformanceEvent")
# Each property's strategy, built once from the schema (or the override).
FIELD_STRATEGIES = {
    kind: {
        name: OVERRIDES[name] if name in OVERRIDES else from_schema(schema)
        for name, schema in DEFS[kind]["properties"].items()
    }
    for kind in KINDS
}


@st.composite
def valid_events(draw: st.DrawFn, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """One event the API accepts: drawn from its JSON Schema, then made to keep the rules the
    schema cannot express. Fields drawn as null are left out (null is valid, absent is usual)."""
    kind = draw(st.sampled_from(kinds))
    required = set(DEFS[kind].get("required", ()))
    event: dict[str, Any] = {}
    for name, strategy in FIELD_STRATEGIES[kind].items():
        if name not in required and not draw(st.booleans()):
            continue
        value = draw(strategy)
        if value is not None:
            event[name] = value
    if event["type"] == "conversion" and "user_id" not in event and "anonymous_id" not in event:
        event["user_id"] = draw(st.text(min_size=1, max_size=20))
    event["event_id"] = f"valid-{uuid.uuid4().hex}"
    return event


# -- mutations -----------------------------------------------------------------------------------

ALL_FIELDS = sorted({name for node in DEFS.values() for name in node["properties"]})
NUMERIC_FIELDS = ["amount", "value", "step_index"]


def _values_for(name: str) -> st.SearchStrategy[Any]:
    if name in NUMERIC_FIELDS:
        return st.one_of(json_numbers, raw_numbers, number_texts(), json_values)
    if name == "timestamp":
        return st.one_of(timestamp_values(), json_values)
    if name == "tags":
        return st.one_of(
            st.dictionaries(weird_strings, st.one_of(weird_strings, json_values), max_size=40), json_values
        )
    if name == "type":
        return st.one_of(
            st.sampled_from(["revenue", "conversion", "feature", "performance", "Revenue", "pageview"]),
            json_values,
        )
    return st.one_of(weird_strings, json_values)


@st.composite
def mutation(draw: st.DrawFn) -> tuple[str, str, Any]:
    """(operation, field, value): set a field to another value, remove it, or add one unknown."""
    operation = draw(st.sampled_from(["set", "set", "set", "remove", "unknown", "raw"]))
    if operation == "unknown":
        return operation, draw(weird_strings.filter(lambda k: k not in ALL_FIELDS)), draw(json_values)
    name = draw(st.sampled_from(ALL_FIELDS))
    if operation == "raw":
        return operation, name, draw(st.one_of(raw_numbers, raw_tokens))
    return operation, name, draw(_values_for(name)) if operation == "set" else None


@dataclass(frozen=True)
class Mutated:
    item: Any
    fields: tuple[str, ...]  # the fields changed (a reason should name one of them, or the item)


@st.composite
def mutated_items(draw: st.DrawFn) -> Mutated:
    if draw(st.integers(0, 19)) == 0:  # not an object at all
        return Mutated(draw(st.one_of(json_scalars, st.lists(json_values, max_size=3))), ())
    item = dict(draw(valid_events()))
    item["event_id"] = f"mutated-{uuid.uuid4().hex}"
    fields = []
    for operation, name, value in draw(st.lists(mutation(), min_size=1, max_size=3)):
        if operation == "remove":
            item.pop(name, None)
        else:
            item[name] = value
        fields.append(name)
    return Mutated(item, tuple(fields))


# -- what every answer keeps ---------------------------------------------------------------------

_OPAQUE = ("errors.pydantic.dev", "Traceback", "<class", " object at 0x", "For further information")


def check_answer(status: int, body: bytes, items: int | None) -> dict[str, Any]:
    """The invariants of every answer of `POST /v1/events`: an allowed status, a body that
    matches its schema in schemas/json/, and rejections a person can read, with their index.
    Returns the parsed body."""
    assert status in ALLOWED_STATUSES, (status, body[:2000])
    parsed = json.loads(body)
    if "detail" in parsed:
        assert status != 202
        assert RESPONSE_VALIDATORS["error"].is_valid(parsed), parsed
        readable(parsed["detail"])
        return parsed  # type: ignore[no-any-return]
    assert status in (202, 400), parsed
    assert RESPONSE_VALIDATORS["ingest"].is_valid(parsed), parsed
    assert (status == 202) == (parsed["accepted"] > 0), parsed
    indexes = [rejection["index"] for rejection in parsed["rejected"]]
    assert indexes == sorted(set(indexes)), parsed
    if items is not None:
        assert all(0 <= index < items for index in indexes), parsed
        assert parsed["accepted"] + len(indexes) == items, parsed
    for rejection in parsed["rejected"]:
        readable(rejection["reason"])
    return parsed  # type: ignore[no-any-return]


def readable(reason: str) -> None:
    """A reason a person can read: some words, bounded, no internals, no raw control characters."""
    assert reason and reason.strip(), reason
    assert len(reason) <= MAX_REASON_CHARS, (len(reason), reason[:200])
    assert not any(marker in reason for marker in _OPAQUE), reason
    assert all(unicodedata.category(c) not in ("Cc", "Cs") for c in reason), repr(reason)
    assert re.search(r"[a-z]{3}", reason), reason


def names_a_field(reason: str, fields: tuple[str, ...]) -> bool:
    """Whether the reason says where the problem is: one of the changed fields, or the item."""
    lowered = reason.lower()
    return any(f.lower() in lowered for f in fields if f) or any(
        word in lowered
        for word in ("item", "type", "object", "timestamp", "json", "duplicate", "field", "input", "event")
    )
