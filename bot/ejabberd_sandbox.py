"""A private ejabberd node on 127.0.0.1, living in one temp folder (config, mnesia, logs, cookie).

The ejabberd counterpart of bot/sandbox.py, for tests against a second server implementation.
Debian's `ejabberdctl` is not used to run the node: as root it switches to the user `ejabberd`
(which then needs our folders) and lets the node start a shared `epmd` on port 4369 that
outlives it. Instead this runs `erl` itself, as ejabberdctl would, as the current user:

- its own `epmd`, started here in the foreground (a child we reap) on a free loopback port, so
  an `epmd` already running on this machine is never used, nor stopped;
- a unique node name and cookie (in `ROOT/.erlang.cookie`, HOME being ROOT for every `erl` run
  here), the distribution port bound to 127.0.0.1 only;
- ejabberdctl commands (`register`, `status`, ...) through the same `ejabberd_ctl` entry point
  ejabberdctl calls, see `EjabberdSandbox.ejabberdctl`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from .sandbox import PortInUse, free_ports, tail

# Debian puts the application in /usr/lib/<triplet>/ejabberd-<version>/ and hands that parent
# folder to `erl` as ERL_LIBS (see /usr/sbin/ejabberdctl); a source install uses the OTP root.
EJABBERD_APP_GLOBS = (
    "/usr/lib/*/ejabberd-*/ebin/ejabberd.app",
    "/usr/lib/erlang/lib/ejabberd-*/ebin/ejabberd.app",
)
INSTALL_HINT = "run `apt-get install -y ejabberd`"
POLL = 0.05  # seconds between readiness probes
STREAM_HEADER = re.compile(rb"<stream:stream\b[^>]*>")
PORT_IN_USE = re.compile(r"eaddrinuse|Failed to open socket", re.IGNORECASE)
PRIVILEGE_NS = "urn:xmpp:privilege:1"  # what ejabberd 23.01's mod_privilege advertises


class EjabberdNotInstalled(RuntimeError):
    """ejabberd (its Erlang application) or the Erlang runtime is missing on this machine."""


def find_erl_libs() -> Path:
    """The folder to give `erl` as ERL_LIBS: it holds ejabberd-<version>/ with mod_privilege."""
    missing = [tool for tool in ("erl", "epmd") if shutil.which(tool) is None]
    apps = sorted(
        (Path(app) for pattern in EJABBERD_APP_GLOBS for app in glob.glob(pattern)),
        key=lambda app: app.parent.parent.name,
    )
    apps = [app for app in apps if (app.parent / "mod_privilege.beam").is_file()]
    if not apps:
        missing.append("ejabberd's mod_privilege.beam")
    if missing:
        raise EjabberdNotInstalled(f"missing {', '.join(missing)}: {INSTALL_HINT}")
    return apps[-1].parent.parent.parent


def check_installed() -> None:
    """Raise EjabberdNotInstalled, with the fix, unless ejabberd and Erlang are present."""
    find_erl_libs()


def yaml_string(value: str | Path) -> str:
    """A double-quoted YAML scalar (a JSON string is one); refuses control characters."""
    text = str(value)
    if any(ord(char) < 0x20 for char in text):
        raise ValueError(f"control character in a value for the ejabberd config: {text!r}")
    return json.dumps(text)


def erlang_string(value: str | Path) -> str:
    """An Erlang string literal for the command line (`-mnesia dir "..."`)."""
    text = str(value)
    if any(char in text for char in '"\\') or any(ord(char) < 0x20 for char in text):
        raise ValueError(f"a path ejabberd's command line cannot take: {text!r}")
    return f'"{text}"'


@dataclass
class EjabberdSandbox:
    """One ejabberd node (plus its own epmd) with its own config, data and free loopback ports.

    Ports left at 0 are chosen by the first start() and kept by restart(), like the node name
    and the cookie: mnesia ties its data to the node name, so accounts survive a restart.
    """

    root: Path
    domain: str = "example.test"
    component_jid: str = "active.example.test"
    component_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    grant_presence: bool = True
    extra_modules: tuple[str, ...] = ()
    c2s_port: int = 0
    component_port: int = 0
    epmd_port: int = 0
    node_name: str = field(
        default_factory=lambda: f"ejabberd-test-{secrets.token_hex(4)}@localhost"
    )
    cookie: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    _node: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _epmd: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _output: IO[bytes] | None = field(default=None, init=False, repr=False)

    # --- paths: everything of this instance stays under root ------------------------------

    @property
    def config_path(self) -> Path:
        return self.root / "ejabberd.yml"

    @property
    def spool_path(self) -> Path:
        """Mnesia's folder (accounts, rosters)."""
        return self.root / "spool"

    @property
    def logs_path(self) -> Path:
        return self.root / "logs"

    @property
    def log_path(self) -> Path:
        """ejabberd's own log (info and above): print it when a test fails."""
        return self.logs_path / "ejabberd.log"

    @property
    def output_path(self) -> Path:
        """stdout and stderr of the node and of epmd: errors from before logging starts."""
        return self.root / "ejabberd.out"

    @property
    def cookie_path(self) -> Path:
        return self.root / ".erlang.cookie"

    @property
    def pid(self) -> int | None:
        """The pid of the node (beam.smp; also its process group), or None when stopped."""
        return self._node.pid if self._node is not None else None

    @property
    def epmd_pid(self) -> int | None:
        """The pid of the epmd this sandbox started, or None when stopped."""
        return self._epmd.pid if self._epmd is not None else None

    @property
    def running(self) -> bool:
        return self._node is not None and self._node.poll() is None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        """Write the config, start epmd and the node; return once both really serve."""
        erl_libs = find_erl_libs()
        if self._node is not None or self._epmd is not None:
            raise RuntimeError(f"ejabberd of {self.root} is already started (pid {self.pid})")
        for folder in (self.root, self.spool_path, self.logs_path):
            folder.mkdir(parents=True, exist_ok=True)
        self._write_cookie()
        chosen_here = not (self.c2s_port and self.component_port and self.epmd_port)
        if chosen_here:
            self.c2s_port, self.component_port, self.epmd_port = free_ports(3)
        try:
            self._launch(erl_libs, timeout)
        except PortInUse:
            if not chosen_here:
                raise
            # Someone took a port between free_ports() and the bind: once more, fresh.
            self.c2s_port, self.component_port, self.epmd_port = free_ports(3)
            self._launch(erl_libs, timeout)

    def _launch(self, erl_libs: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.config_path.write_text(self.render_config())
        self._output = self.output_path.open("ab")
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self._epmd = self._spawn(
                ["epmd", "-address", "127.0.0.1", "-port", str(self.epmd_port)], erl_libs
            )
            self._wait_epmd(deadline, timeout)
            self._node = self._spawn(
                [
                    "erl",
                    "-sname",
                    self.node_name,
                    *self._erl_common_args(),
                    "-noinput",
                    "+K",
                    "true",
                    "-mnesia",
                    "dir",
                    erlang_string(self.spool_path),
                    "-s",
                    "ejabberd",
                ],
                erl_libs,
            )
            self._wait_ready(deadline, timeout, log_offset)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, argv: list[str], erl_libs: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=self._env(erl_libs),
            # Its own process group: stop() can signal whatever it spawned (erl_child_setup,
            # os_mon's memsup), and a Ctrl-C meant for the test run does not reach it first.
            start_new_session=True,
        )

    def stop(self, timeout: float = 15) -> None:
        """Stop the node (SIGTERM: an orderly shutdown, mnesia closed), then our epmd.

        SIGKILL after `timeout`; always reaps both, and kills what is left in their process
        groups. Safe to repeat.
        """
        node, self._node = self._node, None
        epmd, self._epmd = self._epmd, None
        try:
            if node is not None:
                _terminate(node, timeout)
        finally:
            if epmd is not None:
                _terminate(epmd, timeout)
            if self._output is not None:
                self._output.close()
                self._output = None

    def restart(self, timeout: float = 30) -> None:
        """Stop and start again: same ports, node name, cookie and mnesia data (accounts)."""
        self.stop()
        self.start(timeout)

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

    def _wait_epmd(self, deadline: float, timeout: float) -> None:
        assert self._epmd is not None
        while not _epmd_answers(self.epmd_port, deadline):
            if self._epmd.poll() is not None:
                # Most likely the port was taken; epmd says so on its output, not in a log.
                raise PortInUse(self._failure(f"epmd exited with code {self._epmd.returncode}"))
            if time.monotonic() >= deadline:
                raise RuntimeError(self._failure(f"epmd not ready after {timeout} s"))
            time.sleep(POLL)

    def _wait_ready(self, deadline: float, timeout: float, log_offset: int) -> None:
        # An open port alone can lie (another program may hold it). Ready means the node is
        # alive AND c2s greets our domain with stream features (ejabberd echoes any `to` in
        # its header, but answers an unknown host with <host-unknown/>) AND the component port
        # answers a jabber:component:accept header: ejabberd opens its listeners only after
        # its modules (mod_privilege included) have started.
        assert self._node is not None
        pending = {
            self.c2s_port: (self.domain, "jabber:client"),
            self.component_port: (self.component_jid, "jabber:component:accept"),
        }
        while True:
            if self._node.poll() is not None:
                failure = self._failure(f"exited with code {self._node.returncode}")
                if PORT_IN_USE.search(self._log_since(log_offset)):
                    raise PortInUse(failure)
                raise RuntimeError(failure)
            if PORT_IN_USE.search(self._log_since(log_offset)):
                raise PortInUse(self._failure("could not bind one of its ports"))
            for port, (to, namespace) in list(pending.items()):
                if _answers_stream(port, to, namespace, deadline):
                    del pending[port]
            if not pending and self._node.poll() is None:
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

    def _failure(self, what: str) -> str:
        return (
            f"ejabberd of {self.root} ({self.node_name}) {what}.\n"
            f"--- {self.output_path} ---\n{tail(self.output_path)}\n"
            f"--- {self.log_path} ---\n{tail(self.log_path)}"
        )

    # --- the Erlang side ----------------------------------------------------------------------

    def _write_cookie(self) -> None:
        # Erlang refuses a cookie file others can read; HOME=root makes every erl run here use it.
        with contextlib.suppress(FileNotFoundError):
            self.cookie_path.unlink()
        descriptor = os.open(self.cookie_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(descriptor, "w") as cookie:
            cookie.write(self.cookie)

    def _env(self, erl_libs: Path) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.root),
            "ERL_LIBS": str(erl_libs),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_CRASH_DUMP": str(self.logs_path / "erl_crash.dump"),
            "ERL_CRASH_DUMP_BYTES": "0",
            "EJABBERD_CONFIG_PATH": str(self.config_path),
            "EJABBERD_LOG_PATH": str(self.log_path),
            "CONTRIB_MODULES_PATH": str(self.root / "contrib"),
            "CONTRIB_MODULES_CONF_DIR": str(self.root / "contrib"),
        }

    @staticmethod
    def _erl_common_args() -> list[str]:
        return [
            "-start_epmd",
            "false",  # ours runs already, on ERL_EPMD_PORT: never a shared one on 4369
            "-kernel",
            "inet_dist_use_interface",
            "{127,0,0,1}",  # the distribution port on loopback only
        ]

    # --- using it ----------------------------------------------------------------------------

    def register(self, user: str, password: str) -> str:
        """Create an account (a localpart, or a bare JID on this domain); return its bare JID."""
        node, _, host = user.partition("@")
        host = host or self.domain
        self.ejabberdctl("register", node, host, password)
        return f"{node}@{host}"

    def ejabberdctl(self, *args: str, timeout: float = 30) -> str:
        """Run an ejabberdctl command against this node (`status`, `connected_users`, ...).

        Runs what /usr/sbin/ejabberdctl runs (a hidden node calling `ejabberd_ctl`), but as the
        current user and with this sandbox's epmd and cookie. Its output, or RuntimeError.
        """
        if self._node is None:
            raise RuntimeError(f"ejabberd of {self.root} is not started")
        result = subprocess.run(
            [
                "erl",
                "-sname",
                f"ctl-{secrets.token_hex(4)}@localhost",
                *self._erl_common_args(),
                "-hidden",
                "-noinput",
                "-s",
                "ejabberd_ctl",
                "-extra",
                self.node_name,
                *args,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env=self._env(find_erl_libs()),
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"ejabberdctl {args[0] if args else ''} failed with code {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result.stdout

    # --- the config --------------------------------------------------------------------------

    def render_config(self) -> str:
        modules = {
            "mod_adhoc": "{}",
            "mod_disco": "{}",
            "mod_ping": "{}",
            "mod_roster": "{}",
            **{module: "{}" for module in self.extra_modules},
        }
        modules.pop("mod_privilege", None)
        module_lines = "".join(f"  {name}: {options}\n" for name, options in modules.items())
        # Options of mod_privilege in 23.01 (man 5 ejabberd.yml): roster/presence/message, each
        # a map to access rules; presence has managed_entity and roster. Without a grant the
        # module is loaded all the same and logs "Granting no permissions".
        privilege = (
            "  mod_privilege:\n    presence:\n      managed_entity: privileged_component\n"
            if self.grant_presence
            else "  mod_privilege: {}\n"
        )
        return f"""\
# Written by bot/ejabberd_sandbox.py for one private node; rewritten at every start.
# Loopback tests only: plain passwords, no TLS, no server-to-server.
hosts:
  - {yaml_string(self.domain)}
loglevel: info
log_rotate_count: 0

listen:
  -
    port: {self.c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: false
    starttls_required: false
  -
    port: {self.component_port}
    ip: "127.0.0.1"
    module: ejabberd_service
    hosts:
      {yaml_string(self.component_jid)}:
        password: {yaml_string(self.component_secret)}

auth_method: internal
auth_password_format: plain
s2s_access: none
acme:
  auto: false

acl:
  privileged_component:
    server: {yaml_string(self.component_jid)}

access_rules:
  privileged_component:
    allow: privileged_component

api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"

modules:
{module_lines}{privilege}"""


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process (beam: init:stop, an orderly shutdown), SIGKILL its group after
    `timeout`, reap it, then kill what is left in its process group (helpers it spawned)."""
    try:
        with contextlib.suppress(ProcessLookupError):
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


def _epmd_answers(port: int, deadline: float) -> bool:
    """True if an epmd on 127.0.0.1:port answers NAMES_REQ with its own port number."""
    budget = max(POLL, min(0.25, deadline - time.monotonic()))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=budget) as sock:
            sock.sendall(struct.pack(">HB", 1, 110))  # length 1, NAMES_REQ
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                reply += chunk
            return struct.unpack(">I", reply[:4])[0] == port
    except OSError:
        return False


def _answers_stream(port: int, to: str, namespace: str, deadline: float) -> bool:
    """True if ejabberd on 127.0.0.1:port answers a stream header to `to` without an error.

    c2s must go on to offer <stream:features> (an unknown host gets <host-unknown/>); the
    component port must answer with a header in `namespace` naming `to` back.
    """
    version = " version='1.0'" if namespace == "jabber:client" else ""
    header = (
        f"<?xml version='1.0'?><stream:stream xmlns='{namespace}' to='{to}'{version} "
        "xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    budget = max(POLL, min(0.5, deadline - time.monotonic()))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=budget) as sock:
            sock.sendall(header.encode())
            received = b""
            while (reply := STREAM_HEADER.search(received)) is None or (
                namespace == "jabber:client"
                and b"<stream:features" not in received
                and b"<stream:error" not in received
            ):
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                received += chunk
            names_us = re.search(rb"""\bfrom=(['"])""" + re.escape(to.encode()) + rb"\1", reply[0])
            in_namespace = re.search(
                rb"""\bxmlns=(['"])""" + re.escape(namespace.encode()) + rb"\1", reply[0]
            )
            return (
                names_us is not None
                and in_namespace is not None
                and (b"<stream:error" not in received)
            )
    except OSError:
        return False
