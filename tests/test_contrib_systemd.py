"""contrib/systemd: the unit, checked against the code it depends on.

Its command line is compared with the real CLI, its state directory with the store path of
config.example.toml, its restart policy with the bot's exit codes, and the whole unit with
systemd's own `systemd-analyze verify` and `security`.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from bot import __main__ as cli
from bot.config import SECRET_ENV, load_settings
from bot.testbed.botconfig import write_config
from bot.web.connections import MAX_CONNECTIONS, connection_cap

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "systemd" / "xmpp-active-users.service"
EXAMPLE = ROOT / "config.example.toml"
PYPROJECT = ROOT / "pyproject.toml"


class _Repeatable(dict):
    """configparser's dict, keeping every line of a key given several times (systemd list
    settings such as SystemCallFilter=) joined by newlines instead of keeping the last one."""

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, list) and isinstance(self.get(key), list):
            value = self[key] + value
        super().__setitem__(key, value)


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, dict_type=_Repeatable, empty_lines_in_values=False
    )
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text(encoding="utf-8"), source=str(UNIT))
    for section in ("Unit", "Service", "Install"):
        assert parser.has_section(section), f"{UNIT} has no [{section}] section"
    return parser


def service(unit: configparser.ConfigParser, key: str) -> list[str]:
    """Every value given to the [Service] key, in order ([] if absent)."""
    value = unit["Service"].get(key)
    return [] if value is None else value.split("\n")


def single(unit: configparser.ConfigParser, key: str) -> str:
    values = service(unit, key)
    assert len(values) == 1, f"[Service] {key}= should be given once, found {values}"
    return values[0].strip()


def yes(value: str) -> bool:
    return value.lower() in ("1", "yes", "true", "on")


def exec_start(unit: configparser.ConfigParser) -> list[str]:
    return shlex.split(single(unit, "ExecStart").lstrip("-@:+!"))


def test_exec_start_is_the_installed_script(unit):
    program = PurePosixPath(exec_start(unit)[0])
    scripts = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["scripts"]
    assert program.is_absolute(), f"ExecStart {program} must be an absolute path"
    assert scripts.get(program.name) == "bot.__main__:main", (
        f"ExecStart runs {program.name!r}, but pyproject.toml installs {scripts}"
    )


def test_exec_start_runs_the_bot_with_a_config_file_the_cli_accepts(unit):
    argv = exec_start(unit)[1:]
    assert argv[:1] == ["run"], f"ExecStart should run the `run` subcommand, not {argv}"
    helped = subprocess.run(
        [sys.executable, "-m", "bot", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert helped.returncode == 0, f"`python -m bot run --help` failed: {helped.stderr}"
    assert "--config FILE" in helped.stdout, f"`run --help` has no --config:\n{helped.stdout}"
    try:
        args = cli._parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the CLI rejects ExecStart's arguments {argv}")
    assert args.handler is cli._run, f"{argv} does not select the `run` command"
    config = PurePosixPath(args.config)
    config_dir = PurePosixPath("/etc") / single(unit, "ConfigurationDirectory")
    assert config.parent == config_dir, (
        f"ExecStart reads {config}, outside ConfigurationDirectory= ({config_dir})"
    )


def test_the_store_of_the_example_config_is_in_the_state_directory(unit):
    settings = load_settings(EXAMPLE, environ={}, need_secret=False)
    state_dir = Path("/var/lib") / single(unit, "StateDirectory")
    assert settings.store_path.parent == state_dir, (
        f"config.example.toml keeps the store in {settings.store_path.parent}, but the unit "
        f"may write only {state_dir} (StateDirectory=, under ProtectSystem=strict)"
    )


def test_restarts_after_a_crash_but_not_after_a_fatal_error(unit):
    assert single(unit, "Restart") == "on-failure", "Restart= should be on-failure"
    delay = re.fullmatch(r"(\d+)s?", single(unit, "RestartSec"))
    assert delay, f"RestartSec={single(unit, 'RestartSec')}: expected seconds such as 10"
    assert int(delay[1]) >= 1, "RestartSec= should be at least a second, not a tight loop"
    prevented = " ".join(service(unit, "RestartPreventExitStatus")).split()
    assert "1" in prevented, (
        f"RestartPreventExitStatus={prevented}: a wrong secret exits 1; restarts cannot fix it"
    )


def test_the_bot_exits_1_when_retrying_cannot_help(tmp_path):
    """What RestartPreventExitStatus=1 relies on. (The wrong secret, also exit 1, is tested
    against a real Prosody in test_prosody_connection_errors.py.)"""
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(
        tmp_path / "config.toml",
        component_jid="active.example.test",
        secret="s3cret",
        server_host="127.0.0.1",
        server_port=port,
        domains=["example.test"],
        admins=["admin@example.test"],
        metrics_listen="",
        store_path="activity.db",
    )
    env = {key: value for key, value in os.environ.items() if key != SECRET_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stderr}"
    assert "nothing accepts components" in result.stderr, result.stderr


def test_the_descriptor_limit_gives_the_http_listener_its_full_share_and_room_besides(unit):
    """systemd's default soft limit (1,024) would hold the HTTP listener to 256 connections; the
    unit raises it so that the listener gets its full share and XMPP keeps most descriptors."""
    value = single(unit, "LimitNOFILE")
    soft = int(value.split(":")[0])  # N, or SOFT:HARD
    assert connection_cap(soft) == MAX_CONNECTIONS, f"LimitNOFILE={value}: too few for HTTP"
    assert soft - MAX_CONNECTIONS >= 1024, f"LimitNOFILE={value}: too little room besides HTTP"


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
    "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize(("key", "expected"), HARDENING.items())
def test_unit_is_hardened(unit, key, expected):
    assert key in unit["Service"], f"[Service] lacks {key}={expected}"
    value = single(unit, key)
    if expected == "yes":
        assert yes(value), f"[Service] {key}={value}, expected yes"
    else:
        assert value == expected, f"[Service] {key}={value!r}, expected {expected!r}"


def test_unit_runs_unprivileged_and_keeps_the_needed_sockets_only(unit):
    user = unit["Service"].get("User", "root")
    assert yes(unit["Service"].get("DynamicUser", "no")) or user not in ("root", "0"), (
        "the unit runs as root: set DynamicUser=yes or User= a dedicated account"
    )
    families = " ".join(service(unit, "RestrictAddressFamilies")).split()
    assert set(families) == {"AF_INET", "AF_INET6", "AF_UNIX"}, (
        f"RestrictAddressFamilies={families}: the bot needs TCP (XMPP, /metrics) and Unix only"
    )
    filters = [line.split() for line in service(unit, "SystemCallFilter")]
    allowed = [groups for groups in filters if not groups[0].startswith("~")]
    assert allowed, f"SystemCallFilter={filters}: no allow list (@system-service)"
    assert "@system-service" in allowed[0], (
        f"SystemCallFilter={filters}: the allow list should be @system-service"
    )


def test_systemd_accepts_the_unit(tmp_path):
    """`systemd-analyze verify` on a copy whose ExecStart points at an existing program (it
    refuses a missing one, and the script is not installed here): any warning about the unit's
    own lines (unknown key, bad value) fails. Works without systemd running as PID 1."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    copy = tmp_path / UNIT.name
    text = UNIT.read_text(encoding="utf-8")
    copy.write_text(text.replace("/usr/local/bin/xmpp-active-users", sys.executable), "utf-8")
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    about_the_unit = [
        line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line
    ]
    if any("sysinit.target" in line for line in about_the_unit):  # no systemd unit tree here
        pytest.skip(f"systemd-analyze verify cannot load its own units: {about_the_unit}")
    assert not about_the_unit, "systemd-analyze verify:\n" + "\n".join(about_the_unit)
    security = subprocess.run(
        [analyze, "security", "--offline=yes", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    if exposure is None:  # systemd < 250 has no --offline
        pytest.skip(f"systemd-analyze security --offline unavailable: {security.stderr.strip()}")
    assert float(exposure[1]) < 2.0, (
        f"systemd-analyze security rates the unit {exposure[1]} (want < 2, 'OK'):\n"
        + security.stdout
    )
