"""Shared fixtures: one real Prosody and one real ejabberd on loopback for the whole test session,
and, on that Prosody, real clients and a real bot of each test's own (`clients`, `start_bot`)."""

from __future__ import annotations

import contextlib

import pytest
import pytest_asyncio

from bot.testbed.clients import connect_client, disconnect_client
from bot.testbed.ejabberd import EjabberdSandbox
from bot.testbed.sandbox import ProsodySandbox

from .support import USERS, bot_starter


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
    and dave registered, keeping its history as admins do (mod_last, with mod_admin_extra's
    get_last and set_last). Session-wide: a start costs about 2 s, each registration 0.3 s."""
    sandbox = EjabberdSandbox(
        tmp_path_factory.mktemp("ejabberd"), extra_modules=("mod_last", "mod_admin_extra")
    )
    sandbox.start()
    try:
        for user, password in (USERS | {"dave": "davepw"}).items():
            sandbox.register(user, password)
        yield sandbox
    finally:
        sandbox.stop()


# --- on the session's Prosody: each test's own clients and bot ----------------------------------

PASSWORDS = {f"{user}@example.test": password for user, password in USERS.items()}


@pytest_asyncio.fixture
async def clients(prosody):
    """Log in real clients: `await clients.login("alice@example.test/phone")`."""

    class Clients:
        def __init__(self) -> None:
            self.connected = []

        async def login(self, full_jid: str, *, presence: bool = True):
            bare, _, resource = full_jid.partition("/")
            client = await connect_client(
                prosody, bare, PASSWORDS[bare], resource=resource, presence=presence
            )
            self.connected.append(client)
            return client

        async def logout(self, client) -> None:
            self.connected.remove(client)
            await disconnect_client(client)

    group = Clients()
    yield group
    for client in list(group.connected):
        with contextlib.suppress(Exception):
            await disconnect_client(client)


@pytest_asyncio.fixture
async def start_bot(prosody, tmp_path):
    """Start the real bot (its own store in tmp_path); stopped at the end of the test.
    (test_component_ejabberd.py has its own, against ejabberd.)"""
    async with bot_starter(prosody, tmp_path / "activity.db") as start:
        yield start
