"""The README's install recipe, run for real: contrib/install.sh (the same commands, checked
line by line against the README) into a temporary root, beside a private Prosody whose config
includes the Component file the recipe writes; then the systemd unit's command line, run as the
unit's user (no systemd here), and the mistakes an admin meets on the way.

The script runs as root, as the README says: it creates a system user of a unique name (removed
at the end) and a venv with this checkout installed by pip (about 10 s with pip's cache).
"""

from __future__ import annotations

import configparser
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.testbed.sandbox import ProsodySandbox, free_ports, lua_string

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "contrib" / "install.sh"
README = ROOT / "README.md"
UNIT = ROOT / "contrib" / "systemd" / "xmpp-active-users.service"
DOMAIN = "example.test"
COMPONENT = f"active.{DOMAIN}"
ADMIN = f"admin@{DOMAIN}"
NOW = int(time.time())
HISTORY = {"alice": NOW - 2 * 3600, "bob": NOW - 3 * 86400, "carol": NOW - 20 * 86400}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the recipe runs as root")


# --- the README and the script agree ------------------------------------------------------------


def readme_recipe() -> list[str]:
    """The command lines of the README's recipe: its ```sh block after a marker."""
    text = README.read_text(encoding="utf-8")
    marker = text.index("<!-- contrib/install.sh -->")
    block = re.search(r"```sh\n(.*?)```", text[marker:], re.DOTALL)
    assert block, "no ```sh block after <!-- contrib/install.sh --> in README.md"
    return [line for line in block[1].splitlines() if line.strip() and not line.startswith("#")]


def script_recipe() -> list[str]:
    """The script's recipe as the README shows it: ROOT and SYS empty, the bot's user by name,
    without the lines for the tests."""
    lines = SCRIPT.read_text(encoding="utf-8").splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("# --- the recipe"))
    return [
        line.replace("$SYS ", "").replace("$ROOT", "").replace("$BOT_USER", "xmpp-active-users")
        for line in lines[start + 1 :]
        if line.strip() and not line.endswith("# tests only")
    ]


def test_the_readme_shows_the_scripts_commands_line_by_line():
    readme = readme_recipe()
    variables = [re.sub(r"\s+# .*", "", line) for line in readme[:3]]
    assert variables == [
        "DOMAIN=example.org",
        "ADMIN=admin@example.org",
        "COMPONENT=active.$DOMAIN",
    ]
    assert readme[3:] == script_recipe()


def test_the_unit_runs_as_the_user_the_recipe_creates_and_writes_the_folder_it_makes():
    service = unit_settings(UNIT)
    assert (service["User"], service["Group"]) == ("xmpp-active-users", "xmpp-active-users")
    recipe = "\n".join(script_recipe())
    assert "adduser --system --group --home /var/lib/xmpp-active-users xmpp-active-users" in recipe
    state = f"/var/lib/{service['StateDirectory']}"
    assert f"-o xmpp-active-users -g xmpp-active-users {state}\n" in recipe


# --- the recipe, run ------------------------------------------------------------------------------


