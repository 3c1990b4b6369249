"""A private Prosody on 127.0.0.1, living in one temp folder (config, data, log, pid, socket).

Used by the test suite (a real server to log in to) and by the one-command demo.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Self

# mod_storage_sql's SQLite driver, for storage = "sql": LuaDBI for the Lua that runs Prosody.
SQLITE_DRIVER = "/usr/lib/*/lua/5.4/dbd/sqlite3.so"  # Debian's path, under the arch triplet
SQLITE_DRIVER_HINT = "run `make prosody` or `apt-get install -y lua-dbi-sqlite3`"
STORAGES = ("internal", "sql")
POLL = 0.05  # seconds between readiness probes: short, so start() returns soon after ready
PORT_RETRY_DELAY = 0.2  # seconds between two starts of restart() on a port that was in use
LOG_TAIL_LINES = 40
PORT_IN_USE = re.compile("Failed to open server port")  # Prosody's log, for a port it cannot bind
STREAM_HEADER = re.compile(rb"<stream:stream\b[^>]*>")
# Prosody 13, built from Debian 13's source by `make prosody13` (tools/build-prosody13).
PROSODY13_PREFIX = Path(__file__).resolve().parents[2] / "build" / "prosody-13"


class ProsodyNotInstalled(RuntimeError):
    """Prosody or the community module mod_privilege is missing on this machine."""


class PortInUse(RuntimeError):
    """Prosody could not bind a port it was given (it logs that and keeps running without)."""


@dataclass(frozen=True)
class ProsodyInstall:
    """One installed Prosody: its two programs and the prosody-modules folder it loads."""

    version: str  # "0.12", "13": in test ids and messages
    prosody: str  # a program on PATH, or a path
    prosodyctl: str
    modules_dir: Path  # community modules: mod_privilege, mod_lastlog2, mod_measure_active_users
    install_hint: str

    def check(self) -> None:
        """Raise ProsodyNotInstalled, with the fix, unless both programs and mod_privilege exist."""
        missing = [tool for tool in (self.prosody, self.prosodyctl) if shutil.which(tool) is None]
        # prosody-modules installs one folder per module; a hand-copied module may be a flat file.
        privilege = (
            self.modules_dir / "mod_privilege.lua",
            self.modules_dir / "mod_privilege" / "mod_privilege.lua",
        )
        if not any(path.is_file() for path in privilege):
            missing.append(str(privilege[0]))
        if missing:
            raise ProsodyNotInstalled(
                f"Prosody {self.version}: missing {', '.join(missing)}: {self.install_hint}"
            )


# Debian 12's packages prosody (0.12) and prosody-modules (2023).
PROSODY_0_12 = ProsodyInstall(
    version="0.12",
    prosody="prosody",
    prosodyctl="prosodyctl",
    modules_dir=Path("/usr/lib/prosody/modules"),
    install_hint="run `make prosody` or `apt-get install -y prosody prosody-modules`",
)
# Debian 13's Prosody 13 and prosody-modules (2025), in the project's build folder.
PROSODY_13 = ProsodyInstall(
    version="13",
    prosody=str(PROSODY13_PREFIX / "bin" / "prosody"),
    prosodyctl=str(PROSODY13_PREFIX / "bin" / "prosodyctl"),
    modules_dir=PROSODY13_PREFIX / "prosody-modules" / "usr" / "lib" / "prosody" / "modules",
    install_hint="run `make prosody13` (builds it into build/prosody-13)",
)
INSTALLS = {install.version: install for install in (PROSODY_0_12, PROSODY_13)}


def check_installed(install: ProsodyInstall = PROSODY_0_12, storage: str = "internal") -> None:
    """Raise ProsodyNotInstalled, with the fix, unless `install` is complete (and, for
    `storage` "sql", the SQLite driver of mod_storage_sql is there)."""
    install.check()
    if storage == "sql" and not glob.glob(SQLITE_DRIVER):
        raise ProsodyNotInstalled(f"missing {SQLITE_DRIVER}: {SQLITE_DRIVER_HINT}")


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free on 127.0.0.1 now (held together, so all distinct)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        # Closed before Prosody binds them: a tiny race, accepted for loopback tests.
        return [sock.getsockname()[1] for sock in sockets]


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port of 127.0.0.1 that refuses connections while the block runs: bound, so that no
    other program can take it, but not listening. For "nothing listens there" without guessing."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def lua_string(value: str | Path) -> str:
    """A Lua string literal; refuses characters that would need more than simple escaping."""
    text = str(value)
    if any(ord(char) < 0x20 for char in text):
        raise ValueError(f"control character in a value for the Prosody config: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


@dataclass
class ServerSandbox(ABC):
    """What ProsodySandbox and bot.testbed.ejabberd.EjabberdSandbox share: one XMPP server
    process in its own process group, with its config, data and logs under root, serving c2s
    and a component on free ports of 127.0.0.1; started and stopped, also as a context manager.

    Ports left at 0 are chosen by the first start() and kept by restart().
    """

    root: Path
    domain: str = "example.test"
    component_jid: str = "active.example.test"
    component_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    grant_presence: bool = True
    extra_modules: tuple[str, ...] = ()
    c2s_port: int = 0
    component_port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _output: IO[bytes] | None = field(default=None, init=False, repr=False)

    server_name: ClassVar[str]  # in messages: "Prosody", "ejabberd"
    port_names: ClassVar[tuple[str, ...]]  # the port fields start() fills when one is 0
    port_in_use: ClassVar[re.Pattern[str]]  # in the server's log: it could not bind a port
    probe_timeout: ClassVar[float] = 0.25  # the longest wait of one answers_stream()

    @property
    @abstractmethod
    def config_path(self) -> Path: ...

    @property
    @abstractmethod
    def log_path(self) -> Path: ...

    @property
    @abstractmethod
    def output_path(self) -> Path: ...

    @property
    def pid(self) -> int | None:
        """The pid of the running server (also its process group), or None when stopped."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @abstractmethod
    def render_config(self) -> str: ...

    @abstractmethod
    def start(self, timeout: float = 15) -> None: ...

    @abstractmethod
    def stop(self, timeout: float = 5) -> None: ...

    @abstractmethod
    def _spawn_server(self, deadline: float, timeout: float) -> subprocess.Popen[bytes]:
        """Start the server process (and whatever it needs first); return it."""

    @abstractmethod
    def _control(self, *args: str) -> str:
        """Run one command of the server's admin tool (prosodyctl, ejabberdctl)."""

    # --- lifecycle ---------------------------------------------------------------------------

    def restart(self, timeout: float | None = None, *, port_wait: float = 10) -> None:
        """Stop and start again on the same ports and the same data (accounts, stores).

        `timeout` as for start(), whose default it takes when None. The ports are kept (the
        clients and the bot know them); another program may take one in the moment between the
        stop and the start (an outgoing connection can get it as its local port), so a start
        that finds a port in use is tried again, on the same ports, for up to `port_wait` s.
        """
        self.stop()
        deadline = time.monotonic() + port_wait
        while True:
            try:
                if timeout is None:
                    self.start()
                else:
                    self.start(timeout)
                return
            except PortInUse:
                if time.monotonic() >= deadline:
                    raise
            # Nothing tells when another program lets go of a port: try again shortly.
            time.sleep(PORT_RETRY_DELAY)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self, folders: tuple[Path, ...], launch: Callable[[], None]) -> None:
        """Make root and `folders`, fill ports left at 0 with free ones, then launch()."""
        if self._process is not None:
            raise RuntimeError(f"{self._label} is already started (pid {self.pid})")
        for folder in (self.root, *folders):
            folder.mkdir(parents=True, exist_ok=True)
        chosen_here = not all(getattr(self, name) for name in self.port_names)
        if chosen_here:
            self._choose_ports()
        try:
            launch()
        except PortInUse:
            if not chosen_here:
                raise
            # Someone took a port between free_ports() and the server's bind: once more, fresh.
            self._choose_ports()
            launch()

    def _choose_ports(self) -> None:
        for name, port in zip(self.port_names, free_ports(len(self.port_names)), strict=True):
            setattr(self, name, port)

    def _launch(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.config_path.write_text(self.render_config())
        self._output = self.output_path.open("ab")
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self._process = self._spawn_server(deadline, timeout)
            self._wait_ready(deadline, timeout, log_offset)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=env,
            # Its own process group: stop() can signal whatever it spawned, and a Ctrl-C meant
            # for the test run or the demo does not reach it first.
            start_new_session=True,
        )

    def _shut_down(
        self, timeout: float, *processes: subprocess.Popen[bytes] | None, whole_group: bool
    ) -> None:
        """terminate() each of `processes` in turn, even if one fails; then close the output."""
        with contextlib.ExitStack() as stack:  # runs its callbacks last in, first out
            stack.callback(self._close_output)
            for process in reversed(processes):
                if process is not None:
                    stack.callback(terminate, process, timeout, whole_group=whole_group)

    def _close_output(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None

    def _wait_ready(self, deadline: float, timeout: float, log_offset: int) -> None:
        # An open port alone can lie (the server may bind, then refuse to run; another process
        # may hold the port): ready means our process is alive AND it answers an XMPP stream
        # header on both ports, which it can only do once its startup is over and its loop is
        # running.
        assert self._process is not None
        pending = {
            self.c2s_port: (self.domain, "jabber:client"),
            self.component_port: (self.component_jid, "jabber:component:accept"),
        }
        while True:
            if self._process.poll() is not None:
                failure = self._failure(f"exited with code {self._process.returncode}")
                if self.port_in_use.search(self._log_since(log_offset)):
                    raise PortInUse(failure)
                raise RuntimeError(failure)
            # Prosody logs a port it cannot bind and keeps running without it.
            if self.port_in_use.search(self._log_since(log_offset)):
                raise PortInUse(self._failure("could not bind one of its ports"))
            for port, (to, namespace) in list(pending.items()):
                if answers_stream(port, to, namespace, deadline, self.probe_timeout):
                    del pending[port]
            if not pending and self._process.poll() is None:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(self._failure(f"not ready after {timeout} s"))
            time.sleep(POLL)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def _label(self) -> str:
        return f"{self.server_name} of {self.root}"

    def _failure(self, what: str) -> str:
        return (
            f"{self._label} {what}.\n"
            f"--- {self.output_path} ---\n{tail(self.output_path)}\n"
            f"--- {self.log_path} ---\n{tail(self.log_path)}"
        )

    def _run_tool(
        self, argv: list[str], what: str, timeout: float, env: dict[str, str] | None = None
    ) -> str:
        """Run an admin tool in root: its output, or RuntimeError with all it printed."""
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env=env,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{what} failed with code {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    # --- using it ----------------------------------------------------------------------------

    def register(self, user: str, password: str) -> str:
        """Create an account (a localpart, or a bare JID on this domain); return its bare JID."""
        node, _, host = user.partition("@")
        host = host or self.domain
        self._control("register", node, host, password)
        return f"{node}@{host}"


@dataclass
class ProsodySandbox(ServerSandbox):
    """One Prosody process with its own config, data and free ports, all on 127.0.0.1.

    `install` says which Prosody runs (0.12 from Debian 12, or 13 built by `make prosody13`).
    Ports left at 0 are chosen by the first start() and kept by restart(). `storage`:
    "internal" (one file per user and store under data/) or "sql" (mod_storage_sql with
    SQLite, in `sql_database_path`).
    """

    http_port: int = 0
    storage: str = "internal"
    install: ProsodyInstall = PROSODY_0_12
    # "internal_plain" stores passwords as they are; "internal_hashed" (Prosody's default) is
    # the one of the two that can disable an account (Prosody 13).
    authentication: str = "internal_plain"
    # mod_smacks (XEP-0198): how long a session whose connection dropped waits to be resumed
    # before it ends (Prosody's default is 600 s); None: mod_smacks is not loaded.
    smacks_hibernation: int | None = None

    server_name: ClassVar[str] = "Prosody"
    port_names: ClassVar[tuple[str, ...]] = ("c2s_port", "component_port", "http_port")
    port_in_use: ClassVar[re.Pattern[str]] = PORT_IN_USE

    # --- paths: everything of this instance stays under root ------------------------------

    @property
    def config_path(self) -> Path:
        return self.root / "prosody.cfg.lua"

    @property
    def data_path(self) -> Path:
        return self.root / "data"

    @property
    def sql_database_path(self) -> Path:
        """The SQLite database of storage = "sql" (Prosody names it relative to data_path)."""
        return self.data_path / "prosody.sqlite"

    @property
    def certs_path(self) -> Path:
        return self.root / "certs"

    @property
    def log_path(self) -> Path:
        """Prosody's own log (info and above): print it when a test or the demo fails."""
        return self.root / "prosody.log"

    @property
    def output_path(self) -> Path:
        """Prosody's stdout and stderr: errors from before its logging is set up land here."""
        return self.root / "prosody.out"

    @property
    def pidfile(self) -> Path:
        return self.root / "prosody.pid"

    @property
    def admin_socket(self) -> Path:
        return self.data_path / "prosody.sock"

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 15) -> None:
        """Write the config, start Prosody and return once it really serves c2s and components."""
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        check_installed(self.install, self.storage)
        self._start((self.data_path, self.certs_path), lambda: self._launch(timeout))

    def _spawn_server(self, deadline: float, timeout: float) -> subprocess.Popen[bytes]:
        return self._spawn([self.install.prosody, "--config", str(self.config_path), "-F"])

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM the process group, wait, SIGKILL if needed; always reap. Safe to repeat."""
        process, self._process = self._process, None
        self._shut_down(timeout, process, whole_group=True)

    # --- using it ----------------------------------------------------------------------------

    def metrics(self, timeout: float = 5) -> str:
        """Prosody's OpenMetrics text (gauges are collected at scrape time: interval manual)."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
        return body.decode()

    def shell(self, command: str, timeout: float = 15) -> str:
        """Run one admin console command, e.g. "module:reload('lastlog2', 'example.test')"."""
        return self.prosodyctl("shell", command, timeout=timeout)

    def prosodyctl(self, *args: str, timeout: float = 15) -> str:
        """Run prosodyctl against this instance's config; its output, or RuntimeError."""
        check_installed(self.install, self.storage)
        argv = [self.install.prosodyctl, "--config", str(self.config_path), *args]
        return self._run_tool(argv, f"prosodyctl {args[0] if args else ''}", timeout)

    def _control(self, *args: str) -> str:
        return self.prosodyctl(*args)

    # --- the config --------------------------------------------------------------------------

    def render_config(self) -> str:
        """Prosody's config for this instance. Long only because it is one template."""
        modules = (
            "roster",
            "saslauth",
            "disco",
            "ping",
            "presence",
            "privilege",
            "http_openmetrics",
            "admin_shell",
            *(("smacks",) if self.smacks_hibernation is not None else ()),
            *(module for module in self.extra_modules if module != "privilege"),
        )
        smacks = (
            f"smacks_hibernation_time = {self.smacks_hibernation}\n"
            if self.smacks_hibernation is not None
            else ""
        )
        privileged = (
            f"    privileged_entities = {{\n"
            f'        [{lua_string(self.component_jid)}] = {{ presence = "managed_entity" }};\n'
            f"    }}\n"
            if self.grant_presence
            else ""
        )
        storage = (
            f'storage = "sql"\n'
            f'sql = {{ driver = "SQLite3", database = {lua_string(self.sql_database_path)} }}\n'
            if self.storage == "sql"
            else 'storage = "internal"\n'
        )
        log_file = lua_string(self.log_path)
        log_sink = f'{{ levels = {{ min = "info" }}, to = "file", filename = {log_file} }}'
        return f"""\
-- Written by bot/testbed/sandbox.py for one private instance of Prosody {self.install.version};
-- rewritten at every start.
-- Runs as root in CI: without run_as_root Prosody may open its ports, then refuse to run.
run_as_root = true
prosody_user = "root" -- else prosodyctl switches user and cannot write the log
pidfile = {lua_string(self.pidfile)}
data_path = {lua_string(self.data_path)}
certificates = {lua_string(self.certs_path)} -- empty on purpose: no TLS on loopback
admin_socket = {lua_string(self.admin_socket)}
plugin_paths = {{ {lua_string(self.install.modules_dir)} }}
log = {{ {log_sink} }}
{storage}
interfaces = {{ "127.0.0.1" }}
component_interfaces = {{ "127.0.0.1" }}
http_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2s_port} }}
component_ports = {{ {self.component_port} }}
http_ports = {{ {self.http_port} }}
s2s_ports = {{ }}
c2s_direct_tls_ports = {{ }}
https_ports = {{ }}

-- Loopback tests only: passwords in the clear on the wire, no TLS, no server-to-server.
authentication = {lua_string(self.authentication)}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
modules_disabled = {{ "s2s"; "tls" }}

statistics = "internal"
statistics_interval = "manual"
openmetrics_allow_ips = {{ "127.0.0.1" }}
{smacks}
modules_enabled = {{ {"; ".join(lua_string(module) for module in modules)} }}

VirtualHost {lua_string(self.domain)}
{privileged}
Component {lua_string(self.component_jid)}
    component_secret = {lua_string(self.component_secret)}
    modules_enabled = {{ "privilege" }}
"""


def terminate(process: subprocess.Popen[Any], timeout: float, *, whole_group: bool) -> None:
    """SIGTERM the process (with `whole_group`, its whole process group), SIGKILL its group
    after `timeout`; always reap it, then kill what is left in its group (helpers it spawned).

    Not `whole_group` for beam (ejabberd): SIGTERM makes it run init:stop, an orderly shutdown
    that its helpers must outlive.
    """
    try:
        with contextlib.suppress(ProcessLookupError):  # already gone
            if whole_group:
                os.killpg(process.pid, signal.SIGTERM)
            else:
                process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()  # reap: nothing on this machine does it for us
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def probe_budget(deadline: float, longest: float) -> float:
    """A probe's socket timeout: at most `longest`, at least POLL, within `deadline`.

    Short: a probe stuck on a port that accepts but never answers must not delay the checks.
    """
    return max(POLL, min(longest, deadline - time.monotonic()))


def answers_stream(port: int, to: str, namespace: str, deadline: float, longest: float) -> bool:
    """True if an XMPP server on 127.0.0.1:port answers a stream header to `to` without an error.

    The reply header must be in `namespace` and name `to` back: proves this is our server
    serving `to`. c2s must go on to offer <stream:features>: ejabberd echoes any `to` in its
    header, but answers an unknown host with <host-unknown/>. `longest`: see probe_budget().
    """
    client = namespace == "jabber:client"
    version = " version='1.0'" if client else ""  # none on the component port (XEP-0114)
    header = (
        f"<?xml version='1.0'?><stream:stream xmlns='{namespace}' to='{to}'{version} "
        "xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    try:
        budget = probe_budget(deadline, longest)
        with socket.create_connection(("127.0.0.1", port), timeout=budget) as sock:
            sock.sendall(header.encode())
            received = b""
            while (reply := STREAM_HEADER.search(received)) is None or (
                client and b"<stream:features" not in received and b"<stream:error" not in received
            ):
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                received += chunk
    except OSError:
        return False
    names_us = re.search(rb"""\bfrom=(['"])""" + re.escape(to.encode()) + rb"\1", reply[0])
    in_namespace = re.search(
        rb"""\bxmlns=(['"])""" + re.escape(namespace.encode()) + rb"\1", reply[0]
    )
    return names_us is not None and in_namespace is not None and b"<stream:error" not in received
