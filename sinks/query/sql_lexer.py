"""ClickHouse's SQL lexer, in Python, so the read guard sees the tokens the engine will see.

A port of `src/Parsers/Lexer.cpp` (ClickHouse 26.x, the engine inside chDB 4.4): string literals
in `'…'` and `‘…’`, quoted identifiers in `"…"`, `` `…` `` and `“…”` (backslash escapes and a
doubled quote inside the ASCII kinds), comments `--`, `//`, `# ` / `#!` to the end of the line and
nested `/* /* */ */`, heredocs `$tag$…$tag$`, and numbers exactly as the engine reads them (that
matters: `1e--5` is the number `1e-` and a minus, not `1e` and a comment). Only the token
boundaries and kinds are ported, never the meaning, and an input the engine would refuse to
tokenize yields an `ERROR` token, which the guard refuses in turn.

Positions are offsets into the Python string (code points), not bytes; the Unicode quotes are
matched as characters, which is the same thing for valid UTF-8.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto


class Kind(Enum):
    WHITESPACE = auto()
    COMMENT = auto()
    WORD = auto()  # a bare word: keyword, name, or `1abc`
    QUOTED_IDENTIFIER = auto()
    STRING = auto()
    HEREDOC = auto()
    NUMBER = auto()
    DOT = auto()
    SEMICOLON = auto()
    OPEN_PAREN = auto()
    CLOSE_PAREN = auto()
    OPEN_BRACKET = auto()
    CLOSE_BRACKET = auto()
    VERTICAL_DELIMITER = auto()  # `\G`: clickhouse-client's vertical output format
    OPERATOR = auto()  # every other punctuation the engine accepts
    ERROR = auto()


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    start: int
    end: int
    text: str

    @property
    def significant(self) -> bool:
        return self.kind not in (Kind.WHITESPACE, Kind.COMMENT)


_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_SPACE = frozenset(" \t\n\r\f\v")
_OPEN_UNICODE = {"\u2018": ("\u2019", Kind.STRING), "\u201c": ("\u201d", Kind.QUOTED_IDENTIFIER)}
_AFTER_DOT_IS_MEMBER = frozenset({Kind.CLOSE_PAREN, Kind.CLOSE_BRACKET, Kind.WORD, Kind.QUOTED_IDENTIFIER})
_SINGLE = {
    "(": Kind.OPEN_PAREN,
    ")": Kind.CLOSE_PAREN,
    "[": Kind.OPEN_BRACKET,
    "]": Kind.CLOSE_BRACKET,
    ";": Kind.SEMICOLON,
}
_OPERATORS = frozenset("{},+*%?^")


def _separator(s: str, pos: int, start_of_block: bool, hexadecimal: bool) -> bool:
    """Lexer.cpp's isNumberSeparator: `_` between two digits of a number."""
    if s[pos] != "_" or start_of_block or pos + 1 == len(s):
        return False
    return s[pos + 1] in (_HEX if hexadecimal else _DIGITS)


def _digits(s: str, pos: int, start_of_block: bool, hexadecimal: bool) -> int:
    digits = _HEX if hexadecimal else _DIGITS
    while pos < len(s) and (s[pos] in digits or _separator(s, pos, start_of_block, hexadecimal)):
        pos += 1
        start_of_block = False
    return pos


def _number(s: str, pos: int, after_dot: bool) -> tuple[Kind, int]:
    end, begin = len(s), pos
    if after_dot:  # `x.1.1` is tuple access: only a plain integer here
        pos = _digits(s, pos + 1, False, False)
    else:
        hexadecimal = start_of_block = False
        if pos + 2 < end and s[pos] == "0" and s[pos + 1] in "xbXB":
            valid = s[pos + 2] in _HEX if s[pos + 1] in "xX" else s[pos + 2] in "01"
            hexadecimal = valid and s[pos + 1] in "xX"
            if valid:
                pos += 2
                start_of_block = True
            else:
                pos += 1
        else:
            pos += 1
        pos = _digits(s, pos, start_of_block, hexadecimal)
        if pos < end and s[pos] == ".":
            pos = _digits(s, pos + 1, True, hexadecimal)
        if pos + 1 < end and s[pos] in ("pP" if hexadecimal else "eE"):
            pos += 1
            if pos + 1 < end and s[pos] in "-+":
                pos += 1
            pos = _digits(s, pos, True, False)
    if pos < end and s[pos] in _WORD:
        while pos < end and s[pos] in _WORD:
            pos += 1
        if any(c not in _WORD and c != "$" for c in s[begin:pos]):
            return Kind.ERROR, pos
        return Kind.WORD, pos
    return Kind.NUMBER, pos


def _quoted(s: str, pos: int, quote: str) -> int:
    """End of a quoted string or identifier starting at `pos`; -1 if it is not closed."""
    pos += 1
    end = len(s)
    while pos < end:
        c = s[pos]
        if c == quote:
            if pos + 1 < end and s[pos + 1] == quote:
                pos += 2
                continue
            return pos + 1
        pos += 2 if c == "\\" else 1
    return -1


def _line_end(s: str, pos: int) -> int:
    found = s.find("\n", pos)
    return len(s) if found < 0 else found


def _nested_comment(s: str, pos: int) -> int:
    """End of a `/* … */` comment starting at `pos` (nested ones count); -1 if it is not closed."""
    pos += 2
    depth = 1
    while pos + 2 <= len(s):
        pair = s[pos : pos + 2]
        if pair == "/*":
            depth += 1
            pos += 2
        elif pair == "*/":
            depth -= 1
            pos += 2
            if depth == 0:
                return pos
        else:
            pos += 1
    return -1


