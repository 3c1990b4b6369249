"""`xmpp-active-users demo --no-wait`, run as a new admin would, in a subprocess.

The scripted logins (SCRIPT in bot/testbed/demo.py) are: admin/desk, alice/phone, alice/laptop,
bob/pc and carol/pc log in, then bob/pc logs out; the admin asks while its own client is still
online.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bot.config import load_settings

# Everyone who logged in today is active in every window and new; bob has logged out.
EXPECTED_FORM = {
    "Active users, last 24 hours": "4",
    "Active users, last 7 days": "4",
    "Active users, last 30 days": "4",
    "New users, last 24 hours": "4",
    "Users online now": "3",  # admin, alice, carol
    "Sessions online now": "4",  # alice has two
    "Users on record": "4",
}
EXPECTED_REPLY_START = "Active users: 4 (24 hours), 4 (7 days), 4 (30 days);"
EXPECTED_REPLY_END = "online now: 3 users, 4 sessions"


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "XMPP_ACTIVE_USERS_SECRET"}
    return subprocess.run(
        [sys.executable, "-m", "bot", "demo", "--no-wait", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def printed(pattern: str, output: str) -> str:
    found = re.search(pattern, output, re.MULTILINE)
    assert found is not None, f"{pattern!r} not in the output:\n{output}"
    return found[1]


def form_rows(output: str) -> dict[str, str]:
    """The ad-hoc result table: the indented lines after the 'Ad-hoc command' line."""
    lines = output.split("Ad-hoc command 'active-users'", 1)[1].splitlines()[1:]
    rows = {}
    for line in lines:
        if not line.strip():
            break
        label, value = re.fullmatch(r"  (\S.*?)\s{2,}(\S+)", line).groups()
        rows[label] = value
    return rows


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if text in command:
            found.append(f"{cmdline.parent.name}: {command}")
    return found


def test_demo_shows_the_figures_of_the_scripted_logins_and_stops_everything():
    result = run_demo()
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"

    rows = form_rows(out)
    assert {label: rows.get(label) for label in EXPECTED_FORM} == EXPECTED_FORM
    assert rows["Stickiness (DAU/MAU)"] == "100%"
    assert rows["Computed at (UTC)"].endswith("Z")
    reply = printed(r"^  reply: (.*)$", out)
    assert reply.startswith(EXPECTED_REPLY_START)
    assert reply.endswith(EXPECTED_REPLY_END)

    # What a new admin needs to try it with a real client.
    c2s_port = printed(r"port (\d+) for clients", out)
    assert f"Server:     127.0.0.1, port {c2s_port}" in out
    assert "no TLS, plain auth: loopback only" in out
    for user in ("admin", "alice", "bob", "carol"):
        assert re.search(rf"^ +{user}@example\.test +[0-9a-f]{{8}}", out, re.MULTILINE)
    assert "/cmd exec active-users active.example.test" in out

    # Stopped: Prosody reaped, the folder removed, nothing left running from it.
    pid = printed(r"^Prosody: +pid (\d+)", out)
    folder = printed(r"^Folder: +(\S+)", out)
    assert f"Prosody stopped (pid {pid})" in out
    assert not Path(f"/proc/{pid}").exists()
    assert not Path(folder).exists()
    assert processes_mentioning(folder) == []

    # Readable: no slixmpp log lines, only the bot's own.
    assert "[slixmpp" not in result.stderr
    assert "[bot.component] Connected to 127.0.0.1" in result.stderr


def test_demo_keep_dir_leaves_a_config_that_the_bot_can_load():
    result = run_demo("--keep-dir")
    kept = re.search(r"^Folder: +(\S+)", result.stdout, re.MULTILINE)
    folder = Path(kept[1]) if kept else None
    try:
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        assert folder is not None
        assert f"Folder kept: {folder}" in result.stdout
        pid = printed(r"^Prosody: +pid (\d+)", result.stdout)
        assert not Path(f"/proc/{pid}").exists()
        settings = load_settings(folder / "config.toml", environ={})
        component_port = printed(r"port (\d+) for the bot", result.stdout)
        assert settings.server_port == int(component_port)
        assert settings.admins == frozenset({"admin@example.test"})
        assert settings.store_path == (folder / "activity.db").resolve()
        assert settings.store_path.exists()  # the bot really wrote its store there
        assert settings.secret  # from secret_file, next to the config
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
