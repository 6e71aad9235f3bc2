"""Run counts that last (``step_run_counts``): written by the StepOperator once per task instance,
a retry or a rerun overwrites its row, bounded whatever a step returns, summed per day."""

from __future__ import annotations

from datetime import date, timedelta
from types import SimpleNamespace

import pendulum
import pytest
import structlog.testing

import panelflow.operators as operators
from panelflow.operators import StepOperator
from panelflow.services import run_counts
from panelflow.step import Interval
from panelflow.steps import retention

# BillingWork's run of 20 Nov 01:30 London covers the 19th and counts for the day its interval ends on.
START = pendulum.datetime(2026, 11, 19, 1, 30, tz="Europe/London")
END = START.add(days=1)


@pytest.fixture
def counts(panel_db, sql):
    """The panel DB with ``step_run_counts`` empty (``panel_db`` does not truncate it)."""
    sql("TRUNCATE step_run_counts")
    sql("DELETE FROM retention_runs WHERE task = 'prune_step_run_counts'")
    yield panel_db
    sql("TRUNCATE step_run_counts")


def rows(sql):
    return sql("SELECT dag_id, run_id, task_id, map_index, thread, step_id, run_day, try_number, counts, skipped,"
               " examples FROM step_run_counts ORDER BY task_id, map_index")


def context(run_id="scheduled__2026-11-20T01:30:00+00:00", task_id="billing_process", try_number=1, map_index=-1):
    ti = SimpleNamespace(dag_id="billing_work", run_id=run_id, task_id=task_id, map_index=map_index,
                         try_number=try_number)
    return {"data_interval_start": START, "data_interval_end": END, "params": {}, "ti": ti}


def operator(monkeypatch, step, task_id="billing_process", **kw):
    monkeypatch.setattr(operators, "resolve", lambda path: step)
    return StepOperator(task_id=task_id, run="panelflow.steps.billing.billing_process", timezone="Europe/London",
                        thread="BillingWork", **kw)


def test_a_step_run_stores_its_counts_once_even_with_a_retry_and_a_rerun(counts, sql, monkeypatch):
    outcomes = iter([{"invoices": 3, "charged": 2, "days": "2026-11-19..2026-11-20"},
                     {"invoices": 3, "charged": 3, "days": "2026-11-19..2026-11-20"},
                     {"invoices": 3, "charged": 3, "declined": 0, "days": "2026-11-19..2026-11-20"},
                     {"invoices": 0}])
    op = operator(monkeypatch, lambda interval: next(outcomes))
    op.execute(context(try_number=1))
    op.execute(context(try_number=2))  # a retry that succeeds: the same row, overwritten
    op.execute(context(try_number=3))  # the task cleared and rerun: still the same row
    ((dag_id, run_id, task_id, map_index, thread, step_id, run_day, try_number, stored, skipped, examples),) = rows(sql)
    assert (dag_id, task_id, map_index, thread, step_id) == ("billing_work", "billing_process", -1, "BillingWork",
                                                             "billing_process")
    assert run_day == date(2026, 11, 20)  # the day the interval ends on, in the thread's zone
    assert try_number == 3
    assert stored == {"invoices": 3, "charged": 3, "declined": 0}  # numbers only: "days" is description
    assert skipped == {} and examples == []
    # another run of the same task is another row
    op.execute(context(run_id="manual__2026-11-20T09:00:00+00:00"))
    assert sql("SELECT count(*) FROM step_run_counts")[0][0] == 2


def test_a_failed_try_stores_nothing_and_its_successful_retry_stores_once(counts, sql, monkeypatch):
    tries = iter([RuntimeError("gateway down"), {"charged": 4}])

    def step():
        outcome = next(tries)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    op = operator(monkeypatch, step)
    with pytest.raises(RuntimeError):
        op.execute(context(try_number=1))
    assert rows(sql) == []
    op.execute(context(try_number=2))
    assert [(r[7], r[8]) for r in rows(sql)] == [(2, {"charged": 4})]


def test_mapped_instances_keep_a_row_each_and_listers_none(counts, sql, monkeypatch):
    op = operator(monkeypatch, lambda item: {"mailboxes": item}, task_id="sync_tenant")
    for i in range(3):
        op.item = i + 1
        op.execute(context(task_id="sync_tenant", map_index=i))
    lister = operator(monkeypatch, lambda: [1, 2, 3], task_id="sync_tenant__items")
    assert lister.execute(context(task_id="sync_tenant__items")) == [1, 2, 3]
    assert [(r[2], r[3], r[8]) for r in rows(sql)] == [("sync_tenant", i, {"mailboxes": i + 1}) for i in range(3)]
    with counts.get_conn() as conn:
        assert run_counts.day_totals(conn, date(2026, 11, 20)) == {"BillingWork": {"sync_tenant.mailboxes": 6}}


