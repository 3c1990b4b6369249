"""What Gajim shows of stanzas it receives, through Gajim's and nbxmpp's own code (Debian's
`gajim` and `python3-nbxmpp`): run by Debian's Python, under Xvfb, by tests/test_client_gajim.py.

Reads one JSON request on stdin and prints one JSON answer on its last line of stdout:
- {"kind": "stage", "iq": XML}: the answer to an ad-hoc step, as nbxmpp's
  `AdHoc.execute_command` parses it and Gajim's ad-hoc window shows it (its `Stage` page for a
  step with a form to fill in, its `Completed` page for a result): the page, the form's title,
  instructions and each row Gajim draws as (label, value); or the error Gajim hit.
- {"kind": "commands", "iq": XML}: the answer to the command list request, as nbxmpp's
  `AdHoc.request_command_list` parses it: the commands' names, or the error condition.
- {"kind": "chat", "text": TEXT}: a chat message's body as Gajim's chat view draws it (its
  `MessageWidget`, which styles it with `gajim.common.styling`): each block in order, a code
  block with whether its view is monospaced and its text, a plain block with its text.
- {"kind": "contact", "account": JID, "contact": JID, "presences": [XML, ...]}: the presences,
  in order, through nbxmpp's presence parsing and Gajim's `Presence` module into its `Contacts`,
  with `contact` in the roster (subscription both): the contact as Gajim's contact list draws it
  (available, show, and the status line of each resource).
Not a test module (no test_ prefix); nothing here imports the bot.
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any


def main() -> None:
    request = json.loads(sys.stdin.read())
    import gi

    gi.require_version("Gtk", "3.0")
    gi.require_version("GtkSource", "4")
    with tempfile.TemporaryDirectory(prefix="gajim-profile-") as profile:
        _start_gajim(profile)
        kind = request["kind"]
        views = {"stage": stage, "commands": commands, "chat": chat, "contact": contact}
        answer = views[kind](request)
    print(json.dumps(answer))


def _start_gajim(profile: str) -> None:
    """What Gajim's application does at start (gajim/common/application.py, gajim/gtk/
    application.py) that the parts used here need: its paths (in a throwaway profile folder),
    its settings, its cache and its style (the ad-hoc window's labels read colours from it)."""
    from gajim.common import app, configpaths
    from gajim.common.settings import Settings
    from gajim.common.storage.cache import CacheStorage

    configpaths.set_config_root(profile)
    configpaths.init()
    configpaths.create_paths()
    app.settings = Settings()
    app.settings.init()
    app.storage.cache = CacheStorage()
    app.storage.cache.init()
    app.load_css_config()


def _task_result(generator: Any, response: Any) -> Any:
    """Drive one of nbxmpp's request generators with `response` as the server's answer."""
    next(generator)
    generator.send(None)  # the request it would send
    return generator.send(response)


def stage(request: dict[str, Any]) -> dict[str, Any]:
    from gajim.gtk.adhoc import Completed, Stage
    from gi.repository import Gtk
    from nbxmpp.const import AdHocAction
    from nbxmpp.errors import StanzaError
    from nbxmpp.modules.adhoc import AdHoc
    from nbxmpp.protocol import Iq
    from nbxmpp.simplexml import NodeBuilder
    from nbxmpp.structs import AdHocCommand

    response = Iq(node=NodeBuilder(request["iq"]).getDom())
    command = AdHocCommand(jid=response.getFrom(), name=None, node="any", sessionid=None)
    steps = AdHoc.execute_command.__wrapped__(AdHoc(_NoClient()), command, AdHocAction.EXECUTE)
    try:
        parsed = _task_result(steps, response)
    except StanzaError as error:
        return {"error": f"stanza error {error.condition}"}
    page = Completed() if parsed.is_completed else Stage()
    try:
        page.process_stage(parsed)  # what AdHocCommands._received_stage does
    except Exception as error:  # what Gajim hits, and leaves the window on "Executing…"
        where = traceback.extract_tb(error.__traceback__)[-2]  # the last frame is nbxmpp's
        return {
            "error": f"{type(error).__name__} {error} in Gajim's {type(page).__name__} page, at "
            f"{Path(where.filename).name} {where.name}: {where.line}"
        }
    shown: dict[str, Any] = {
        "page": type(page).__name__,
        "notes": [note.text for note in parsed.notes],
        "title": None,
        "instructions": None,
        "rows": [],
    }
    widget = page._dataform_widget
    if widget is None:
        return shown
    grid = widget._form_grid
    shown["title"], shown["instructions"] = grid.title, grid.instructions
    for row in grid.rows:
        label, value = getattr(row, "_label", None), getattr(row, "_widget", None)
        if label is None or value is None:
            continue
        text = value.get_text() if isinstance(value, (Gtk.Label, Gtk.Entry)) else repr(value)
        shown["rows"].append([label.get_text(), text])
    return shown


def commands(request: dict[str, Any]) -> dict[str, Any]:
    from nbxmpp.errors import StanzaError
    from nbxmpp.modules.adhoc import AdHoc
    from nbxmpp.protocol import Iq
    from nbxmpp.simplexml import NodeBuilder

    response = Iq(node=NodeBuilder(request["iq"]).getDom())
    steps = AdHoc.request_command_list.__wrapped__(AdHoc(_NoClient()), "any")
    try:
        listed = _task_result(steps, response)
    except StanzaError as error:
        return {"error": error.condition}
    return {"commands": [command.name for command in listed]}


def chat(request: dict[str, Any]) -> dict[str, Any]:
    from gajim.gtk.conversation.code_widget import CodeWidget
    from gajim.gtk.conversation.message_widget import MessageWidget

    message = MessageWidget("account")
    message.add_with_styling(request["text"])
    blocks = []
    for widget in message.get_children():
        if isinstance(widget, CodeWidget):
            view = widget._textview
            blocks.append({"code": view.get_code(), "monospace": view.get_monospace()})
        else:
            blocks.append({"plain": widget._text_widget.get_text()})  # a PlainWidget's label
    return {"blocks": blocks}


def contact(request: dict[str, Any]) -> dict[str, Any]:
    from gajim.common.modules.contacts import Contacts
    from gajim.common.modules.presence import Presence as PresenceModule
    from nbxmpp.modules.presence import BasePresence
    from nbxmpp.protocol import JID, Presence
    from nbxmpp.simplexml import NodeBuilder
    from nbxmpp.structs import PresenceProperties

    own = JID.from_string(request["account"])
    contact_jid = JID.from_string(request["contact"])

    class RosterItem:  # what Gajim's roster holds once the bot is added and accepted
        subscription, ask, name, groups = "both", None, None, set()

    class Roster:
        def get_item(self, jid: Any) -> RosterItem | None:
            return RosterItem() if JID.from_string(str(jid)).bare == contact_jid.bare else None

    class NoMUC:
        def get_muc_data(self, _jid: Any) -> None:
            return None

    class Client(_NoClient):
        account = name = "account"

        def __init__(self) -> None:
            self.modules: dict[str, Any] = {"Roster": Roster(), "MUC": NoMUC()}

        def get_module(self, name: str) -> Any:
            return self.modules[name]

        def connect_signal(self, *_args: Any) -> None:
            pass

        def get_bound_jid(self) -> Any:
            return own

        get_own_jid = get_bound_jid

    client = Client()
    client.modules["Contacts"] = Contacts(client)
    parse, handle = BasePresence(client), PresenceModule(client)
    for xml in request["presences"]:
        stanza = Presence(node=NodeBuilder(xml).getDom())
        properties = PresenceProperties(own)
        parse._process_presence_base(client, stanza, properties)
        handle._presence_received(client, stanza, properties)
    shown = client.modules["Contacts"].get_contact(contact_jid.bare)
    return {
        "available": shown.is_available,
        "show": shown.show.value,
        "resources": [[r.resource, r.show.value, r.status] for r in shown.iter_resources()],
    }


class _NoClient:
    """What nbxmpp's modules need of a connection when no request is sent for real."""

    log_context = None


if __name__ == "__main__":
    main()
