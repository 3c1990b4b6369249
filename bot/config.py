"""The settings: one frozen object, read from a TOML file and validated once, at start.

Every problem is reported as one line that names the file, the key and how to fix it. Each key's
parser, default and example are in `config_values.SCHEMA`; here, the keys are checked against it,
the checks that span keys are made (recipients are admins, retention covers the windows, ...), and
the secrets are read.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .admin.alerts import AlertSettings
from .admin.reports import ReportSettings
from .config_values import SCHEMA, parse_token
from .core.counter import DEFAULT_WINDOWS
from .storage.pseudonym import MIN_SECRET_LENGTH
from .web.nodeinfo import HALF_YEAR, NodeInfoSettings

SECRET_ENV = "XMPP_ACTIVE_USERS_SECRET"
TOKEN_ENV = "XMPP_ACTIVE_USERS_METRICS_TOKEN"


class ConfigError(Exception):
    """A configuration problem, worded for the admin who has to fix it."""


@dataclass(frozen=True)
class Settings:
    component_jid: str
    secret: str
    server_host: str
    server_port: int
    domains: tuple[str, ...]
    admins: frozenset[str]
    store_path: Path
    flush_interval: float
    first_count_after: float
    count_interval: float
    count_jitter: float
    windows: tuple[int, ...] = DEFAULT_WINDOWS  # 24 hours, 7 days, 30 days
    exclude: tuple[str, ...] = ()  # bare JIDs and glob patterns never counted nor stored
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9470)  # None: no HTTP listener
    metrics_token: str | None = None  # set: every HTTP request needs it (bearer or basic auth)
    server_software: str = "prosody"  # what the server does on connect (see `announces_sessions`)
    liveness_interval: float = 0.0  # seconds between pings of one session; 0: off
    liveness_timeout: float = 30.0
    liveness_max_rate: float = 20.0
    retention_days: int = 0  # 0: keep forever
    pseudonym_key: bytes | None = None  # set: the store keys users by a keyed hash
    # Where the secret came from, for the message when the server refuses it.
    secret_source: str = "[component] secret"
    nodeinfo: NodeInfoSettings | None = None  # set: NodeInfo documents on the HTTP listener
    # The periodic report and the alerts to admins (opt-in); frozen, so one default is shared.
    reports: ReportSettings = field(default_factory=ReportSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)

    @property
    def announces_sessions(self) -> bool:
        """Prosody re-sends every online user's presence when a component connects, and an
        unavailable when a session ends; ejabberd does neither reliably (liveness pings do)."""
        return self.server_software == "prosody"


def load_settings(
    path: Path, *, environ: Mapping[str, str] | None = None, need_secret: bool = True
) -> Settings:
    """Read and validate the config file; raise ConfigError with a one-line explanation.

    `need_secret=False` serves commands that only read the store (`count`), so that an admin
    without access to the secret can still run them.
    """
    environ = os.environ if environ is None else environ
    values = _validate(path, _read_toml(path))
    secret, secret_source = _resolve_secret(path, values, environ) if need_secret else ("", "")
    token = _resolve_token(path, values, environ) if need_secret else None
    windows = values["counting.windows"] or Settings.windows
    nodeinfo = _nodeinfo(path, values)
    longest = max(windows) if nodeinfo is None else max(*windows, HALF_YEAR)
    _check_retention(path, values["privacy.retention_days"], longest, nodeinfo is not None)
    return Settings(
        component_jid=values["component.jid"],
        secret=secret,
        secret_source=secret_source,
        server_host=values["server.host"],
        server_port=values["server.port"],
        domains=values["counting.domains"],
        admins=frozenset(values["access.admins"]),
        store_path=_beside(path, values["store.path"]),
        flush_interval=values["store.flush_interval"],
        first_count_after=values["counting.first_count_after"],
        count_interval=values["counting.interval"],
        count_jitter=values["counting.jitter"],
        windows=windows,
        exclude=values["counting.exclude"],
        metrics_listen=values["metrics.listen"],
        metrics_token=token,
        retention_days=values["privacy.retention_days"],
        pseudonym_key=_pseudonym_key(path, values),
        server_software=values["server.software"],
        liveness_interval=_liveness_interval(values),
        liveness_timeout=values["liveness.timeout"],
        liveness_max_rate=values["liveness.max_rate"],
        nodeinfo=nodeinfo,
        reports=ReportSettings(
            enabled=_reports_enabled(path, values),
            weekly=values["reports.weekly"],
            monthly=values["reports.monthly"],
            weekday=values["reports.weekday"],
            hour=values["reports.hour"],
            recipients=_recipients(path, "reports", values),
        ),
        alerts=AlertSettings(
            enabled=values["alerts.enabled"],
            privileges=values["alerts.privileges"],
            store_failing_for=values["alerts.store_failing_for"],
            link_down_for=values["alerts.link_down_for"],
            duty_restarts=values["alerts.duty_restarts"],
            dau_below=values["alerts.dau_below"],
            recipients=_recipients(path, "alerts", values),
        ),
    )


def _reports_enabled(path: Path, values: dict[str, Any]) -> bool:
    enabled = bool(values["reports.enabled"])
    if enabled and not (values["reports.weekly"] or values["reports.monthly"]):
        raise ConfigError(
            f"{path}: [reports] enabled = true, but weekly and monthly are both false; "
            "set weekly = true or monthly = true (or enabled = false)"
        )
    return enabled


def _recipients(path: Path, section: str, values: dict[str, Any]) -> frozenset[str] | None:
    """Who gets the reports or alerts: admins only (None: every admin)."""
    recipients = values[f"{section}.recipients"]
    if recipients is None:
        return None
    for jid in recipients:
        if jid not in values["access.admins"]:
            raise ConfigError(
                f"{path}: [{section}] recipients lists {jid!r}, who is not in [access] admins: "
                "only admins get the figures; add them there, or remove them here"
            )
    return frozenset(recipients)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; copy config.example.toml there and edit it"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def _check_retention(path: Path, retention_days: int, longest: int, nodeinfo: bool) -> None:
    if retention_days and retention_days * 86_400 < longest:
        window = "NodeInfo's activeHalfyear" if nodeinfo else "the longest window"
        raise ConfigError(
            f"{path}: [privacy] retention_days = {retention_days} is shorter than {window} "
            f"({longest // 86_400} days): users would vanish from its count; raise it"
        )


def _nodeinfo(path: Path, values: dict[str, Any]) -> NodeInfoSettings | None:
    """`[nodeinfo]`: None unless enabled; its domains must be counted ones, and it needs the
    HTTP listener."""
    if not values["nodeinfo.enabled"]:
        return None
    counted = values["counting.domains"]
    domains = values["nodeinfo.domains"] or counted
    for domain in domains:
        if domain not in counted:
            raise ConfigError(
                f"{path}: [nodeinfo] domains lists {domain!r}, which is not in [counting] "
                f"domains ({', '.join(counted)}): the bot has no figures for it"
            )
    if values["metrics.listen"] is None:
        raise ConfigError(
            f'{path}: [nodeinfo] enabled = true needs the HTTP listener, but [metrics] listen = ""'
            '; set listen = "127.0.0.1:9470" (a reverse proxy publishes it: see '
            "docs/privacy-security.md)"
        )
    software = values["nodeinfo.software_name"] or values["server.software"]
    if software == "generic":
        raise ConfigError(
            f"{path}: [nodeinfo] software_name is missing: NodeInfo names the server software; "
            'add for example: software_name = "tigase"'
        )
    return NodeInfoSettings(
        domains=domains,
        open_registrations=values["nodeinfo.open_registrations"],
        node_name=values["nodeinfo.node_name"],
        software_name=software,
        software_version=values["nodeinfo.software_version"],
    )


def _pseudonym_key(path: Path, values: dict[str, Any]) -> bytes | None:
    if not values["privacy.pseudonymize"]:
        return None
    if not values["privacy.pseudonym_secret"]:
        raise ConfigError(
            f"{path}: [privacy] pseudonymize = true needs pseudonym_secret; add: "
            'pseudonym_secret = "a long random string" (never change it afterwards)'
        )
    secret = str(values["privacy.pseudonym_secret"])
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"{path}: [privacy] pseudonym_secret is {len(secret)} characters long; use at least "
            f"{MIN_SECRET_LENGTH} random ones (e.g. the output of `openssl rand -hex 32`): a "
            "short one can be guessed, and with it every pseudonym reversed"
        )
    return secret.encode()


def _liveness_interval(values: dict[str, Any]) -> float:
    """Prosody tells us when sessions end; elsewhere, check them every 5 minutes by default."""
    if values["liveness.interval"] is not None:
        return float(values["liveness.interval"])
    return 0.0 if values["server.software"] == "prosody" else 300.0


def _beside(config_path: Path, value: str) -> Path:
    """A path from the config: relative to the config file, not to the working directory."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else config_path.resolve().parent / path


