"""Deadline alerts: the catalog's ``deadline`` becomes an Airflow 3 Deadline Alert, and a missed
deadline is one ``deadline_misses`` row and exactly one e-mail (real outbox, real sender, aiosmtpd)
however often the callback fires. The scheduler and triggerer firing it for real:
``test_deadline_alerts_stack.py``."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pendulum
import pytest

from panelflow.catalog import load_catalog
from panelflow.deadlines import CALLBACK, missed_deadline
from panelflow.factory import build_dags
from panelflow.step import Interval
from panelflow.steps.mail import send_due_emails

QUEUED = pendulum.datetime(2026, 11, 20, 1, 30, tz="Europe/London")  # BillingWork's run-at time
DEADLINE = QUEUED.add(hours=4)


@pytest.fixture
def misses(panel_db, sql):
    sql("TRUNCATE deadline_misses")
    yield panel_db
    sql("TRUNCATE deadline_misses")


def context(state="running", end_date=None, run_id="scheduled__2026-11-20T01:30:00+00:00"):
    """What Airflow 3.3's ``Deadline.handle_miss`` gives the callback (the run as the REST API shows it)."""
    return {"dag_run": {"dag_id": "billing_work", "dag_run_id": run_id, "state": state,
                        "queued_at": QUEUED.in_tz("UTC").isoformat(), "end_date": end_date},
            "deadline": {"id": "0193-…", "deadline_time": DEADLINE.in_tz("UTC")}}


def fire(ctx, to=("billing-alerts@panelflow.example", "cfo@panelflow.example")):
    return asyncio.run(missed_deadline(thread="BillingWork", to=list(to), minutes=240, context=ctx))


def test_billing_work_has_its_deadline_alert_and_other_threads_none():
    from airflow.sdk.definitions.deadline import DeadlineReference
    from airflow.serialization.serialized_objects import DagSerialization

    catalog = load_catalog()
    dags = build_dags(catalog, overrides={})
    assert [d for d, dag in dags.items() if dag.deadline] == [t.dag_id for t in catalog.live_threads if t.deadline]
    (alert,) = dags["billing_work"].deadline
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval == timedelta(minutes=240)
    assert alert.callback.path == CALLBACK
    assert alert.callback.kwargs == {"thread": "BillingWork", "to": ["billing-alerts@panelflow.example"], "minutes": 240}
    # what the dag-processor stores is what the scheduler reads back
    stored = DagSerialization.to_dict(dags["billing_work"])
    (back,) = DagSerialization.from_dict(stored).deadline
    assert back["callback"]["__data__"]["path"] == CALLBACK and back["reference"]["reference_type"] == "DagRunQueuedAtDeadline"


def test_a_missed_deadline_sends_exactly_one_email(misses, sql, smtp_server):
    assert fire(context()) is True
    assert fire(context()) is False  # the callback firing again: no second row, no second e-mail
    assert sql("SELECT dag_id, run_id, thread, deadline_at FROM deadline_misses") == [
        ("billing_work", "scheduled__2026-11-20T01:30:00+00:00", "BillingWork", DEADLINE)]
    ((to, key, status),) = sql("SELECT to_address, dedupe_key, status FROM email_outbox")
    assert (key, status) == ("deadline:billing_work:scheduled__2026-11-20T01:30:00+00:00", "pending")
    # SendEmailNotificationsWork delivers it at its next run, once
    at = Interval(DEADLINE.add(minutes=1), DEADLINE.add(minutes=1))
    assert send_due_emails(misses, at)["sent"] == 1
    assert send_due_emails(misses, Interval(at.end.add(minutes=1), at.end.add(minutes=1)))["sent"] == 0
    (msg,) = smtp_server.messages
    assert sorted(smtp_server.envelopes[0].rcpt_tos) == ["billing-alerts@panelflow.example", "cfo@panelflow.example"]
    assert msg["Subject"] == "[panelflow] BillingWork missed its deadline (run scheduled__2026-11-20T01:30:00+00:00)"
    body = msg.get_body(("plain",)).get_content()
    assert "not finished 240 minutes after its run was due" in body and "2026-11-20T05:30:00+00:00" in body


def test_a_run_that_failed_before_its_deadline_is_not_a_miss(misses, sql):
    """Airflow keeps the deadline of a failed run; it ended in time, and its failure mails already."""
    ended = QUEUED.add(minutes=20).in_tz("UTC").isoformat()
    assert fire(context(state="failed", end_date=ended)) is False
    assert sql("SELECT count(*) FROM deadline_misses")[0][0] == 0
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 0


def test_a_run_that_ended_after_its_deadline_is_a_miss(misses, sql):
    late = DEADLINE.add(minutes=3).in_tz("UTC").isoformat()
    assert fire(context(state="success", end_date=late)) is True
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 1


def test_without_addresses_the_miss_is_still_recorded(misses, sql):
    assert fire(context(run_id="manual__1"), to=()) is True
    assert sql("SELECT run_id FROM deadline_misses") == [("manual__1",)]
    assert sql("SELECT count(*) FROM email_outbox")[0][0] == 0
