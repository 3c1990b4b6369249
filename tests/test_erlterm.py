"""The Erlang term reader: what ejabberd's dumps hold is read exactly, nothing is evaluated, and
any other input is a clear error, never a crash."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.importing.erlterm import MAX_DEPTH, Atom, ErlTermError, Term, iter_terms

# What ejabberd 23.01 wrote here (`ejabberdctl dump_table FILE last_activity`, byte for byte),
# after registering zoë, łukasz, 日本 and back\slash and `set_last` of a status with a quote, a
# backslash, a newline, a tab and non-ASCII letters.
REAL_DUMP = (
    b"{tables,[{last_activity,[{record_name,last_activity},\n"
    b"                         {attributes,[us,timestamp,status]}]}]}.\n"
    b'{last_activity,{<<197,130,117,107,97,115,122>>,<<"example.test">>},\n'
    b'               1796207233,<<"Registered but didn\\\'t login">>}.\n'
    b'{last_activity,{<<"alice">>,<<"example.test">>},\n'
    b"               1700000000,\n"
    b"               <<81,117,111,116,101,32,34,32,98,97,99,107,32,92,32,110,108,10,\n"
    b"                 32,116,97,98,9,32,195,169,32,197,130,32,230,151,165,230,156,\n"
    b"                 172>>}.\n"
    b'{last_activity,{<<"zo\xc3\xab">>,<<"example.test">>},\n'
    b'               1796207233,<<"Registered but didn\\\'t login">>}.\n'
    b'{last_activity,{<<"back\\\\slash">>,<<"example.test">>},\n'
    b'               1796207234,<<"Registered but didn\\\'t login">>}.\n'
)


def parse_term(data: bytes) -> Term:
    """The one term of `data` (its ending `.` optional), as an import reads it."""
    if not data.rstrip().endswith(b"."):
        data += b"."
    terms = list(iter_terms(data))
    if len(terms) != 1:
        raise ErlTermError(1, f"expected one term, found {len(terms)}")
    term, _, _ = terms[0]
    if isinstance(term, ErlTermError):
        raise term
    return term


def test_reads_what_ejabberd_wrote():
    terms = [(term, line) for term, line, _ in iter_terms(REAL_DUMP)]
    header = (
        Atom("tables"),
        [
            (
                Atom("last_activity"),
                [
                    (Atom("record_name"), Atom("last_activity")),
                    (Atom("attributes"), [Atom("us"), Atom("timestamp"), Atom("status")]),
                ],
            )
        ],
    )
    registered = b"Registered but didn't login"
    assert terms == [
        (header, 1),
        ((Atom("last_activity"), ("łukasz".encode(), b"example.test"), 1796207233, registered), 3),
        (
            (
                Atom("last_activity"),
                (b"alice", b"example.test"),
                1700000000,
                'Quote " back \\ nl\n tab\t é ł 日本'.encode(),
            ),
            5,
        ),
        ((Atom("last_activity"), ("zoë".encode(), b"example.test"), 1796207233, registered), 10),
        ((Atom("last_activity"), (b"back\\slash", b"example.test"), 1796207234, registered), 12),
    ]
    assert all(isinstance(term[0], Atom) for term, _ in terms)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"-12", -12),
        (b"'A quoted atom'", Atom("A quoted atom")),
        (b"'don\\'t'", Atom("don't")),
        (b"a@b_C9", Atom("a@b_C9")),
        (b'"a" "b"\n %% a comment "c"\n "d"', "abd"),
        (
            b'"\\b\\d\\e\\f\\n\\r\\s\\t\\v\\101\\x41\\x{142}\\^A\\q"',
            "\b\x7f\x1b\f\n\r \t\vAAł\x01q",
        ),
        (b"<<>>", b""),
        (b"<<1,2,255>>", b"\x01\x02\xff"),
        (b'<<"ab", 0, "c" "d">>', b"ab\x00cd"),
        (b'<<"\\x{142}"/utf8, 955/utf8>>', "łλ".encode()),
        ('<<"ł"/utf8>>'.encode(), "ł".encode()),  # raw UTF-8 in a /utf8 segment
        (b'<<"\xe9"/utf8>>', "é".encode()),  # raw Latin-1 in a /utf8 segment
        (b'<<"\xe9">>', b"\xe9"),  # without a type, the file's bytes are the binary's
        (b"{}", ()),
        (b"[]", []),
        (b'{a,[1,{b,<<>>}],""}', (Atom("a"), [1, (Atom("b"), b"")], "")),
    ],
)
def test_literals(text, value):
    term = parse_term(text)
    assert term == value
    assert type(term) is type(value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"X", "expected a term"),  # a variable
        (b'os:cmd("touch /tmp/pwned")', "expected '.' after the term (at ':')"),
        (b"fun() -> ok end", "expected '.' after the term (at '(')"),
        (b"1 + 1", "expected '.' after the term (at '+')"),
        (b"#{a => 1}", "expected a term"),
        (b"<0.84.0>", "expected a term"),
        (b"1.5", "a float or a based integer"),
        (b"16#ff", "a float or a based integer"),
        (b"[a|b]", "an improper list: not read here (at '|')"),
        (b"<<256>>", "a byte of a binary must be 0 to 255, not 256"),
        (b"<<1:3>>", "expected ',' or '>>' in a binary (at ':')"),
        (b"<<1/binary>>", "only the type /utf8 is read in a binary (at 'binary')"),
        (b'<<"\\x{142}">>', "a character above 255 in a binary without /utf8"),
        (b'"\\x{110000}"', "an escape beyond the last Unicode code point"),
        (b"<<55296/utf8>>", "55296 is not a Unicode code point"),
        (b"{a,b", "expected ',' or '}' (at '.')"),
        (b"{a,]", "expected a term"),
        (b"[1,2}", "expected ',' or ']' (at '}')"),
        (b"9" * 65, "an integer of 65 digits (at most 64)"),
        (b"{a}{b}", "expected '.' after the term"),
    ],
)
def test_anything_else_is_refused_with_the_reason(text, reason):
    with pytest.raises(ErlTermError, match=r"^line 1: ") as refused:
        parse_term(text)
    assert reason in str(refused.value)


def test_a_bad_term_is_reported_with_its_line_and_reading_goes_on():
    data = b"{a,1}.\n{b,\n  X}.\n{c,'\n'}.\n{d, 1.5}.\n{e,2}.\n{f,\n"
    results = [(term, line) for term, line, _ in iter_terms(data)]
    assert [term for term, _ in results if not isinstance(term, ErlTermError)] == [
        (Atom("a"), 1),
        (Atom("c"), Atom("\n")),
        (Atom("e"), 2),
    ]
    errors = [(line, str(term)) for term, line in results if isinstance(term, ErlTermError)]
    assert errors == [
        (3, "line 3: expected a term: integer, atom, binary, string, tuple or list (at 'X')"),
        (6, "line 6: a float or a based integer: not read here (at '1.5')"),
        (8, "line 8: the file ends inside the term that starts here (cut short?)"),
    ]


def test_a_term_missing_its_last_part_does_not_swallow_the_next():
    results = list(iter_terms(b"{a,.\n{b}.\n"))
    assert isinstance(results[0][0], ErlTermError)
    assert results[1][0] == (Atom("b"),)


def test_nesting_is_bounded_without_recursion():
    for opening, closing in ((b"{", b"}"), (b"[", b"]")):
        deep = opening * 100_000 + closing * 100_000
        with pytest.raises(ErlTermError, match="nested too deeply"):
            parse_term(deep)
        assert parse_term(opening * MAX_DEPTH + closing * MAX_DEPTH) is not None
    # No stack grows in the parser: the limit is ours, not Python's.
    assert MAX_DEPTH == 100


# --- hypothesis: what a writer of Erlang terms writes is read back; nothing crashes -------------

atoms = st.text(st.characters(max_codepoint=255), max_size=8).map(Atom)
leaves = st.integers(-(10**30), 10**30) | atoms | st.binary(max_size=24) | st.text(max_size=12)
terms = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.lists(children, max_size=4).map(tuple),
    max_leaves=25,
)


def tagged(term):
    """The term with each value's type: Atom("a") and "a" are equal strings, not equal terms."""
    if isinstance(term, tuple | list):
        return (type(term).__name__, [tagged(item) for item in term])
    return (type(term).__name__, term)


