"""docker-compose.yml, checked statically: the bot and Prosody agree on every shared value.

No Docker engine is needed: the compose file is read as YAML with Compose's variable interpolation
redone here, the bot's config goes through `load_settings` with the environment compose gives the
bot container, and Prosody's config is read with small regexes (it is our own file), then handed
to `prosodyctl check config` when Prosody is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from bot.config import SECRET_ENV, TOKEN_ENV, ConfigError, Settings, load_settings
from bot.testbed.sandbox import INSTALLS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DEBIAN_MODULES = Path("/usr/lib/prosody/modules")  # Debian's prosody-modules package
# Tags of the official image -> the Prosody versions the suite runs (bot.testbed.sandbox.INSTALLS)
IMAGE_TAGS = {"0.12": "0.12", "13.0": "13"}


# --- docker-compose.yml -------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<dollar>\$)"
    r"|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?-)(?P<default>[^${}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*)"
    r"|(?P<other>\{[^}]*\}?))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default} and ${VAR-default}."""

    def replace(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        if match["other"] is not None:
            raise AssertionError(f"{text!r}: this test cannot evaluate {match[0]!r}; extend it")
        name = match["braced"] or match["bare"]
        value = env.get(name)
        if match["op"] == ":-" and not value:
            return match["default"]
        if match["op"] == "-" and value is None:
            return match["default"]
        return value or ""  # Compose warns and substitutes "" for an unset variable

    return _VARIABLE.sub(replace, text)


def _interpolated(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: _interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolated(value, env) for value in node]
    return node


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Compose sees it with the shell environment `env`."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(raw, dict), f"{COMPOSE_FILE.name}: not a YAML mapping"
    return _interpolated(raw, env or {})


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's container environment (mapping or list syntax)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """A service's volumes in long syntax (type, source, target, read_only), bind sources made
    absolute relative to the compose file's folder."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            source, _, rest = entry.partition(":")
            target, _, mode = rest.partition(":")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            entry = {"type": kind, "source": source, "target": target, "read_only": mode == "ro"}
        entry = dict(entry)
        if entry["type"] == "bind":
            entry["source"] = (COMPOSE_FILE.parent / entry["source"]).resolve()
        result.append(entry)
    return result


def mount_at(service: dict[str, Any], target: str) -> dict[str, Any]:
    found = [m for m in mounts(service) if m["target"] == target]
    assert found, (
        f"nothing is mounted at {target}; mounts: {[m['target'] for m in mounts(service)]}"
    )
    return found[0]


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = (line.strip() for line in text.splitlines())
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and line[0] != "#")
    ]


def dockerfile(instruction: str) -> str:
    values = [rest for word, rest in dockerfile_instructions() if word == instruction]
    assert values, f"Dockerfile has no {instruction}"
    return values[-1]  # the last one wins


def bot_command(bot: dict[str, Any]) -> list[str]:
    """What the bot container runs: the compose overrides, else the Dockerfile's exec form."""
    entrypoint = bot.get("entrypoint") or json.loads(dockerfile("ENTRYPOINT"))
    command = bot.get("command") or json.loads(dockerfile("CMD"))
    return [*entrypoint, *command]


# --- prosody.cfg.lua ----------------------------------------------------------------------------


def _without_comments(lua: str) -> str:
    return re.sub(r"--[^\n]*", "", lua)  # our file has no "--" inside strings


def lua_sections(lua: str) -> dict[tuple[str, str], str]:
    """("global", "") and ("VirtualHost" | "Component", name) -> that section's text."""
    parts = re.split(r'^\s*(VirtualHost|Component)\s+"([^"]+)"', _without_comments(lua), flags=re.M)
    sections = {("global", ""): parts[0]}
    for kind, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        assert (kind, name) not in sections, f"{kind} {name!r} is defined twice"
        sections[kind, name] = body
    return sections


def lua_option(section: str, key: str) -> str | None:
    """The raw Lua expression assigned to `key` in a section (a table with its braces)."""
    match = re.search(rf"(?:^|[;\s]){re.escape(key)}\s*=\s*", section)
    if match is None:
        return None
    start = match.end()
    if section[start] != "{":
        return re.match(r'"[^"]*"|[^\s;]+', section[start:])[0]
    depth = 0
    for index in range(start, len(section)):
        depth += {"{": 1, "}": -1}.get(section[index], 0)
        if depth == 0:
            return section[start : index + 1]
    raise AssertionError(f"unbalanced braces after {key} =")


