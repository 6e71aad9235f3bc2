"""The daily digest e-mail (panelflow.services.digest) on the real panel DB and a real SMTP server:
failures recorded by the failure callback once per try, one digest per domain per day however
often the sender runs, only for domains that ask for it and only after their hour, delivered by
SendEmailNotificationsWork's step in the same run."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from types import SimpleNamespace

import pendulum
import pytest

from panelflow.alerts import ThreadFailureNotifier
from panelflow.catalog import load_catalog
from panelflow.services import digest, run_counts
from panelflow.step import Interval
from panelflow.steps.mail import send_due_emails

# BillingWork's run of 20 Nov 01:30 London covers the 19th and counts for the 20th; its digest
# is the one of the morning of the 21st.
START = pendulum.datetime(2026, 11, 19, 1, 30, tz="Europe/London")
END = START.add(days=1)
DAY = date(2026, 11, 20)
MORNING = pendulum.datetime(2026, 11, 21, 6, 30, tz="Europe/London")
RUN_ID = "scheduled__2026-11-20T01:30:00+00:00"
OWN = "step_failures, step_run_counts, failed_action_dismissals"


@pytest.fixture
def db(panel_db, sql):
    """The panel DB with this feature's tables empty (``panel_db`` empties the outbox and jobs)."""
    sql(f"TRUNCATE {OWN}")
    yield panel_db
    sql(f"TRUNCATE {OWN}")


@pytest.fixture
def catalog():
    return load_catalog(check_steps=False)


def failure_context(task_id="billing_process", try_number=3, exception=None, map_index=-1):
    ti = SimpleNamespace(dag_id="billing_work", run_id=RUN_ID, task_id=task_id, map_index=map_index,
                         try_number=try_number, log_url="http://airflow.test/log")
    task = SimpleNamespace(task_display_name="Billing work process", timezone="Europe/London")
    return {"data_interval_start": START, "data_interval_end": END, "ti": ti, "task": task,
            "exception": exception or RuntimeError("gateway <down> & out")}


def notifier(to=()):
    return ThreadFailureNotifier(thread="BillingWork", to=list(to))


def failures(sql):
    return sql("SELECT dag_id, run_id, task_id, map_index, try_number, thread, step_id, run_day, error"
               " FROM step_failures ORDER BY task_id")


def seed_day(db, sql):
    """A day of BillingWork: counts, one failed step, one failed group-action job still open."""
    with db.get_conn() as conn:
        run_counts.record(conn, dag_id="billing_work", run_id=RUN_ID, task_id="billing_process", map_index=-1,
                          thread="BillingWork", step_id="billing_process", run_day=DAY, try_number=1,
                          summary={"invoices": 7, "charged": 5, "declined": 2})
        run_counts.record(conn, dag_id="send_email_notifications_work", run_id="x", task_id="send_due_notifications",
                          map_index=-1, thread="SendEmailNotificationsWork", step_id="send_due_notifications",
                          run_day=DAY, try_number=1, summary={"sent": 40})
    assert notifier().record(failure_context(task_id="reseller_commissions")) is True
    sql("INSERT INTO group_action_jobs (backend, action, payload, status, error, attempts, finished_at)"
        " VALUES ('exchange', 'set_quota', '{\"email\": \"ann@contoso.test\"}', 'failed',"
        " 'mailbox <ann> does not exist', 3, now())")


