"""The XMPP edge: a thin component and its parts (connection, sessions, commands)."""
