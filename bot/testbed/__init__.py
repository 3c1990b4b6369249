"""What starts private XMPP servers and real clients: the demo, the tests and the benchmarks.

Never imported by `run`, `count`, `import`, `history` or `forget`: the shipped bot does not need
it, and only `xmpp-active-users demo` loads it.
"""