def lua_list(expression: str | None) -> list[str]:
    """The items of a flat Lua list: strings unquoted, numbers as text."""
    if expression is None:
        return []
    return [a or b for a, b in re.findall(r'"([^"]*)"|(\d+)', expression)]


def lua_string(expression: str | None, env: Mapping[str, str]) -> str | None:
    """A string literal, or Prosody's ENV_NAME (the environment variable NAME, 0.12 and later)."""
    if expression is None:
        return None
    if expression.startswith('"'):
        return expression[1:-1]
    if match := re.fullmatch(r"ENV_(\w+)", expression):
        return env.get(match[1])
    raise AssertionError(f"cannot evaluate the Lua expression {expression!r}; extend this test")


# --- The pieces, as each container sees them ----------------------------------------------------


class Stack:
    """docker-compose.yml with the shell environment `env`, and the files it mounts."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.compose = compose(env)
        services = self.compose.get("services") or {}
        assert {"prosody", "bot"} <= set(services), f"services are {sorted(services)}"
        self.prosody, self.bot = services["prosody"], services["bot"]
        self.command = bot_command(self.bot)
        assert "--config" in self.command, f"the bot runs {self.command}, without --config"
        self.config_target = self.command[self.command.index("--config") + 1]
        self.config_file = mount_at(self.bot, self.config_target)["source"]
        self.lua_file = mount_at(self.prosody, "/etc/prosody/prosody.cfg.lua")["source"]
        self.lua = lua_sections(self.lua_file.read_text(encoding="utf-8"))

    def settings(self) -> Settings:
        return load_settings(self.config_file, environ=environment(self.bot))

    def hosts(self, kind: str) -> list[str]:
        return [name for section_kind, name in self.lua if section_kind == kind]

    def option(self, kind: str, name: str, key: str) -> str | None:
        return lua_option(self.lua[kind, name], key)


@pytest.fixture
def stack() -> Stack:
    return Stack()


def test_interpolation_follows_compose():
    """The helper the other tests rely on, against Compose's documented rules."""
    assert interpolate("${A:-x}", {}) == interpolate("${A:-x}", {"A": ""}) == "x"
    assert interpolate("${A:-x}/m", {"A": "y"}) == "y/m"
    assert interpolate("${A-x}", {"A": ""}) == ""
    assert interpolate("$A${B}$$C", {"A": "1", "B": "2"}) == "12$C"
    with pytest.raises(AssertionError, match="cannot evaluate"):
        interpolate("${A:?required}", {})


def test_compose_runs_the_official_prosody_image_and_builds_the_bot(stack):
    image = stack.prosody.get("image", "")
    assert image.startswith("prosodyim/prosody:"), f"prosody runs {image!r}, not the official image"
    build = stack.bot.get("build")
    context = build if isinstance(build, str) else (build or {}).get("context")
    assert context == ".", f"the bot is built from {build!r}, not from the repo's Dockerfile"
    assert DOCKERFILE.is_file()
    assert "prosody" in (stack.bot.get("depends_on") or []), "the bot does not depend on prosody"
    for name, service in (("prosody", stack.prosody), ("bot", stack.bot)):
        assert service.get("restart") == "unless-stopped", f"{name}: restart is not unless-stopped"


def test_bot_config_is_mounted_read_only_and_loads(stack):
    mount = mount_at(stack.bot, stack.config_target)
    assert mount["type"] == "bind", f"the config is mounted from a {mount['type']}, not a file"
    assert mount["read_only"], "the config is mounted writable"
    assert stack.config_file.is_file(), f"{stack.config_file} is mounted but does not exist"
    stack.settings()  # raises ConfigError with the reason


def test_component_jid_is_the_prosody_component(stack):
    components = stack.hosts("Component")
    jid = stack.settings().component_jid
    assert components == [jid], (
        f"bot's [component] jid is {jid!r}; Prosody's components {components}"
    )


def test_bot_connects_to_the_prosody_service_on_its_component_port(stack):
    settings = stack.settings()
    assert settings.server_host == "prosody", (
        f"bot's [server] host is {settings.server_host!r}, not the compose service 'prosody'"
    )
    ports = [int(p) for p in lua_list(stack.option("global", "", "component_ports"))] or [5347]
    assert settings.server_port in ports, (
        f"bot's [server] port is {settings.server_port}; Prosody's component_ports are {ports}"
    )
    interfaces = lua_list(stack.option("global", "", "component_interfaces"))
    assert {"*", "0.0.0.0"} & set(interfaces), (
        f"Prosody's component_interfaces {interfaces or '(default: loopback)'} are unreachable "
        "from the bot container"
    )


