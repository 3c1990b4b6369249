"""Importing a server's history: the sources, the merge, Prosody's and ejabberd's."""
