# Both entry points create .venv and install everything (etcd binary included) themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: up test lint e2e status backup restore bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

up: $(STAMP)  ## three local etcd members on the seed's ports + both daemons; Ctrl-C stops all
	$(PY) scripts/up.py

test: $(STAMP)  ## lint + the whole suite (unit, integration against real etcd, static checks) + the fault matrix
	$(PY) -m ruff check services scripts tests infrastructure
	$(VENV)/bin/lint-imports  # the layer contracts in pyproject.toml
	$(PY) -m pytest -m "not fault"
	$(PY) -m pytest -m fault -n 3  # tests/faults: a fresh cluster per scenario, 3 at a time; table: scripts/fault_table.py

lint: $(STAMP)
	$(PY) -m ruff check services scripts tests infrastructure
	$(VENV)/bin/lint-imports

e2e: $(STAMP)  ## the seed's four checks against the running `make up` cluster
	$(PY) infrastructure/etcd/test-e2e.py

status: $(STAMP)
	$(PY) scripts/status.py

backup: $(STAMP)
	$(PY) scripts/backup.py save

restore: $(STAMP)  ## make restore SNAPSHOT=.data/backups/etcd-....db (with make up stopped)
	@test -n "$(SNAPSHOT)" || { echo "usage: make restore SNAPSHOT=path/to/snapshot.db (make up must be stopped)"; exit 2; }
	$(PY) scripts/backup.py restore $(SNAPSHOT)

bench: $(STAMP)
	$(PY) scripts/bench_sync.py
	$(PY) scripts/bench_heartbeat.py

clean:
	rm -rf $(VENV) .data
