"""Shared fixtures: one real Prosody on loopback for the whole test session."""

from __future__ import annotations

import pytest

from bot.testbed.ejabberd import EjabberdSandbox
from bot.testbed.sandbox import ProsodySandbox

USERS = {"admin": "adminpw", "alice": "alicepw", "bob": "bobpw", "carol": "carolpw"}


@pytest.fixture(scope="session")
def prosody(tmp_path_factory):
    """A started Prosody (example.test, component active.example.test) with USERS registered,
    running the reference: mod_lastlog2 and mod_measure_active_users."""
    sandbox = ProsodySandbox(
        tmp_path_factory.mktemp("prosody"), extra_modules=("lastlog2", "measure_active_users")
    )
    sandbox.start()
    try:
        for user, password in USERS.items():
            sandbox.register(user, password)
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture(scope="session")
def ejabberd(tmp_path_factory):
    """A started private ejabberd (example.test, component active.example.test), with USERS
    and dave registered. Session-wide: a start costs about 2 s, each registration about 0.5 s."""
    sandbox = EjabberdSandbox(tmp_path_factory.mktemp("ejabberd"))
    sandbox.start()
    try:
        for user, password in (USERS | {"dave": "davepw"}).items():
            sandbox.register(user, password)
        yield sandbox
    finally:
        sandbox.stop()