def test_summaries_are_kept_bounded(counts, sql, monkeypatch):
    summary = {
        "sent": 5, "ratio": 0.5, "ok": True, "nan": float("nan"), "cutoff": "2026-01-01", "nested": {"a": 1},
        "skipped": {f"reason {i}": i + 1 for i in range(80)},
        "skipped_examples": [f"invoice {i}: no profile" for i in range(30)],
        "errors": ["x@example.test: 550 no such user"],
    }
    operator(monkeypatch, lambda: summary).execute(context())
    ((*_, stored, skipped, examples),) = rows(sql)
    assert stored == {"sent": 5, "ratio": 0.5}
    assert len(skipped) == run_counts.MAX_REASONS
    assert sum(skipped.values()) == sum(range(1, 81))  # every skipped record still counts
    assert skipped["reason 79"] == 80 and run_counts.OTHER_REASONS in skipped
    assert len(examples) == run_counts.MAX_EXAMPLES and examples[0] == "invoice 0: no profile"


def test_a_count_that_cannot_be_written_does_not_fail_the_step(counts, sql, monkeypatch):
    """The step's work is committed; failing the task would retry it (charges, e-mails) for a count."""

    def broken(*args, **kwargs):
        raise RuntimeError("panel DB gone")

    monkeypatch.setattr(run_counts, "record", broken)
    op = operator(monkeypatch, lambda: {"charged": 1})
    with structlog.testing.capture_logs() as captured:
        assert op.execute(context()) == {"charged": 1}
    warnings = [e["event"] for e in captured if e["log_level"] == "warning" and "run counts" in e["event"]]
    assert warnings == ["billing_process: run counts not recorded (the step's work stands)"]
    assert rows(sql) == []


def test_outside_a_task_run_nothing_is_recorded(counts, sql, monkeypatch):
    op = operator(monkeypatch, lambda: {"charged": 1})
    assert op.execute({"data_interval_start": START, "data_interval_end": END}) == {"charged": 1}
    assert rows(sql) == []


def _put(conn, thread, step, day, run, summary, dag_id=None):
    run_counts.record(conn, dag_id=dag_id or thread.lower(), run_id=run, task_id=step, map_index=-1, thread=thread,
                      step_id=step, run_day=day, try_number=1, summary=summary)


def test_day_totals_and_the_daily_series(counts):
    day = date(2026, 11, 20)
    with counts.get_conn() as conn:
        _put(conn, "BillingWork", "billing_process", day, "r1", {"invoices": 3, "charged": 2})
        _put(conn, "BillingWork", "billing_process", day, "r2", {"invoices": 1, "charged": 1, "declined": 1})
        _put(conn, "BillingWork", "reseller_commissions", day, "r1", {"commissions_added": 4})
        _put(conn, "SendEmailNotificationsWork", "send_due_notifications", day, "m1", {"sent": 7})
        _put(conn, "SendEmailNotificationsWork", "send_due_notifications", day - timedelta(days=2), "m0", {"sent": 2})
        _put(conn, "SendEmailNotificationsWork", "send_due_notifications", day + timedelta(days=1), "m2", {"sent": 9})
        _put(conn, "SendEmailNotificationsWork", "send_due_notifications", day - timedelta(days=3), "m3", {"sent": 1})
        assert run_counts.day_totals(conn, day) == {
            "BillingWork": {"billing_process.invoices": 4, "billing_process.charged": 3,
                            "billing_process.declined": 1, "reseller_commissions.commissions_added": 4},
            "SendEmailNotificationsWork": {"send_due_notifications.sent": 7},
        }
        assert run_counts.day_totals(conn, day - timedelta(days=1)) == {}
        series = run_counts.daily_series(conn, "SendEmailNotificationsWork", day, days=3)
    assert series == [(day - timedelta(days=2), {"send_due_notifications.sent": 2}),
                      (day - timedelta(days=1), {}),
                      (day, {"send_due_notifications.sent": 7})]


def test_retention_keeps_400_days_in_bounded_batches(counts, sql, monkeypatch):
    """ProvisioningWork 7 also prunes run counts: older than 400 days before the run's day go,
    at most the per-run budget, and a rerun of the same run deletes nothing more."""
    at = Interval(pendulum.datetime(2026, 11, 20, 3, 0, tz="UTC"), pendulum.datetime(2026, 11, 20, 3, 0, tz="UTC"))
    today = date(2026, 11, 20)
    sql("INSERT INTO step_run_counts (dag_id, run_id, task_id, thread, step_id, run_day, try_number, counts)"
        " SELECT 'd', 'r' || g, 't', 'T', 't', %s::date - g, 1, '{}' FROM generate_series(395, 409) g", (today,))
    monkeypatch.setattr(retention, "DEFAULT_MAX_ROWS", 6)
    monkeypatch.setattr(retention, "BATCH", 4)
    first = retention.delete_old_service_queue_logs(counts, at)
    assert first["run_counts_deleted"] == 6 and first["run_counts_cutoff"] == str(today - timedelta(days=400))
    assert retention.delete_old_service_queue_logs(counts, at)["run_counts_deleted"] == 0  # retry: budget spent
    # the oldest went first; 400 days exactly is kept
    assert sql("SELECT min(%s::date - run_day), max(%s::date - run_day) FROM step_run_counts", (today, today))[0] \
        == (395, 403)
    later = Interval(at.end.add(minutes=10), at.end.add(minutes=10))
    assert retention.delete_old_service_queue_logs(counts, later)["run_counts_deleted"] == 3
    assert sql("SELECT max(%s::date - run_day), count(*) FROM step_run_counts", (today,))[0] == (400, 6)
