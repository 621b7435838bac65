# Two commands for a newcomer on a fresh Debian machine:
#   make demo   a real two-worker crawl of the bundled demo sites, with a summary
#   make test   the whole test suite
# Both install what they need (apt redis-server, .venv, SecantusDB's own venv)
# and can be run again at will.

PYTHON ?= python3
VENV := .venv
STATE := .state
SECANTUS_VENV := $(STATE)/secantus-venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench lint deps clean
.DEFAULT_GOAL := demo

demo: deps
	$(PY) -m devtools.demo

# Tests that judge rates or time gaps from the demo server's log (marked
# `timing`) run alone, so the suite's own parallelism cannot crowd them; the
# rest run on two processes, each with its own Redis, MongoDB and demo server.
test: deps
	$(PY) -m pytest -n 2 --dist loadfile -m "not timing"
	$(PY) -m pytest -m timing
	$(PY) -m pytest -n 2 --dist loadfile --redis-cluster -m cluster

deps: $(VENV)/.installed $(SECANTUS_VENV)/.installed /usr/bin/redis-server /usr/sbin/ip

/usr/bin/redis-server:
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q redis-server

/usr/sbin/ip:
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q iproute2

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $@

# SecantusDB (GPL-2.0) is a MongoDB-wire-compatible server we only *run* as a
# local stand-in when MONGO_URI is unset; it lives in a venv of its own.
$(SECANTUS_VENV)/.installed:
	$(PYTHON) -m venv $(SECANTUS_VENV)
	$(SECANTUS_VENV)/bin/python -m pip install -q --upgrade pip
	$(SECANTUS_VENV)/bin/python -m pip install -q secantusdb==0.7.0b3
	touch $@

bench: deps
	$(PY) -m bench throughput

lint: deps
	$(VENV)/bin/ruff check crawler middlewares pipelines settings demosite devtools bench tests
	$(VENV)/bin/mypy crawler middlewares pipelines settings
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) $(STATE) *.egg-info
