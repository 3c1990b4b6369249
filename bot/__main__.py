"""Command line: `xmpp-active-users SUBCOMMAND --config FILE` (also `python -m bot`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from slixmpp.jid import JID, InvalidJID
from tqdm import tqdm

from .activity.tracker import ActivityTracker
from .admin.commands import parse_days
from .admin.figures import iso_utc
from .admin.history import chart_lines, history_csv, last_days, utc_day
from .app import daemon
from .config import ConfigError, load_settings
from .core.counter import Counts, window_label
from .importing import importer
from .importing.sources import SOURCES, open_source
from .storage.errors import StoreError
from .storage.store import Store
from .xmpp.contact import software_version

log = logging.getLogger("xmpp_active_users")

DESCRIPTION = """\
Count the daily, weekly and monthly active users (DAU, WAU, MAU) of an XMPP server.

The bot is an external component (XEP-0114): your server forwards it the presence of its users
(XEP-0356 privileged entity), it keeps each user's last login and logout in a local store, and
answers admins with the figures. A user is active within a window if online now, or if their last
login or logout happened within it (the rule of Prosody's mod_measure_active_users).
"""

EPILOG = """\
examples:
  xmpp-active-users demo      (try it: a private Prosody and the bot, no config needed)
  xmpp-active-users run --config /etc/xmpp-active-users/config.toml
  xmpp-active-users count --config /etc/xmpp-active-users/config.toml
  xmpp-active-users count --config config.toml --json
  xmpp-active-users import --config config.toml --from prosody-lastlog2 /var/lib/prosody
  xmpp-active-users import --config config.toml --from ejabberd-mnesia last.dump

Start from config.example.toml; every key is explained there.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except (ConfigError, StoreError) as exc:
        print(f"xmpp-active-users: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xmpp-active-users",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {software_version()} (slixmpp {version('slixmpp')}, "
        f"Python {platform.python_version()})",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add_command in (_add_run, _add_import, _add_history, _add_forget, _add_count, _add_demo):
        add_command(commands)
    return parser


Subcommands = Any  # argparse's _SubParsersAction, which it does not name publicly


def _add_run(commands: Subcommands) -> None:
    run = commands.add_parser(
        "run",
        help="run the bot: connect to the XMPP server and track presence",
        description=(
            "Connect to the XMPP server as an external component, track its users' presence, "
            "and answer admins (ad-hoc command 'Active users', or the chat message 'stats'). "
            "Reconnects after a drop; SIGTERM or Ctrl-C stop it cleanly (store flushed)."
        ),
    )
    _add_config_argument(run)
    run.set_defaults(handler=_run)


def _add_import(commands: Subcommands) -> None:
    imports = commands.add_parser(
        "import",
        help="import the history Prosody or ejabberd already has (stop the bot first)",
        description=(
            "Import last login/logout times that the XMPP server already stores, so that the "
            "figures are right from day one. Per user and field the newest timestamp wins: "
            "importing "
            "twice changes nothing. Users of domains not in [counting] domains are skipped. "
            "Unreadable files, and users with an implausible timestamp (not a finite number, "
            "before 2000, in milliseconds, or more than a day in the future) or a name that is "
            "no JID, are reported and skipped. The bot must be stopped (it holds the store)."
        ),
        epilog=(
            "sources:\n"
            "  prosody-lastlog2          Prosody 0.12 with mod_lastlog2; PATH = Prosody's data\n"
            "                            dir (e.g. /var/lib/prosody), read: HOST/lastlog2/*.dat\n"
            "  prosody-lastlog           the older mod_lastlog; PATH = the data dir, read:\n"
            "                            HOST/lastlog/*.dat (the last login or logout)\n"
            "  prosody-account-activity  Prosody 13; PATH = the data dir, read:\n"
            "                            HOST/account_activity/*.dat\n"
            "  prosody-sql               mod_storage_sql with SQLite; PATH = the database file\n"
            "  ejabberd-mnesia           mod_last on Mnesia; PATH = the file written by\n"
            "                            ejabberdctl dump_table PATH last_activity\n"
            "  ejabberd-sql              mod_last on SQL; PATH = the table `last` exported as\n"
            "                            CSV with a header (psql, sqlite3) or by mysql --batch;\n"
            "                            --host DOMAIN if it has no server_host column\n"
            "  ejabberd-online           who is online now (not in mod_last's table); PATH =\n"
            "                            the output of: ejabberdctl connected_users\n"
            "\nexamples:\n"
            "  xmpp-active-users import -c config.toml --from prosody-lastlog2 /var/lib/prosody\n"
            "  ejabberdctl dump_table /tmp/last.dump last_activity\n"
            "  xmpp-active-users import -c config.toml --from ejabberd-mnesia /tmp/last.dump\n"
            "  ejabberdctl connected_users > /tmp/online.txt\n"
            "  xmpp-active-users import -c config.toml --from ejabberd-online /tmp/online.txt\n"
            "  sqlite3 -csv -header ejabberd.db 'SELECT * FROM last' > /tmp/last.csv\n"
            "  xmpp-active-users import -c config.toml --from ejabberd-sql /tmp/last.csv"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_argument(imports)
    imports.add_argument(
        "--from", dest="source", required=True, choices=SOURCES, help="what to read"
    )
    imports.add_argument("path", type=Path, metavar="PATH", help="where to read it")
    imports.add_argument(
        "--host",
        metavar="DOMAIN",
        help="ejabberd-sql only: the users' domain, for a `last` table without server_host",
    )
    imports.add_argument(
        "--dry-run", action="store_true", help="report what would change, write nothing"
    )
    imports.set_defaults(handler=_import)


def _add_history(commands: Subcommands) -> None:
    history = commands.add_parser(
        "history",
        help="print the daily history (a chart, or CSV) from the store",
        description=(
            "Print one line per UTC day: each window's active users, new users and the peak of "
            "users online, as the bot recorded them. Days the bot was not running are gaps "
            "(empty in CSV). Reads only: safe while the bot runs."
        ),
    )
    _add_config_argument(history)
    history.add_argument(
        "--days", type=int, default=30, metavar="N", help="how many days up to today (30)"
    )
    history.add_argument("--csv", action="store_true", help="CSV, one row per day and domain")
    history.set_defaults(handler=_history)


def _add_forget(commands: Subcommands) -> None:
    forget = commands.add_parser(
        "forget",
        help="remove one user's data from the store (stop the bot first)",
        description=(
            "Remove everything stored about one user, for an account deletion request. The "
            "bot must be stopped (it holds the store); while it runs, use its ad-hoc command "
            "'Forget a user' (forget-user) instead."
        ),
    )
    _add_config_argument(forget)
    forget.add_argument("jid", metavar="JID", help="the user's bare JID, e.g. alice@example.org")
    forget.set_defaults(handler=_forget)


def _add_count(commands: Subcommands) -> None:
    count = commands.add_parser(
        "count",
        help="print the figures from the store (safe while the bot runs)",
        description=(
            "Print DAU, WAU and MAU, the users and sessions online, and the users known, read "
            "from the store. Reads only: safe while the bot runs. When the bot is not running, "
            "sessions it left open are treated as ended at its last sign of life."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_argument(count)
    count.add_argument("--json", action="store_true", help="print one JSON object instead")
    count.set_defaults(handler=_count)


def _add_demo(commands: Subcommands) -> None:
    try_it = commands.add_parser(
        "demo",
        help="try it: a private Prosody on 127.0.0.1, the bot and a few users, until Ctrl-C",
        description=(
            "Start a private Prosody on 127.0.0.1 (free ports, a temporary folder), register an "
            "admin and the users alice, bob and carol, and run the bot from a generated config "
            "file. Real XMPP clients log in and out, then the admin runs the ad-hoc command "
            "'active-users' and chats 'stats': the demo prints both answers, and how to log in "
            "with your own client (Gajim, Profanity) to try it yourself. It runs until Ctrl-C "
            "and then stops everything it started. Needs Prosody 0.12+ and prosody-modules "
            "(`make prosody`). No config file needed, nothing listens beyond 127.0.0.1."
        ),
    )
    try_it.add_argument(
        "--no-wait",
        action="store_true",
        help="stop after the scripted part instead of waiting for Ctrl-C",
    )
    try_it.add_argument(
        "--keep-dir",
        action="store_true",
        help="keep the temporary folder (configs, Prosody's log, the store) after stopping",
    )
    try_it.set_defaults(handler=_demo)


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="the TOML config file (start from config.example.toml)",
    )


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    return asyncio.run(daemon.run(settings))


def _demo(args: argparse.Namespace) -> int:
    from .testbed import demo  # only here: `run` and the other commands never load the testbed

    return asyncio.run(
        demo.demo(wait=not args.no_wait, keep_dir=args.keep_dir, verbose=args.verbose)
    )


def _import(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, need_secret=False)
    now = time.time()  # a timestamp more than a day after this is rejected as in the future
    try:
        source = open_source(args.source, args.path, now=now, host=args.host)
        with tqdm(
            desc="Importing",
            total=source.total,
            unit=source.unit,
            unit_scale=source.unit == "B",
            delay=1,
        ) as progress:
            entries = source.read(progress.update)  # checks the source before the store opens
            with Store(settings.store_path, pseudonym_key=settings.pseudonym_key) as store:
                report = importer.import_activities(
                    store, entries, settings.domains, dry_run=args.dry_run, exclude=settings.exclude
                )
    except importer.SourceError as exc:
        print(f"xmpp-active-users: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, OSError) as exc:  # out of memory, descriptors (EMFILE), an I/O error
        reason = "out of memory" if isinstance(exc, MemoryError) else str(exc)
        print(
            f"xmpp-active-users: the import stopped: {reason}; what it merged before is kept "
            "(importing again is safe)",
            file=sys.stderr,
        )
        return 2
    print(report.summary(args.dry_run))
    return 0


def _history(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, need_secret=False)
    try:
        days = parse_days(str(args.days))
    except ValueError as exc:
        raise ConfigError(f"--days: {exc}") from None
    with Store(settings.store_path, readonly=True) as store:
        stored = store.days()
    rows = last_days(stored, utc_day(time.time()), days)
    if args.csv:
        print(history_csv(rows, settings.windows, settings.domains), end="")
    else:
        print("\n".join(chart_lines(rows, settings.windows)))
    return 0


def _forget(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, need_secret=False)
    try:
        jid = JID(args.jid)
    except InvalidJID as exc:
        raise ConfigError(f"{args.jid!r} is not a valid JID ({exc})") from None
    if not jid.user or jid.resource:
        raise ConfigError(f"{args.jid!r}: give a bare JID such as alice@example.org")
    with Store(settings.store_path, pseudonym_key=settings.pseudonym_key) as store:
        key = store.key_of(jid.bare)
        if store.get(key) is None:
            print(f"Nothing was stored about {jid.bare}.")
            return 0
        store.delete(key)
    print(f"Forgot {jid.bare}.")
    return 0


def _count(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, need_secret=False)
    now = int(time.time())
    with Store(settings.store_path, readonly=True) as store:
        tracker = ActivityTracker(
            store, settings.domains, exclude=settings.exclude, windows=settings.windows
        )
        tracker.load(now, close_stale_sessions=not store.writer_running)
        counts = tracker.counts(now)
        bot_running = store.writer_running
    if args.json:
        print(json.dumps(counts_as_json(counts) | {"bot_running": bot_running}))
    else:
        when = iso_utc(counts.computed_at)
        print(f"Active users of {', '.join(settings.domains)} at {when}:")
        for window, active in counts.active.items():
            print(f"  last {window_label(window):<9} {active:>9}")
        print(f"  online now     {counts.online_users:>9} users, {counts.online_sessions} sessions")
        print(f"  known users    {counts.known_users:>9}")
        if not bot_running:
            print("(the bot is not running: online figures are as of its last stop)")
    return 0


def counts_as_json(counts: Counts) -> dict[str, object]:
    return {
        "computed_at": iso_utc(counts.computed_at),
        "dau": counts.dau,
        "wau": counts.wau,
        "mau": counts.mau,
        "online_users": counts.online_users,
        "online_sessions": counts.online_sessions,
        "known_users": counts.known_users,
    }


if __name__ == "__main__":
    sys.exit(main())