@dataclass
class Installed:
    root: Path
    user: str
    output: str  # of the first run of the script

    def path(self, absolute: str) -> Path:
        """Where the recipe put what the README calls `absolute`."""
        return self.root / absolute.lstrip("/")

    @property
    def config(self) -> Path:
        return self.path("/etc/xmpp-active-users/config.toml")

    @property
    def program(self) -> Path:
        return self.path("/usr/local/bin/xmpp-active-users")

    def as_user(self, *argv: str, groups: tuple[str, ...] = (), timeout: float = 60):
        extra = [f"--supp-group={group}" for group in groups]
        command = ["runuser", "-u", self.user, "-g", self.user, *extra, "--", *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/")


def debian_layout(root: Path) -> None:
    """What Debian 12 with Prosody installed has before the recipe: the folders it writes
    into, and Prosody's data folder readable by the prosody user and group only, with the
    history mod_lastlog2 recorded."""
    for folder in ("usr/local/bin", "etc/systemd/system", "opt", "var/lib"):
        (root / folder).mkdir(parents=True)
    conf_d = root / "etc/prosody/conf.d"
    conf_d.mkdir(parents=True)
    shutil.chown(conf_d, "root", "prosody")
    conf_d.chmod(0o754)
    lastlog2 = root / "var/lib/prosody" / DOMAIN.replace(".", "%2e") / "lastlog2"
    lastlog2.mkdir(parents=True)
    for user, when in HISTORY.items():
        data = f'return {{ ["login"] = {{ ["timestamp"] = {when}; }}; }};\n'
        (lastlog2 / f"{user}.dat").write_text(data, encoding="utf-8")
    for folder, _, files in os.walk(root / "var/lib/prosody"):
        shutil.chown(folder, "prosody", "prosody")
        Path(folder).chmod(0o750)
        for name in files:
            shutil.chown(Path(folder) / name, "prosody", "prosody")
            (Path(folder) / name).chmod(0o640)


def run_script(root: Path, user: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",  # root's, on Debian
        "DOMAIN": DOMAIN,
        "ADMIN": ADMIN,
        "ROOT": str(root),
        "BOT_USER": user,
        "SYS": ":",
    }
    return subprocess.run(
        ["sh", str(SCRIPT)], capture_output=True, text=True, timeout=600, env=env, cwd="/"
    )


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    root = Path(tempfile.mkdtemp(prefix="xau-install-"))
    root.chmod(0o755)  # the bot's user must reach the venv and /etc inside it
    user = f"xau-test-{os.getpid()}"
    try:
        debian_layout(root)
        started = time.monotonic()
        first = run_script(root, user)
        assert first.returncode == 0, first.stdout + first.stderr
        print(f"install.sh took {time.monotonic() - started:.1f} s")
        yield Installed(root, user, first.stdout + first.stderr)
    finally:
        subprocess.run(["deluser", "--system", "--quiet", user], capture_output=True, check=False)
        subprocess.run(["delgroup", "--system", "--quiet", user], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_the_secret_is_made_once_and_written_to_both_sides(installed):
    secret_file = installed.path("/etc/xmpp-active-users/secret")
    secret = secret_file.read_text(encoding="utf-8").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", secret), secret
    component = installed.path(f"/etc/prosody/conf.d/{COMPONENT}.cfg.lua").read_text("utf-8")
    assert f'Component "{COMPONENT}"\n    component_secret = "{secret}"\n' in component
    for path, group in (
        (secret_file, installed.user),
        (installed.config, installed.user),
        (installed.path(f"/etc/prosody/conf.d/{COMPONENT}.cfg.lua"), "prosody"),
    ):
        stat = path.stat()
        assert (stat.st_mode & 0o777, pwd.getpwuid(stat.st_uid).pw_name) == (0o640, "root"), path
        assert grp.getgrgid(stat.st_gid).gr_name == group, path


def test_the_import_before_the_first_start_runs_as_the_bots_user_in_prosodys_group(installed):
    assert "Users imported: 3, updated: 0, unchanged: 0 (saved)" in installed.output
    store = installed.path("/var/lib/xmpp-active-users/activity.db")
    assert pwd.getpwuid(store.stat().st_uid).pw_name == installed.user
    counted = installed.as_user(
        str(installed.program), "count", "--config", str(installed.config), "--json"
    )
    assert counted.returncode == 0, counted.stderr
    figures = json.loads(counted.stdout)
    assert (figures["dau"], figures["wau"], figures["mau"]) == (1, 2, 3), figures


def test_running_the_script_again_changes_nothing(installed):
    secret = installed.path("/etc/xmpp-active-users/secret").read_text("utf-8")
    config = installed.config.read_text("utf-8")
    again = run_script(installed.root, installed.user)
    assert again.returncode == 0, again.stdout + again.stderr
    assert installed.path("/etc/xmpp-active-users/secret").read_text("utf-8") == secret
    assert installed.config.read_text("utf-8") == config


def test_without_prosodys_group_the_import_says_it_is_a_permission_problem(installed):
    data = installed.path("/var/lib/prosody")
    result = installed.as_user(
        str(installed.program), "import", "--config", str(installed.config),
        "--from", "prosody-lastlog2", str(data),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"xmpp-active-users: cannot read {data} (permission denied), so no prosody-lastlog2 "
        f"data files were found under {data}: Prosody's data is readable by its own user and "
        "group (prosody) only. Run the import as a member of that group, e.g. as root, as the "
        "bot's user: runuser -u xmpp-active-users -g xmpp-active-users -G prosody -- "
        "xmpp-active-users import --config FILE --from prosody-lastlog2 "
        f"{data}\n"
    )


def test_a_store_folder_of_another_user_names_the_owner_to_give_it(installed):
    folder = installed.path("/var/lib/not-the-bots")
    folder.mkdir(mode=0o755)
    config = installed.path("/etc/xmpp-active-users/elsewhere.toml")
    text = installed.config.read_text("utf-8")
    config.write_text(text.replace(str(installed.path("/var/lib/xmpp-active-users")), str(folder)))
    config.chmod(0o644)
    result = installed.as_user(str(installed.program), "run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"xmpp-active-users: {folder}/activity.db.lock: cannot be created (Permission denied): "
        f"{folder} must be writable by the user the bot runs as ({installed.user}); give it the "
        f"folder: chown -R {installed.user}:{installed.user} {folder}\n"
    )


# --- the unit's command line, as systemd would run it -------------------------------------------


class RecipeProsody(ProsodySandbox):
    """A private Prosody whose data folder is the recipe's /var/lib/prosody and whose config
    takes the Component block from the file the recipe wrote, as Debian's prosody.cfg.lua does
    with its last line (Include "conf.d/*.cfg.lua")."""

    conf_d: Path = Path("/nonexistent")

    @property
    def data_path(self) -> Path:
        return self.conf_d.parent.parent.parent / "var/lib/prosody"

    def render_config(self) -> str:
        config = super().render_config()
        own = config.index(f"Component {lua_string(self.component_jid)}")
        return config[:own] + f"Include {lua_string(str(self.conf_d) + '/*.cfg.lua')}\n"


def unit_settings(path: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(path.read_text(encoding="utf-8"))
    return parser["Service"]


def test_the_installed_unit_runs_the_bot_as_its_user(installed, tmp_path):
    unit_file = installed.path("/etc/systemd/system/xmpp-active-users.service")
    ours = UNIT.read_text(encoding="utf-8").splitlines()
    theirs = unit_file.read_text(encoding="utf-8").splitlines()
    differing = [(a, b) for a, b in zip(ours, theirs, strict=True) if a != b]
    assert differing == [
        ("User=xmpp-active-users", f"User={installed.user}"),
        ("Group=xmpp-active-users", f"Group={installed.user}"),
    ]
    service = unit_settings(unit_file)
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/usr/local/bin/xmpp-active-users"
    assert installed.program.resolve() == installed.path(
        "/opt/xmpp-active-users/bin/xmpp-active-users"
    )
    argv = [str(installed.path(arg)) if arg.startswith("/") else arg for arg in argv]
    # What the admin edits when the server is not Debian's default: here, private ports.
    prosody = RecipeProsody(tmp_path / "prosody", domain=DOMAIN, component_jid=COMPONENT)
    prosody.conf_d = installed.path("/etc/prosody/conf.d")
    prosody.c2s_port, prosody.component_port, prosody.http_port = free_ports(3)
    config = installed.config.read_text("utf-8")
    config = config.replace("port = 5347", f"port = {prosody.component_port}")
    installed.config.write_text(config.replace('listen = "127.0.0.1:9470"', 'listen = ""'))
    log = tmp_path / "bot.log"
    with prosody, log.open("wb") as sink:
        umask = service["UMask"]
        command = f"umask {umask} && exec {shlex.join(argv)}"
        user, group = service["User"], service["Group"]
        as_user = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups"]
        bot = subprocess.Popen(  # setpriv, like systemd, execs the command: bot.pid is the bot's
            [*as_user, "--", "sh", "-c", command],
            stdout=sink, stderr=subprocess.STDOUT, cwd="/",
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while "Privileges granted by" not in log.read_text("utf-8", "replace"):
                assert bot.poll() is None, log.read_text("utf-8", "replace")
                assert time.monotonic() < deadline, log.read_text("utf-8", "replace")
                time.sleep(0.1)
        finally:
            bot.send_signal(signal.SIGTERM)
            returncode = bot.wait(timeout=30)
    text = log.read_text("utf-8", "replace")
    assert returncode == 0, text
    assert f"Privileges granted by {DOMAIN}" in text, text
    assert "Traceback" not in text, text
    state = installed.path("/var/lib/xmpp-active-users")
    assert state.stat().st_mode & 0o777 == 0o700  # the store's files are the bot's user's alone
    for file in (state, *state.iterdir()):
        assert pwd.getpwuid(file.stat().st_uid).pw_name == installed.user, file
