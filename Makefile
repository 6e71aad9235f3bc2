# panelflow — the two commands: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
export PYTHONPATH := $(CURDIR)/plugins

.PHONY: run test test-fast system-deps airflow catalog-report catalog-check pools bench lock clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install -q --python $(PY) -r requirements.txt
	touch $@

## Airflow 3 on http://localhost:8080 with the panel DB, demo data and pools; Ctrl-C stops it all;
## THREADS=billing_work,SendEmailNotificationsWork starts only those threads unpaused (a small machine)
run: $(VENV)/.installed
	$(if $(THREADS),PANELFLOW_THREADS=$(THREADS)) $(PY) -m panelflow.dev.local

## servers the tests start on 127.0.0.1 that no wheel brings (PostgreSQL and SMTP come from the lock);
## samba is the Active Directory domain controller of the AD tests (under CI=true a missing one fails them);
## chromium is the headless browser of the Threads Manager page tests (Playwright drives Debian's chromium)
## redis-server is the Celery broker of the queue-routing test (tests/dags/test_celery_routing.py);
## kamailio (with its PostgreSQL module) and sipp are the SIP platform and the calls of the voice tests;
## mariadbd, sshd (internal-sftp) and smbd the hosting tests' database, backup/peer and log-share servers
SYSTEM_BINARIES := dnsmasq dovecot samba samba-tool chromium redis-server kamailio sipp mariadbd mariadb-install-db sshd smbd smbpasswd
SYSTEM_PACKAGES := dnsmasq-base dovecot-pop3d samba samba-dsdb-modules samba-vfs-modules chromium redis-server kamailio kamailio-postgres-modules sip-tester mariadb-server mariadb-client openssh-server smbclient
system-deps:
	@missing=""; for b in $(SYSTEM_BINARIES); do command -v $$b >/dev/null 2>&1 || test -x /usr/sbin/$$b || test -x /usr/bin/$$b || missing="$$missing $$b"; done; \
	ls /usr/lib/*/kamailio/modules/db_postgres.so >/dev/null 2>&1 || missing="$$missing kamailio-postgres-modules"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	  else echo "missing:$$missing — install: sudo apt-get install $(SYSTEM_PACKAGES)"; exit 1; fi; fi

## the whole suite: unit + integration on real PostgreSQL, SMTP and DNS servers (loopback only), on
## TEST_WORKERS pytest-xdist workers (each its own PostgreSQL; free ports). --dist loadgroup with the
## groups tests/harness/classify.py adds from conftest: the Samba AD DC tests (fixed port 636) on one
## worker, the whole-Airflow-stack tests in PANELFLOW_STACK_LANES (2) groups, so at most two stacks
## run at once on 2 cores; those units go out first. TEST_WORKERS=0: all in one process, as before.
## ARGS="…" adds pytest arguments.
TEST_WORKERS ?= 3
PYTEST_XDIST = -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder
test: $(VENV)/.installed system-deps
	$(PY) -m pytest $(PYTEST_XDIST) --durations=30 $(ARGS)

## the inner loop (< 3 min): every test not marked live — no Airflow stack or dag.test() run, no
## system server (Samba, Dovecot, dnsmasq, redis, chromium …); PostgreSQL, aiosmtpd and the
## in-process sandboxes only. A test that starts a server anyway fails here (PANELFLOW_TEST_FAST).
TEST_FAST_WORKERS ?= 2
test-fast: $(VENV)/.installed
	PANELFLOW_TEST_FAST=1 $(PY) -m pytest -m "not live" -n $(TEST_FAST_WORKERS) --durations=10 $(ARGS)

## the airflow CLI against the `make run` set-up, e.g. make airflow ARGS="dags list"
airflow: $(VENV)/.installed
	@test -f .panelflow/env.sh || { echo "start it once with make run first"; exit 1; }
	. .panelflow/env.sh && $(VENV)/bin/airflow $(ARGS)

## threads and steps of the catalog, built vs seed (make catalog-report ARGS=-v for every step)
catalog-report: $(VENV)/.installed
	$(PY) -m panelflow.catalog.report $(ARGS)

## validate include/catalog/*.yaml (file, line, thread and field for every problem)
catalog-check: $(VENV)/.installed
	$(PY) -c "from panelflow.catalog import load_catalog; c = load_catalog(); print(f'catalog ok: {len(c.threads)} threads')"

## create/update Airflow pools from the catalog in the `make run` set-up
pools: $(VENV)/.installed
	@test -f .panelflow/env.sh || { echo "start it once with make run first"; exit 1; }
	. .panelflow/env.sh && $(PY) -m panelflow.pools

bench: $(VENV)/.installed
	$(PY) bench/parse.py
	$(PY) bench/mail.py
	$(PY) bench/billing.py
	$(PY) bench/o365_sync.py
	$(PY) bench/ad_sync.py
	$(PY) bench/voice.py
	$(PY) bench/bandwidth.py

## re-resolve requirements.in into the exact lock requirements.txt
lock: $(VENV)/.installed
	$(VENV)/bin/uv pip compile requirements.in --python-version 3.11 -o requirements.txt

clean:
	rm -rf .panelflow
