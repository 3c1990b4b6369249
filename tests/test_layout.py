"""The shipped commands never load the testbed (the code that starts private servers and clients).

Each command runs for real in a fresh interpreter, through `bot.__main__.main`, and then the
modules it loaded are listed: none may come from `bot.testbed`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot.testbed.botconfig import write_config
from bot.testbed.sandbox import free_ports

PROBE = """
import json, sys
from bot.__main__ import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if m.startswith("bot"))}))
"""


def run_command(*args: str) -> tuple[int, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60
    )
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome["code"], outcome["modules"]


@pytest.fixture
def config(tmp_path) -> Path:
    (closed_port,) = free_ports(1)  # nothing listens there: `run` stops at once with exit 1
    path = write_config(
        tmp_path / "config.toml",
        component_jid="active.example.test",
        secret="s3cret",
        server_port=closed_port,
        domains=["example.test"],
        admins=["admin@example.test"],
        store_path="activity.db",
        metrics_listen="",
    )
    lastlog2 = tmp_path / "prosody" / "example%2etest" / "lastlog2"
    lastlog2.mkdir(parents=True)
    (lastlog2 / "alice.dat").write_text('return { ["login"] = { ["timestamp"] = 1; }; };\n')
    return path


@pytest.mark.parametrize(
    ("command", "exit_code"),
    [
        (("import", "--from", "prosody-lastlog2", "{dir}/prosody"), 0),
        (("count",), 0),
        (("history", "--days", "3"), 0),
        (("forget", "alice@example.test"), 0),
        (("run",), 1),  # nothing accepts the component: a clear error, exit 1
    ],
    ids=lambda value: value[0] if isinstance(value, tuple) else None,
)
def test_shipped_commands_load_no_testbed_module(config, command, exit_code):
    if command[0] != "import":  # the others need a store: the import makes one
        code, _ = run_command(
            "import", "-c", str(config), "--from", "prosody-lastlog2", f"{config.parent}/prosody"
        )
        assert code == 0
    name, *rest = command
    args = [arg.format(dir=config.parent) for arg in rest]
    code, modules = run_command(name, "-c", str(config), *args)
    assert code == exit_code
    assert "bot.__main__" in modules
    assert [m for m in modules if m.startswith("bot.testbed")] == []


# Each layer, the layers it may import (bottom first); `bot/config.py` the settings it reads,
# `bot/config_values.py` (the parsers of its values) the constants they check against.
MAY_IMPORT = {
    "core": [],
    "storage": ["core"],
    "activity": ["core", "storage"],
    "admin": ["core"],
    "importing": ["core", "storage", "activity"],
    "xmpp": ["core", "storage", "activity", "admin"],
    "web": ["core", "admin"],
    "config_values": ["core", "admin"],
    "config": ["core", "storage", "admin", "web", "config_values"],
    "app": ["core", "storage", "activity", "admin", "importing", "xmpp", "web", "config"],
}
TOP_MODULES = {"bot", "bot.__main__", "bot.config", "bot.config_values"}


def imports_of(path: Path, module: str) -> set[str]:
    """Every bot module a file imports, at its top, in a function or under TYPE_CHECKING."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found |= {target} | {f"{target}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "bot"}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if module in TOP_MODULES or len(parts) < 2:
        return parts[-1] if module != "bot" else None
    return parts[1]


def test_each_import_points_down():
    bot = Path(__file__).resolve().parent.parent / "bot"
    wrong = []
    for path in sorted(bot.rglob("*.py")):
        module = ".".join(path.relative_to(bot.parent).with_suffix("").parts)
        layer = layer_of(module)
        if layer not in MAY_IMPORT:  # __main__ and the testbed may import anything
            continue
        allowed = {layer, *MAY_IMPORT[layer]}
        for name in sorted(imports_of(path, module)):
            target = layer_of(name)
            if target is not None and target not in allowed and name != "bot":
                wrong.append(f"{module} imports {name}")
    assert wrong == []


def test_each_module_lives_in_a_layer():
    bot = Path(__file__).resolve().parent.parent / "bot"
    flat = sorted(p.name for p in bot.glob("*.py") if f"bot.{p.stem}" not in TOP_MODULES)
    assert flat == ["__init__.py"]
    for layer in MAY_IMPORT:
        if layer not in ("config", "config_values"):
            doc = ast.get_docstring(ast.parse((bot / layer / "__init__.py").read_text()))
            assert doc, f"bot/{layer}/__init__.py says the layer's job"
            assert "\n" not in doc.strip(), f"bot/{layer}/__init__.py: one line"