def test_a_failure_is_recorded_once_even_if_the_callback_fires_twice(db, sql):
    n = notifier()
    assert n.record(failure_context()) is True
    assert n.record(failure_context()) is True  # fired again: stored once
    ((dag_id, run_id, task_id, map_index, try_number, thread, step_id, run_day, error),) = failures(sql)
    assert (dag_id, run_id, task_id, map_index, try_number, thread, step_id) == (
        "billing_work", RUN_ID, "billing_process", -1, 3, "BillingWork", "billing_process")
    assert run_day == DAY  # the day the interval ends on, in the step's zone, as the run counts
    assert error.endswith("RuntimeError: gateway <down> & out")
    # the same function the callback calls says whether it stored anything
    with db.get_conn() as conn:
        again = dict(dag_id="billing_work", run_id=RUN_ID, task_id="billing_process", map_index=None,
                     try_number=3, thread="BillingWork", step_id="billing_process",
                     failed_at=datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc), run_day=DAY, error="x" * 5000)
        assert digest.record_failure(conn, **again) is False
        assert digest.record_failure(conn, **{**again, "try_number": 4}) is True  # a cleared task failing again
    assert sql("SELECT try_number, char_length(error) FROM step_failures ORDER BY try_number")[1] == (4, 2000)


def test_recording_never_stops_the_alert(db, sql, smtp_server, monkeypatch):
    import panelflow.operators as operators

    def broken():
        raise OSError("panel DB down")

    monkeypatch.setattr(operators, "_panel_db", broken)
    notifier(to=["billing-alerts@panelflow.example"]).notify(failure_context())
    assert sql("SELECT count(*) FROM step_failures")[0][0] == 0
    (msg,) = smtp_server.messages
    assert msg["Subject"].startswith("[panelflow] BillingWork failed: billing_process")


def test_the_digest_is_queued_once_a_day_and_delivered(db, sql, smtp_server):
    seed_day(db, sql)
    first = send_due_emails(db, Interval(MORNING, MORNING))
    assert first["digests_queued"] == 1 and first["sent"] == 1
    again = send_due_emails(db, Interval(MORNING.add(minutes=1), MORNING.add(minutes=1)))
    assert "digests_queued" not in again and again["sent"] == 0  # the same day: never twice
    assert sql("SELECT dedupe_key, to_address, status FROM email_outbox") == [
        ("daily-digest:billing:2026-11-20", "billing-alerts@panelflow.example", "sent")]

    (msg,) = smtp_server.messages
    assert smtp_server.envelopes[0].rcpt_tos == ["billing-alerts@panelflow.example"]
    # a long subject is folded onto the next header line (RFC 5322); the words are these
    assert msg["Subject"].strip() == "[panelflow] billing daily digest 2026-11-20: 1 failure, 1 open failed action"
    text = msg.get_body(("plain",)).get_content()
    # the counts of the domain's threads, in the catalog's words; another domain's thread is not there
    assert "- BillingWork: 7 invoices, 5 charges approved, 2 declined" in text
    assert "SendEmailNotificationsWork" not in text and "40 sent" not in text
    assert "AzureRateWork" in text.split("Nothing counted:")[1]
    # the failure and the open failed action
    assert f"BillingWork / reseller_commissions (run {RUN_ID}, try 3): RuntimeError: gateway <down> & out" in text
    assert "exchange: set_quota on email ann@contoso.test: mailbox <ann> does not exist" in text
    html = msg.get_body(("html",)).get_content()
    assert "gateway &lt;down&gt; &amp; out" in html and "<down>" not in html
    assert "mailbox &lt;ann&gt; does not exist" in html

    # the next day's digest is another message
    later = MORNING.add(days=1)
    assert send_due_emails(db, Interval(later, later))["digests_queued"] == 1
    assert sql("SELECT dedupe_key FROM email_outbox ORDER BY id")[-1] == ("daily-digest:billing:2026-11-21",)


def test_before_its_hour_nothing_is_queued(db, sql, catalog):
    early = MORNING.replace(hour=5, minute=59)
    summary = send_due_emails(db, Interval(early, early))
    assert "digests_queued" not in summary and summary["sent"] == 0
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 0
    # a domain's own hour: 07:00 — not at 06:30, at 07:00
    billing = catalog.domains["billing"].model_copy(update={"digest_after": "07:00"})
    late = SimpleNamespace(settings=catalog.settings, domains={"billing": billing}, live_threads=catalog.live_threads,
                           labels=catalog.labels)
    with db.get_conn() as conn:
        assert digest.queue_daily_digests(conn, late, date(2026, 11, 21), MORNING)["digests_not_due"] == 1
        assert sql("SELECT count(*) FROM email_outbox")[0][0] == 0
        seven = MORNING.replace(hour=7, minute=0)
        assert digest.queue_daily_digests(conn, late, date(2026, 11, 21), seven)["digests_queued"] == 1