def _operator(s: str, pos: int) -> tuple[Kind, int]:
    """Punctuation from `=`, `!`, `<`, `>`, `:`, `|`, `@`, `-`, `/`, `\\`."""
    c, nxt = s[pos], s[pos + 1 : pos + 2]
    if c == "<":
        if s[pos + 1 : pos + 3] == "=>":
            return Kind.OPERATOR, pos + 3
        return Kind.OPERATOR, pos + (2 if nxt in ("=", ">") else 1)
    if c == "!":
        return (Kind.OPERATOR, pos + 2) if nxt == "=" else (Kind.ERROR, pos + 1)
    if c == "\\":
        return (Kind.VERTICAL_DELIMITER, pos + 2) if nxt == "G" else (Kind.ERROR, pos + 1)
    doubled = {"=": "=", ">": "=", ":": ":", "|": "|", "@": "@", "-": ">"}
    return Kind.OPERATOR, pos + (2 if nxt and doubled.get(c) == nxt else 1)


def _heredoc(s: str, pos: int) -> int:
    """End of a `$tag$…$tag$` heredoc starting at `pos`; -1 if there is none."""
    close = s.find("$", pos + 1)
    if close < 0:
        return -1
    tag = s[pos : close + 1]
    found = s.find(tag, close + 1)
    return -1 if found < 0 else found + len(tag)


def tokenize(sql: str) -> list[Token]:
    """Every token of `sql`, whitespace and comments included, in order."""
    tokens: list[Token] = []
    previous: Kind | None = None  # of the last significant token
    pos, end = 0, len(sql)
    while pos < end:
        kind, stop = _next(sql, pos, previous)
        token = Token(kind, pos, stop, sql[pos:stop])
        tokens.append(token)
        if token.significant:
            previous = kind
        pos = stop
    return tokens


def _next(s: str, pos: int, previous: Kind | None) -> tuple[Kind, int]:
    """The kind and end of the token starting at `pos`: one branch per lead character, as in Lexer.cpp."""
    c, end = s[pos], len(s)
    nxt = s[pos + 1 : pos + 2]
    if c in _SPACE:
        stop = pos + 1
        while stop < end and s[stop] in _SPACE:
            stop += 1
        return Kind.WHITESPACE, stop
    if c in _DIGITS:
        return _number(s, pos, previous is Kind.DOT)
    if c in ("'", '"', "`"):
        stop = _quoted(s, pos, c)
        if stop < 0:
            return Kind.ERROR, end
        return (Kind.STRING if c == "'" else Kind.QUOTED_IDENTIFIER), stop
    if c in _SINGLE:
        return _SINGLE[c], pos + 1
    if c == ".":
        if pos > 0 and (nxt not in _DIGITS or not nxt or previous in _AFTER_DOT_IS_MEMBER | {Kind.NUMBER}):
            return Kind.DOT, pos + 1
        stop = _digits(s, pos + 1, True, False)
        if stop + 1 < end and s[stop] in "eE":
            stop += 1
            if stop + 1 < end and s[stop] in "-+":
                stop += 1
            stop = _digits(s, stop, True, False)
        return Kind.NUMBER, stop
    if c == "-" and nxt == "-":
        return Kind.COMMENT, _line_end(s, pos)
    if c == "/":
        if nxt == "/":
            return Kind.COMMENT, _line_end(s, pos)
        if nxt == "*":
            stop = _nested_comment(s, pos)
            return (Kind.ERROR, end) if stop < 0 else (Kind.COMMENT, stop)
        return Kind.OPERATOR, pos + 1
    if c == "#":
        return (Kind.COMMENT, _line_end(s, pos)) if nxt in (" ", "!") and nxt else (Kind.ERROR, pos + 1)
    if c in "=!<>:|@-\\":
        return _operator(s, pos)
    if c in _OPERATORS:
        return Kind.OPERATOR, pos + 1
    if c == "\u2212":  # the mathematical minus sign
        return Kind.OPERATOR, pos + 1
    if c in _OPEN_UNICODE:
        closing, kind = _OPEN_UNICODE[c]
        found = s.find(closing, pos + 1)
        return (Kind.ERROR, end) if found < 0 else (kind, found + 1)
    if c == "$":
        stop = _heredoc(s, pos)
        if stop >= 0:
            return Kind.HEREDOC, stop
        if not nxt or nxt not in _WORD:
            return Kind.OPERATOR, pos + 1  # a lone dollar sign
    if c in "xXbB" and nxt == "'" and pos + 2 < end:
        digits = _HEX if c in "xX" else frozenset("01")
        stop = pos + 2
        while stop < end and s[stop] in digits:
            stop += 1
        return (Kind.STRING, stop + 1) if stop < end and s[stop] == "'" else (Kind.ERROR, end)
    if c in _WORD or c == "$":
        stop = pos + 1
        while stop < end and (s[stop] in _WORD or s[stop] == "$"):
            stop += 1
        return Kind.WORD, stop
    if c > "\x7f" and c.isspace():  # the engine skips Unicode white space too (pasted from editors)
        stop = pos + 1
        while stop < end and s[stop] > "\x7f" and s[stop].isspace():
            stop += 1
        return Kind.WHITESPACE, stop
    return Kind.ERROR, pos + 1


def unquote(token: Token) -> str:
    """The name a WORD or QUOTED_IDENTIFIER token stands for. A doubled quote stands for the
    quote; backslash escapes are not decoded (the guard refuses quoted names holding one)."""
    if token.kind is not Kind.QUOTED_IDENTIFIER:
        return token.text
    inner = token.text[1:-1]
    quote = token.text[0]
    return inner.replace(quote * 2, quote) if quote in ('"', "`") else inner
