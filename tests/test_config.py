"""A good config loads; every bad one fails with one line naming the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import SECRET_ENV, TOKEN_ENV, ConfigError, load_settings
from bot.config_values import SCHEMA

from .support import MINIMAL, write

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_minimal_config_gets_sane_defaults(tmp_path):
    settings = load_settings(write(tmp_path, MINIMAL), environ={})
    assert settings.component_jid == "active.example.test"
    assert settings.secret == "s3cret"
    assert (settings.server_host, settings.server_port) == ("127.0.0.1", 5347)
    assert settings.domains == ("example.test",)
    assert settings.admins == frozenset({"admin@example.test"})
    assert settings.store_path == tmp_path / "data" / "activity.db"  # relative to the file
    assert (settings.first_count_after, settings.count_interval, settings.count_jitter) == (
        15,
        3600,
        300,
    )
    assert settings.flush_interval == 1.0
    assert settings.windows == (86_400, 7 * 86_400, 30 * 86_400)
    assert settings.exclude == ()
    assert settings.metrics_listen == ("127.0.0.1", 9470)


def test_windows_exclusions_and_metrics_address(tmp_path):
    text = MINIMAL.replace(
        "[counting]",
        '[counting]\nwindows = ["90d", "1d", "12h"]\nexclude = ["Mon@example.test", "*@bots.x"]',
    )
    settings = load_settings(write(tmp_path, text + '[metrics]\nlisten = ""\n'), environ={})
    assert settings.windows == (12 * 3600, 86_400, 90 * 86_400)
    assert settings.exclude == ("mon@example.test", "*@bots.x")
    assert settings.metrics_listen is None
    text += '[metrics]\nlisten = "[::1]:9100"\n'
    assert load_settings(write(tmp_path, text), environ={}).metrics_listen == ("::1", 9100)


def test_example_config_is_valid_once_its_secret_exists(tmp_path):
    with pytest.raises(ConfigError, match="secret_file '/etc/xmpp-active-users/secret' cannot"):
        load_settings(EXAMPLE, environ={})
    settings = load_settings(EXAMPLE, environ={SECRET_ENV: "from-env"})
    assert settings.secret == "from-env"


def test_secret_from_file_relative_to_the_config(tmp_path):
    (tmp_path / "secret").write_text("from-file\n")
    text = MINIMAL.replace('secret = "s3cret"', 'secret_file = "secret"')
    assert load_settings(write(tmp_path, text), environ={}).secret == "from-file"


def test_environment_secret_wins(tmp_path):
    settings = load_settings(write(tmp_path, MINIMAL), environ={SECRET_ENV: "env"})
    assert settings.secret == "env"


def test_store_only_commands_need_no_secret(tmp_path):
    text = MINIMAL.replace('secret = "s3cret"\n', "")
    assert load_settings(write(tmp_path, text), environ={}, need_secret=False).secret == ""
    with pytest.raises(ConfigError, match=f"secret is missing.*{SECRET_ENV}"):
        load_settings(write(tmp_path, text), environ={})


JIDS_AND_FIXES = [
    (MINIMAL.replace('jid = "active.example.test"\n', ""), r"\[component\] jid is missing; add"),
    (MINIMAL.replace('domains = ["example.test"]', "domains = []"), r"domains must be a non-empty"),
    (MINIMAL.replace('["admin@example.test"]', '["example.test"]'), r"admins .* bare JID such"),
    (MINIMAL.replace('["admin@example.test"]', '["a@b/c"]'), r"admins .* bare JID such"),
    (MINIMAL.replace('domains = ["example.test"]', 'domains = ["a b"]'), r"not a valid domain"),
    (MINIMAL + "[server]\nport = 99999\n", r"\[server\] port must be a TCP port"),
    (MINIMAL + "[server]\nport = '5347'\n", r"\[server\] port must be a TCP port"),
    (MINIMAL.replace("[counting]", "[counting]\ninterval = 0"), r"interval must be a positive"),
    (MINIMAL.replace("[counting]", "[counting]\nintervall = 60"), r"unknown key 'intervall'"),
    (MINIMAL + "[extras]\n", r"unknown section \[extras\]"),
    (MINIMAL.replace('secret = "s3cret"', 's3cret = "x"'), r"unknown key 's3cret'"),
    (MINIMAL.replace('"s3cret"', '"s3cret"\nsecret_file = "f"'), r"both secret and secret_file"),
    ("this is = not toml [", r"not valid TOML"),
    (MINIMAL.replace("[counting]", '[counting]\nwindows = ["week"]'), r"not a window such as"),
    (MINIMAL.replace("[counting]", '[counting]\nwindows = ["0d"]'), r"not a window such as"),
    (MINIMAL.replace("[counting]", '[counting]\nexclude = ["bots"]'), r"exclude .* pattern"),
    (MINIMAL + '[metrics]\nlisten = "9470"\n', r"listen .* HOST:PORT"),
]


@pytest.mark.parametrize(("text", "message"), JIDS_AND_FIXES)
def test_bad_values_fail_with_one_line_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as failure:
        load_settings(path, environ={})
    assert "\n" not in str(failure.value)
    assert str(path) in str(failure.value)


def test_missing_file_says_where_to_start(tmp_path):
    with pytest.raises(ConfigError, match=r"no such file; copy config\.example\.toml"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_secret_never_appears_in_errors(tmp_path):
    text = MINIMAL.replace("[counting]", "[counting]\ninterval = -1")
    with pytest.raises(ConfigError) as failure:
        load_settings(write(tmp_path, text), environ={})
    assert "s3cret" not in str(failure.value)


def test_retention_shorter_than_the_longest_window_is_refused(tmp_path):
    text = MINIMAL + "[privacy]\nretention_days = 7\n"
    with pytest.raises(ConfigError, match="shorter than the longest window"):
        load_settings(write(tmp_path, text), environ={})
    text = MINIMAL + "[privacy]\nretention_days = 400\n"
    assert load_settings(write(tmp_path, text), environ={}).retention_days == 400


def test_server_software_sets_the_liveness_default(tmp_path):
    assert load_settings(write(tmp_path, MINIMAL), environ={}).liveness_interval == 0
    ejabberd = load_settings(
        write(tmp_path, MINIMAL + '[server]\nsoftware = "ejabberd"\n'), environ={}
    )
    assert (ejabberd.liveness_interval, ejabberd.announces_sessions) == (300, False)
    tuned = MINIMAL + '[server]\nsoftware = "ejabberd"\n[liveness]\ninterval = 60\n'
    assert load_settings(write(tmp_path, tuned), environ={}).liveness_interval == 60
    with pytest.raises(ConfigError, match="software must be one of prosody, ejabberd, generic"):
        load_settings(write(tmp_path, MINIMAL + '[server]\nsoftware = "openfire"\n'), environ={})


def test_pseudonymize_needs_a_long_enough_secret(tmp_path):
    base = MINIMAL + "[privacy]\npseudonymize = true\n"
    with pytest.raises(ConfigError, match="pseudonymize = true needs pseudonym_secret"):
        load_settings(write(tmp_path, base), environ={})
    with pytest.raises(
        ConfigError, match=r"pseudonym_secret is 15 characters long; use at least 16"
    ):
        load_settings(write(tmp_path, base + 'pseudonym_secret = "fifteen chars!!"\n'), environ={})
    settings = load_settings(
        write(tmp_path, base + 'pseudonym_secret = "sixteen chars!!!"\n'), environ={}
    )
    assert settings.pseudonym_key == b"sixteen chars!!!"


# --- [metrics]: who may read the HTTP listener ----------------------------------------------------

TOKEN = "0123456789abcdef"  # 16 characters, the least accepted


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "[::1]", "localhost"])
def test_loopback_listeners_need_no_token(tmp_path, host):
    settings = load_settings(
        write(tmp_path, MINIMAL + f'[metrics]\nlisten = "{host}:9470"\n'), environ={}
    )
    assert settings.metrics_token is None


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "[::]", "192.0.2.10", "[2001:db8::1]", "stats.example.org"]
)
def test_any_other_address_needs_a_token(tmp_path, host):
    config = write(tmp_path, MINIMAL + f'[metrics]\nlisten = "{host}:9470"\n')
    with pytest.raises(
        ConfigError, match=r"is reachable from other machines, so it needs a token"
    ) as error:
        load_settings(config, environ={})
    assert "\n" not in str(error.value)
    assert TOKEN_ENV in str(error.value)
    with_token = load_settings(config, environ={TOKEN_ENV: TOKEN})
    assert with_token.metrics_token == TOKEN
    # `count` and the other store-only commands neither need nor read it.
    assert load_settings(config, environ={}, need_secret=False).metrics_token is None


def test_token_from_a_file_beside_the_config_or_the_environment(tmp_path):
    (tmp_path / "metrics-token").write_text(TOKEN + "\n")
    text = MINIMAL + '[metrics]\nlisten = "0.0.0.0:9470"\ntoken_file = "metrics-token"\n'
    assert load_settings(write(tmp_path, text), environ={}).metrics_token == TOKEN
    env = {TOKEN_ENV: "from-the-environment-0123"}
    assert load_settings(write(tmp_path, text), environ=env).metrics_token == env[TOKEN_ENV]
    # A token on loopback is honoured too (a reverse proxy in front passes it on).
    text = MINIMAL + f'[metrics]\ntoken = "{TOKEN}"\n'
    assert load_settings(write(tmp_path, text), environ={}).metrics_token == TOKEN


@pytest.mark.parametrize(
    ("metrics", "files", "message"),
    [
        (f'token = "{TOKEN}"\ntoken_file = "t"', {"t": TOKEN}, r"both token and token_file"),
        ('token_file = "missing"', {}, r"token_file '.*missing' cannot be read"),
        ('token_file = "t"', {"t": "\n"}, r"token_file '.*t' is empty"),
        ('token = "short-secret"', {}, r"token must be at least 16 visible ASCII characters"),
        ('token_file = "t"', {"t": "with spaces in the middle"}, r"token must be at least 16"),
    ],
    ids=["both", "missing file", "empty file", "too short", "spaces"],
)
def test_bad_tokens_are_one_line_errors_that_never_show_the_token(
    tmp_path, metrics, files, message
):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    config = write(tmp_path, MINIMAL + "[metrics]\n" + metrics + "\n")
    with pytest.raises(ConfigError, match=message) as error:
        load_settings(config, environ={})
    assert "\n" not in str(error.value)
    for secret in ("short-secret", "with spaces", TOKEN):
        assert secret not in str(error.value)


# --- [nodeinfo] -------------------------------------------------------------------------------


def test_nodeinfo_is_off_by_default(tmp_path):
    assert load_settings(write(tmp_path, MINIMAL), environ={}).nodeinfo is None
    text = MINIMAL + "[nodeinfo]\nenabled = false\nnode_name = 'unused'\n"
    assert load_settings(write(tmp_path, text), environ={}).nodeinfo is None


def test_nodeinfo_defaults_to_every_counted_domain_and_the_servers_software(tmp_path):
    text = MINIMAL.replace('domains = ["example.test"]', 'domains = ["a.test", "b.test"]')
    text += "[nodeinfo]\nenabled = true\n"
    nodeinfo = load_settings(write(tmp_path, text), environ={}).nodeinfo
    assert nodeinfo.domains == ("a.test", "b.test")
    assert (nodeinfo.software_name, nodeinfo.software_version) == ("prosody", "")
    assert (nodeinfo.open_registrations, nodeinfo.node_name) == (False, "")
    text += 'domains = ["b.test"]\nopen_registrations = true\nnode_name = " Chat "\n'
    text += 'software_name = "ejabberd"\nsoftware_version = "23.01"\n'
    nodeinfo = load_settings(write(tmp_path, text), environ={}).nodeinfo
    assert nodeinfo.domains == ("b.test",)
    assert (nodeinfo.open_registrations, nodeinfo.node_name) == (True, "Chat")
    assert (nodeinfo.software_name, nodeinfo.software_version) == ("ejabberd", "23.01")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[nodeinfo]\nenabled = true\ndomains = ["other.test"]\n',
            "[nodeinfo] domains lists 'other.test', which is not in [counting] domains",
        ),
        (
            '[nodeinfo]\nenabled = true\n[metrics]\nlisten = ""\n',
            "[nodeinfo] enabled = true needs the HTTP listener",
        ),
        (
            '[nodeinfo]\nenabled = true\nsoftware_name = "Prosody IM"\n',
            "[nodeinfo] software_name must be lower-case letters, digits and dashes",
        ),
        (
            '[server]\nsoftware = "generic"\n[nodeinfo]\nenabled = true\n',
            "[nodeinfo] software_name is missing",
        ),
        (
            "[nodeinfo]\nenabled = true\n[privacy]\nretention_days = 100\n",
            "retention_days = 100 is shorter than NodeInfo's activeHalfyear (180 days)",
        ),
        ('[nodeinfo]\nenabled = "yes"\n', "[nodeinfo] enabled must be true or false"),
    ],
)
def test_bad_nodeinfo_settings_are_one_line_each(tmp_path, extra, message):
    with pytest.raises(ConfigError) as refused:
        load_settings(write(tmp_path, MINIMAL + extra), environ={})
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_retention_of_100_days_is_fine_without_nodeinfo(tmp_path):
    text = MINIMAL + "[privacy]\nretention_days = 100\n"
    assert load_settings(write(tmp_path, text), environ={}).retention_days == 100


def test_every_required_key_of_the_example_is_marked_edit():
    """A required key is one the admin must look at: its comment in config.example.toml says
    EDIT (the store's path too: a wrong one is noticed only at the first start)."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    section = ""
    for number, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[] ")
            continue
        key = line.split("=")[0].strip()
        if line.startswith("#") or not key or not SCHEMA.get(section, {}).get(key, (False,))[0]:
            continue
        comment = []
        for above in reversed(lines[:number]):
            if not above.startswith("#"):
                break
            comment.append(above)
        assert any("EDIT" in above for above in comment), f"[{section}] {key} is not marked EDIT"
