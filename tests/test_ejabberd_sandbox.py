"""The sandbox ejabberd itself, and what its mod_privilege sends a component.

Needs `apt-get install -y ejabberd`. The facts checked here (ejabberd 23.01, Debian) are what a
second server implementation means for presence tracking; run with `-s` to see them printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import xml.etree.ElementTree as ET

import pytest
import pytest_asyncio
import slixmpp

from bot.testbed import ejabberd as ejabberd_module
from bot.testbed.clients import connect_client, disconnect_client
from bot.testbed.ejabberd import PRIVILEGE_NS, EjabberdNotInstalled, EjabberdSandbox
from bot.testbed.sandbox import PortInUse, free_ports

from .support import USERS


@pytest.fixture
def own_ejabberd(tmp_path):
    """A sandbox of the test's own, for tests that restart or stop it."""
    sandbox = EjabberdSandbox(tmp_path / "ejabberd")
    sandbox.start()
    yield sandbox
    sandbox.stop()


def local_name(element: ET.Element) -> str:
    return element.tag.rpartition("}")[2]


class RecordingComponent:
    """A bare slixmpp ComponentXMPP that records every stanza it receives, as raw XML."""

    def __init__(self, sandbox: EjabberdSandbox) -> None:
        self.xmpp = slixmpp.ComponentXMPP(
            sandbox.component_jid,
            sandbox.component_secret,
            "127.0.0.1",
            sandbox.component_port,
        )
        self.domain = sandbox.domain
        self.xmpp.register_plugin("xep_0030")
        self.received: list[ET.Element] = []
        self._arrived = asyncio.Event()
        self.xmpp.add_filter("in", self._record)

    def _record(self, stanza):
        self.received.append(stanza.xml)
        self._arrived.set()
        return stanza

    async def connect(self, timeout: float = 10) -> RecordingComponent:
        started = asyncio.get_running_loop().create_future()
        self.xmpp.add_event_handler(
            "session_start", lambda _: started.done() or started.set_result(None)
        )
        self.xmpp.connect()
        await asyncio.wait_for(started, timeout)
        return self

    async def close(self, timeout: float = 5) -> None:
        done = asyncio.get_running_loop().create_future()
        self.xmpp.add_event_handler(
            "disconnected", lambda _: done.done() or done.set_result(None), disposable=True
        )
        self.xmpp.disconnect(wait=timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, timeout)

    async def wait_until(self, found, timeout: float = 5) -> list[ET.Element]:
        """Wait up to timeout until found() (a list of recorded stanzas) is not empty; return
        its last value. An Element is falsy when it has no children: never test one for truth.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (result := found()) and (remaining := deadline - loop.time()) > 0:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return result

    async def round_trip(self, timeout: float = 10) -> None:
        """Ask the server something and wait for its answer: whatever it had sent us before
        (say, a presence that should not come) has arrived by then. An event to wait for
        instead of a pause when checking that nothing comes."""
        await self.xmpp.plugin["xep_0030"].get_info(
            jid=self.domain, ifrom=self.xmpp.boundjid, timeout=timeout
        )

    def advertisements(self) -> list[ET.Element]:
        """The XEP-0356 <message><privilege xmlns='urn:xmpp:privilege:1'/></message> received."""
        return [
            element
            for element in self.received
            if local_name(element) == "message"
            and element.find(f"{{{PRIVILEGE_NS}}}privilege") is not None
        ]

    def presences(self, full_jid: str, kind: str) -> list[ET.Element]:
        """Presences from full_jid: kind "available" (no type attribute) or "unavailable"."""
        return [
            element
            for element in self.received
            if local_name(element) == "presence"
            and element.get("from") == full_jid
            and element.get("type", "available") == kind
        ]


@pytest_asyncio.fixture
async def component(ejabberd):
    """A RecordingComponent connected to the session's ejabberd; closed after the test."""
    recorder = await RecordingComponent(ejabberd).connect()
    yield recorder
    await recorder.close()


async def wait_offline(sandbox: EjabberdSandbox, full_jid: str, timeout: float = 10) -> None:
    """Wait until ejabberd itself no longer lists the session: it has processed the close."""
    deadline = time.monotonic() + timeout
    while full_jid in (await asyncio.to_thread(sandbox.ejabberdctl, "connected_users")).split():
        assert time.monotonic() < deadline, f"{full_jid} still connected after {timeout} s"
        await asyncio.sleep(0.1)


def is_privilege_advertisement(element: ET.Element) -> bool:
    return (
        local_name(element) == "message"
        and element.find(f"{{{PRIVILEGE_NS}}}privilege") is not None
    )


