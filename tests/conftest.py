"""Test fixtures: a real PostgreSQL and a real SMTP server on 127.0.0.1, started by the tests.

The embedded PostgreSQL starts before Airflow is imported, because Airflow reads its metadata
DB URL once at import: the same server holds the Airflow metadata DB (``airflow``) and the
panel DB (``panel``).
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from harness import ROOT, require_binary
sys.path.insert(0, str(ROOT / "plugins"))

_TMP = Path(tempfile.mkdtemp(prefix="panelflow-tests-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_TMP / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "PANELFLOW_CATALOG": str(ROOT / "include" / "catalog"),
    }
)

from panelflow.dev.postgres import EmbeddedPostgres  # noqa: E402

_PG = EmbeddedPostgres(_TMP / "pgdata", durable=False).start()
for _db in ("airflow", "panel"):
    _PG.create_database(_db)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = _PG.uri("airflow").replace("postgresql://", "postgresql+psycopg://")
os.environ["AIRFLOW_CONN_PANEL_DB"] = _PG.uri("panel")


from harness import classify as _classify  # noqa: E402
from harness.classify import forbid_servers  # noqa: E402,F401  (make test-fast's guard, below)


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the xdist_group marks into the node ids
def pytest_collection_modifyitems(config, items):
    """Marks every test by what it starts (live, airflow_stack, samba: see tests/harness/classify.py)
    and, under pytest-xdist, keeps the Samba tests on one worker and the Airflow stacks on one."""
    _classify.apply(config, items)


@pytest.fixture(autouse=True)
def _no_servers_in_test_fast(request):
    """Under ``make test-fast`` (PANELFLOW_TEST_FAST=1) a test that starts a server fails."""
    if os.environ.get("PANELFLOW_TEST_FAST") == "1":
        request.getfixturevalue("forbid_servers")


def pytest_unconfigure(config):
    if "airflow.settings" in sys.modules:  # close Airflow's pooled connections before the server goes
        sys.modules["airflow.settings"].dispose_orm()
    _PG.stop()
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> EmbeddedPostgres:
    return _PG


@pytest.fixture(scope="session")
def migrated_panel_db(postgres) -> str:
    from panelflow.db import upgrade

    url = postgres.uri("panel")
    upgrade(url)
    return url


PANEL_TABLES = (
    "service_queue_logs", "voice_bill_records", "temp_data", "azure_rates", "o365_subscription_reconciliations",
    "email_logs", "sessions", "session_history", "group_action_jobs", "retention_runs", "email_outbox",
    "email_campaigns", "email_campaign_recipients", "email_unsubscribes", "domains",
    "audit_logs", "audit_logs_archive", "o365_admin_audit_logs", "o365_admin_audit_logs_archive",
    # billing (0006): TRUNCATE … CASCADE below empties the tables referencing these too
    "currencies", "providers", "resellers", "tax_rates", "customers", "payment_profiles", "subscriptions",
    "subscription_addons", "invoices", "invoice_lines", "credit_notes", "payment_attempts", "payments",
    "reseller_commissions", "voice_rates", "ocs_call_records", "sip_usage", "sip_export_tasks", "o365_price_lists",
    "o365_price_notifications",
)


@pytest.fixture
def panel_db(migrated_panel_db):
    """The real panel DB through the hook steps use, emptied before each test."""
    import psycopg

    from panelflow.hooks.panel_db import PanelDatabaseHook

    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(PANEL_TABLES) + " RESTART IDENTITY CASCADE")
    return PanelDatabaseHook()


@pytest.fixture
def sql(migrated_panel_db):
    """Run SQL on the panel DB: ``sql("select …", params)`` → rows."""
    import psycopg

    conn = psycopg.connect(migrated_panel_db, autocommit=True)

    def run(query, params=None):
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else cur.rowcount

    yield run
    conn.close()


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata DB (only the tests that run DAGs pay for it)."""
    from airflow.utils.db import initdb

    initdb()
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


