"""SendEmailCampaignWork on the real panel DB and a real SMTP server."""

from __future__ import annotations

import json

import pendulum

from panelflow.step import Interval
from panelflow.steps.mail import process_email_campaigns

NOW = pendulum.datetime(2026, 11, 20, 9, 0, tz="UTC")


def at(t):
    return Interval(t, t)


def make_campaign(sql, *, recipients, rate=None, send_at=NOW.subtract(minutes=1)):
    (cid,) = sql(
        "INSERT INTO email_campaigns (name, subject_template, text_template, html_template, context, send_at,"
        " rate_per_minute) VALUES ('November offer', 'Hi {{ name }}: {{ offer }}',"
        " 'Dear {{ name }}, your {{ plan }} plan gets {{ offer }}.', '<p>Dear {{ name }}, {{ plan }}</p>',"
        " %s, %s, %s) RETURNING id",
        (json.dumps({"offer": "20% off"}), send_at, rate))[0]
    for email, name, data in recipients:
        sql("INSERT INTO email_campaign_recipients (campaign_id, email, name, data) VALUES (%s, %s, %s, %s)",
            (cid, email, name, json.dumps(data)))
    return cid


def test_campaign_personalised_rate_limited_unsubscribes_honoured(panel_db, sql, smtp_server):
    sql("INSERT INTO email_unsubscribes (email) VALUES ('gone@example.test')")
    cid = make_campaign(sql, rate=2, recipients=[
        ("ann@example.test", "Ann", {"plan": "Gold"}),
        ("Gone@Example.test", "Gone", {"plan": "Gold"}),          # unsubscribed (any case)
        ("bob@example.test", "Bob <b>", {"plan": "Silver"}),
        ("not-an-address", "Nobody", {"plan": "Gold"}),            # bad record: reported, skipped
        ("cy@example.test", "Cy", {}),                             # no plan: does not render, reported
        ("dee@example.test", "Dee", {"plan": "Bronze"}),
        ("eve@example.test", "Eve", {"plan": "Gold"}),
    ])
    first = process_email_campaigns(panel_db, at(NOW))
    assert first["queued"] == 4 and len(first["bad_recipients"]) == 2
    assert any("invalid address 'not-an-address'" in b for b in first["bad_recipients"])
    assert any("'plan' is undefined" in b for b in first["bad_recipients"])
    # rate 2/min from 08:59: ranks 0-1 due 08:59, 2-3 at 09:00, 4-5 at 09:01, 6 at 09:02
    assert sorted(m["To"] for m in smtp_server.messages) == ["ann@example.test", "bob@example.test"]
    bob = next(m for m in smtp_server.messages if m["To"] == "bob@example.test")
    assert bob["Subject"] == "Hi Bob <b>: 20% off"
    assert bob.get_body(("plain",)).get_content().strip() == "Dear Bob <b>, your Silver plan gets 20% off."
    assert "Bob &lt;b&gt;" in bob.get_body(("html",)).get_content()

    sql("INSERT INTO email_unsubscribes (email) VALUES ('eve@example.test')")  # after her message was queued
    second = process_email_campaigns(panel_db, at(NOW.add(minutes=5)))
    assert second["queued"] == 0 and second["cancelled_unsubscribed"] == 1 and second["finished"] == 1
    assert sorted(m["To"] for m in smtp_server.messages) == ["ann@example.test", "bob@example.test", "dee@example.test"]
    assert sql("SELECT status, finished_at IS NOT NULL FROM email_campaigns WHERE id = %s", (cid,))[0] == ("done", True)
    # a rerun changes nothing and sends nothing twice
    process_email_campaigns(panel_db, at(NOW.add(minutes=5)))
    assert len(smtp_server.messages) == 3


def test_campaign_not_due_yet_waits(panel_db, sql, smtp_server):
    make_campaign(sql, recipients=[("ann@example.test", "Ann", {"plan": "Gold"})], send_at=NOW.add(hours=1))
    summary = process_email_campaigns(panel_db, at(NOW))
    assert summary["campaigns"] == 0 and smtp_server.messages == []
    assert sql("SELECT status FROM email_campaigns")[0][0] == "scheduled"


def test_large_campaign_expands_in_bounded_runs(panel_db, sql, smtp_server, monkeypatch):
    import panelflow.steps.mail as mail_steps

    monkeypatch.setattr(mail_steps, "MAX_EXPAND_PER_RUN", 300)
    monkeypatch.setattr(mail_steps, "EXPAND_CHUNK", 120)
    cid = make_campaign(sql, recipients=[])
    sql("INSERT INTO email_campaign_recipients (campaign_id, email, name, data) SELECT %s, 'u' || g || '@example.test',"
        " 'U' || g, '{\"plan\": \"Gold\"}' FROM generate_series(1, 500) g", (cid,))
    assert process_email_campaigns(panel_db, at(NOW))["queued"] == 300
    assert process_email_campaigns(panel_db, at(NOW))["queued"] == 200
    assert process_email_campaigns(panel_db, at(NOW))["queued"] == 0
    assert len(smtp_server.messages) == 500 and len({m["To"] for m in smtp_server.messages}) == 500
    assert sql("SELECT status FROM email_campaigns")[0][0] == "done"