def report(fact: str) -> None:
    print(f"\nEJABBERD FACT: {fact}")


# --- the server itself ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_real_client_logs_in_and_gets_a_session(ejabberd):
    client = await connect_client(ejabberd, "alice@example.test", "alicepw")
    assert str(client.boundjid) == "alice@example.test/test"
    await disconnect_client(client)


@pytest.mark.asyncio
async def test_a_wrong_password_is_refused_by_the_server(ejabberd):
    with pytest.raises(ConnectionError, match="authentication refused"):
        await connect_client(ejabberd, "bob@example.test", "not-bobs")


def test_ejabberdctl_reaches_the_running_node(ejabberd):
    assert "is started with status: started" in ejabberd.ejabberdctl("status")
    assert set(ejabberd.ejabberdctl("registered_users", "example.test").split()) >= set(USERS)


def test_several_ejabberdctl_commands_in_one_node_print_what_each_prints_alone(ejabberd):
    commands = [
        ("registered_users", "example.test"),
        ("get_last", "dave", "example.test"),
        ("status",),
        ("connected_users",),
    ]
    assert ejabberd.ejabberdctl_many(*commands) == [
        ejabberd.ejabberdctl(*command) for command in commands
    ]
    with pytest.raises(RuntimeError, match=r"ejabberdctl register failed with code 1:\n.*conflict"):
        ejabberd.ejabberdctl_many(("status",), ("register", "dave", "example.test", "x"))


def test_the_node_has_its_own_epmd_on_loopback_not_the_shared_one(ejabberd):
    assert ejabberd.epmd_port != 4369
    assert ejabberd.epmd_pid is not None
    assert f"-port {ejabberd.epmd_port}" in cmdline(ejabberd.epmd_pid)
    assert ejabberd.node_name.startswith("ejabberd-test-")
    assert ejabberd.node_name in cmdline(ejabberd.pid)


# --- what the component gets (XEP-0356 as ejabberd 23.01 does it) --------------------------


@pytest.mark.asyncio
async def test_the_component_is_told_it_may_see_presences_as_privilege_1(component):
    advertisements = await component.wait_until(component.advertisements)
    assert len(advertisements) == 1, "no <privilege/> message after the handshake"
    advertisement = advertisements[0]
    assert advertisement.get("from") == "example.test"
    privilege = advertisement.find(f"{{{PRIVILEGE_NS}}}privilege")
    perms = {perm.get("access"): perm.get("type") for perm in privilege}
    assert perms["presence"] == "managed_entity"
    assert advertisement.find("{urn:xmpp:privilege:2}privilege") is None  # only :1 here
    report(f"privilege advertisement: {ET.tostring(advertisement).decode()}")


@pytest.mark.asyncio
async def test_without_a_grant_the_component_is_advertised_nothing(tmp_path):
    with EjabberdSandbox(tmp_path / "ejabberd", grant_presence=False) as sandbox:
        recorder = await RecordingComponent(sandbox).connect()
        try:
            await recorder.round_trip()  # an advertisement comes at once after the handshake
            assert recorder.advertisements() == []
        finally:
            await recorder.close()


@pytest.mark.asyncio
async def test_available_and_explicit_unavailable_presences_are_forwarded(ejabberd, component):
    client = await connect_client(ejabberd, "alice@example.test", "alicepw")
    try:
        assert await component.wait_until(
            lambda: component.presences("alice@example.test/test", "available")
        )
        client.send_presence(ptype="unavailable")
        assert await component.wait_until(
            lambda: component.presences("alice@example.test/test", "unavailable")
        )
    finally:
        await disconnect_client(client)


@pytest.mark.asyncio
async def test_a_stream_close_sends_the_component_no_unavailable(ejabberd, component):
    client = await connect_client(ejabberd, "bob@example.test", "bobpw")
    assert await component.wait_until(
        lambda: component.presences("bob@example.test/test", "available")
    )

    await disconnect_client(client)  # </stream:stream>, no unavailable presence first
    await wait_offline(ejabberd, "bob@example.test/test")
    await component.round_trip()

    unavailable = component.presences("bob@example.test/test", "unavailable")
    report(f"unavailable after a client's stream close: {len(unavailable)} stanza(s)")
    assert unavailable == []


