"""The sandbox Prosody itself: real logins, metrics, restart on the same ports, clean stop."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import replace

import pytest

from bot.testbed import sandbox as sandbox_module
from bot.testbed.clients import connect_client, disconnect_client
from bot.testbed.sandbox import INSTALLS, PortInUse, ProsodyNotInstalled, ProsodySandbox

# For the tests that start a sandbox of their own: once per Prosody version, as conftest's.
each_version = pytest.mark.parametrize("version", INSTALLS, ids=[f"prosody-{v}" for v in INSTALLS])


@pytest.fixture
def own_prosody(tmp_path, version):
    """A sandbox of the test's own, for tests that restart or stop it, with alice registered."""
    sandbox = ProsodySandbox(tmp_path / "prosody", install=INSTALLS[version])
    sandbox.start()
    sandbox.register("alice", "alicepw")
    yield sandbox
    sandbox.stop()


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.asyncio
async def test_a_real_client_logs_in_and_gets_a_session(prosody):
    client = await connect_client(prosody, "alice@example.test", "alicepw")
    assert str(client.boundjid) == "alice@example.test/test"
    await disconnect_client(client)


@pytest.mark.asyncio
async def test_a_wrong_password_is_refused_by_the_server(prosody):
    with pytest.raises(ConnectionError, match="authentication refused"):
        await connect_client(prosody, "bob@example.test", "not-bobs")


def test_metrics_are_prosodys_openmetrics_text(prosody):
    text = prosody.metrics()
    assert "prosody" in text
    assert "# TYPE" in text


def test_the_admin_shell_reaches_the_running_server(prosody):
    assert "privilege" in prosody.shell("module:list('example.test')")


def test_the_sandbox_runs_the_prosody_version_it_was_given(prosody):
    running = prosody.shell("> prosody.version")  # asked of the running server
    assert running.startswith(f"Result: {prosody.install.version}."), running
    about = prosody.prosodyctl("about")  # what its config gives it
    assert str(prosody.install.modules_dir) in about  # the prosody-modules of that version


@each_version
@pytest.mark.asyncio
async def test_restart_keeps_ports_and_accounts(own_prosody):
    ports = (own_prosody.c2s_port, own_prosody.component_port, own_prosody.http_port)
    old_pid = own_prosody.pid

    own_prosody.restart()

    assert (own_prosody.c2s_port, own_prosody.component_port, own_prosody.http_port) == ports
    assert own_prosody.pid != old_pid
    client = await connect_client(own_prosody, "alice@example.test", "alicepw")
    await disconnect_client(client)


@each_version
def test_stop_leaves_no_prosody_process_and_frees_the_ports(own_prosody):
    pid = own_prosody.pid
    assert pid is not None
    assert process_exists(pid)

    own_prosody.stop()
    own_prosody.stop()  # idempotent

    assert own_prosody.pid is None
    assert not process_exists(pid)  # reaped, not a zombie: the pid is gone
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing left in its process group either
    assert not own_prosody.pidfile.exists()  # an orderly shutdown, not a SIGKILL
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", own_prosody.c2s_port))


@each_version
def test_a_port_held_by_another_program_fails_the_start_fast(tmp_path, version):
    # Prosody logs the failed bind and keeps running: a plain port probe would say "ready".
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        component_port, http_port = sandbox_module.free_ports(2)
        sandbox = ProsodySandbox(
            tmp_path / "prosody",
            c2s_port=squatter.getsockname()[1],
            component_port=component_port,
            http_port=http_port,
            install=INSTALLS[version],
        )
        with pytest.raises(PortInUse, match="Failed to open server port"):
            sandbox.start(timeout=10)
    assert sandbox.pid is None


@pytest.mark.parametrize(
    ("version", "fix"), [("0.12", "run `make prosody`"), ("13", "run `make prosody13`")]
)
def test_missing_mod_privilege_names_the_fix(tmp_path, version, fix):
    install = replace(INSTALLS[version], modules_dir=tmp_path)
    with pytest.raises(
        ProsodyNotInstalled,
        match=rf"Prosody {re.escape(version)}: missing \S+/mod_privilege.lua: {fix}",
    ):
        ProsodySandbox(tmp_path / "prosody", install=install).start()


def test_a_prosody_13_not_yet_built_names_the_fix(tmp_path):
    install = replace(INSTALLS["13"], prosody=str(tmp_path / "bin" / "prosody"))
    with pytest.raises(
        ProsodyNotInstalled, match=r"Prosody 13: missing \S+/bin/prosody: run `make prosody13`"
    ):
        ProsodySandbox(tmp_path / "prosody", install=install).start()


def test_sql_storage_without_its_sqlite_driver_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox_module, "SQLITE_DRIVER", str(tmp_path / "no-such" / "sqlite3.so"))
    with pytest.raises(ProsodyNotInstalled, match="lua-dbi-sqlite3"):
        ProsodySandbox(tmp_path / "prosody", storage="sql").start()


def test_an_unknown_storage_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="storage must be one of"):
        ProsodySandbox(tmp_path / "prosody", storage="sqll").start()


@each_version
@pytest.mark.asyncio
async def test_restart_waits_for_a_port_another_program_took_meanwhile(own_prosody, monkeypatch):
    """Between the stop and the start another program holds the c2s port (as an outgoing
    connection can): the restart tries again on the same ports once it is free."""
    ports = (own_prosody.c2s_port, own_prosody.component_port, own_prosody.http_port)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    launches: list[str] = []
    stops: list[float] = []
    stop, launch = own_prosody.stop, own_prosody._launch

    def stop_then_take_the_port(timeout: float = 5) -> None:
        stop(timeout)
        stops.append(timeout)
        if len(stops) == 1:  # the restart's own stop: in the gap before its start
            squatter.bind(("127.0.0.1", own_prosody.c2s_port))
            squatter.listen()

    def launch_then_let_go(timeout: float) -> None:
        try:
            launch(timeout)
        except PortInUse:
            launches.append("port in use")
            squatter.close()  # the other program lets go of it
            raise
        launches.append("started")

    monkeypatch.setattr(own_prosody, "stop", stop_then_take_the_port)
    monkeypatch.setattr(own_prosody, "_launch", launch_then_let_go)
    own_prosody.restart()

    assert launches == ["port in use", "started"]
    assert (own_prosody.c2s_port, own_prosody.component_port, own_prosody.http_port) == ports
    client = await connect_client(own_prosody, "alice@example.test", "alicepw")
    await disconnect_client(client)
