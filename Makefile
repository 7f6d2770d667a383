# Two commands on a fresh machine:  make run  |  make test
# Each installs what is missing (Debian packages, .venv, Python packages) and then does its job.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8080
# Debian packages: the browser for end-to-end tests, speech programs/recordings for test voices, and
# HAProxy in front of the media servers of `make cluster`.
APT_PACKAGES := chromium espeak-ng flite pocketsphinx-testdata \
                apertium apertium-eng-spa apertium-eng-cat apertium-fr-es fonts-dejavu-core \
                haproxy
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

LOCK   := requirements.lock
UV     := $(VENV)/bin/uv

MEDIA_SERVERS ?= 2

.PHONY: run test bench cluster setup system-deps sync check-env lock clean

run: setup check-env
	$(PY) webrtc_server.py --host $(HOST) --port $(PORT) --preload all $(if $(HTTPS),--tls-self-signed)

# A local cluster (README, "Scaling out"): a Ray head with the models, MEDIA_SERVERS media servers and
# HAProxy on PORT, all on 127.0.0.1, in the foreground; Ctrl-C stops everything it started.
cluster: setup check-env
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m server.cluster --port $(PORT) --media-servers $(MEDIA_SERVERS) \
	  -- --preload all

test: setup check-env
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/bench_sessions.py

setup: system-deps $(VENV)/.stamp-lock

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# Python packages come from the lock only (README, "Installs are pinned").
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Bootstrap: the locked uv, checked against the lock's hashes, installed with the venv's own pip.
$(UV): | $(VENV)/bin/python
	$(PYTHON) tools/envlock.py requirement uv > $(VENV)/uv-requirement.txt
	$(VENV)/bin/pip install -q --no-deps --require-hashes -r $(VENV)/uv-requirement.txt

# The stamp follows the lock: a changed lock re-syncs .venv (add, upgrade, remove); an unchanged one costs nothing.
$(VENV)/.stamp-lock: $(LOCK) | $(UV)
	$(UV) pip sync --quiet --python $(PY) --require-hashes $(LOCK)
	touch $@

# Make .venv match the lock again after it was changed by hand.
sync: system-deps | $(UV)
	$(UV) pip sync --python $(PY) --require-hashes $(LOCK)
	touch $(VENV)/.stamp-lock

# Fail early, naming each package, where .venv differs from the lock.
check-env:
	@$(PY) tools/envlock.py check

# Refresh the lock on purpose from requirements.in and overrides.txt: keeps today's pins where they
# still satisfy; `make lock UPGRADE=1` moves every package to its newest allowed release.
lock: | $(UV)
	$(UV) pip compile requirements.in --override overrides.txt --universal --python-version 3.11 \
	  --generate-hashes --index-url https://pypi.org/simple --no-emit-index-url \
	  $(if $(UPGRADE),--upgrade) -o $(LOCK)

clean:
	rm -rf $(VENV) .pytest_cache
