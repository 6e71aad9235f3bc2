"""SynchDNSRecordsWork against a real DNS server (dnsmasq on 127.0.0.1) standing in for the backend."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time

import psycopg
import pendulum
import pytest

from panelflow.step import Interval
from panelflow.steps.dns_records import send_domain_verification_notices, sync_hostmatic_dns_records

NOW = pendulum.datetime(2026, 11, 20, 9, 0, tz="UTC")
LOG = logging.getLogger("test_dns_records")
OWN_TABLES = ("hostmatic_domains", "hostmatic_dns_records", "hostmatic_dns_record_changes",
              "domain_verification_notices")


@pytest.fixture
def db(panel_db, migrated_panel_db):
    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(OWN_TABLES) + " RESTART IDENTITY CASCADE")
    return panel_db


@pytest.fixture
def backend(monkeypatch):
    """A dnsmasq serving example.test, wired as ``hostmatic_dns``. ``backend(*args)`` (re)starts it
    on the same port with those dnsmasq record options (``--host-record=…``, ``--mx-host=…``…)."""
    binary = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if binary is None:
        pytest.skip("dnsmasq is not installed")
    import dns.message
    import dns.query

    from panelflow.dev.postgres import free_port

    state = {"port": free_port(), "proc": None}

    def stop():
        if state["proc"] is not None:
            state["proc"].terminate()
            state["proc"].wait(5)
            state["proc"] = None

    def start(*records: str) -> int:
        stop()
        port = state["port"]
        args = [binary, "--no-daemon", "--conf-file=/dev/null", f"--port={port}", "--listen-address=127.0.0.1",
                "--bind-interfaces", "--no-resolv", "--no-hosts", "--pid-file=", "--user=root",
                "--local=/example.test/", "--local-ttl=1", *records]
        proc = state["proc"] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while True:
            try:
                dns.query.udp(dns.message.make_query("probe.example.test", "A"), "127.0.0.1", port=port, timeout=0.2)
                break
            except Exception:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stderr.read().decode())
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return port

    monkeypatch.setenv("AIRFLOW_CONN_HOSTMATIC_DNS", json.dumps(
        {"conn_type": "dns", "host": "127.0.0.1", "port": state["port"], "extra": {"timeout": 1, "lifetime": 2}}))
    yield start
    stop()


def ns(target: str) -> str:
    """dnsmasq has no NS option outside its authoritative mode: a raw RR (type 2, the name in wire form)."""
    import dns.name

    return dns.name.from_text(target).to_wire().hex()


SHOP = (
    "--host-record=shop.example.test,192.0.2.10,2001:db8::10",
    "--host-record=mail.shop.example.test,192.0.2.11",
    "--mx-host=shop.example.test,mail.shop.example.test,10",
    "--cname=www.shop.example.test,shop.example.test",
    "--txt-record=shop.example.test,v=spf1 mx -all",
    "--txt-record=_dmarc.shop.example.test,v=DMARC1; p=none",
    "--srv-host=_sip._tls.shop.example.test,sip.shop.example.test,443,100,1",
    f"--dns-rr=shop.example.test,2,{ns('ns1.example.test.')}",
    "--host-record=blog.shop.example.test,192.0.2.12",
)
SHOP_RECORDS = {
    ("shop.example.test", "A", "192.0.2.10"),
    ("shop.example.test", "AAAA", "2001:db8::10"),
    ("shop.example.test", "MX", "10 mail.shop.example.test"),
    ("shop.example.test", "NS", "ns1.example.test"),
    ("shop.example.test", "TXT", "v=spf1 mx -all"),
    ("www.shop.example.test", "CNAME", "shop.example.test"),
    ("mail.shop.example.test", "A", "192.0.2.11"),
    ("_dmarc.shop.example.test", "TXT", "v=DMARC1; p=none"),
    ("_sip._tls.shop.example.test", "SRV", "100 1 443 sip.shop.example.test"),
    ("blog.shop.example.test", "A", "192.0.2.12"),  # an extra name of the domain
}


def hosted(sql, name, *, token="tok", email="owner@customer.example", extra=(), created=NOW, conn_id=None):
    (domain_id,) = sql("INSERT INTO domains (customer_id, name, contact_email, verification_token, created_at)"
                       " VALUES (1, %s, %s, %s, %s) RETURNING id", (name, email, token, created))[0]
    sql("INSERT INTO hostmatic_domains (domain_id, extra_names, dns_conn_id)"
        " VALUES (%s, %s, coalesce(%s, 'hostmatic_dns'))",
        (domain_id, list(extra), conn_id))
    return domain_id


def stored(sql, domain_id=None):
    rows = sql("SELECT name, type, value FROM hostmatic_dns_records"
               + (" WHERE domain_id = %s" if domain_id else ""), (domain_id,) if domain_id else None)
    return set(rows)


def changes(sql):
    return sorted(sql("SELECT run_at, change, name, type, value FROM hostmatic_dns_record_changes"))


def run(db, at=NOW):
    return sync_hostmatic_dns_records(db, Interval(at, at), LOG)


def test_records_read_stored_and_a_removed_record_logged_once(db, sql, backend):
    backend(*SHOP, "--txt-record=other.example.test,hello", "--host-record=other.example.test,192.0.2.20")
    shop = hosted(sql, "shop.example.test", extra=["blog"])
    other = hosted(sql, "other.example.test")
    summary = run(db)
    assert summary["synced"] == 2 and summary["skipped"] == {}
    assert stored(sql, shop) == SHOP_RECORDS
    assert stored(sql, other) == {("other.example.test", "TXT", "hello"), ("other.example.test", "A", "192.0.2.20")}
    assert summary["records_added"] == len(SHOP_RECORDS) + 2 and summary["records_removed"] == 0
    assert len(changes(sql)) == len(SHOP_RECORDS) + 2  # the first read logs every record as added
    assert sql("SELECT ttl FROM hostmatic_dns_records WHERE type = 'A' AND name = 'shop.example.test'") == [(1,)]

    # the same server again: nothing changes, nothing logged
    again = run(db, NOW.add(minutes=30))
    assert again["records_added"] == again["records_removed"] == 0 and again["synced"] == 2
    assert len(changes(sql)) == len(SHOP_RECORDS) + 2

    # the backend loses mail's A record (still queried: a stored name) and the DMARC record, gains an MX
    later = NOW.add(hours=1)
    backend(*[a for a in SHOP if "mail.shop" not in a.split(",")[0] and "_dmarc" not in a],
            "--mx-host=shop.example.test,mx2.example.test,20",
            "--txt-record=other.example.test,hello", "--host-record=other.example.test,192.0.2.20")
    summary = run(db, later)
    assert summary["records_removed"] == 2 and summary["records_added"] == 1 and summary["domains_changed"] == 1
    assert stored(sql, shop) == (SHOP_RECORDS - {("mail.shop.example.test", "A", "192.0.2.11"),
                                                 ("_dmarc.shop.example.test", "TXT", "v=DMARC1; p=none")}
                                 | {("shop.example.test", "MX", "20 mx2.example.test")})
    assert [c[1:] for c in changes(sql) if c[0] == later] == [
        ("added", "shop.example.test", "MX", "20 mx2.example.test"),
        ("removed", "_dmarc.shop.example.test", "TXT", "v=DMARC1; p=none"),
        ("removed", "mail.shop.example.test", "A", "192.0.2.11"),
    ]
    # a rerun of the same interval and the next run: recorded once
    for at in (later, later.add(minutes=30)):
        again = run(db, at)
        assert again["records_added"] == again["records_removed"] == 0
    assert len([c for c in changes(sql) if c[0] >= later]) == 3
    assert sql("SELECT last_synced_at, last_error FROM hostmatic_domains WHERE domain_id = %s", (shop,)) == [
        (later.add(minutes=30), None)]


def test_server_not_answering_is_reported_and_nothing_deleted(db, sql, backend, monkeypatch):
    backend(*SHOP)
    shop = hosted(sql, "shop.example.test", extra=["blog"])
    assert run(db)["synced"] == 1
    before_records, before_changes = stored(sql, shop), changes(sql)

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes queries, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        monkeypatch.setenv("AIRFLOW_CONN_HOSTMATIC_DNS", json.dumps(
            {"conn_type": "dns", "host": "127.0.0.1", "port": silent.getsockname()[1],
             "extra": {"timeout": 0.2, "lifetime": 0.4}}))
        later = NOW.add(hours=1)
        started = time.monotonic()
        summary = run(db, later)
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert elapsed < 5  # the first unanswered query ends the domain's read
    assert summary["synced"] == 0 and summary["records_removed"] == 0
    assert summary["skipped"] == {"DNS backend did not answer; stored records kept": 1}
    assert "shop.example.test" in summary["skipped_examples"][0] and "Timeout" in summary["skipped_examples"][0]
    assert stored(sql, shop) == before_records == SHOP_RECORDS and changes(sql) == before_changes
    ((attempt, synced, error),) = sql("SELECT last_attempt_at, last_synced_at, last_error FROM hostmatic_domains")
    assert attempt == later and synced == NOW and "Timeout" in error


def test_empty_answer_and_missing_connection_change_nothing(db, sql, backend):
    backend(*SHOP)
    shop = hosted(sql, "shop.example.test", extra=["blog"])
    lost = hosted(sql, "lost.example.test", conn_id="no_such_backend")
    assert run(db)["synced"] == 1
    backend("--host-record=unrelated.example.test,192.0.2.99")  # the backend lost the shop zone
    summary = run(db, NOW.add(hours=1))
    assert summary["synced"] == 0
    assert summary["skipped"] == {"empty answer; stored records kept": 1, "DNS backend not configured": 1}
    assert stored(sql, shop) == SHOP_RECORDS
    assert "no_such_backend" in sql("SELECT last_error FROM hostmatic_domains WHERE domain_id = %s", (lost,))[0][0]


def test_reads_are_concurrent_and_bounded(db, sql, backend):
    backend(*[f"--host-record=h{i}.example.test,192.0.2.{i}" for i in range(1, 41)])
    for i in range(1, 41):
        hosted(sql, f"h{i}.example.test", token=f"t{i}")
    summary = run(db)
    assert summary["domains"] == summary["synced"] == 40 and summary["records_read"] == 40
    assert sql("SELECT count(*) FROM hostmatic_dns_records")[0][0] == 40


# -- verification notices ------------------------------------------------------------------------


def notices(db, at):
    return send_domain_verification_notices(db, Interval(at, at))


def pending(sql, name, created, token="tok", email="owner@customer.example"):
    (domain_id,) = sql("INSERT INTO domains (customer_id, name, contact_email, verification_token, created_at)"
                       " VALUES (1, %s, %s, %s, %s) RETURNING id", (name, email, token, created))[0]
    return domain_id


def outbox(sql):
    return sorted(sql("SELECT dedupe_key, to_address, subject FROM email_outbox"))


def test_reminders_sent_once_each_at_their_day(db, sql):
    d = pending(sql, "new.example.test", NOW, token="tok-new")
    # day 0: the first notice, with the TXT record to publish
    assert notices(db, NOW)["notices"] == 1
    ((key, to, subject),) = outbox(sql)
    assert (key, to, subject) == (f"domain-verification-notice:{d}:0", "owner@customer.example",
                                  "Verify your domain new.example.test")
    body = sql("SELECT body_text FROM email_outbox")[0][0]
    assert "panelflow-verification=tok-new" in body and "TXT" in body
    # runs every 30 minutes until day 3 add nothing; nor does a rerun
    for at in (NOW, NOW.add(minutes=30), NOW.add(days=2, hours=23, minutes=59)):
        assert notices(db, at)["notices"] == 0
    assert notices(db, NOW.add(days=3))["reminder_1"] == 1
    assert notices(db, NOW.add(days=5))["notices"] == 0
    summary = notices(db, NOW.add(days=7, minutes=30))
    assert summary["reminder_2"] == 1 and summary["emails_queued"] == 1
    for at in (NOW.add(days=8), NOW.add(days=13), NOW.add(days=30)):
        assert notices(db, at)["notices"] == 0
    assert [k for k, _, _ in outbox(sql)] == [f"domain-verification-notice:{d}:{n}" for n in (0, 1, 2)]
    assert [s for _, _, s in outbox(sql)][2] == "Last reminder: verify your domain new.example.test"
    assert sql("SELECT reminder, sent_at FROM domain_verification_notices ORDER BY reminder") == [
        (0, NOW), (1, NOW.add(days=3)), (2, NOW.add(days=7, minutes=30))]


def test_which_domains_get_notices(db, sql, backend):
    pending(sql, "late.example.test", NOW.subtract(days=4))                   # missed days 0 and 3: only reminder 1
    pending(sql, "old.example.test", NOW.subtract(days=20))                   # pending too long: left alone
    pending(sql, "future.example.test", NOW.add(hours=1))                     # added after the run's clock
    pending(sql, "nomail.example.test", NOW, email="not-an-address")
    verified = pending(sql, "done.example.test", NOW)
    sql("UPDATE domains SET status = 'verified' WHERE id = %s", (verified,))
    # a hosted zone already publishing its token: DomainVerification takes it from here
    backend("--txt-record=hosted.example.test,panelflow-verification=tok-hosted")
    hosted(sql, "hosted.example.test", token="tok-hosted")
    assert run(db)["synced"] == 1
    summary = notices(db, NOW)
    assert summary["notices"] == 1 and summary["reminder_1"] == 1
    assert summary["skipped"] == {"domain contact has no usable e-mail address": 1}
    assert [k.split(":")[2] for k, _, _ in outbox(sql)] == ["1"]
    assert sql("SELECT d.name FROM domain_verification_notices n JOIN domains d ON d.id = n.domain_id") == [
        ("late.example.test",)]
    # three days on: the late domain's reminder 2 (its day 7), the future one's first notice
    later = notices(db, NOW.add(days=3))
    assert later["notices"] == 2 and later["reminder_2"] == 1 and later["reminder_0"] == 1
    assert sorted(sql("SELECT d.name, n.reminder FROM domain_verification_notices n"
                      " JOIN domains d ON d.id = n.domain_id")) == [
        ("future.example.test", 0), ("late.example.test", 1), ("late.example.test", 2)]