class _Inbox:
    """Keeps what it accepts. ``faults[address]`` is a list of answers to give, in turn, to
    messages for that address before accepting: an SMTP reply ("451 …", "550 …") or "drop"
    (close the connection in the middle of DATA, before any reply)."""

    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes = []
        self.faults: dict[str, list[str]] = {}

    async def handle_DATA(self, server, session, envelope):
        for rcpt in envelope.rcpt_tos:
            queue = self.faults.get(rcpt)
            if queue:
                action = queue.pop(0)
                if action == "drop":
                    server.transport.close()
                    return None
                return action
        self.envelopes.append(envelope)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


@pytest.fixture
def smtp_server(monkeypatch):
    """aiosmtpd listening on 127.0.0.1, wired as the Airflow connection ``smtp_default``."""
    import json

    from aiosmtpd.controller import Controller

    from panelflow.dev.postgres import free_port

    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DEFAULT",
        json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                    "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "panelflow@test.example"}}),
    )
    inbox.port = port
    yield inbox
    controller.stop()


@pytest.fixture
def dnsmasq(tmp_path, monkeypatch):
    """A real DNS server on 127.0.0.1 answering for example.test, wired as ``dns_resolver``.

    ``dnsmasq(txt={"name": "value", …})`` starts it with those TXT records.
    """
    import json
    import subprocess
    import time

    binary = require_binary("dnsmasq")
    procs = []

    def start(txt: dict[str, str]):
        from panelflow.dev.postgres import free_port

        port = free_port()
        args = [binary, "--no-daemon", "--conf-file=/dev/null", f"--port={port}", "--listen-address=127.0.0.1",
                "--bind-interfaces", "--no-resolv", "--no-hosts", "--pid-file=", "--user=root",
                "--local=/example.test/", "--local-ttl=1"]
        args += [f"--txt-record={name},{value}" for name, value in txt.items()]  # no shell: no quotes
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # ready when it answers on UDP
            import dns.message
            import dns.query

            try:
                dns.query.udp(dns.message.make_query("probe.example.test", "TXT"), "127.0.0.1", port=port, timeout=0.2)
                break
            except Exception:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stderr.read().decode())
        monkeypatch.setenv("AIRFLOW_CONN_DNS_RESOLVER", json.dumps(
            {"conn_type": "dns", "host": "127.0.0.1", "port": port, "extra": {"timeout": 1, "lifetime": 2}}))
        return port

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def payment_gateway(monkeypatch):
    """The Stripe sandbox (include/sandbox/payment_gateway.py) on 127.0.0.1, wired as the
    ``payment_gateway`` connection (the hook's 1 s timeout is shorter than the 3 s an
    ``answer_lost`` charge's answer is held); ``.connection(**changes)`` is that connection's JSON
    with changes (another timeout, a wrong key) for a hook or a child process."""
    import json

    from panelflow.dev.postgres import free_port
    from sandbox.payment_gateway import PaymentGatewaySandbox

    gateway = PaymentGatewaySandbox(port=free_port(), api_key="sk_test_panelflow_tests",
                                           timeout_hold=3.0, hold_max=30.0).start()

    def connection(**changes) -> str:
        conn = {"conn_type": "panelflow_payment_gateway", "host": "127.0.0.1", "port": gateway.port,
                "schema": "http", "password": gateway.api_key, "extra": {"timeout": 1}}
        extra = changes.pop("extra", {})
        return json.dumps({**conn, **changes, "extra": {**conn["extra"], **extra}})

    gateway.connection = connection
    monkeypatch.setenv("AIRFLOW_CONN_PAYMENT_GATEWAY", connection())
    yield gateway
    gateway.stop()


@pytest.fixture
def recorded_powershell():
    """The PSRP boundary (include/sandbox/psrp.py): the real PsrpHook/pypsrp build real
    CreatePipeline messages, which are decoded and recorded (``.sent``); ``.answer(script, output |
    error= | timeout= | hang_up=)`` gives the recorded reply. ``.connection(host)`` is a psrp
    connection's JSON for ``AIRFLOW_CONN_…``."""
    from sandbox import psrp as module

    with module.RecordedPowerShell() as endpoint:
        endpoint.connection = module.psrp_connection
        yield endpoint
