"""DomainVerification against a real DNS server (dnsmasq on 127.0.0.1)."""

from __future__ import annotations

import json
import socket

import pendulum

from panelflow.step import Interval
from panelflow.steps.domains import verify_domains

NOW = pendulum.datetime(2026, 11, 20, 9, 0, tz="UTC")


def add(sql, name, token, email="owner@customer.example"):
    sql("INSERT INTO domains (customer_id, name, contact_email, verification_token) VALUES (1, %s, %s, %s)",
        (name, email, token))


def test_verifies_by_txt_record_and_mails_once(panel_db, sql, dnsmasq):
    dnsmasq({"good.example.test": "panelflow-verification=tok-good",
             "wrong.example.test": "panelflow-verification=someone-else",
             "spf.example.test": "v=spf1 -all"})
    add(sql, "good.example.test", "tok-good")
    add(sql, "wrong.example.test", "tok-wrong")
    add(sql, "spf.example.test", "tok-spf")
    add(sql, "missing.example.test", "tok-missing")  # NXDOMAIN
    summary = verify_domains(panel_db, Interval(NOW, NOW))
    assert summary == {"checked": 4, "verified": 1, "still_pending": 3, "lookup_errors": []}
    status = dict(sql("SELECT name, status FROM domains"))
    assert status == {"good.example.test": "verified", "wrong.example.test": "pending",
                      "spf.example.test": "pending", "missing.example.test": "pending"}
    assert sql("SELECT verified_at FROM domains WHERE name = 'good.example.test'")[0][0] == NOW
    mails = sql("SELECT to_address, subject, dedupe_key FROM email_outbox")
    assert len(mails) == 1 and mails[0][1] == "Your domain good.example.test is verified"
    # the next run: nothing verified twice, no second e-mail
    again = verify_domains(panel_db, Interval(NOW.add(minutes=10), NOW.add(minutes=10)))
    assert again["checked"] == 3 and again["verified"] == 0
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 1


def test_resolver_timeout_is_reported_and_nothing_is_lost(panel_db, sql, monkeypatch):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes queries, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        monkeypatch.setenv("AIRFLOW_CONN_DNS_RESOLVER", json.dumps(
            {"conn_type": "dns", "host": "127.0.0.1", "port": silent.getsockname()[1],
             "extra": {"timeout": 0.3, "lifetime": 0.6}}))
        add(sql, "a.example.test", "t1")
        add(sql, "b.example.test", "t2")
        summary = verify_domains(panel_db, Interval(NOW, NOW))
    finally:
        silent.close()
    assert summary["checked"] == 2 and summary["verified"] == 0 and len(summary["lookup_errors"]) == 2
    assert "LifetimeTimeout" in summary["lookup_errors"][0] or "Timeout" in summary["lookup_errors"][0]
    assert {r[0] for r in sql("SELECT status FROM domains")} == {"pending"}
    assert all(r[0] for r in sql("SELECT last_error FROM domains"))
