"""The command line, run as an admin would run it."""

from __future__ import annotations

import getpass
import grp
import json
import os
import platform
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from bot.activity.tracker import ActivityTracker
from bot.storage.store import Store

from .support import MINIMAL, write


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, timeout=60
    )


def fill_store(config_dir, now):
    with Store(config_dir / "data" / "activity.db") as store:
        tracker = ActivityTracker(store, ["example.test"])
        tracker.load(now)
        tracker.session_started("alice@example.test", "phone", now - 3600)  # still online
        tracker.session_started("bob@example.test", "pc", now - 3 * 86400)
        tracker.session_ended("bob@example.test", "pc", now - 3 * 86400 + 60)
        tracker.session_started("carol@example.test", "pc", now - 40 * 86400)
        tracker.session_ended("carol@example.test", "pc", now - 40 * 86400 + 60)
        store.flush(now)


def test_count_prints_the_figures_as_json(tmp_path):
    now = int(time.time())
    config = write(tmp_path, MINIMAL)
    fill_store(tmp_path, now)
    result = run("count", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    # the bot is not running, so alice's session ended at its last heartbeat (now)
    assert {k: figures[k] for k in ("dau", "wau", "mau", "online_users", "known_users")} == {
        "dau": 1,
        "wau": 2,
        "mau": 2,
        "online_users": 0,
        "known_users": 3,
    }
    assert figures["bot_running"] is False


def test_count_while_the_bot_holds_the_store_sees_its_online_users(tmp_path):
    now = int(time.time())
    config = write(tmp_path, MINIMAL)
    fill_store(tmp_path, now)
    with Store(tmp_path / "data" / "activity.db") as store:  # the "bot", running
        store.put("dave@example.test", store.get("alice@example.test"))
        store.flush(now)
        result = run("count", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "last 24 hours          2" in result.stdout  # alice and dave, online
    assert "last 7 days            3" in result.stdout  # and bob
    assert "online now             2 users, 2 sessions" in result.stdout


def test_count_without_a_store_explains_and_fails(tmp_path):
    result = run("count", "--config", str(write(tmp_path, MINIMAL)))
    assert result.returncode == 2
    assert "no store there yet" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    result = run("count", "--config", str(write(tmp_path, MINIMAL.replace("[store]", "[stor]"))))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "unknown section [stor]" in result.stderr


def test_every_command_explains_itself():
    top = run("--help")
    assert top.returncode == 0
    assert "DAU" in top.stdout
    assert "count" in top.stdout
    count = run("count", "--help")
    assert "safe while the bot runs" in count.stdout


def test_forget_removes_one_user(tmp_path):
    now = int(time.time())
    config = write(tmp_path, MINIMAL)
    fill_store(tmp_path, now)
    result = run("forget", "--config", str(config), "bob@example.test")
    assert (result.returncode, result.stdout) == (0, "Forgot bob@example.test.\n")
    again = run("forget", "--config", str(config), "bob@example.test")
    assert again.stdout == "Nothing was stored about bob@example.test.\n"
    with Store(tmp_path / "data" / "activity.db", readonly=True) as store:
        assert sorted(jid for jid, _ in store.users()) == [
            "alice@example.test",
            "carol@example.test",
        ]
    bad = run("forget", "--config", str(config), "bob@example.test/phone")
    assert bad.returncode == 2
    assert "give a bare JID" in bad.stderr


def test_a_store_in_a_missing_folder_is_refused_and_nothing_is_created(tmp_path):
    """A typo in [store] path must not start an empty store in a folder the bot makes up."""
    config = write(tmp_path, MINIMAL.replace('path = "data/activity.db"', 'path = "dta/x/a.db"'))
    lastlog2 = tmp_path / "prosody" / "example%2etest" / "lastlog2"
    lastlog2.mkdir(parents=True)
    (lastlog2 / "alice.dat").write_text(
        f'return {{ ["login"] = {{ ["timestamp"] = {int(time.time()) - 60}; }}; }};\n'
    )
    for command in (["run"], ["import", "--from", "prosody-lastlog2", str(tmp_path / "prosody")]):
        result = run(*command, "--config", str(config))
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            f"xmpp-active-users: {tmp_path}/dta/x/a.db: the folder {tmp_path}/dta/x does not "
            f"exist (nor does {tmp_path}/dta). Check [store] path for a typo; if it is right, "
            "create the folder for the user the bot runs as: install -d -m 0700 "
            f"-o {getpass.getuser()} -g {grp.getgrgid(os.getegid()).gr_name} "
            f"{tmp_path}/dta/x\n"
        )
        assert not (tmp_path / "dta").exists()


def test_version_names_the_release_and_what_it_runs_on():
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text("utf-8"))
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"xmpp-active-users {re.escape(project['project']['version'])} "
        rf"\(slixmpp [\d.]+, Python {re.escape(platform.python_version())}\)\n",
        result.stdout,
    ), result.stdout