def erlang_text(term, rng: random.Random) -> bytes:
    """`term` as Erlang text, each part in one of the ways Erlang allows, blanks anywhere."""

    def blank() -> bytes:
        return rng.choice([b"", b"", b" ", b"\n  ", b"\t", b' % a comment, with "quotes"\n'])

    def chars(text: str, quote: str) -> bytes:
        out = []
        for char in text:
            code = ord(char)
            if char in (quote, "\\"):
                out.append(b"\\" + char.encode())
            elif 32 <= code < 127:
                out.append(char.encode())
            elif code < 256 and rng.random() < 0.5 and char not in "\n\r":
                out.append(bytes([code]))  # raw, as ~p writes printable Latin-1
            else:
                out.append(rng.choice([b"\\x{%x}" % code, b"\\x{%X}" % code]))
        return b"".join(out)

    def write(value) -> bytes:
        if isinstance(value, Atom):
            return b"'" + chars(value, "'") + b"'"
        if isinstance(value, str):
            text = chars(value, '"')
            cut = rng.randrange(len(text) + 1)
            while cut and text[cut - 1 : cut] == b"\\":  # never between an escape's parts
                cut -= 1
            return b'"' + text[:cut] + b'"' + blank() + b'"' + text[cut:] + b'"'
        if isinstance(value, bytes):
            style = rng.randrange(3)
            if style == 0:
                return b"<<" + b",".join(blank() + str(byte).encode() for byte in value) + b">>"
            if style == 1:
                return b'<<"' + chars(value.decode("latin-1"), '"') + b'">>'
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                return b'<<"' + chars(value.decode("latin-1"), '"') + b'">>'
            encoded = "".join(f"\\x{{{ord(char):x}}}" for char in text).encode()
            return b'<<"' + encoded + b'"/utf8>>'
        if isinstance(value, int):
            return str(value).encode()
        opening, closing = (b"{", b"}") if isinstance(value, tuple) else (b"[", b"]")
        inner = b",".join(blank() + write(item) + blank() for item in value)
        return opening + inner + closing

    return write(term)


