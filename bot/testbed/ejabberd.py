"""A private ejabberd node on 127.0.0.1, living in one temp folder (config, mnesia, logs, cookie).

The ejabberd counterpart of sandbox.py, for tests against a second server implementation.
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
import socket
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .sandbox import POLL, PortInUse, ServerSandbox, probe_budget

# Debian puts the application in /usr/lib/<triplet>/ejabberd-<version>/ and hands that parent
# folder to `erl` as ERL_LIBS (see /usr/sbin/ejabberdctl); a source install uses the OTP root.
EJABBERD_APP_GLOBS = (
    "/usr/lib/*/ejabberd-*/ebin/ejabberd.app",
    "/usr/lib/erlang/lib/ejabberd-*/ebin/ejabberd.app",
)
INSTALL_HINT = "run `apt-get install -y ejabberd`"
# ejabberd's SQLite driver (a Debian package of its own) lives with the OTP libraries.
SQLITE_DRIVER_GLOB = "/usr/lib/erlang/lib/p1_sqlite3-*/ebin/sqlite3.beam"
SQLITE_INSTALL_HINT = "run `apt-get install -y erlang-p1-sqlite3`"
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
class EjabberdSandbox(ServerSandbox):
    """One ejabberd node (plus its own epmd) with its own config, data and free loopback ports.

    Ports left at 0 are chosen by the first start() and kept by restart(), like the node name
    and the cookie: mnesia ties its data to the node name, so accounts survive a restart.
    `sql`: keep the data (accounts, mod_last, ...) in SQLite, the file `sqlite_path`, with
    ejabberd's new schema (a server_host column) if `new_sql_schema`; ejabberd creates it.
    """

    epmd_port: int = 0
    sql: bool = False
    new_sql_schema: bool = False
    node_name: str = field(
        default_factory=lambda: f"ejabberd-test-{secrets.token_hex(4)}@localhost"
    )
    cookie: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    _epmd: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    server_name: ClassVar[str] = "ejabberd"
    port_names: ClassVar[tuple[str, ...]] = ("c2s_port", "component_port", "epmd_port")
    port_in_use: ClassVar[re.Pattern[str]] = PORT_IN_USE
    # ejabberd opens its listeners only after its modules (mod_privilege included) have
    # started: once both ports answer, the component may connect and be granted privileges.
    probe_timeout: ClassVar[float] = 0.5

    # --- paths: everything of this instance stays under root ------------------------------

    @property
    def config_path(self) -> Path:
        return self.root / "ejabberd.yml"

    @property
    def spool_path(self) -> Path:
        """Mnesia's folder (accounts, rosters)."""
        return self.root / "spool"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite database of a node with `sql`."""
        return self.root / "ejabberd.sqlite"

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
    def epmd_pid(self) -> int | None:
        """The pid of the epmd this sandbox started, or None when stopped."""
        return self._epmd.pid if self._epmd is not None else None

    @property
    def _label(self) -> str:
        return f"{super()._label} ({self.node_name})"

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        """Write the config, start epmd and the node; return once both really serve."""
        find_erl_libs()
        if self.sql and not glob.glob(SQLITE_DRIVER_GLOB):
            raise EjabberdNotInstalled(f"missing ejabberd's SQLite driver: {SQLITE_INSTALL_HINT}")
        self._start((self.spool_path, self.logs_path), lambda: self._launch(timeout))

    def _spawn_server(self, deadline: float, timeout: float) -> subprocess.Popen[bytes]:
        # The node is the server process (beam.smp, also its process group); our epmd first.
        # In their own process groups, stop() also ends what the node spawned (erl_child_setup,
        # os_mon's memsup).
        erl_libs = find_erl_libs()
        self._write_cookie()
        self._epmd = self._spawn(
            ["epmd", "-address", "127.0.0.1", "-port", str(self.epmd_port)], self._env(erl_libs)
        )
        self._wait_epmd(deadline, timeout)
        return self._spawn(
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
            self._env(erl_libs),
        )

    def stop(self, timeout: float = 15) -> None:
        """Stop the node (SIGTERM: an orderly shutdown, mnesia closed), then our epmd.

        SIGKILL after `timeout`; always reaps both, and kills what is left in their process
        groups. Safe to repeat.
        """
        node, self._process = self._process, None
        epmd, self._epmd = self._epmd, None
        self._shut_down(timeout, node, epmd, whole_group=False)

    def _wait_epmd(self, deadline: float, timeout: float) -> None:
        assert self._epmd is not None
        while not _epmd_answers(self.epmd_port, deadline):
            if self._epmd.poll() is not None:
                # Most likely the port was taken; epmd says so on its output, not in a log.
                raise PortInUse(self._failure(f"epmd exited with code {self._epmd.returncode}"))
            if time.monotonic() >= deadline:
                raise RuntimeError(self._failure(f"epmd not ready after {timeout} s"))
            time.sleep(POLL)

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

    def ejabberdctl(self, *args: str, timeout: float = 30) -> str:
        """Run an ejabberdctl command against this node (`status`, `connected_users`, ...).

        Runs what /usr/sbin/ejabberdctl runs (a hidden node calling `ejabberd_ctl`), but as the
        current user and with this sandbox's epmd and cookie. Its output, or RuntimeError.
        """
        what = f"ejabberdctl {args[0] if args else ''}"
        return self._control_node(
            ["-s", "ejabberd_ctl", "-extra", self.node_name, *args], what, timeout
        )

    def ejabberdctl_many(self, *commands: Sequence[str], timeout: float = 60) -> list[str]:
        """Run several ejabberdctl commands in one control node: the output of each, in order,
        or RuntimeError naming the first that failed.

        What ejabberdctl does for each command (an rpc of `ejabberd_ctl:process(Args)` on the
        node, printing there), without starting an Erlang node per command (0.3 s of CPU each).
        """
        marker = f"@@ejabberdctl-{secrets.token_hex(8)}"
        # Each argument as its UTF-8 bytes, as ejabberdctl's plain arguments arrive: no quoting.
        arguments = (
            ",".join(f"unicode:characters_to_list(<<{_bytes(arg)}>>)" for arg in command)
            for command in commands
        )
        calls = ",".join(f"[{command}]" for command in arguments)
        script = (
            f'Node = list_to_atom("{self.node_name}"), '
            "lists:foreach(fun(Args) -> "
            "Code = rpc:call(Node, ejabberd_ctl, process, [Args]), "
            f'io:format("~n{marker} ~p~n", [Code]) end, [{calls}]), halt().'
        )
        printed = self._control_node(["-eval", script], "ejabberdctl (several)", timeout)
        # Printed: output 1, "\n<marker> <code 1>\n", output 2, "\n<marker> <code 2>\n", ...
        pieces = printed.split(f"\n{marker} ")
        outputs, codes = [pieces[0]], []
        for piece in pieces[1:]:
            code, _, output = piece.partition("\n")
            codes.append(code)
            outputs.append(output)
        if len(codes) != len(commands):
            raise RuntimeError(f"ejabberdctl (several) ended early:\n{printed}")
        for command, code, output in zip(commands, codes, outputs, strict=False):
            if code != "0":
                raise RuntimeError(f"ejabberdctl {command[0]} failed with code {code}:\n{output}")
        return outputs[: len(commands)]

    def _control_node(self, action: list[str], what: str, timeout: float) -> str:
        """Run a hidden Erlang node that acts on ours (`action`: its -s or -eval): its output,
        or RuntimeError."""
        if self._process is None:
            raise RuntimeError(f"ejabberd of {self.root} is not started")
        argv = [
            "erl",
            "-sname",
            f"ctl-{secrets.token_hex(4)}@localhost",
            *self._erl_common_args(),
            "-hidden",
            "-noinput",
            *action,
        ]
        return self._run_tool(argv, what, timeout, self._env(find_erl_libs()))

    def _control(self, *args: str) -> str:
        return self.ejabberdctl(*args)

    # --- the config --------------------------------------------------------------------------

    def render_config(self) -> str:
        """ejabberd's config for this node. Long only because it is one template."""
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
        # SQLite: ejabberd creates the tables of its schema in an empty database at start.
        storage = (
            f"sql_type: sqlite\nsql_database: {yaml_string(self.sqlite_path)}\n"
            f"default_db: sql\nnew_sql_schema: {str(self.new_sql_schema).lower()}\n"
            if self.sql
            else ""
        )
        return f"""\
# Written by bot/testbed/ejabberd.py for one private node; rewritten at every start.
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

{storage}auth_method: internal
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


def _bytes(text: str) -> str:
    """An Erlang binary's segments: the UTF-8 bytes of `text` as integers."""
    return ",".join(str(byte) for byte in text.encode())


def _epmd_answers(port: int, deadline: float) -> bool:
    """True if an epmd on 127.0.0.1:port answers NAMES_REQ with its own port number."""
    budget = probe_budget(deadline, 0.25)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=budget) as sock:
            sock.sendall(struct.pack(">HB", 1, 110))  # length 1, NAMES_REQ
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                reply += chunk
            return int(struct.unpack(">I", reply[:4])[0]) == port
    except OSError:
        return False
