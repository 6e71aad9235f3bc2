"""DomainNameDataSyncThread against the loopback registrar (include/sandbox/registrar.py)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import httpx
import psycopg
import pendulum
import pytest

from panelflow.hooks.registrar import (
    RegistrarAuthenticationError,
    RegistrarHook,
    RegistrarNotFound,
    RegistrarUnavailable,
)
from panelflow.step import Interval
from panelflow.steps.registrar import sync_domain_contacts_and_registrars

from harness import ROOT
NOW = pendulum.datetime(2026, 11, 20, 6, 0, tz="UTC")
LOG = logging.getLogger("test_registrar")
KEY = "rk_test_panelflow_tests"
OWN_TABLES = ("registrar_accounts", "registrar_domains", "registrar_domain_contacts")


from sandbox import registrar as sandbox  # noqa: E402


@pytest.fixture
def db(panel_db, migrated_panel_db):
    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    return panel_db


def connection(registrar, **extra) -> str:
    return json.dumps({"conn_type": "panelflow_registrar", "host": "127.0.0.1", "port": registrar.port,
                       "schema": "http", "password": registrar.api_key,
                       "extra": {"timeout": 2, "retries": 3, "backoff": 0.02, "max_retry_wait": 3,
                                 "page_size": 4, **extra}})


@pytest.fixture
def registrar(monkeypatch):
    """The sandbox with 10 domains (3 pages of 4), one of them broken; wired as ``registrar_sandbox``."""
    from panelflow.dev.postgres import free_port

    domains = [sandbox.demo_domain(f"d{i:02d}.example.test", i) for i in range(1, 10)]
    domains.append(sandbox.demo_domain("broken.example.test", 10))
    server = sandbox.RegistrarSandbox(port=free_port(), api_key=KEY, domains=domains).start()
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRAR_SANDBOX", connection(server))
    yield server
    server.stop()


def account(sql, name="Sandbox registrar", conn_id="registrar_sandbox"):
    return sql("INSERT INTO registrar_accounts (name, conn_id) VALUES (%s, %s) RETURNING id", (name, conn_id))[0][0]


def run(db, at=NOW):
    return sync_domain_contacts_and_registrars(db, Interval(at, at), LOG)


def snapshot(sql):
    return (sql("SELECT * FROM registrar_domains ORDER BY id"),
            sql("SELECT * FROM registrar_domain_contacts ORDER BY registrar_domain_id, role"))


def test_sync_pages_contacts_and_the_failing_domain(db, sql, registrar):
    account(sql)
    (panel_domain,) = sql("INSERT INTO domains (customer_id, name, contact_email, verification_token)"
                          " VALUES (1, 'd03.example.test', 'o@x.example', 't') RETURNING id")[0]
    summary = run(db)
    assert summary["domains_listed"] == summary["domains_added"] == 10
    assert summary["details_read"] == 9 and summary["contacts_added"] == 36
    assert summary["skipped"] == {"domain detail not read": 1}
    assert "broken.example.test" in summary["skipped_examples"][0] and "HTTP 500" in summary["skipped_examples"][0]
    assert summary["accounts_synced"] == 1
    # three pages of four, and the broken detail tried three times
    paths = [r["path"] for r in registrar.requests]
    assert [p for p in paths if p.startswith("/v1/domains?")] == [
        f"/v1/domains?page={n}&per_page=4" for n in (1, 2, 3)]
    assert paths.count("/v1/domains/broken.example.test") == 3

    row = sql("SELECT status, expires_at, nameservers, locked, auto_renew, synced_at, last_error, domain_id"
              " FROM registrar_domains WHERE name = 'd03.example.test'")[0]
    assert row == ("active", pendulum.datetime(2027, 4, 4, tz="UTC"),
                   ["ns1.hostmatic.example", "ns2.hostmatic.example"], True, False, NOW, None, panel_domain)
    contacts = sql("SELECT role, handle, email, street, city, country FROM registrar_domain_contacts c"
                   " JOIN registrar_domains r ON r.id = c.registrar_domain_id WHERE r.name = 'd03.example.test'"
                   " ORDER BY role")
    assert contacts == [(role, f"D03-{role[:3].upper()}-0003", f"{role}@d03.example.test", "4 High Street", "London",
                         "GB") for role in ("admin", "billing", "registrant", "tech")]
    broken = sql("SELECT synced_at, last_error, status FROM registrar_domains WHERE name = 'broken.example.test'")[0]
    assert broken[0] is None and "HTTP 500" in broken[1] and "gave up after 3 attempts" in broken[1]
    assert broken[2] == "active"  # status and expiry come with the list
    assert sql("SELECT last_synced_at, last_error FROM registrar_accounts") == [(NOW, None)]

    # a rerun (same interval, then the next one): nothing to add or change; only the failed detail is read again
    before = snapshot(sql)
    for at in (NOW, NOW.add(hours=6)):
        n = len(registrar.requests)
        again = run(db, at)
        assert (again["domains_added"], again["domains_changed"], again["details_read"], again["contacts_added"],
                again["contacts_changed"], again["contacts_removed"]) == (0, 0, 0, 0, 0, 0)
        assert {r["path"] for r in registrar.requests[n:] if not r["path"].startswith("/v1/domains?")} == {
            "/v1/domains/broken.example.test"}
    after = snapshot(sql)
    assert after[1] == before[1]
    def not_broken(rows):
        return [r for r in rows if r[2] != "broken.example.test"]

    assert not_broken(after[0]) == not_broken(before[0])


def test_contacts_and_status_updated_on_change(db, sql, registrar):
    account(sql)
    run(db)
    registrar.update_contact("d05.example.test", "admin", email="new-admin@d05.example.test",
                             address={"city": "Leeds"})
    registrar.remove_contact("d05.example.test", "billing")
    registrar.update_domain("d07.example.test", locked=False, nameservers=["ns1.elsewhere.example"])
    registrar.update_domain("d08.example.test", status="expired")
    registrar.remove_domain("d09.example.test")  # transferred away
    registrar.add_domain(sandbox.demo_domain("d10.example.test", 11))
    later = NOW.add(hours=6)
    summary = run(db, later)
    assert (summary["domains_added"], summary["domains_unlisted"], summary["contacts_changed"],
            summary["contacts_removed"], summary["contacts_added"]) == (1, 1, 1, 1, 4)
    assert summary["domains_changed"] == 4  # d05 (contacts), d07 (lock, name servers), d08 (status), d09 (unlisted)
    assert summary["details_read"] == 4  # d05, d07, d08 moved, d10 new (+ the broken one, failing again)
    changed = dict(sql("SELECT name, changed_at FROM registrar_domains WHERE changed_at = %s", (later,)))
    assert set(changed) == {"d05.example.test", "d07.example.test", "d08.example.test", "d09.example.test",
                            "d10.example.test"}
    assert sql("SELECT c.role, c.email, c.city, c.changed_at FROM registrar_domain_contacts c JOIN registrar_domains r"
               " ON r.id = c.registrar_domain_id WHERE r.name = 'd05.example.test' AND c.role IN ('admin', 'tech')"
               " ORDER BY c.role") == [("admin", "new-admin@d05.example.test", "Leeds", later),
                                       ("tech", "tech@d05.example.test", "London", NOW)]
    assert sql("SELECT count(*) FROM registrar_domain_contacts c JOIN registrar_domains r"
               " ON r.id = c.registrar_domain_id WHERE r.name = 'd05.example.test'") == [(3,)]
    assert sql("SELECT locked, nameservers FROM registrar_domains WHERE name = 'd07.example.test'") == [
        (False, ["ns1.elsewhere.example"])]
    assert sql("SELECT status FROM registrar_domains WHERE name = 'd08.example.test'") == [("expired",)]
    assert sql("SELECT listed, status FROM registrar_domains WHERE name = 'd09.example.test'") == [(False, "active")]


def test_429_then_success(db, sql, registrar):
    account(sql)
    registrar.throttle(1, retry_after=1)
    started = time.monotonic()
    summary = run(db)
    assert time.monotonic() - started >= 1  # Retry-After honoured
    assert summary["details_read"] == 9 and summary["accounts_synced"] == 1
    assert [r["status"] for r in registrar.requests[:2]] == [429, 200]
    assert registrar.requests[0]["path"] == registrar.requests[1]["path"] == "/v1/domains?page=1&per_page=4"


def test_registrar_down_or_key_refused_changes_nothing(db, sql, registrar, monkeypatch):
    account(sql)
    run(db)
    before = snapshot(sql)
    registrar.throttle(10, retry_after=0)  # busy past the hook's three attempts
    summary = run(db, NOW.add(hours=6))
    assert summary["accounts_synced"] == 0 and summary["skipped"] == {"registrar account not synced": 1}
    assert "HTTP 429" in summary["skipped_examples"][0] and "gave up after 3 attempts" in summary["skipped_examples"][0]
    assert snapshot(sql) == before
    assert "HTTP 429" in sql("SELECT last_error FROM registrar_accounts")[0][0]

    monkeypatch.setenv("AIRFLOW_CONN_REGISTRAR_SANDBOX", json.dumps({**json.loads(connection(registrar)),
                                                                     "password": "wrong"}))
    n = len(registrar.requests)
    summary = run(db, NOW.add(hours=12))
    assert "API key was refused" in summary["skipped_examples"][0]
    assert len(registrar.requests) == n + 1  # a refused key is not retried
    assert snapshot(sql) == before


def test_several_accounts_one_misconfigured(db, sql, registrar):
    account(sql, "Sandbox", "registrar_sandbox")
    account(sql, "Missing", "registrar_nowhere")
    summary = run(db)
    assert summary["accounts"] == 2 and summary["accounts_synced"] == 1
    assert "registrar_nowhere" in [e for e in summary["skipped_examples"] if e.startswith("Missing")][0]


def test_hook_errors(registrar):
    hook = RegistrarHook("registrar_sandbox")
    with hook:
        assert hook.get_domain("d01.example.test").contacts["registrant"].email == "registrant@d01.example.test"
        with pytest.raises(RegistrarNotFound):
            hook.get_domain("nope.example.test")
        with pytest.raises(RegistrarUnavailable, match=r"broken.example.test: HTTP 500 .*gave up after 3 attempts"):
            hook.get_domain("broken.example.test")
        listing = hook.list_domains()
        assert listing.complete and len(listing.domains) == 10
    assert hook.test_connection()[0]


def test_hook_unreachable_and_bad_key(monkeypatch):
    from panelflow.dev.postgres import free_port

    port = free_port()  # nothing listens
    monkeypatch.setenv("AIRFLOW_CONN_REGISTRAR", json.dumps(
        {"conn_type": "panelflow_registrar", "host": f"http://127.0.0.1:{port}", "password": "k",
         "extra": {"retries": 2, "backoff": 0.01}}))
    with RegistrarHook() as hook, pytest.raises(RegistrarUnavailable, match="ConnectError.*gave up after 2"):
        hook.list_domains()
    with sandbox.RegistrarSandbox(port=free_port(), api_key=KEY, domains=[]) as server:
        monkeypatch.setenv("AIRFLOW_CONN_REGISTRAR", json.dumps({**json.loads(connection(server)), "password": "x"}))
        with RegistrarHook() as hook, pytest.raises(RegistrarAuthenticationError):
            hook.list_domains()


def test_sandbox_cli(tmp_path):
    from panelflow.dev.postgres import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.registrar", "--host", "127.0.0.1",
                             "--port", str(port), "--domains", "5", "--rate-limit", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT / "include")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        headers = {"Authorization": f"Bearer {sandbox.DEFAULT_API_KEY}"}
        page = httpx.get(f"http://127.0.0.1:{port}/v1/domains?page=1&per_page=10", headers=headers).json()
        assert page["meta"]["total"] == 5 and page["data"][-1]["name"] == "customer004.example"
        statuses = [httpx.get(f"http://127.0.0.1:{port}/v1/domains/customer001.example", headers=headers).status_code
                    for _ in range(3)]
        assert 429 in statuses
        assert httpx.get(f"http://127.0.0.1:{port}/v1/domains", headers={}).status_code == 401
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
