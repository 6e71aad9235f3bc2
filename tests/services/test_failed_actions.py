"""The failed-actions queue (panelflow.services.failed_actions) on the real panel DB: what it lists,
and that Retry, Retry all, Dismiss, Resend and Retry charge change exactly what they say and are
recorded with the user."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from panelflow.services import failed_actions as fa
from panelflow.step import Interval

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
OWN_TABLES = "automation_actions, failed_action_dismissals, emergency_stops"


@pytest.fixture
def conn(panel_db, sql, migrated_panel_db):
    import psycopg

    sql(f"TRUNCATE {OWN_TABLES} RESTART IDENTITY")
    with psycopg.connect(migrated_panel_db, autocommit=True) as c:
        yield c
    sql(f"TRUNCATE {OWN_TABLES} RESTART IDENTITY")


def _queue(sql, action, payload, backend="exchange"):
    from psycopg.types.json import Jsonb

    return sql("INSERT INTO group_action_jobs (backend, action, payload) VALUES (%s, %s, %s) RETURNING id",
               (backend, action, Jsonb(payload)))[0][0]


def _process(panel_db, backend, handler, minutes=5):
    from panelflow.services.group_actions import process_group_actions

    return process_group_actions(panel_db, backend, handler, Interval(T0, T0 + timedelta(minutes=minutes)))


def _reject(action, payload):
    from panelflow.services.group_actions import JobRejected

    raise JobRejected(f"mailbox {payload['email']} does not exist")


def test_a_rejected_job_is_listed_and_retry_makes_exactly_one_new_attempt(conn, panel_db, sql):
    job = _queue(sql, "set_quota", {"email": "ann@contoso.test", "quota_mb": 2048})
    other = _queue(sql, "set_quota", {"email": "bob@contoso.test"}, backend="active_directory")
    _process(panel_db, "exchange", _reject)
    _process(panel_db, "active_directory", _reject)

    listed = fa.list_failed(conn)["jobs"]
    assert {(j["id"], j["backend"], j["action"], j["attempts"], j["retryable"]) for j in listed} == {
        (job, "exchange", "set_quota", 1, True), (other, "active_directory", "set_quota", 1, True)}
    mine = next(j for j in listed if j["id"] == job)
    assert mine["target"] == "email ann@contoso.test" and mine["message"] == "mailbox ann@contoso.test does not exist"

    assert fa.retry_job(conn, job, "admin") == {"id": job, "status": "pending", "attempts": 1}
    assert sql("SELECT status, attempts, error FROM group_action_jobs WHERE id = %s", (job,)) == [
        ("pending", 1, "mailbox ann@contoso.test does not exist")]   # its history stays until the next outcome
    assert [j["id"] for j in fa.list_failed(conn)["jobs"]] == [other]
    with pytest.raises(fa.NotRetryable, match="is pending, not failed"):
        fa.retry_job(conn, job, "admin")

    calls = []
    _process(panel_db, "exchange", lambda a, p: calls.append(p) or {"ok": True}, minutes=10)
    _process(panel_db, "exchange", lambda a, p: calls.append(p) or {"ok": True}, minutes=15)
    assert len(calls) == 1
    assert sql("SELECT status, attempts FROM group_action_jobs WHERE id = %s", (job,)) == [("succeeded", 2)]
    ((user, action, kind, target, detail),) = sql(
        "SELECT username, action, target_kind, target_id, detail FROM automation_actions")
    assert (user, action, kind, target) == ("admin", "retry", "job", str(job))
    assert detail["attempts"] == 1 and detail["error"] == "mailbox ann@contoso.test does not exist"


def test_a_job_whose_secrets_were_removed_cannot_be_retried_and_says_why(conn, panel_db, sql):
    job = _queue(sql, "create_mailbox", {"email": "cy@contoso.test", "password": "S3cret!pass"})
    plain = _queue(sql, "set_quota", {"email": "dee@contoso.test"})
    _process(panel_db, "exchange", _reject)
    assert sql("SELECT payload ? 'password', secrets_removed FROM group_action_jobs WHERE id = %s", (job,)) == [
        (False, ["password"])]
    listed = {j["id"]: j for j in fa.list_failed(conn)["jobs"]}
    assert listed[job]["retryable"] is False and "secrets (password) were removed" in listed[job]["why_not"]
    assert "S3cret" not in str(listed)

    with pytest.raises(fa.NotRetryable, match="cannot be retried: its payload's secrets"):
        fa.retry_job(conn, job, "admin")
    assert fa.retry_jobs(conn, [job, plain, 999], "admin")["retried"] == [plain]
    assert sql("SELECT id, status FROM group_action_jobs ORDER BY id") == [(job, "failed"), (plain, "pending")]
    assert sql("SELECT action, target_id FROM automation_actions") == [("retry", str(plain))]


def test_dismiss_hides_the_row_once_and_is_recorded(conn, panel_db, sql):
    job = _queue(sql, "set_quota", {"email": "ann@contoso.test"})
    _process(panel_db, "exchange", _reject)
    assert fa.dismiss(conn, "job", job, "admin")["dismissed"] is True
    assert fa.dismiss(conn, "job", job, "admin")["dismissed"] is False
    assert fa.list_failed(conn)["jobs"] == []
    assert sql("SELECT status FROM group_action_jobs") == [("failed",)]   # the row itself is untouched
    assert sql("SELECT username, action, target_kind FROM automation_actions") == [("admin", "dismiss", "job")]
    with pytest.raises(ValueError):
        fa.dismiss(conn, "invoice", 1, "admin")


def test_an_uncertain_message_is_resent_only_after_confirmation(conn, panel_db, sql):
    from panelflow.services.outbox import enqueue

    for key, status in (("a", "failed"), ("b", "uncertain"), ("c", "sent")):
        enqueue(conn, dedupe_key=key, to=f"{key}@customer.test", template="payment_declined", not_before=T0,
                context={"customer_name": "X", "invoice_number": "INV-1", "amount": "1.00", "currency": "GBP",
                         "card": None, "reason": "declined"})
        sql("UPDATE email_outbox SET status = %s, last_error = 'SMTP 550' WHERE dedupe_key = %s", (status, key))
    listed = fa.list_failed(conn)["messages"]
    assert [(m["target"], m["needs_confirmation"]) for m in listed] == [("b@customer.test", True),
                                                                       ("a@customer.test", False)]
    failed, uncertain = listed[1]["id"], listed[0]["id"]
    with pytest.raises(fa.NotRetryable, match="may have accepted it already"):
        fa.resend_message(conn, uncertain, "admin")
    fa.resend_message(conn, failed, "admin")
    fa.resend_message(conn, uncertain, "admin", confirm_uncertain=True)
    assert sql("SELECT dedupe_key, status FROM email_outbox ORDER BY id") == [("a", "pending"), ("b", "pending"),
                                                                              ("c", "sent")]
    assert [r[0] for r in sql("SELECT detail->>'status' FROM automation_actions ORDER BY id")] == ["failed",
                                                                                                 "uncertain"]


def test_retry_charge_makes_a_new_attempt_under_a_new_key(conn, panel_db, sql, payment_gateway):
    from panelflow.hooks.payment_gateway import PaymentGatewayHook
    from panelflow.services.invoicing import invoice_number
    from panelflow.services.payments import charge_due_invoices
    from panelflow.step import StepReport

    day = datetime(2026, 11, 21).date()
    sql("INSERT INTO currencies (code, name, minor_units) VALUES ('GBP', 'Pound sterling', 2)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('P', 'b@p.test', 'GBP')")
    ((customer,),) = sql("INSERT INTO customers (provider_id, name, email, country, currency)"
                         " VALUES ((SELECT min(id) FROM providers), 'Bob', 'bob@c.test', 'GB', 'GBP') RETURNING id")
    stripe_customer, method = payment_gateway.saved_card("pm_card_chargeCustomerFail", name="Bob")
    sql("INSERT INTO payment_profiles (customer_id, gateway_customer_id, gateway_token, card_last4)"
        " VALUES (%s, %s, %s, '4242')", (customer, stripe_customer, method))
    number = invoice_number("recurring", day, customer)
    ((invoice,),) = sql("INSERT INTO invoices (invoice_number, customer_id, kind, billing_date, currency, subtotal,"
                        " total, due_date) VALUES (%s, %s, 'recurring', %s, 'GBP', 5, 5, %s) RETURNING id",
                        (number, customer, day, day + timedelta(days=14)))

    def charge():
        with PaymentGatewayHook() as hook:
            return charge_due_invoices(conn, hook, first_day=day, end_day=day + timedelta(days=1),
                                       clock=T0, report=StepReport(), retry_pause=0.05)

    assert charge()["declined"] == 1
    (listed,) = fa.list_failed(conn)["charges"]
    assert (listed["id"], listed["attempts"], listed["status"]) == (invoice, 1, "declined")
    _, good = payment_gateway.saved_card("pm_card_visa", customer=stripe_customer)
    sql("UPDATE payment_profiles SET gateway_token = %s", (good,))

    reopened = fa.reopen_charge(conn, invoice, "admin")
    assert (reopened["billing_date"], reopened["previous_attempt"]) == (day, 1)
    assert charge()["charged"] == 1
    assert sql("SELECT attempt, status, idempotency_key FROM payment_attempts ORDER BY attempt") == [
        (1, "declined", f"pay:{number}:1"), (2, "approved", f"pay:{number}:2")]
    assert fa.list_failed(conn)["charges"] == []
    with pytest.raises(fa.NotRetryable, match="is paid"):
        fa.reopen_charge(conn, invoice, "admin")
    assert sql("SELECT username, action, detail->>'status' FROM automation_actions") == [
        ("admin", "retry_charge", "declined")]
