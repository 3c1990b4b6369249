"""Each test's layer, from what it uses: `integration` (a real XMPP server), `contrib` (real
Prometheus, promtool, Chromium, prosodyctl or systemd on the files in contrib/), `model` (the random
model check), else `unit`. Assigned at collection (conftest.py); `make check` runs `-m unit`.

What a test uses: its fixtures, and the names its code reaches (its own body, nested functions,
the helpers of its module and of tests/support.py it calls, its module's fixtures)."""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.testbed.chromium import Chromium
from bot.testbed.ejabberd import EjabberdSandbox
from bot.testbed.prometheus import PrometheusSandbox
from bot.testbed.sandbox import ProsodySandbox

from . import support

LAYERS = ("unit", "integration", "contrib", "model")

# Fixtures (tests/conftest.py) that start a real XMPP server, or need one.
SERVER_FIXTURES = frozenset({"prosody", "prosody_servers", "ejabberd", "clients", "start_bot"})
# Names that start a real XMPP server, or log a real client in to one, when a test calls them.
SERVER_NAMES = frozenset({"ProsodySandbox", "EjabberdSandbox", "connect_client"})
# Files whose tests start a real XMPP server in a subprocess (out of this scan's sight).
INTEGRATION_FILES = (
    "test_demo.py",  # `xmpp-active-users demo` starts its own Prosody
    "test_install_recipe.py",  # installs into a temporary root, beside a Prosody of its own
)
# Names that run the admin's other real programs.
CONTRIB_NAMES = frozenset({"PrometheusSandbox", "promtool", "Chromium", "chromium_path"})
CONTRIB_FILES = (
    "test_contrib_*.py",
    "test_*_browser.py",
    "test_prometheus_real.py",
    "test_docker_compose.py",  # `prosodyctl check config` on the compose setup's Prosody config
)
MODEL_FILES = ("test_model_core.py",)

_HELPER_MODULES = (support.__name__,)

# What unit tests may not start (their `start` fails in a unit test: see conftest.py).
REAL_PROGRAMS = (ProsodySandbox, EjabberdSandbox, PrometheusSandbox, Chromium)


def layers_of(item: pytest.Item) -> set[str]:
    """The layers of one collected test: unit alone, or any of the others."""
    path = Path(str(item.path))
    names = used_names(item)
    layers = set()
    if (
        SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        or SERVER_NAMES & names
        or path.name in INTEGRATION_FILES
    ):
        layers.add("integration")
    if CONTRIB_NAMES & names or any(path.match(pattern) for pattern in CONTRIB_FILES):
        layers.add("contrib")
    if path.name in MODEL_FILES:
        layers.add("model")
    return layers or {"unit"}


def used_names(item: pytest.Item) -> set[str]:
    """Every global name the test's code and its local helpers and fixtures refer to."""
    function = getattr(item, "function", None)
    if function is None:
        return set()
    module = inspect.getmodule(function)
    local = {module.__name__ if module else "", *_HELPER_MODULES}
    roots = [_unwrapped(function)]
    fixture_info = getattr(item, "_fixtureinfo", None)  # the module's own fixtures' code too
    for definitions in getattr(fixture_info, "name2fixturedefs", {}).values():
        roots += [_unwrapped(definition.func) for definition in definitions]
    # Helpers live in the test's module or in tests/support.py: a name is looked up in both.
    scope = {**vars(support), **(vars(module) if module else {})}
    names: set[str] = set()
    seen: set[int] = set()
    pending = [code for root in roots for code in _codes(root)]
    while pending:
        code = pending.pop()
        if id(code) in seen:
            continue
        seen.add(id(code))
        names.update(code.co_names)
        pending += [const for const in code.co_consts if isinstance(const, types.CodeType)]
        for name in code.co_names:
            target = scope.get(name)
            if getattr(target, "__module__", None) in local:
                pending += _codes(target)
    return names


def _unwrapped(function: object) -> object:
    inner = getattr(getattr(function, "hypothesis", None), "inner_test", None)
    return inspect.unwrap(inner or function)


def _codes(target: object) -> list[types.CodeType]:
    """The code of a function, or of each method of a class."""
    if inspect.isclass(target):
        return [code for member in vars(target).values() for code in _codes(member)]
    code = getattr(_unwrapped(target), "__code__", None)
    return [code] if isinstance(code, types.CodeType) else []


def counts_by_file(items: list[pytest.Item]) -> Iterator[tuple[str, dict[str, int]]]:
    """(file name, {layer: tests}) of each file, for a check of the assignment by eye."""
    by_file: dict[str, dict[str, int]] = {}
    for item in items:
        counts = by_file.setdefault(Path(str(item.path)).name, dict.fromkeys(LAYERS, 0))
        for layer in LAYERS:
            if item.get_closest_marker(layer) is not None:
                counts[layer] += 1
    yield from sorted(by_file.items())
