"""Read the Lua data files Prosody's file storage writes (`return { ["key"] = value; };`).

A parser, never an interpreter: only literals (tables, strings, numbers, booleans, nil) are
accepted; anything else (a function call, an operator, a variable) is an error naming the place.
The one exception are the three texts Prosody's util/serialization.lua writes for the numbers
that have no literal: `(1/0)`, `(-1/0)` and `(0/0)` (inf, -inf, NaN), matched as fixed tokens.
Tables may nest MAX_DEPTH deep (Prosody's stores nest two or three): deeper is an error, not a
RecursionError. Linear in the text: tokens are read as the parser asks for them (never a list of
all), and a string's escapes are decoded in one pass.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterator
from typing import Any

LuaValue = None | bool | int | float | str | dict[Any, Any]


MAX_DEPTH = 100  # nested tables


class LuaDataError(ValueError):
    """The text is not a Lua data file of the shape Prosody writes."""


_TOKEN = re.compile(
    r"""
    (?P<space>\s+|--[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))
  | (?P<nonfinite>\((?:-?1/0|0/0)\))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}\[\]=;,])
    """,
    re.VERBOSE | re.DOTALL,
)
_NONFINITE = {"(1/0)": math.inf, "(-1/0)": -math.inf, "(0/0)": math.nan}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "\n": "\n"}
_ESCAPE = re.compile(r"\\(?:(\d{1,3})|(.))", re.DOTALL)
Token = tuple[str, str, int]  # kind, text, line


def parse_lua_data(text: str) -> LuaValue:
    """The value of `return <literal>` (Prosody's datamanager format)."""
    parser = _Parser(_tokenize(text))
    parser.expect("name", "return")
    value = parser.value()
    parser.accept("punct", ";")
    if parser.peek() != ("", ""):
        parser.fail("nothing may follow the returned value")
    return value


def _tokenize(text: str) -> Iterator[Token]:
    position, line = 0, 1  # lines counted as we go: linear even on a huge file
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise LuaDataError(f"line {line}: unexpected {text[position : position + 10]!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            yield kind, match.group(), line
        line += match.group().count("\n")
        position = match.end()


class _Parser:
    def __init__(self, tokens: Iterator[Token]) -> None:
        self.tokens = tokens
        self.ahead: deque[Token] = deque()  # the next tokens, read but not consumed
        self.depth = 0  # tables open

    def _look(self, n: int) -> Token | None:
        """The n-th token ahead (0: the next), None at the end."""
        while len(self.ahead) <= n:
            token = next(self.tokens, None)
            if token is None:
                return None
            self.ahead.append(token)
        return self.ahead[n]

    def advance(self, n: int = 1) -> None:
        for _ in range(n):
            self.ahead.popleft()

    def fail(self, message: str) -> LuaDataError:
        token = self._look(0)
        if token is not None:
            _, text, line = token
            raise LuaDataError(f"line {line}: {message} (at {text[:20]!r})")
        raise LuaDataError(f"end of file: {message}")

    def peek(self, n: int = 0) -> tuple[str, str]:
        token = self._look(n)
        if token is None:
            return "", ""
        kind, text, _ = token
        return kind, text

    def accept(self, kind: str, text: str) -> bool:
        if self.peek() == (kind, text):
            self.advance()
            return True
        return False

    def expect(self, kind: str, text: str) -> None:
        if not self.accept(kind, text):
            self.fail(f"expected {text!r}")

    def value(self) -> LuaValue:
        kind, text = self.peek()
        if kind == "punct" and text == "{":
            return self.table()
        if kind in ("string", "number", "nonfinite") or text in ("true", "false", "nil"):
            self.advance()
        if kind == "string":
            return _unquote(text)
        if kind == "number":
            return _number(text)
        if kind == "nonfinite":
            return _NONFINITE[text]
        if kind == "name" and text in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[text]
        raise self.fail("expected a literal value")

    def table(self) -> dict[Any, Any]:
        if self.depth >= MAX_DEPTH:
            self.fail(f"nested too deeply (more than {MAX_DEPTH} tables)")
        self.depth += 1
        try:
            return self._table_body()
        finally:
            self.depth -= 1

    def _table_body(self) -> dict[Any, Any]:
        self.expect("punct", "{")
        table: dict[Any, Any] = {}
        next_index = 1
        while not self.accept("punct", "}"):
            kind, text = self.peek()
            if kind == "punct" and text == "[":
                self.advance()
                key = self.value()
                self.expect("punct", "]")
                self.expect("punct", "=")
                table[key] = self.value()
            elif kind == "name" and self.peek(1) == ("punct", "="):
                self.advance(2)
                table[text] = self.value()
            else:
                table[next_index] = self.value()
                next_index += 1
            if not (self.accept("punct", ";") or self.accept("punct", ",")):
                self.expect("punct", "}")
                break
        return table


def _unquote(token: str) -> str:
    """A Lua string literal's value. `\\ddd` escapes are bytes (UTF-8 sequences, as written by
    Prosody's serializer), so the result is built as bytes and decoded once."""
    body, out, position = token[1:-1], bytearray(), 0
    for match in _ESCAPE.finditer(body):
        out += body[position : match.start()].encode()
        digits, char = match.groups()
        if digits is not None:
            out.append(int(digits) & 0xFF)
        else:
            out += _ESCAPES.get(char, char).encode()
        position = match.end()
    out += body[position:].encode()
    return out.decode("utf-8", errors="replace")


def _number(token: str) -> int | float:
    if token.lower().lstrip("-").startswith("0x"):
        return int(token, 16)
    if re.fullmatch(r"-?\d+", token) and len(token) <= 20:
        integer = int(token)
        if -(2**63) <= integer < 2**63:
            return integer
    # As in Lua, a decimal integer beyond 64 bits is a float (inf if beyond a float's range):
    # never Python's ValueError for too many digits.
    return float(token)