@settings(max_examples=300, deadline=None)
@given(terms, st.randoms(use_true_random=False))
def test_any_term_written_as_erlang_text_is_read_back(term, rng):
    assert tagged(parse_term(erlang_text(term, rng))) == tagged(term)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_terms_or_errors_never_a_crash(data):
    check_reading(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(terms, min_size=1, max_size=5), st.randoms(use_true_random=False), st.data())
def test_damaged_dumps_give_terms_or_errors_never_a_crash(values, rng, draw):
    text = b"".join(erlang_text(value, rng) + b".\n" for value in values)
    position = draw.draw(st.integers(0, len(text)))
    damage = draw.draw(st.sampled_from(["cut", "insert", "delete"]))
    if damage == "cut":
        text = text[:position]
    elif damage == "insert":
        text = text[:position] + draw.draw(st.binary(min_size=1, max_size=3)) + text[position:]
    else:
        text = text[:position] + text[position + 3 :]
    check_reading(text)


def check_reading(data: bytes) -> None:
    results = list(iter_terms(data))
    ends = [end for _, _, end in results]
    assert ends == sorted(set(ends)), "each term ends after the one before"
    assert all(end <= len(data) for end in ends)
    lines = data.count(b"\n") + 1
    for term, line, _ in results:
        assert 1 <= line <= lines
        if isinstance(term, ErlTermError):
            assert str(term).startswith(f"line {term.line}: ")
            assert "\n" not in str(term)


# --- the real writer: Erlang's own ~p, as ejabberd calls it ---------------------------------------


