"""The values a config file may hold: each section's keys, their parsers, defaults and examples.

A parser takes one TOML value and returns it checked (and normalised), or raises ValueError whose
words say what is wrong; `bot.config` adds the file, the key and the example.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from slixmpp.jid import JID, InvalidJID

from .admin.reports import WEEKDAYS

SOFTWARE = ("prosody", "ejabberd", "generic")
MIN_TOKEN_LENGTH = 16

T = TypeVar("T")


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return float(value)


def _non_negative_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"must be zero or a positive number of seconds, got {value!r}")
    return float(value)


def _software(value: Any) -> str:
    text = _text(value).lower()
    if text not in SOFTWARE:
        raise ValueError(f"must be one of {', '.join(SOFTWARE)}, got {value!r}")
    return text


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a whole number of days (0 for off), got {value!r}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a whole number (0 for off), got {value!r}")
    return value


def _weekday(value: Any) -> int:
    text = _text(value).lower()
    if text not in WEEKDAYS:
        raise ValueError(f"must be a day of the week in English, got {value!r}")
    return WEEKDAYS.index(text)


def _hour(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 23:
        raise ValueError(f"must be an hour of the day, 0 to 23 (UTC), got {value!r}")
    return value


def _share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"must be a share from 0 (off) to below 1, such as 0.5, got {value!r}")
    return float(value)


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"must be a TCP port number (1-65535), got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value.strip()


def _domain(value: Any) -> str:
    text = _text(value)
    try:
        jid = JID(text)
    except InvalidJID as exc:
        raise ValueError(f"{text!r} is not a valid domain ({exc})") from None
    if jid.user or jid.resource:
        raise ValueError(f"{text!r} must be a bare domain such as 'example.org'")
    return jid.domain


def _bare_jid(value: Any) -> str:
    text = _text(value)
    try:
        jid = JID(text)
    except InvalidJID as exc:
        raise ValueError(f"{text!r} is not a valid JID ({exc})") from None
    if not jid.user or jid.resource:
        raise ValueError(f"{text!r} must be a bare JID such as 'admin@example.org'")
    return jid.bare


def _software_name(value: Any) -> str:
    text = _text(value)
    if not re.fullmatch(r"[a-z0-9-]+", text):
        raise ValueError(
            f"must be lower-case letters, digits and dashes (NodeInfo's rule), got {text!r}"
        )
    return text


def _version(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 100:
        raise ValueError(f"must be a string of at most 100 characters, got {value!r}")
    return value.strip()


def _node_name(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 200:
        raise ValueError(f"must be a string of at most 200 characters, got {value!r}")
    return value.strip()


def _window(value: Any) -> int:
    """ "30d" or "12h" as seconds."""
    text = _text(value)
    match = re.fullmatch(r"(\d+)\s*([dh])", text.lower())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a window such as '7d' (days) or '12h' (hours)")
    return int(match.group(1)) * (86_400 if match.group(2) == "d" else 3600)


def _windows(value: Any) -> tuple[int, ...]:
    return tuple(sorted(_list_of(_window)(value)))


def _exclusion(value: Any) -> str:
    text = _text(value).lower()
    if "@" not in text or "/" in text:
        raise ValueError(f"{text!r} must be a bare JID or a pattern such as '*@bots.example.org'")
    return text


def _listen(value: Any) -> tuple[str, int] | None:
    if value == "":
        return None
    text = _text(value)
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{text!r} must be HOST:PORT such as '127.0.0.1:9470', or \"\" for off")
    return host.strip("[]"), _port(int(port))


def parse_token(value: Any) -> str:
    text = _text(value)
    if not re.fullmatch(r"[\x21-\x7e]+", text) or len(text) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"must be at least {MIN_TOKEN_LENGTH} visible ASCII characters without spaces "
            f"(e.g. the output of `openssl rand -hex 32`), got {len(text)} characters"
        )  # never the value itself: it is a secret
    return text


def _list_of(
    item: Callable[[Any], T], *, may_be_empty: bool = False
) -> Callable[[Any], tuple[T, ...]]:
    def parse(value: Any) -> tuple[T, ...]:
        if not isinstance(value, list) or not (value or may_be_empty):
            raise ValueError(f"must be a non-empty list, got {value!r}")
        return tuple(dict.fromkeys(item(v) for v in value))  # de-duplicated, order kept

    return parse


SCHEMA: dict[str, dict[str, tuple[bool, Callable[[Any], Any], Any, str]]] = {
    # key: (required, parser, default, example shown in errors)
    "component": {
        "jid": (True, _domain, None, 'jid = "active.example.org"'),
        "secret": (False, _text, None, 'secret = "the component_secret of your server"'),
        "secret_file": (False, _text, None, 'secret_file = "/etc/xmpp-active-users/secret"'),
    },
    "server": {
        "host": (False, _text, "127.0.0.1", 'host = "127.0.0.1"'),
        "port": (False, _port, 5347, "port = 5347"),
        "software": (False, _software, "prosody", 'software = "prosody"'),
    },
    "liveness": {
        "interval": (False, _non_negative_number, None, "interval = 300"),
        "timeout": (False, _positive_number, 30.0, "timeout = 30"),
        "max_rate": (False, _positive_number, 20.0, "max_rate = 20"),
    },
    "counting": {
        "domains": (True, _list_of(_domain), None, 'domains = ["example.org"]'),
        "first_count_after": (False, _non_negative_number, 15.0, "first_count_after = 15"),
        "interval": (False, _positive_number, 3600.0, "interval = 3600"),
        "jitter": (False, _non_negative_number, 300.0, "jitter = 300"),
        "windows": (False, _windows, None, 'windows = ["1d", "7d", "30d", "90d"]'),
        "exclude": (
            False,
            _list_of(_exclusion, may_be_empty=True),
            (),
            'exclude = ["monitor@example.org", "*@bots.example.org"]',
        ),
    },
    "access": {
        "admins": (True, _list_of(_bare_jid), None, 'admins = ["admin@example.org"]'),
    },
    "metrics": {
        "listen": (False, _listen, ("127.0.0.1", 9470), 'listen = "127.0.0.1:9470"'),
        "token": (False, parse_token, None, 'token = "output of: openssl rand -hex 32"'),
        "token_file": (False, _text, None, 'token_file = "/etc/xmpp-active-users/metrics-token"'),
    },
    "nodeinfo": {
        "enabled": (False, _boolean, False, "enabled = true"),
        "domains": (False, _list_of(_domain), None, 'domains = ["example.org"]'),
        "open_registrations": (False, _boolean, False, "open_registrations = false"),
        "node_name": (False, _node_name, "", 'node_name = "Example chat service"'),
        "software_name": (False, _software_name, None, 'software_name = "prosody"'),
        "software_version": (False, _version, "", 'software_version = "13.0.1"'),
    },
    "reports": {
        "enabled": (False, _boolean, False, "enabled = true"),
        "weekly": (False, _boolean, True, "weekly = true"),
        "monthly": (False, _boolean, False, "monthly = false"),
        "weekday": (False, _weekday, 0, 'weekday = "monday"'),
        "hour": (False, _hour, 8, "hour = 8"),
        "recipients": (False, _list_of(_bare_jid), None, 'recipients = ["admin@example.org"]'),
    },
    "alerts": {
        "enabled": (False, _boolean, False, "enabled = true"),
        "privileges": (False, _boolean, True, "privileges = true"),
        "store_failing_for": (False, _non_negative_number, 300.0, "store_failing_for = 300"),
        "link_down_for": (False, _non_negative_number, 300.0, "link_down_for = 300"),
        "duty_restarts": (False, _count, 3, "duty_restarts = 3"),
        "dau_below": (False, _share, 0.5, "dau_below = 0.5"),
        "recipients": (False, _list_of(_bare_jid), None, 'recipients = ["admin@example.org"]'),
    },
    "privacy": {
        "retention_days": (False, _non_negative_int, 0, "retention_days = 400"),
        "pseudonymize": (False, _boolean, False, "pseudonymize = true"),
        "pseudonym_secret": (
            False,
            _text,
            None,
            'pseudonym_secret = "a long random string, kept as safe as the store"',
        ),
    },
    "store": {
        "path": (True, _text, None, 'path = "/var/lib/xmpp-active-users/activity.db"'),
        "flush_interval": (False, _positive_number, 1.0, "flush_interval = 1.0"),
    },
}
