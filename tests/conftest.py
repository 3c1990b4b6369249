"""Shared fixtures: real servers on loopback for the whole test session (one Prosody per version,
0.12 and 13, and one ejabberd) and, on that Prosody, real clients and a real bot of each test's
own (`clients`, `start_bot`)."""

from __future__ import annotations

import contextlib

import pytest
import pytest_asyncio

from bot.testbed.clients import connect_client, disconnect_client
from bot.testbed.ejabberd import EjabberdSandbox
from bot.testbed.sandbox import INSTALLS, ProsodySandbox

from .layers import REAL_PROGRAMS, layers_of
from .support import USERS, bot_starter

PROSODY_VERSIONS = tuple(INSTALLS)  # "0.12" (Debian 12's), "13" (built by `make prosody13`)
SMACKS_HIBERNATION = 2  # seconds a dropped XEP-0198 session may be resumed (Prosody's default: 600)
# Core modules of Prosody 13 that 0.12 does not have: mod_account_activity (last activity per
# account, which `import --from prosody-account-activity` reads).
NEW_IN_13 = {"0.12": (), "13": ("account_activity",)}


class ProsodyServers:
    """The session's Prosodys: one per version, started when a test first asks for it, all
    stopped at the end. Each runs the reference (mod_lastlog2, mod_measure_active_users) and
    mod_smacks, with USERS registered. Held here rather than by the parametrized fixture, which
    pytest tears down at each change of version: in a shuffled order (pytest-randomly) that
    would restart the servers many times."""

    def __init__(self, tmp_path_factory) -> None:
        self._tmp_path_factory = tmp_path_factory
        self._started: dict[str, ProsodySandbox] = {}

    def get(self, version: str) -> ProsodySandbox:
        if version not in self._started:
            sandbox = ProsodySandbox(
                self._tmp_path_factory.mktemp(f"prosody-{version}"),
                install=INSTALLS[version],
                # mod_offline: messages to an admin who is offline wait for their next login
                extra_modules=(
                    "lastlog2",
                    "measure_active_users",
                    "offline",
                    *NEW_IN_13[version],
                ),
                # On 13, internal_hashed (its default) is the one that can disable an account,
                # and that its reference module can ask whether an account is enabled.
                authentication="internal_hashed" if version == "13" else "internal_plain",
                smacks_hibernation=SMACKS_HIBERNATION,
            )
            try:
                sandbox.start()
                for user, password in USERS.items():
                    sandbox.register(user, password)
            except BaseException:
                sandbox.stop()
                raise
            self._started[version] = sandbox
        return self._started[version]

    def stop_all(self) -> None:
        for sandbox in self._started.values():
            sandbox.stop()


@pytest.fixture(scope="session")
def prosody_servers(tmp_path_factory):
    servers = ProsodyServers(tmp_path_factory)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture(
    scope="session", params=PROSODY_VERSIONS, ids=[f"prosody-{v}" for v in PROSODY_VERSIONS]
)
def prosody(request, prosody_servers):
    """A started Prosody (example.test, component active.example.test) with USERS registered,
    running the reference: mod_lastlog2 and mod_measure_active_users. Every test that uses it
    runs once per version (ids prosody-0.12, prosody-13); one server per version per session."""
    return prosody_servers.get(request.param)


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
    """Log in real clients: `await clients.login("alice@example.test/phone")` (with
    `caps_node=...`: announcing XEP-0115 caps)."""

    class Clients:
        def __init__(self) -> None:
            self.connected = []

        async def login(
            self, full_jid: str, *, presence: bool = True, caps_node: str | None = None
        ):
            bare, _, resource = full_jid.partition("/")
            client = await connect_client(
                prosody,
                bare,
                PASSWORDS[bare],
                resource=resource,
                presence=presence,
                caps_node=caps_node,
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


# --- layers: unit / integration / contrib / model (tests/layers.py) -----------------------------


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        for layer in layers_of(item):
            item.add_marker(layer)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_server(request, monkeypatch):
    """A test marked unit that starts a real server or program fails, naming what it started:
    the collection-time assignment missed what it uses (see tests/layers.py)."""
    if request.node.get_closest_marker("unit") is None:
        return
    for owner in REAL_PROGRAMS:

        def refuse(*_args, _owner=owner, **_kwargs):
            raise AssertionError(
                f"{request.node.nodeid} is marked unit but starts a real {_owner.__name__}: "
                "teach tests/layers.py what it uses"
            )

        monkeypatch.setattr(owner, "start", refuse)
