# One command each: `make test` (everything CI runs) and `make demo` (a private Prosody + the bot).
# Both work on a fresh Debian machine as root: they create .venv and install what is missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: test lint demo prosody servers clean

test: $(VENV)/.installed servers lint
	$(BIN)/pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check bot tests benchmarks
	$(BIN)/ruff format --check bot tests benchmarks

demo: $(VENV)/.installed prosody
	$(BIN)/xmpp-active-users demo

# The Python environment, rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The XMPP servers the integration tests run (privately, on loopback), from Debian, when missing:
# Prosody with mod_privilege (prosody-modules), and ejabberd, also on SQLite (its driver
# erlang-p1-sqlite3, and the sqlite3 client that exports its tables as an admin does).
servers: prosody
	@if ! command -v ejabberdctl >/dev/null || ! command -v sqlite3 >/dev/null \
		|| ! ls /usr/lib/erlang/lib/p1_sqlite3-*/ebin/sqlite3.beam >/dev/null 2>&1; then \
		echo "Installing Debian packages ejabberd, erlang-p1-sqlite3 and sqlite3..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ejabberd \
			erlang-p1-sqlite3 sqlite3; \
	fi

prosody:
	@if ! command -v prosody >/dev/null || { [ ! -f /usr/lib/prosody/modules/mod_privilege.lua ] \
		&& [ ! -f /usr/lib/prosody/modules/mod_privilege/mod_privilege.lua ]; }; then \
		echo "Installing Debian packages prosody and prosody-modules..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prosody prosody-modules; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
