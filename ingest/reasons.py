"""Reasons a person reads: why an item or a request was refused, as the response, the dead letter
and the log line say it.

A reason may quote what the client sent (an unknown field's name, a `type` that matches no event),
so it is made safe to show: control characters, surrogates and invisible formatting characters
(bidi overrides) are written as `\\uXXXX`, each quoted name is cut at MAX_NAME_CHARS and the whole
reason at MAX_REASON_CHARS. A rejected body never reaches a log line or a response whole.
"""

from __future__ import annotations

import unicodedata

from pydantic import ValidationError

MAX_REASON_CHARS = 300
MAX_NAME_CHARS = 40
_EVENT_TYPES = {"revenue", "conversion", "feature", "performance"}
_TYPE_ERRORS = {
    "union_tag_not_found": "required: revenue, conversion, feature or performance",
    "union_tag_invalid": "must be revenue, conversion, feature or performance",
}
_UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _escaped(c: str) -> str:
    return f"\\u{ord(c):04x}" if c != " " and unicodedata.category(c) in _UNSAFE else c


def readable(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` with unsafe characters escaped, cut at `limit` characters (ending with `…`)."""
    cut = len(text) > limit
    text = text[:limit]
    if not text.isprintable():
        text = "".join(_escaped(c) for c in text)
    if cut or len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def validation_reason(exc: ValidationError) -> str:
    """The first three problems pydantic found, each `field.path: message`, without the event
    type the union tried first in the path (`revenue.amount` is `amount`, `feature.feature` is
    `feature`)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        loc = error["loc"][1:] if error["loc"][:1] and error["loc"][0] in _EVENT_TYPES else error["loc"]
        where = ".".join(readable(str(p), MAX_NAME_CHARS) for p in loc)
        if error["type"] in _TYPE_ERRORS:  # pydantic's words quote the client's `type` whole
            where, message = "type", _TYPE_ERRORS[error["type"]]
        else:
            message = readable(error["msg"], MAX_REASON_CHARS // 2)
        parts.append(f"{where}: {message}" if where else message)
    return readable("; ".join(parts))
