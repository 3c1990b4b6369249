# One command each: `make test` (everything CI runs) and `make demo` (a private Prosody + the bot).
# Both work on a fresh Debian machine as root: they create .venv and install what is missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: test check lint typecheck mutate demo screenshot gajim-screenshots prosody servers tools clean

test: $(VENV)/.installed servers tools lint typecheck
	$(BIN)/pytest

# The inner loop, under a minute: lint, types, and the unit tests (no server, no browser).
check: $(VENV)/.installed lint typecheck
	$(BIN)/pytest -m unit -q

lint: $(VENV)/.installed
	$(BIN)/ruff check bot tests benchmarks
	$(BIN)/ruff format --check bot tests benchmarks

# mypy, strict (its settings and the few modules it excuses are in pyproject.toml).
typecheck: $(VENV)/.installed
	$(BIN)/mypy

# Mutation testing of the pure modules against their unit tests (pyproject.toml's [tool.mutmut]
# which): slow, local, never in CI. The score: `$(BIN)/mutmut results`, or the summary printed.
mutate: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[mutation]'
	$(BIN)/mutmut run

demo: $(VENV)/.installed prosody
	$(BIN)/xmpp-active-users demo

# The README's picture of the status page: a private Prosody, the bot with a made-up history, and
# headless Chromium taking the picture.
screenshot: $(VENV)/.installed prosody tools
	$(BIN)/python -m bot.testbed.screenshot docs/status-page.png

# The README's pictures of Gajim (docs/gajim-*.png): real Gajim (Debian's) on a virtual display,
# logged in as the admin of a private Prosody, driving the bot (bot/testbed/gajim_screenshots.py).
gajim-screenshots: $(VENV)/.installed prosody tools
	@if ! command -v xdotool >/dev/null || ! command -v import >/dev/null; then \
		echo "Installing Debian packages xdotool and imagemagick..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends xdotool imagemagick; \
	fi
	$(BIN)/python -m bot.testbed.gajim_screenshots docs

# The Python environment, rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The XMPP servers the integration tests run (privately, on loopback), when missing: from Debian,
# Prosody 0.12 with mod_privilege (prosody-modules) and SQLite storage (lua-dbi-sqlite3), and
# ejabberd, also on SQLite (its driver erlang-p1-sqlite3, and the sqlite3 client that exports its
# tables as an admin does); Prosody 13 built from source.
servers: prosody prosody13
	@if ! command -v ejabberdctl >/dev/null || ! command -v sqlite3 >/dev/null \
		|| ! ls /usr/lib/erlang/lib/p1_sqlite3-*/ebin/sqlite3.beam >/dev/null 2>&1; then \
		echo "Installing Debian packages ejabberd, erlang-p1-sqlite3 and sqlite3..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ejabberd \
			erlang-p1-sqlite3 sqlite3; \
	fi

# The admin's other programs the tests run for real (privately, on loopback), from Debian, when
# missing: Prometheus with promtool (never its system service: the tests start their own),
# Chromium for the status page, and the XMPP clients admins use: Gajim (its code shows the bot's
# answers, on Xvfb's virtual display) and Profanity (typed into through tmux).
tools:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
		echo "Installing Debian package prometheus..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends prometheus; \
	fi
	@if ! command -v chromium >/dev/null; then \
		echo "Installing Debian package chromium..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium; \
	fi
	@if ! /usr/bin/python3 -c 'import gajim, nbxmpp' 2>/dev/null || ! command -v xvfb-run >/dev/null \
		|| ! command -v profanity >/dev/null || ! command -v tmux >/dev/null; then \
		echo "Installing Debian packages gajim, xvfb, profanity and tmux..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends gajim xvfb xauth profanity tmux; \
	fi

prosody:
	@if ! command -v prosody >/dev/null || { [ ! -f /usr/lib/prosody/modules/mod_privilege.lua ] \
		&& [ ! -f /usr/lib/prosody/modules/mod_privilege/mod_privilege.lua ]; }; then \
		echo "Installing Debian packages prosody and prosody-modules..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prosody prosody-modules; \
	fi
	@# mod_storage_sql's SQLite driver: the tests run a Prosody with storage = "sql" (import).
	@if ! ls /usr/lib/*/lua/5.4/dbd/sqlite3.so >/dev/null 2>&1; then \
		echo "Installing Debian package lua-dbi-sqlite3..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lua-dbi-sqlite3; \
	fi

# Prosody 13 (Debian 13's) beside the system's 0.12, built from Debian 13's source into
# $(PROSODY13) by tools/build-prosody13 (which says how); kept until that script changes.
PROSODY13 := build/prosody-13
.PHONY: prosody13
prosody13: $(PROSODY13)/.built

$(PROSODY13)/.built: tools/build-prosody13
	tools/build-prosody13 $(PROSODY13)

clean:
	rm -rf $(VENV) $(PROSODY13) .pytest_cache .ruff_cache .hypothesis .mypy_cache mutants