def test_what_erlang_itself_prints_is_read_back(tmp_path):
    """Terms written here in the plainest Erlang (integers for binaries), read by `erl`, printed
    by it with io:format("~p.~n") to a file opened [write] as ejabberd's dump does, must be read
    back as the same values: every byte value, long binaries, escapes, nesting."""
    erl = shutil.which("erl")
    assert erl, "Erlang is missing: run `make servers` (apt-get install -y ejabberd)"
    rng = random.Random(15)
    values = [
        bytes(range(256)),
        b"Registered but didn't login",
        "zoë".encode(),
        b'"\\\n\t\x00 ' * 40,  # long: ~p spreads it over lines
        (Atom("last_activity"), (b"u", b"example.test"), 1796207233, b""),
        [Atom("A"), Atom("don't"), Atom("with space"), Atom(""), Atom("é")],
        "printable list",
        [1, 2, 3],
        -(2**70),
        (),
        [],
        b"",
    ]
    for _ in range(200):
        values.append(_random_term(rng, 3))
    source = b"".join(_plain_erlang(value) + b".\n" for value in values)
    (tmp_path / "in.txt").write_bytes(source)
    script = (
        '{ok, Terms} = file:consult("in.txt"), {ok, F} = file:open("out.txt", [write]), '
        '[io:format(F, "~p.~n", [T]) || T <- Terms], ok = file:close(F), halt().'
    )
    subprocess.run(
        [erl, "-noshell", "-noinput", "-eval", script],
        cwd=tmp_path,
        check=True,
        timeout=60,
        capture_output=True,
    )
    printed = (tmp_path / "out.txt").read_bytes()
    read = [term for term, _, _ in iter_terms(printed)]
    assert len(read) == len(values)
    for value, term in zip(values, read, strict=True):
        assert as_erlang(term) == as_erlang(value), printed


def _random_term(rng: random.Random, depth: int):
    kind = rng.randrange(6 if depth else 4)
    if kind == 0:
        return rng.randrange(-(10**12), 10**12)
    if kind == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    if kind == 2:
        return Atom("".join(chr(rng.randrange(32, 256)) for _ in range(rng.randrange(6))))
    if kind == 3:
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(256)])) for _ in range(5)
        )
    items = [_random_term(rng, depth - 1) for _ in range(rng.randrange(4))]
    return tuple(items) if kind == 4 else items


def _plain_erlang(value) -> bytes:
    """Erlang text with no escapes that could be misread: binaries and strings as integers."""
    if isinstance(value, Atom):
        return b"'" + b"".join(b"\\x{%x}" % ord(c) for c in value) + b"'"
    if isinstance(value, str):
        return b"[" + b",".join(b"%d" % ord(c) for c in value) + b"]"
    if isinstance(value, bytes):
        return b"<<" + b",".join(b"%d" % byte for byte in value) + b">>"
    if isinstance(value, int):
        return str(value).encode()
    opening, closing = (b"{", b"}") if isinstance(value, tuple) else (b"[", b"]")
    return opening + b",".join(_plain_erlang(item) for item in value) + closing


def as_erlang(value):
    """What Erlang keeps of a value: a string is a list of character codes."""
    if isinstance(value, Atom):
        return ("atom", str(value))
    if isinstance(value, str):
        return ("list", [("int", ord(char)) for char in value])
    if isinstance(value, list):
        return ("list", [as_erlang(item) for item in value])
    if isinstance(value, tuple):
        return ("tuple", [as_erlang(item) for item in value])
    return (type(value).__name__, value)


def test_a_term_over_the_byte_bound_is_refused_at_its_line_and_reading_goes_on():
    big = b'{a,<<"' + b"x" * 5000 + b'">>}.\n'
    many = b"{b,[" + b",".join(b"1" for _ in range(3000)) + b"]}.\n"
    data = b"{ok,1}.\n" + big + many + b"{ok,2}.\n"
    read = [(term, line) for term, line, _ in iter_terms(data, max_bytes=4096)]
    assert read[0] == ((Atom("ok"), 1), 1)
    assert isinstance(read[1][0], ErlTermError)
    assert read[1][1] == 2
    assert read[1][0].reason.startswith("a record of more than 4096 bytes")
    assert isinstance(read[2][0], ErlTermError)
    assert read[2][1] == 3
    assert read[3] == ((Atom("ok"), 2), 4)
    assert len(read) == 4
    assert [line for _, line, _ in iter_terms(data)] == [1, 2, 3, 4]  # unbounded: all read