@pytest.mark.asyncio
async def test_a_dropped_tcp_connection_sends_the_component_no_unavailable(ejabberd, component):
    client = await connect_client(ejabberd, "carol@example.test", "carolpw")
    assert await component.wait_until(
        lambda: component.presences("carol@example.test/test", "available")
    )

    client.abort()  # the socket closed under the stream: no </stream:stream>, no unavailable
    await wait_offline(ejabberd, "carol@example.test/test")
    await component.round_trip()

    unavailable = component.presences("carol@example.test/test", "unavailable")
    report(f"unavailable after a client's TCP drop: {len(unavailable)} stanza(s)")
    assert unavailable == []


@pytest.mark.asyncio
async def test_a_component_connecting_later_gets_no_initial_presences(ejabberd):
    client = await connect_client(ejabberd, "dave@example.test", "davepw")
    try:
        # dave's presence is processed before the component arrives: his session handles his
        # stanzas in order, so an answer to a later one says so.
        await client.plugin["xep_0030"].get_info(jid=ejabberd.domain, timeout=10)
        recorder = await RecordingComponent(ejabberd).connect()
        try:
            assert await recorder.wait_until(recorder.advertisements)
            await recorder.round_trip()  # initial presences would have come by now
            initial = recorder.presences("dave@example.test/test", "available")
            report(f"presences of an already-online user on component connect: {len(initial)}")
            assert initial == []

            client.send_presence(pshow="away")  # only what dave sends next reaches it
            assert await recorder.wait_until(
                lambda: recorder.presences("dave@example.test/test", "available")
            )
        finally:
            await recorder.close()
    finally:
        await disconnect_client(client)


# --- lifecycle --------------------------------------------------------------------------------


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cmdline(pid: int | None) -> str:
    assert pid is not None
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read().replace(b"\0", b" ").decode()


def processes_naming(text: str) -> list[int]:
    """Pids whose command line contains text (our node name is unique to one sandbox)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if text in cmdline(int(entry)):
                    found.append(int(entry))
    return found


@pytest.mark.asyncio
async def test_restart_keeps_ports_node_and_accounts(own_ejabberd):
    own_ejabberd.register("alice", "alicepw")
    ports = (own_ejabberd.c2s_port, own_ejabberd.component_port, own_ejabberd.epmd_port)
    old_pid = own_ejabberd.pid

    began = time.monotonic()
    own_ejabberd.restart()
    print(f"\nejabberd sandbox: restarted in {time.monotonic() - began:.2f} s")

    assert (own_ejabberd.c2s_port, own_ejabberd.component_port, own_ejabberd.epmd_port) == ports
    assert own_ejabberd.pid != old_pid
    client = await connect_client(own_ejabberd, "alice@example.test", "alicepw")
    await disconnect_client(client)


def test_stop_leaves_no_node_nor_epmd_and_frees_the_ports(own_ejabberd):
    pids = {"beam": own_ejabberd.pid, "epmd": own_ejabberd.epmd_pid}
    assert all(pid is not None and process_exists(pid) for pid in pids.values())
    node_name = own_ejabberd.node_name

    began = time.monotonic()
    own_ejabberd.stop()
    print(f"\nejabberd sandbox: stopped in {time.monotonic() - began:.2f} s")
    own_ejabberd.stop()  # idempotent

    assert own_ejabberd.pid is None
    assert own_ejabberd.epmd_pid is None
    for name, pid in pids.items():
        assert not process_exists(pid), f"{name} {pid} is still there (or a zombie)"
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # nothing left in its process group either
    assert processes_naming(node_name) == []
    assert "is stopped in the node" in own_ejabberd.log_path.read_text()  # orderly, no SIGKILL
    for port in (own_ejabberd.c2s_port, own_ejabberd.component_port, own_ejabberd.epmd_port):
        with socket.socket() as sock:
            # SO_REUSEADDR: closed connections may linger in TIME_WAIT; a listener may not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_a_port_held_by_another_program_fails_the_start_fast(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        component_port, epmd_port = free_ports(2)
        sandbox = EjabberdSandbox(
            tmp_path / "ejabberd",
            c2s_port=squatter.getsockname()[1],
            component_port=component_port,
            epmd_port=epmd_port,
        )
        with pytest.raises(PortInUse, match="eaddrinuse"):
            sandbox.start(timeout=20)
    assert sandbox.pid is None
    assert sandbox.epmd_pid is None
    assert processes_naming(sandbox.node_name) == []


def test_missing_ejabberd_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(ejabberd_module, "EJABBERD_APP_GLOBS", (str(tmp_path / "*.app"),))
    with pytest.raises(EjabberdNotInstalled, match="apt-get install -y ejabberd"):
        EjabberdSandbox(tmp_path / "ejabberd").start()
