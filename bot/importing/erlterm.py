"""Read the Erlang terms ejabberd writes to text files (`ejabberdctl dump_table`, `dump`).

ejabberd writes each record with `io:format(File, "~p.~n", [Record])` to a file opened as
Latin-1: every byte of the file is one character; binaries of printable characters come out as
strings with escapes (`<<"didn\\'t">>`), others as lists of byte values (`<<197,130,117>>`), and
a long term is spread over several lines.

A parser, never an evaluator: only literal integers, atoms, binaries (`<<"text">>`, `<<1,2>>`,
segments typed `/utf8`), strings, tuples and lists are accepted. Anything else (a variable, an
operator, a fun, a map, a pid, a float, an improper list) is an error naming the line; the
reader then goes on after the term's ending `.`. Tuples and lists may nest MAX_DEPTH deep
(ejabberd's records nest three or four): deeper is an error, not a RecursionError. A term of
more than `max_bytes` (iter_terms) is an error too, found without copying it: memory stays
bounded whatever the file holds.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterator
from typing import TypeAlias

MAX_DEPTH = 100  # nested tuples and lists
MAX_DIGITS = 64  # a longer integer is refused (Python's int() refuses past 4300 digits)

Term: TypeAlias = "int | Atom | bytes | str | tuple[Term, ...] | list[Term]"


class Atom(str):
    """An Erlang atom: a str, told apart from a string literal by its type."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


