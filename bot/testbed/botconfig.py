"""The bot's config file (TOML, the format of config.example.toml), written from keyword values.

The one writer for the demo, the tests and the benchmarks, so that each of them starts the bot
from a real file read by `bot.config.load_settings`. The keywords are named like the fields of
`bot.config.Settings`; an option left at None is not written, so the bot's default applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

Value = str | int | float | bool | Path | Sequence[str]


def write_config(
    path: Path,
    *,
    component_jid: str,
    domains: Sequence[str],
    admins: Sequence[str],
    store_path: str | Path,
    secret: str | None = None,
    secret_file: str | Path | None = None,
    server_host: str | None = None,
    server_port: int | None = None,
    server_software: str | None = None,
    liveness_interval: float | None = None,
    liveness_timeout: float | None = None,
    liveness_max_rate: float | None = None,
    first_count_after: float | None = None,
    count_interval: float | None = None,
    count_jitter: float | None = None,
    windows: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    metrics_listen: str | None = None,
    metrics_token: str | None = None,
    metrics_token_file: str | Path | None = None,
    retention_days: int | None = None,
    pseudonymize: bool | None = None,
    pseudonym_secret: str | None = None,
    flush_interval: float | None = None,
    nodeinfo: bool | None = None,
    nodeinfo_domains: Sequence[str] | None = None,
    nodeinfo_open_registrations: bool | None = None,
    nodeinfo_node_name: str | None = None,
    nodeinfo_software_name: str | None = None,
    nodeinfo_software_version: str | None = None,
    reports: Mapping[str, Value] | None = None,
    alerts: Mapping[str, Value] | None = None,
    comment: str = "",
) -> Path:
    """Write the config to `path` and return `path`.

    `metrics_listen` is the file's text: "HOST:PORT", or "" for no endpoint. `windows` are such
    as "7d" or "12h". A relative `store_path`, `secret_file` or `metrics_token_file` is relative
    to the file's folder (as `load_settings` reads it). `comment` goes first, each of its lines
    as a "# " line. `reports` and `alerts`: the keys of those sections, as in the file.
    """
    sections: dict[str, dict[str, Value | None]] = {
        "component": {"jid": component_jid, "secret": secret, "secret_file": secret_file},
        "server": {"host": server_host, "port": server_port, "software": server_software},
        "liveness": {
            "interval": liveness_interval,
            "timeout": liveness_timeout,
            "max_rate": liveness_max_rate,
        },
        "counting": {
            "domains": domains,
            "first_count_after": first_count_after,
            "interval": count_interval,
            "jitter": count_jitter,
            "windows": windows,
            "exclude": exclude,
        },
        "access": {"admins": admins},
        "metrics": {
            "listen": metrics_listen,
            "token": metrics_token,
            "token_file": metrics_token_file,
        },
        "privacy": {
            "retention_days": retention_days,
            "pseudonymize": pseudonymize,
            "pseudonym_secret": pseudonym_secret,
        },
        "store": {"path": store_path, "flush_interval": flush_interval},
        "nodeinfo": {
            "enabled": nodeinfo,
            "domains": nodeinfo_domains,
            "open_registrations": nodeinfo_open_registrations,
            "node_name": nodeinfo_node_name,
            "software_name": nodeinfo_software_name,
            "software_version": nodeinfo_software_version,
        },
        "reports": dict(reports or {}),
        "alerts": dict(alerts or {}),
    }
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    for section, keys in sections.items():
        given = [f"{key} = {_toml(value)}" for key, value in keys.items() if value is not None]
        if given:
            lines += ["", f"[{section}]", *given] if lines else [f"[{section}]", *given]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml(value: Value) -> str:
    """A TOML value: a basic string, a number, a boolean or an array of strings."""
    if isinstance(value, bool):  # before int: a bool is an int
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return _toml_string(str(value))
    return "[" + ", ".join(_toml_string(item) for item in value) + "]"


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    escaped = "".join(
        _ESCAPES.get(char)
        or (f"\\u{ord(char):04x}" if ord(char) < 0x20 or char == "\x7f" else char)
        for char in text
    )
    return f'"{escaped}"'
