"""The layers of the suite (tests/layers.py): no test that needs a real XMPP server is marked
unit, so `make check` (`pytest -m unit`) never waits for one, and never skips one silently."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .layers import REAL_PROGRAMS

TESTS = Path(__file__).parent
# The session's server fixtures (conftest.py), written out again here: pytest's own report of
# each unit test's fixtures (every one it needs, directly or through others) is checked against
# them, not the assignment's own list.
SERVERS = {"prosody", "prosody_servers", "ejabberd", "clients", "start_bot"}
# Files whose every test needs a real XMPP server.
SERVER_FILES = (
    "test_prosody_*.py",
    "test_reference_*.py",
    "test_*sandbox.py",
    "test_component_ejabberd.py",
    "test_demo.py",
)


@pytest.fixture(scope="module")
def unit_tests() -> dict[str, set[str]]:
    """{file:line of each unit test: the fixtures it uses}, from `pytest --fixtures-per-test`."""
    report = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures-per-test", "-m", "unit", "-p",
         "no:cacheprovider", "-p", "no:randomly", str(TESTS)],
        capture_output=True, text=True, check=True, cwd=TESTS.parent, timeout=120,
    ).stdout  # fmt: skip
    tests: dict[str, set[str]] = {}
    fixtures: set[str] = set()
    for line in report.splitlines():
        if where := re.fullmatch(r"-*\s*\((tests/\S+:\d+)\)\s*-*", line):
            fixtures = tests.setdefault(where[1], set())
        elif used := re.match(r"([A-Za-z_]\w*) -- ", line):
            fixtures.add(used[1])
    return tests


def test_no_unit_test_uses_a_real_server(unit_tests):
    assert len(unit_tests) > 200  # the report was read (parametrized tests: one line each)
    with_servers = {test: used & SERVERS for test, used in unit_tests.items() if used & SERVERS}
    assert with_servers == {}


def test_no_test_of_a_server_file_is_marked_unit(unit_tests):
    files = {Path(test.partition(":")[0]) for test in unit_tests}
    assert Path("tests/test_counter.py") in files  # a pure module's tests are unit
    assert [file for file in files if any(file.match(p) for p in SERVER_FILES)] == []


@pytest.mark.parametrize("program", REAL_PROGRAMS, ids=lambda program: program.__name__)
def test_a_unit_test_that_starts_a_server_fails(request, program):
    """What the collection misses (a server started inside a helper it cannot see) still cannot
    pass as a unit test: each real program's `start` fails in one (this test is one)."""
    assert request.node.get_closest_marker("unit") is not None
    refused = f"is marked unit but starts a real {program.__name__}"
    with pytest.raises(AssertionError, match=refused):
        program.start(None)
