"""The one e-mail path on a real PostgreSQL outbox and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

from datetime import timedelta

import pendulum
import pytest

from panelflow.services.outbox import SmtpSession, enqueue, message_id, release_stale_claims, send_due
from panelflow.step import Interval
from panelflow.steps.mail import send_due_emails

NOW = pendulum.datetime(2026, 11, 20, 9, 0, tz="UTC")


def queue(conn, n, *, start=0, domain="example.test", due=NOW):
    for i in range(start, start + n):
        enqueue(conn, dedupe_key=f"notice:{i}", to=f"user{i}@{domain}", template="notification",
                context={"subject": f"Notice {i}", "name": f"User {i}", "message": f"Message <{i}>"}, not_before=due)
    conn.commit()


@pytest.fixture
def conn(panel_db):
    with panel_db.get_conn() as c:
        yield c


def fast_session():
    return SmtpSession(pause=0.01)


def status(sql):
    return dict(sql("SELECT status, count(*) FROM email_outbox GROUP BY status"))


def test_enqueue_is_once_per_event_and_renders_templates(conn, sql):
    assert enqueue(conn, dedupe_key="invoice:1", to="a@example.test", template="notification",
                   context={"subject": "Invoice  1\nBcc: x@evil.example", "name": "Ann", "message": "5 < 6 & 7"},
                   not_before=NOW)
    assert not enqueue(conn, dedupe_key="invoice:1", to="a@example.test", template="notification",
                       context={"subject": "again", "name": "Ann", "message": "x"}, not_before=NOW)
    conn.commit()
    ((subject, text, html, mid),) = sql("SELECT subject, body_text, body_html, message_id FROM email_outbox")
    assert subject == "Invoice 1 Bcc: x@evil.example"  # one line: no header injection through a subject
    assert "Hello Ann," in text and "5 < 6 & 7" in text
    assert "5 &lt; 6 &amp; 7" in html  # HTML autoescaped, text not
    assert mid == message_id("invoice:1")


def test_sends_due_messages_once(conn, sql, smtp_server):
    queue(conn, 5)
    queue(conn, 2, start=100, due=NOW.add(hours=1))  # not due yet at the run's clock
    summary = send_due(conn, as_of=NOW, claimer="t1", session=fast_session())
    assert summary["sent"] == 5 and summary["due_left"] == 0, summary["errors"]
    assert sorted(m["To"] for m in smtp_server.messages) == [f"user{i}@example.test" for i in range(5)]
    msg = smtp_server.messages[0]
    assert msg["Message-ID"] == message_id("notice:0") and msg["Subject"] == "Notice 0"
    assert msg.get_body(("plain",)).get_content().startswith("Hello User 0,")
    assert "Message &lt;0&gt;" in msg.get_body(("html",)).get_content()
    assert status(sql) == {"sent": 5, "pending": 2}
    assert sql("SELECT count(*) FROM email_logs WHERE status = 'sent'")[0][0] == 5
    # a rerun of the same interval sends nothing more
    assert send_due(conn, as_of=NOW, claimer="t1", session=fast_session())["sent"] == 0
    assert len(smtp_server.messages) == 5


def test_transient_and_permanent_failures(conn, sql, smtp_server):
    queue(conn, 4)
    smtp_server.faults = {"user1@example.test": ["451 4.3.0 try later"], "user2@example.test": ["550 5.1.1 no such user"]}
    summary = send_due(conn, as_of=NOW, claimer="t", session=fast_session())
    assert (summary["sent"], summary["deferred"], summary["failed"]) == (2, 1, 1)
    rows = {r[0]: r[1:] for r in sql("SELECT to_address, status, attempts, not_before, last_error FROM email_outbox")}
    assert rows["user1@example.test"][:2] == ("pending", 1) and rows["user1@example.test"][2] == NOW + timedelta(minutes=1)
    assert rows["user2@example.test"][0] == "failed" and "550" in rows["user2@example.test"][3]
    # the next run, after the backoff: the deferred one goes, nothing is sent twice
    later = send_due(conn, as_of=NOW.add(minutes=1), claimer="t", session=fast_session())
    assert later["sent"] == 1
    assert sorted(m["To"] for m in smtp_server.messages) == [f"user{i}@example.test" for i in (0, 1, 3)]
    assert sql("SELECT status, error FROM email_logs WHERE recipient = 'user2@example.test'")[0][0] == "failed"


def test_connection_dropped_mid_batch_no_duplicate_no_loss(conn, sql, smtp_server):
    queue(conn, 30)
    smtp_server.faults = {"user12@example.test": ["drop"], "user20@example.test": ["drop", "drop"]}
    summary = send_due(conn, as_of=NOW, claimer="t", batch=7, session=fast_session())
    assert summary["sent"] == 30 and summary["failed"] == summary["deferred"] == 0, summary["errors"]
    got = sorted(m["To"] for m in smtp_server.messages)
    assert got == sorted(f"user{i}@example.test" for i in range(30))  # each exactly once
    assert status(sql) == {"sent": 30}


def test_a_worker_killed_mid_send_is_never_resent(conn, sql, smtp_server):
    """'sending' left by a dead worker → uncertain (reported); 'claimed' but unstarted → sent."""
    queue(conn, 3)
    sql("UPDATE email_outbox SET status = 'sending', claimed_by = 'dead', claimed_at = now() - interval '1 hour',"
        " attempts = 1 WHERE to_address = 'user0@example.test'")
    sql("UPDATE email_outbox SET status = 'claimed', claimed_by = 'dead', claimed_at = now() - interval '1 hour'"
        " WHERE to_address = 'user1@example.test'")
    summary = send_due(conn, as_of=NOW, claimer="t2", session=fast_session())
    assert (summary["sent"], summary["uncertain"], summary["requeued"]) == (2, 1, 1)
    assert sorted(m["To"] for m in smtp_server.messages) == ["user1@example.test", "user2@example.test"]
    assert dict(sql("SELECT to_address, status FROM email_outbox"))["user0@example.test"] == "uncertain"
    # a live claim (within the lease) is left alone
    queue(conn, 1, start=50)
    sql("UPDATE email_outbox SET status = 'claimed', claimed_by = 'other', claimed_at = now() WHERE to_address = 'user50@example.test'")
    assert release_stale_claims(conn) == {"requeued": 0, "uncertain": 0}


def test_run_is_bounded(conn, sql, smtp_server):
    queue(conn, 25)
    assert send_due(conn, as_of=NOW, claimer="t", batch=10, max_messages=12, session=fast_session())["sent"] == 12
    assert status(sql) == {"sent": 12, "pending": 13}


def test_step_sends_through_the_airflow_connection(panel_db, sql, smtp_server):
    with panel_db.get_conn() as c:
        queue(c, 3)
    summary = send_due_emails(panel_db, Interval(NOW, NOW))
    # a domain with daily_digest (settings.yaml) gets its digest in the same run: tests/services/test_digest.py
    digests = summary.get("digests_queued", 0)
    assert summary["sent"] == 3 + digests and len(smtp_server.messages) == 3 + digests
    assert sum(m["To"].endswith("@example.test") for m in smtp_server.messages) == 3