def test_virtual_host_grants_the_component_managed_entity_presence(stack):
    jid = stack.settings().component_jid
    [vhost] = stack.hosts("VirtualHost")
    entities = stack.option("VirtualHost", vhost, "privileged_entities") or ""
    grants = dict(re.findall(r'\[\s*"([^"]+)"\s*\]\s*=\s*(\{[^{}]*\})', entities))
    assert jid in grants, (
        f"VirtualHost {vhost!r} privileged_entities name {sorted(grants)}, not {jid}"
    )
    presence = re.search(r'presence\s*=\s*"([^"]*)"', grants[jid])
    assert (presence[1] if presence else None) == "managed_entity", (
        f"VirtualHost {vhost!r} grants {jid} {grants[jid]}, not presence = managed_entity"
    )


def test_mod_privilege_is_enabled_on_both_sides_and_mounted_into_plugin_paths(stack):
    [component] = stack.hosts("Component")
    for where, modules in (
        ("the global section", stack.option("global", "", "modules_enabled")),
        (f"Component {component!r}", stack.option("Component", component, "modules_enabled")),
    ):
        assert "privilege" in lua_list(modules), f"mod_privilege is not enabled in {where}"
    plugin_paths = lua_list(stack.option("global", "", "plugin_paths"))
    mounted = [m for m in mounts(stack.prosody) if m["target"].endswith("/mod_privilege")]
    assert mounted, "no mod_privilege folder is mounted into the prosody container"
    target = PurePosixPath(mounted[0]["target"])
    assert str(target.parent) in plugin_paths, f"{target} is not inside plugin_paths {plugin_paths}"
    assert Path(mounted[0]["source"]).name == "mod_privilege", (
        f"{mounted[0]['source']} is mounted as {target}: it must be a mod_privilege folder"
    )
    assert mounted[0]["read_only"]


@pytest.mark.skipif(
    not (DEBIAN_MODULES / "mod_privilege" / "mod_privilege.lua").is_file(),
    reason="Debian's prosody-modules is not installed",
)
def test_the_documented_debian_modules_dir_provides_mod_privilege():
    stack = Stack({"PROSODY_MODULES_DIR": str(DEBIAN_MODULES)})
    [mount] = [m for m in mounts(stack.prosody) if m["target"].endswith("/mod_privilege")]
    assert (Path(mount["source"]) / "mod_privilege.lua").is_file(), (
        f"PROSODY_MODULES_DIR={DEBIAN_MODULES} mounts {mount['source']}, which has no module"
    )


def test_counted_domains_are_the_prosody_virtual_hosts(stack):
    domains, vhosts = list(stack.settings().domains), stack.hosts("VirtualHost")
    assert domains == vhosts, f"bot counts {domains}; Prosody's VirtualHosts are {vhosts}"


@pytest.mark.parametrize(
    "shell_env", [{}, {SECRET_ENV: "from-the-shell"}], ids=["default", "from-the-shell"]
)
def test_bot_and_prosody_get_the_same_secret(shell_env):
    stack = Stack(shell_env)
    bot_secret = stack.settings().secret
    [component] = stack.hosts("Component")
    expression = stack.option("Component", component, "component_secret")
    prosody_secret = lua_string(expression, environment(stack.prosody))
    assert prosody_secret, f"Prosody's component_secret = {expression} is empty in its container"
    assert bot_secret == prosody_secret, (
        f"bot's secret is {bot_secret!r}, Prosody's component_secret is {prosody_secret!r}"
    )
    if shell_env:
        assert bot_secret == shell_env[SECRET_ENV], (
            "the secret set in the shell does not reach the bot"
        )


def test_the_secret_lives_in_compose_only(stack):
    """The mounted config has no secret of its own, which could silently differ from Prosody's."""
    with pytest.raises(ConfigError, match="secret is missing"):
        load_settings(stack.config_file, environ={})


def test_store_is_in_a_named_volume(stack):
    store = stack.settings().store_path
    volumes = [m for m in mounts(stack.bot) if m["type"] == "volume"]
    inside = [m for m in volumes if store.is_relative_to(m["target"])]
    assert inside, f"store {store} is not inside a named volume: {[m['target'] for m in volumes]}"
    name = inside[0]["source"]
    assert name in (stack.compose.get("volumes") or {}), f"volume {name!r} is not declared"
    assert dockerfile("VOLUME") in (inside[0]["target"], f'["{inside[0]["target"]}"]'), (
        f"the Dockerfile's VOLUME {dockerfile('VOLUME')} is not {inside[0]['target']}"
    )