def _validate(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for section in raw:
        if section not in SCHEMA:
            raise ConfigError(
                f"{path}: unknown section [{section}]; known sections: "
                + ", ".join(f"[{s}]" for s in SCHEMA)
            )
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{path}: {section} must be a [{section}] table")
    for section, keys in SCHEMA.items():
        table = raw.get(section, {})
        for key in table:
            if key not in keys:
                raise ConfigError(
                    f"{path}: [{section}] has unknown key {key!r}; known keys: " + ", ".join(keys)
                )
        for key, (required, parse, default, example) in keys.items():
            if key not in table:
                if required:
                    raise ConfigError(f"{path}: [{section}] {key} is missing; add: {example}")
                values[f"{section}.{key}"] = default
                continue
            try:
                values[f"{section}.{key}"] = parse(table[key])
            except ValueError as exc:
                raise ConfigError(
                    f"{path}: [{section}] {key} {exc}; for example: {example}"
                ) from None
    return values


def _resolve_secret(
    path: Path, values: dict[str, Any], environ: Mapping[str, str]
) -> tuple[str, str]:
    """The environment variable wins (containers); else exactly one of secret / secret_file.
    Returns the secret and where it came from, in words."""
    secret = _read_secret(path, "component", "secret", values, environ.get(SECRET_ENV))
    if secret is None:
        raise ConfigError(
            f'{path}: [component] secret is missing; add secret = "..." or '
            f'secret_file = "...", or set the environment variable {SECRET_ENV}'
        )
    if (environ.get(SECRET_ENV) or "").strip():
        return secret, f"the secret in the environment variable {SECRET_ENV}"
    if values["component.secret_file"]:
        file = _beside(path, values["component.secret_file"])
        return secret, f"the secret read from {file} ([component] secret_file)"
    return secret, f"[component] secret in {path}"


def _resolve_token(path: Path, values: dict[str, Any], environ: Mapping[str, str]) -> str | None:
    """The HTTP listener's token, read like the component secret. Required when the listener is
    reachable from other machines: the figures are not for everyone."""
    token = _read_secret(path, "metrics", "token", values, environ.get(TOKEN_ENV))
    if token is not None:
        try:
            return parse_token(token)
        except ValueError as exc:
            raise ConfigError(f"{path}: [metrics] token {exc}") from None
    listen = values["metrics.listen"]
    if listen is not None and not is_loopback(listen[0]):
        raise ConfigError(
            f'{path}: [metrics] listen = "{_listen_text(*listen)}" is reachable from other '
            "machines, so it needs a token: add token_file = "
            '"/etc/xmpp-active-users/metrics-token" (a file holding the output of `openssl '
            f"rand -hex 32`) or set {TOKEN_ENV}; or listen on 127.0.0.1"
        )
    return None


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (an IP address, or "localhost")."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def _listen_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_secret(
    path: Path, section: str, key: str, values: dict[str, Any], from_environment: str | None
) -> str | None:
    """A secret from the environment (wins), or from exactly one of KEY / KEY_file; None when
    none is given. Its value never appears in an error."""
    if from_environment and from_environment.strip():
        return from_environment.strip()
    secret, secret_file = values[f"{section}.{key}"], values[f"{section}.{key}_file"]
    if secret and secret_file:
        raise ConfigError(
            f"{path}: [{section}] has both {key} and {key}_file; keep only one of them"
        )
    if secret_file:
        file = _beside(path, secret_file)
        try:
            secret = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{path}: [{section}] {key}_file {str(file)!r} cannot be read ({exc.strerror})"
            ) from None
        if not secret:
            raise ConfigError(f"{path}: [{section}] {key}_file {str(file)!r} is empty")
    return secret or None
