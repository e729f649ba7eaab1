# Both entry points create .venv and install everything (etcd binary included) themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# SECURE=1: the secure stack (TLS with client certificates, etcd auth, one identity per
# program; services/core/roles.py). The scripts then connect as IDENTITY from .data/pki/.
SECURE ?=
PKI    := .data/pki
secure  = $(filter 1 yes true on,$(SECURE))
HA     ?=
ha      = $(filter 1 yes true on,$(HA))
as      = $(if $(secure),--cacert $(PKI)/ca.crt --cert $(PKI)/$(1).crt --key $(PKI)/$(1).key)

.PHONY: up certs test lint e2e status backup restore bench bench-registry bench-ui monitor prometheus-tools chromium screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

up: $(STAMP)  ## three local etcd members on the seed's ports, both daemons, the registry on 8500; Ctrl-C stops all (SECURE=1: TLS + auth; HA=1: two of each daemon)
	$(PY) scripts/up.py $(if $(secure),--secure) $(if $(ha),--ha)

certs: $(STAMP)  ## the local CA and certificates under .data/pki/ only (for docker-compose.secure.yml)
	$(PY) scripts/up.py --certs

test: $(STAMP) prometheus-tools chromium  ## lint + the whole suite (unit, integration against real etcd, static checks) + the fault matrix
	$(PY) -m ruff check services chora_manifest_client chora_manifests scripts tests infrastructure
	$(VENV)/bin/lint-imports  # the layer contracts in pyproject.toml
	$(PY) -m pytest -m "not fault"
	$(PY) -m pytest -m fault -n 3  # tests/faults: a fresh cluster per scenario, 3 at a time; table: scripts/fault_table.py

lint: $(STAMP)
	$(PY) -m ruff check services chora_manifest_client chora_manifests scripts tests infrastructure
	$(VENV)/bin/lint-imports

e2e: $(STAMP)  ## the seed's four checks against the running `make up` cluster (SECURE=1: as reader)
	$(PY) infrastructure/etcd/test-e2e.py $(call as,reader)

status: $(STAMP)  ## (SECURE=1: as reader)
	$(PY) scripts/status.py $(call as,reader)

backup: $(STAMP)  ## (SECURE=1: as root, the only user etcd gives a snapshot to)
	$(PY) scripts/backup.py save $(call as,root)

restore: $(STAMP)  ## make restore SNAPSHOT=.data/backups/etcd-....db (with make up stopped)
	@test -n "$(SNAPSHOT)" || { echo "usage: make restore SNAPSHOT=path/to/snapshot.db (make up must be stopped)"; exit 2; }
	$(PY) scripts/backup.py restore $(SNAPSHOT) $(if $(secure),--secure)

bench: $(STAMP)  ## the four benchmarks, each beside its naive baseline (not pass/fail)
	$(PY) scripts/bench_sync.py
	$(PY) scripts/bench_heartbeat.py
	$(PY) scripts/bench_takeover.py
	$(MAKE) --no-print-directory bench-registry

# The registry's reads need a real load generator: hey, from Debian's packages, installed
# here when missing and possible (root, or sudo without a password), else a one-line how-to.
bench-registry: $(STAMP)  ## the registry service vs the seed's etcd backend (~10 min; BENCH_ARGS=--quick)
	@command -v hey >/dev/null 2>&1 || ( \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else exit 1; fi; \
	  command -v apt-get >/dev/null 2>&1 && echo "installing hey (apt-get install -y hey) ..." && \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq hey >/dev/null && command -v hey >/dev/null 2>&1 \
	) || { echo "make bench-registry needs the load generator hey: install it with 'sudo apt-get install -y hey' (Debian/Ubuntu) and run it again" >&2; exit 2; }
	$(PY) scripts/bench_registry.py $(BENCH_ARGS)

# The monitoring tests run the real promtool and prometheus (infrastructure/etcd/monitoring/):
# Debian's package prometheus, installed here when missing and possible (root, or sudo
# without a password), else a one-line how-to. No recommends: not the node exporter. On a
# host with systemd the package also starts its own service on :9090 (systemctl disable
# --now prometheus stops it; `make monitor` needs that port).
prometheus-tools:
	@{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || ( \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else exit 1; fi; \
	  command -v apt-get >/dev/null 2>&1 && echo "installing promtool and prometheus (apt-get install -y prometheus) ..." && \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null && \
	  command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 \
	) || { echo "make test needs promtool and prometheus: install them with 'sudo apt-get install -y prometheus' (Debian/Ubuntu) and run it again" >&2; exit 2; }

# The dashboard's browser tests (tests/browser) drive a real Chromium through Playwright:
# Debian's package chromium (Playwright's own browser download is never used), installed
# here when missing and possible (root, or sudo without a password), else a one-line
# how-to. CHROMIUM=/path/to/chromium uses another build instead.
chromium:
	@if [ -n "$(CHROMIUM)" ]; then \
	  [ -x "$(CHROMIUM)" ] || { echo "CHROMIUM=$(CHROMIUM) is not an executable file" >&2; exit 2; }; \
	elif ! { [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; }; then ( \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else exit 1; fi; \
	  command -v apt-get >/dev/null 2>&1 && echo "installing chromium (apt-get install -y chromium) ..." && \
	  $$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium >/dev/null && \
	  { [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; } \
	) || { echo "make test needs Chromium for tests/browser: install it with 'sudo apt-get install -y chromium' (Debian/Ubuntu), or set CHROMIUM=/path/to/chromium, and run it again" >&2; exit 2; }; fi

screenshots: $(STAMP) chromium  ## the dashboard's six pages at 1280x800 into docs/ui/*.png (a real stack, ~15 s)
	CHORA_UI_SCREENSHOTS=docs/ui $(PY) -m pytest -q tests/browser -k screenshot

bench-ui: $(STAMP) chromium  ## the dashboard with 1,000 capabilities and 1,000 instances vs reloading (BENCH_ARGS=--capabilities 200)
	$(PY) scripts/bench_ui.py $(BENCH_ARGS)

monitor: prometheus-tools  ## Prometheus with alerts.yml against `make up`, on http://127.0.0.1:9090 (data: .data/prometheus)
	prometheus --config.file=infrastructure/etcd/monitoring/prometheus.yml \
	  --storage.tsdb.path=.data/prometheus --web.listen-address=127.0.0.1:9090

clean:
	rm -rf $(VENV) .data