class ErlTermError(ValueError):
    """A term outside the subset read here; `line` is where the problem is."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.reason = message


_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_BLANKS = rb"(?:\s+|%[^\n]*(?![^\n]))*"  # spaces and comments (each to its line's end)
_TOKEN = re.compile(
    rb"""
    BLANKS                                # before the token
    (?:
      (?P<binary><<"[^"\\]*(?:\\.[^"\\]*)*">>)   # the most common binary, as one token
    | (?P<string>STRING(?:BLANKS STRING)*)         # adjacent string literals are one string
    | (?P<integer>-?\d+(?:\.\d+(?:[eE][+-]?\d+)?|\#[0-9a-zA-Z]+)?)
    | (?P<atom>[a-z\xdf-\xf6\xf8-\xff][A-Za-z0-9_@\xc0-\xd6\xd8-\xff]*|'[^'\\]*(?:\\.[^'\\]*)*')
    | (?P<open>[{\[])
    | (?P<close>[}\]])
    | (?P<comma>,)
    | (?P<binary_open><<)
    | (?P<dot>\.(?=[\s%]|\Z))
    | (?P<other>>>|\S)                   # blanks at the end of the file match nothing
    )
    """.replace(b"STRING", _STRING).replace(b"BLANKS", _BLANKS),
    re.VERBOSE | re.DOTALL,
)
_STRING_BODY = re.compile(_BLANKS + b"(" + _STRING + b")")
_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x\{([0-9a-fA-F]+)\}|x([0-9a-fA-F]{2})|\^(.)|(.))", re.S)
_NAMED_ESCAPES = {"b": 8, "d": 127, "e": 27, "f": 12, "n": 10, "r": 13, "s": 32, "t": 9, "v": 11}

Token: TypeAlias = "re.Match[bytes]"


class _Refused(Exception):
    """What the reader refuses, and the token it refused (None: the end of the file)."""

    def __init__(self, token: Token | None, message: str) -> None:
        super().__init__(message)
        self.token = token
        self.message = message


def iter_terms(
    data: bytes | mmap.mmap, *, max_bytes: int | None = None
) -> Iterator[tuple[Term | ErlTermError, int, int]]:
    """(term, the line where it starts, the offset just after it) of each top-level term of
    `data` (every term ends with `.`).

    A term that cannot be read, or longer than `max_bytes`, is an ErlTermError in its place
    (its line: where the problem is); reading goes on after its `.`.
    """
    tokens = _TOKEN.finditer(data)
    lines = _LineCounter(data)
    for first in tokens:
        line = lines.at(first.start(first.lastgroup or 0))
        try:
            term, end = _term(first, tokens, max_bytes)
        except _Refused as refused:
            token = refused.token
            # The end of the file: the line where the unfinished term starts says more.
            at = first if token is None else token
            where = at.start(at.lastgroup or 0)
            if token is None or token.lastgroup == "dot":
                end = len(data) if token is None else token.end()
            else:  # the rest of the term, up to its '.'
                end = next((t.end() for t in tokens if t.lastgroup == "dot"), len(data))
            shown = "" if token is None else f" (at {_shorten(_text(token))!r})"
            yield ErlTermError(lines.at(where), refused.message + shown), lines.line, end
            continue
        yield term, line, end


class _LineCounter:
    """Line numbers of offsets met in order, counted forward: linear over the whole file."""

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data
        self.offset = 0
        self.line = 1

    def at(self, offset: int) -> int:
        if offset < self.offset:  # never when going forward; counted afresh to be sure
            self.offset, self.line = 0, 1
        self.line += self.data[self.offset : offset].count(b"\n")  # an mmap has no count()
        self.offset = offset
        return self.line


def _term(first: Token, tokens: Iterator[Token], max_bytes: int | None) -> tuple[Term, int]:
    """The term starting at `first`, up to its '.': (the term, the offset after the '.').

    Iterative, with a stack of the tuples and lists open: no recursion to bound. Each token's
    end is checked against `max_bytes` before its text is taken (a copy)."""
    open_items: list[list[Term]] = []
    closers: list[bytes] = []
    token = first
    if max_bytes is not None:
        limit = first.start(first.lastgroup or 0) + max_bytes
        if first.end() > limit:
            raise _Refused(first, f"a record of more than {max_bytes} bytes")
        tokens = _bounded(tokens, limit, max_bytes)
    while True:
        kind = token.lastgroup
        if kind == "open":  # a tuple or a list begins
            if len(open_items) >= MAX_DEPTH:
                raise _Refused(token, f"nested too deeply (more than {MAX_DEPTH} tuples and lists)")
            open_items.append([])
            closers.append(b"}" if token["open"] == b"{" else b"]")
            token = _next(tokens)
            if token.lastgroup != "close":
                continue  # the first element begins
            if token["close"] != closers[-1]:
                raise _Refused(token, f"expected a term or {closers[-1].decode()!r}")
            value = _closed(open_items.pop(), closers.pop())
        elif kind == "binary":
            value = _binary_string(token, token["binary"][3:-3])
        elif kind == "integer":
            value = _integer(token)
        elif kind == "atom":
            value = _atom(token)
        elif kind == "string":
            value = "".join(map(chr, _characters(token, _string_bodies(token["string"]))))
        elif kind == "binary_open":
            value = _binary(tokens)
        else:
            raise _Refused(token, "expected a term: integer, atom, binary, string, tuple or list")
        # A value is complete: it is the term, or an element followed by ',' or the closing.
        while True:
            token = _next(tokens)
            if not open_items:
                if token.lastgroup != "dot":
                    raise _Refused(token, "expected '.' after the term")
                return value, token.end()
            open_items[-1].append(value)
            kind = token.lastgroup
            if kind == "comma":
                token = _next(tokens)
                break  # the next element begins
            if kind == "close" and token["close"] == closers[-1]:
                value = _closed(open_items.pop(), closers.pop())
                continue
            if _is(token, b"|"):
                raise _Refused(token, "an improper list: not read here")
            raise _Refused(token, f"expected ',' or {closers[-1].decode()!r}")


def _bounded(tokens: Iterator[Token], limit: int, most: int) -> Iterator[Token]:
    """`tokens`, refused from the first that ends after `limit` (before its text is copied)."""
    for token in tokens:
        if token.end() > limit:
            raise _Refused(token, f"a record of more than {most} bytes")
        yield token


def _next(tokens: Iterator[Token]) -> Token:
    token = next(tokens, None)
    if token is None:
        raise _Refused(None, "the file ends inside the term that starts here (cut short?)")
    return token


def _text(token: Token) -> bytes:
    return token[token.lastgroup or 0]


def _is(token: Token, other: bytes) -> bool:
    """Whether `token` is one of the marks only a binary or a list tail may hold."""
    return token.lastgroup == "other" and token["other"] == other


def _closed(items: list[Term], closer: bytes) -> Term:
    return tuple(items) if closer == b"}" else items


def _integer(token: Token) -> int:
    text = token["integer"]
    if not text.lstrip(b"-").isdigit():
        raise _Refused(token, "a float or a based integer: not read here")
    if len(text) > MAX_DIGITS:
        raise _Refused(token, f"an integer of {len(text)} digits (at most {MAX_DIGITS})")
    return int(text)


def _atom(token: Token) -> Atom:
    raw = token["atom"]
    if raw.startswith(b"'"):
        return Atom("".join(map(chr, _characters(token, raw[1:-1]))))
    return Atom(raw.decode("latin-1"))


def _binary(tokens: Iterator[Token]) -> bytes:
    """The segments after `<<`, up to `>>`: strings or integers, each maybe typed `/utf8`."""
    out = bytearray()
    token = _next(tokens)
    if _is(token, b">>"):
        return bytes(out)
    while True:
        segment = token
        token = _next(tokens)
        utf8 = _is(token, b"/")
        if utf8:
            token = _next(tokens)
            if token.lastgroup != "atom" or token["atom"] != b"utf8":
                raise _Refused(token, "only the type /utf8 is read in a binary")
            token = _next(tokens)
        if segment.lastgroup == "string":
            body = _string_bodies(segment["string"])
            out += _utf8_string(segment, body) if utf8 else _binary_string(segment, body)
        elif segment.lastgroup == "integer":
            value = _integer(segment)
            if utf8:
                out += _utf8_encoded(segment, [value])
            elif 0 <= value <= 255:
                out.append(value)
            else:
                raise _Refused(segment, f"a byte of a binary must be 0 to 255, not {value}")
        else:
            raise _Refused(segment, "expected a string or a byte in a binary")
        if _is(token, b">>"):
            return bytes(out)
        if token.lastgroup != "comma":
            raise _Refused(token, "expected ',' or '>>' in a binary")
        token = _next(tokens)


def _string_bodies(token_text: bytes) -> bytes:
    """The bodies of adjacent string literals, joined: `"a" "b"` is "ab"."""
    if token_text.endswith(b'"') and token_text.count(b'"') == 2:
        return token_text[1:-1]
    return b"".join(match[1][1:-1] for match in _STRING_BODY.finditer(token_text))


def _binary_string(token: Token, body: bytes) -> bytes:
    """A string segment of a binary: its characters are the bytes."""
    if b"\\" not in body:
        return body  # the common case: the file's bytes are the binary's
    characters = _characters(token, body)
    if max(characters, default=0) > 255:
        raise _Refused(token, "a character above 255 in a binary without /utf8")
    return bytes(characters)


def _utf8_string(token: Token, body: bytes) -> bytes:
    """A `"..."/utf8` segment: its characters, encoded as UTF-8. Raw bytes that are valid
    UTF-8 are read as UTF-8 (a file written by a Unicode device), others as Latin-1."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("latin-1")
    return _utf8_encoded(token, _escaped(text))


def _utf8_encoded(token: Token, characters: list[int]) -> bytes:
    for code in characters:
        if not 0 <= code <= 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise _Refused(token, f"{code} is not a Unicode code point")
    return "".join(map(chr, characters)).encode("utf-8")


def _characters(token: Token, body: bytes) -> list[int]:
    """The characters of a literal's body in a Latin-1 file, escapes decoded."""
    characters = _escaped(body.decode("latin-1"))
    if max(characters, default=0) > 0x10FFFF:
        raise _Refused(token, "an escape beyond the last Unicode code point")
    return characters


def _escaped(body: str) -> list[int]:
    """The characters of a string literal's body, its escapes decoded."""
    if "\\" not in body:
        return [ord(char) for char in body]
    out: list[int] = []
    position = 0
    for match in _ESCAPE.finditer(body):
        out += map(ord, body[position : match.start()])
        octal, braced, hexadecimal, control, named = match.groups()
        if octal is not None:
            out.append(int(octal, 8))
        elif braced is not None:  # \x{...}: at most 8 digits are read, more is out of range
            out.append(int(braced, 16) if len(braced) <= 8 else 0x110000)
        elif hexadecimal is not None:
            out.append(int(hexadecimal, 16))
        elif control is not None:
            out.append(ord(control) & 31)
        else:
            out.append(_NAMED_ESCAPES.get(named, ord(named)))
        position = match.end()
    out += map(ord, body[position:])
    return out


def _shorten(raw: bytes, limit: int = 20) -> str:
    text = raw.decode("latin-1")
    return text if len(text) <= limit else text[:limit] + "..."
