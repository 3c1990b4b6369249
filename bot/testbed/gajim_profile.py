"""A Gajim profile with one account, written through Gajim's own settings code: run by Debian's
Python (which has Debian's gajim) for `make gajim-screenshots` (gajim_screenshots.py).

    /usr/bin/python3 gajim_profile.py PROFILE_FOLDER JID PASSWORD PORT

The account logs in to 127.0.0.1:PORT without TLS (the private Prosody has no certificate),
without asking; it accepts subscription requests by itself (the bot asks to see the admin's
presence); passwords stay in the profile (no keyring on a virtual display).
"""

from __future__ import annotations

import sys


def main() -> None:
    folder, jid, password, port = sys.argv[1:5]
    import gi

    gi.require_version("Gtk", "3.0")
    gi.require_version("GtkSource", "4")
    from gajim.common import app, configpaths
    from gajim.common.settings import Settings

    configpaths.set_config_root(folder)
    configpaths.init()
    configpaths.create_paths()
    app.settings = Settings()
    app.settings.init()
    for name, value in {
        "use_keyring": False,
        "check_for_update": False,
        "show_help_start_chat": False,
    }.items():
        app.settings.set(name, value)
    user, _, domain = jid.partition("@")
    app.settings.add_account(user)
    account: dict[str, object] = {
        "name": user,
        "hostname": domain,
        "resource": "desk",
        "use_custom_host": True,
        "custom_host": "127.0.0.1",
        "custom_port": int(port),
        "custom_type": "PLAIN",
        "use_plain_connection": True,
        "confirm_unencrypted_connection": False,
        "password": password,
        "savepass": True,
        "autoauth": True,
        "active": True,
    }
    for key, setting in account.items():
        app.settings.set_account_setting(user, key, setting)
    app.settings.save()


if __name__ == "__main__":
    main()