def test_only_loopback_ports_are_published(stack):
    for name, service in (("prosody", stack.prosody), ("bot", stack.bot)):
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    published = [str(p).split(":")[-2] for p in stack.prosody.get("ports") or []]
    assert published == ["5222"], f"prosody publishes {published}; only c2s 5222 is meant to be"


def test_image_runs_the_bot_as_non_root():
    user = dockerfile("USER").split(":")[0]
    assert user not in ("root", "0"), f"the image runs as {user!r}"
    assert dockerfile("FROM").startswith("python:3.11-slim")
    assert json.loads(dockerfile("ENTRYPOINT")) == ["xmpp-active-users"]


def test_the_prosody_image_is_a_version_the_suite_runs(stack):
    tag = stack.prosody["image"].rpartition(":")[2]
    assert tag in IMAGE_TAGS, f"prosody runs tag {tag!r}; the suite tests {sorted(IMAGE_TAGS)}"


# --- Prosody's own verdict on the mounted config ------------------------------------------------


def image_prosodyctl() -> str | None:
    """The prosodyctl of the Prosody version the compose file's image runs, if installed here."""
    tag = str(compose()["services"]["prosody"].get("image", "")).rpartition(":")[2]
    install = INSTALLS.get(IMAGE_TAGS.get(tag, ""))
    return shutil.which(install.prosodyctl) if install else None


PROSODYCTL = image_prosodyctl()
needs_prosody = pytest.mark.skipif(
    PROSODYCTL is None, reason="the image's Prosody version is not installed here (make servers)"
)


@pytest.fixture
def readable_dir():
    """A folder the 'prosody' user can read: prosodyctl, run as root, checks as that user, and
    pytest's tmp_path is private to root (the check would fail for that reason alone)."""
    folder = Path(tempfile.mkdtemp(prefix="xau-prosody-check-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def prosodyctl_check(folder: Path, lua: str) -> str:
    """Exit status and output of `prosodyctl check config` on `lua`, as one text."""
    config = folder / "prosody.cfg.lua"
    config.write_text(lua, encoding="utf-8")
    config.chmod(0o644)
    result = subprocess.run(
        [PROSODYCTL, "--config", str(config), "check", "config"],
        cwd=folder,
        env={"PATH": "/usr/bin:/bin", SECRET_ENV: "check-secret"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


@needs_prosody
def test_prosody_accepts_the_mounted_config(stack, readable_dir):
    verdict = prosodyctl_check(readable_dir, stack.lua_file.read_text(encoding="utf-8"))
    assert verdict.startswith("exit 0\n"), f"prosodyctl rejects {stack.lua_file.name}: {verdict}"
    assert "All checks passed" in verdict, f"prosodyctl has remarks: {verdict}"


@needs_prosody
@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        (
            'modules_enabled = { "privilege" }',
            "modules_enabled = {",
            "problem occurred while reading",
        ),
        (
            'modules_enabled = { "privilege" }\n',  # the Component's
            'modules_enabled = { "privilege" }\nc2s_ports = { 5222 }\n',
            "move the following option: c2s_ports",
        ),
    ],
    ids=["syntax-error", "misplaced-option"],
)
def test_prosodyctl_check_rejects_a_broken_copy(stack, readable_dir, old, new, complaint):
    """The check above is a real verdict: the same command fails on a broken copy, and says why."""
    lua = stack.lua_file.read_text(encoding="utf-8")
    assert old in lua, f"the test's edit {old!r} no longer applies to {stack.lua_file.name}"
    verdict = prosodyctl_check(readable_dir, lua.replace(old, new, 1))
    assert not verdict.startswith("exit 0\n"), f"prosodyctl accepted a broken config: {verdict}"
    assert complaint in verdict, (
        f"prosodyctl failed for another reason than {complaint!r}: {verdict}"
    )


@pytest.mark.parametrize(
    "shell_env",
    [{}, {TOKEN_ENV: "from-the-shell-0123456789"}],
    ids=["default", "from-the-shell"],
)
def test_the_bot_listening_on_the_compose_network_gets_its_token(shell_env):
    # Beyond loopback the bot refuses to start without a token (README: "Who can read the figures
    # over HTTP"); compose hands it over like the component secret.
    settings = Stack(shell_env).settings()
    assert settings.metrics_listen == ("0.0.0.0", 9470)
    assert settings.metrics_token
    if shell_env:
        assert settings.metrics_token == shell_env[TOKEN_ENV]
