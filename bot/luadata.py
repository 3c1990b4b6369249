"""Read the Lua data files Prosody's file storage writes (`return { ["key"] = value; };`).

A parser, never an interpreter: only literals (tables, strings, numbers, booleans, nil) are
accepted; anything else (a function call, an operator, a variable) is an error naming the place.
The one exception are the three texts Prosody's util/serialization.lua writes for the numbers
that have no literal: `(1/0)`, `(-1/0)` and `(0/0)` (inf, -inf, NaN), matched as fixed tokens.
Tables may nest MAX_DEPTH deep (Prosody's stores nest two or three): deeper is an error, not a
RecursionError.
"""

from __future__ import annotations

import math
import re
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


def parse_lua_data(text: str) -> LuaValue:
    """The value of `return <literal>` (Prosody's datamanager format)."""
    tokens = _tokenize(text)
    parser = _Parser(tokens)
    parser.expect("name", "return")
    value = parser.value()
    parser.accept("punct", ";")
    if parser.position < len(tokens):
        parser.fail("nothing may follow the returned value")
    return value


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, position, line = [], 0, 1  # lines counted as we go: linear even on a huge file
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise LuaDataError(f"line {line}: unexpected {text[position : position + 10]!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group(), line))
        line += match.group().count("\n")
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str, int]]) -> None:
        self.tokens = tokens
        self.position = 0
        self.depth = 0  # tables open

    def fail(self, message: str) -> LuaDataError:
        if self.position < len(self.tokens):
            _, text, line = self.tokens[self.position]
            raise LuaDataError(f"line {line}: {message} (at {text!r})")
        raise LuaDataError(f"end of file: {message}")

    def peek(self) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            return "", ""
        kind, text, _ = self.tokens[self.position]
        return kind, text

    def accept(self, kind: str, text: str) -> bool:
        if self.peek() == (kind, text):
            self.position += 1
            return True
        return False

    def expect(self, kind: str, text: str) -> None:
        if not self.accept(kind, text):
            self.fail(f"expected {text!r}")

    def value(self) -> LuaValue:
        kind, text = self.peek()
        if kind == "punct" and text == "{":
            return self.table()
        self.position += 1
        if kind == "string":
            return _unquote(text)
        if kind == "number":
            return _number(text)
        if kind == "nonfinite":
            return _NONFINITE[text]
        if kind == "name" and text in ("true", "false", "nil"):
            return {"true": True, "false": False, "nil": None}[text]
        self.position -= 1
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
                self.position += 1
                key = self.value()
                self.expect("punct", "]")
                self.expect("punct", "=")
                table[key] = self.value()
            elif (
                kind == "name"
                and self.tokens[self.position + 1 : self.position + 2]
                and (self.tokens[self.position + 1][1] == "=")
            ):
                self.position += 2
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
    body, out, i = token[1:-1], bytearray(), 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            following = body[i + 1]
            digits = re.match(r"\d{1,3}", body[i + 1 :])
            if digits is not None:
                out.append(int(digits.group()) & 0xFF)
                i += 1 + len(digits.group())
                continue
            out += _ESCAPES.get(following, following).encode()
            i += 2
            continue
        out += char.encode()
        i += 1
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