def test_a_domain_without_the_flag_gets_nothing(db, sql, catalog):
    assert catalog.domains["billing"].daily_digest is True  # the demo's setting
    assert not catalog.domains["licensing"].daily_digest and catalog.domains["licensing"].alert_to
    seed_day(db, sql)
    with db.get_conn() as conn:
        done = digest.queue_daily_digests(conn, catalog, date(2026, 11, 21), MORNING)
    assert done == {"digests_queued": 1, "digests_already": 0, "digests_not_due": 0}
    assert sql("SELECT dedupe_key FROM email_outbox") == [("daily-digest:billing:2026-11-20",)]
    # nothing asks for it: nothing is read or queued
    off = SimpleNamespace(settings=catalog.settings, domains={
        "billing": catalog.domains["billing"].model_copy(update={"daily_digest": False})})
    with db.get_conn() as conn:
        assert digest.queue_daily_digests(conn, off, date(2026, 11, 22), MORNING.add(days=1))["digests_queued"] == 0
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 1


def test_compose_is_bounded_and_pure():
    rows = [{"thread": "BillingWork", "step_id": "billing_process", "task_id": "billing_process", "run_id": f"r{i}",
             "map_index": -1, "try_number": 1, "failed_at": datetime(2026, 11, 20, 2, i % 60, tzinfo=timezone.utc),
             "error": "Traceback …\n  boom\nValueError: " + "y" * 400} for i in range(digest.MAX_FAILURES)]
    jobs = [{"backend": "exchange", "target": "", "action": "a", "message": "m", "when": "w"}] * (digest.MAX_ACTIONS + 1)
    ctx = digest.compose(domain="billing", day=DAY, tz="Europe/London", failures=rows, failures_total=120,
                         actions={"jobs": jobs, "charges": [], "messages": []},
                         threads=[{"name": "BillingWork", "counts": []}])
    assert len(ctx["failures"]) == digest.MAX_FAILURES and ctx["failures_more"] == 70
    assert ctx["failures"][0]["error"].startswith("ValueError: y") and len(ctx["failures"][0]["error"]) == digest.ERROR_LINE
    assert ctx["failures"][0]["at"] == "2026-11-20 02:00"  # London in November is UTC
    assert ctx["actions_more"] and ctx["actions_total"] == digest.MAX_ACTIONS and ctx["quiet"] == ["BillingWork"]
    assert digest.is_due(MORNING, date(2026, 11, 21), "06:00", "Europe/London")
    assert not digest.is_due(MORNING, date(2026, 11, 21), "06:31", "Europe/London")
    assert digest.digest_day(date(2026, 3, 1)) == date(2026, 2, 28)


def test_failures_older_than_400_days_go_with_the_run_counts(db, sql):
    from panelflow.steps import retention

    sql("DELETE FROM retention_runs WHERE task IN ('prune_step_run_counts', 'prune_step_failures')")
    with db.get_conn() as conn:
        for back in (399, 400, 401, 500):
            digest.record_failure(conn, dag_id="billing_work", run_id=f"r{back}", task_id="billing_process", map_index=-1,
                                  try_number=1, thread="BillingWork", step_id="billing_process",
                                  failed_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                                  run_day=DAY - timedelta(days=back), error="boom")
    at = Interval(END, END, "Europe/London")
    summary = retention.delete_old_service_queue_logs(db, at)
    assert summary["step_failures_deleted"] == 2
    assert sorted(r[0] for r in sql("SELECT run_id FROM step_failures")) == ["r399", "r400"]
    assert retention.delete_old_service_queue_logs(db, at)["step_failures_deleted"] == 0  # a rerun: nothing more
