"""Payments against the Stripe sandbox and the real panel DB: one charge per invoice, whatever fails.

The sandbox's own list of succeeded PaymentIntents is the judge: a test passes only when the card
was charged exactly as often as the invoice says it was paid. Cards are Stripe's test
PaymentMethods (include/sandbox/README.md), saved to a Customer as the panel's front end would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from panelflow.services.invoicing import invoice_number
from panelflow.step import StepReport
from panelflow.hooks.payment_gateway import GatewayAuthenticationError, PaymentGatewayHook
from panelflow.services.payments import charge_due_invoices

ROOT = str(__import__("harness").ROOT)
DAY = date(2026, 11, 21)
CLOCK = datetime(2026, 11, 22, 1, 30, tzinfo=timezone.utc)


@pytest.fixture
def billing(panel_db, sql, payment_gateway):
    """An empty panel DB with GBP and JPY and one provider; ``billing.customer(...)`` adds a
    customer (with a default card unless ``card`` is None) and their open recurring invoice.

    ``card`` is a Stripe test PaymentMethod, saved to a new Stripe Customer (``.cards[name]`` is
    ``(Customer, PaymentMethod)``). Stripe's declining test cards cannot be saved (attaching them
    is declined), so ``saved=False`` charges the test id itself with the customer's Customer."""
    sql("INSERT INTO currencies (code, name, minor_units) VALUES ('GBP', 'Pound sterling', 2), ('JPY', 'Yen', 0)")
    sql("INSERT INTO providers (name, billing_email, currency) VALUES ('Provider', 'billing@provider.test', 'GBP')")

    class Billing:
        cards: dict[str, tuple[str, str]] = {}

        def customer(self, name, card="pm_card_visa", *, saved=True, email="", total="12.34", currency="GBP", day=DAY,
                     kind="recurring"):
            email = f"{name.lower()}@customer.test" if email == "" else email
            ((customer_id,),) = sql(
                "INSERT INTO customers (provider_id, name, email, country, currency)"
                " VALUES ((SELECT min(id) FROM providers), %s, %s, 'GB', %s) RETURNING id", (name, email, currency))
            if card is not None:
                if saved:
                    stripe_customer, method = payment_gateway.saved_card(card, name=name)
                else:
                    stripe_customer, method = payment_gateway.create_customer({"name": name})["id"], card
                self.cards[name] = (stripe_customer, method)
                sql("INSERT INTO payment_profiles (customer_id, gateway_customer_id, gateway_token, card_brand,"
                    " card_last4) VALUES (%s, %s, %s, 'Visa', '4242')", (customer_id, stripe_customer, method))
            number = invoice_number(kind, day, customer_id)
            sql("INSERT INTO invoices (invoice_number, customer_id, kind, billing_date, currency, subtotal, total,"
                " due_date) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (number, customer_id, kind, day, currency, Decimal(total), Decimal(total), day + timedelta(days=14)))
            return number

    return Billing()


def run(panel_db, **kwargs):
    report = StepReport()
    kwargs = {"first_day": DAY, "end_day": DAY + timedelta(days=1), "clock": CLOCK, "retry_pause": 0.05, **kwargs}
    with PaymentGatewayHook() as hook, panel_db.get_conn() as conn:
        result = charge_due_invoices(conn, hook, report=report, **kwargs)
    return result, report


def invoice(sql, number):
    ((status, paid_at),) = sql("SELECT status, paid_at FROM invoices WHERE invoice_number = %s", (number,))
    return status, paid_at


def attempts(sql, number):
    return sql("SELECT a.attempt, a.status, a.idempotency_key, a.requests, a.amount, a.gateway_charge_id,"
               " a.gateway_code FROM payment_attempts a JOIN invoices i ON i.id = a.invoice_id"
               " WHERE i.invoice_number = %s ORDER BY a.attempt", (number,))


def payments(sql, number):
    return sql("SELECT p.amount, p.currency, p.gateway_charge_id, p.paid_on FROM payments p"
               " JOIN invoices i ON i.id = p.invoice_id WHERE i.invoice_number = %s", (number,))


def test_due_invoices_are_charged_in_minor_units_and_marked_paid(billing, panel_db, sql, payment_gateway):
    gbp = billing.customer("Ada", total="12.34")
    jpy = billing.customer("Kenji", "pm_card_mastercard", total="1500", currency="JPY")
    other_day = billing.customer("Later", day=DAY + timedelta(days=1))
    ocs = billing.customer("Caller", kind="ocs")
    nothing_due = billing.customer("Zero", total="0")

    result, report = run(panel_db)

    assert result["charged"] == 2 and report.counts["charged"] == 2
    (charge,) = payment_gateway.charges_for(gbp)
    stripe_customer, method = billing.cards["Ada"]
    assert (charge["amount"], charge["currency"], charge["customer"], charge["payment_method"], charge["status"]) \
        == (1234, "gbp", stripe_customer, method, "succeeded")
    assert charge["id"].startswith("pi_") and charge["metadata"]["invoice_number"] == gbp
    assert charge["idempotency_key"] == f"pay:{gbp}:1"
    assert [c["amount"] for c in payment_gateway.charges_for(jpy)] == [1500]  # JPY has no minor units
    ((amount, currency, charge_id, paid_on),) = payments(sql, gbp)
    created = datetime.fromtimestamp(charge["created"], timezone.utc)
    assert (amount, currency, charge_id, paid_on) == (Decimal("12.34"), "GBP", charge["id"], created.date())
    assert invoice(sql, gbp) == ("paid", created)
    assert attempts(sql, gbp) == [(1, "approved", f"pay:{gbp}:1", 1, Decimal("12.34"), charge["id"], None)]
    for untouched in (other_day, ocs, nothing_due):
        assert invoice(sql, untouched) == ("open", None) and payment_gateway.charges_for(untouched) == []


def test_rerun_charges_nothing_new(billing, panel_db, sql, payment_gateway):
    numbers = [billing.customer(name) for name in ("a", "b", "c")]
    run(panel_db, batch_size=2)
    charges_before = payment_gateway.charges

    result, report = run(panel_db, batch_size=2)

    assert result["charged"] == 0 and report.counts["gateway_requests"] == 0
    assert payment_gateway.charges == charges_before and len(charges_before) == 3
    assert sql("SELECT count(*) FROM payment_attempts") == [(3,)]
    assert sql("SELECT count(*) FROM payments") == [(3,)]
    assert all(invoice(sql, n)[0] == "paid" for n in numbers)


def test_decline_marks_the_invoice_and_queues_one_notice(billing, panel_db, sql, payment_gateway):
    declined = billing.customer("Bob", "pm_card_visa_chargeDeclinedInsufficientFunds", saved=False)
    no_email = billing.customer("Nomail", "pm_card_chargeDeclinedExpiredCard", saved=False, email=None)
    paid = billing.customer("Carol")

    result, report = run(panel_db)

    assert (result["declined"], result["charged"]) == (2, 1)
    assert payment_gateway.charges_for(declined) == [] and len(payment_gateway.charges_for(paid)) == 1
    assert invoice(sql, declined) == ("payment_declined", None)
    ((attempt, status, key, requests, amount, charge_id, code),) = attempts(sql, declined)
    assert (attempt, status, key, requests, charge_id, code) == (1, "declined", f"pay:{declined}:1", 1, None,
                                                                 "insufficient_funds")
    assert attempts(sql, no_email)[0][6] == "expired_card"
    outbox = sql("SELECT dedupe_key, to_address, template, subject, body_text, not_before FROM email_outbox")
    assert len(outbox) == 1  # the customer without an address gets none, and is reported
    dedupe_key, to, template, subject, body, not_before = outbox[0]
    assert (dedupe_key, to, template, not_before) == (f"payment-declined:{declined}:1", "bob@customer.test",
                                                      "payment_declined", CLOCK)
    assert declined in subject and "GBP 12.34" in body and "Visa ending 4242" in body
    assert report.skipped == {"payment declined; customer has no e-mail address for the notice": 1}
    assert any(no_email in example for example in report.examples)
    requests_before = len(payment_gateway.requests)

    result, _ = run(panel_db)  # declined invoices are not charged again, and no second notice

    assert (result["declined"], result["charged"]) == (0, 0)
    assert len(payment_gateway.requests) == requests_before
    assert sql("SELECT count(*) FROM email_outbox") == [(1,)]
    assert sql("SELECT count(*) FROM payment_attempts") == [(3,)]


def test_reopened_declined_invoice_gets_the_next_attempt(billing, panel_db, sql, payment_gateway):
    number = billing.customer("Bob", "pm_card_chargeCustomerFail")  # saved, then every charge is declined
    run(panel_db)
    assert attempts(sql, number)[0][6] == "generic_decline"
    # the customer saves a working card to their Stripe Customer; an operator reopens the invoice
    stripe_customer, _ = billing.cards["Bob"]
    _, new_card = payment_gateway.saved_card("pm_card_visa", customer=stripe_customer)
    sql("UPDATE payment_profiles SET is_default = false")
    sql("INSERT INTO payment_profiles (customer_id, gateway_customer_id, gateway_token, card_last4)"
        " SELECT customer_id, %s, %s, '4242' FROM invoices WHERE invoice_number = %s",
        (stripe_customer, new_card, number))
    sql("UPDATE invoices SET status = 'open' WHERE invoice_number = %s", (number,))

    result, _ = run(panel_db)

    assert result["charged"] == 1
    assert [(a[0], a[1], a[2]) for a in attempts(sql, number)] == [(1, "declined", f"pay:{number}:1"),
                                                                   (2, "approved", f"pay:{number}:2")]
    (charge,) = payment_gateway.charges_for(number)
    assert (charge["payment_method"], charge["idempotency_key"]) == (new_card, f"pay:{number}:2")


def test_timeout_after_the_charge_is_resent_with_the_same_key(billing, panel_db, sql, payment_gateway):
    """Stripe charges but its answer outlives the client's timeout: the resend must not charge."""
    number = billing.customer("Slow", "pm_sandbox_answer_lost")

    result, report = run(panel_db)

    assert result["charged"] == 1 and result["unresolved"] == 0
    (charge,) = payment_gateway.charges_for(number)
    assert charge["amount"] == 1234
    sent = [r for r in payment_gateway.requests if r["idempotency_key"] == f"pay:{number}:1"]
    assert [r["replayed"] for r in sent] == [False] + [True] * (len(sent) - 1)
    assert len(sent) >= 2 and sent[-1]["replayed"] is True
    ((attempt, status, key, requests, _, charge_id, _),) = attempts(sql, number)
    assert (attempt, status, charge_id) == (1, "approved", charge["id"]) and requests == len(sent) >= 2
    assert invoice(sql, number)[0] == "paid" and len(payments(sql, number)) == 1
    assert report.counts["gateway_requests"] == len(sent)


def test_unknown_outcome_stays_pending_and_is_resent_under_the_same_key(billing, panel_db, sql, payment_gateway):
    down = billing.customer("Down", "pm_sandbox_unavailable")
    fine = billing.customer("Fine")

    result, report = run(panel_db, in_run_retries=1)

    assert (result["charged"], result["unresolved"], result["unresolved_invoices"]) == (1, 1, [down])
    assert report.counts["unresolved"] == 1
    ((attempt, status, key, requests, _, _, _),) = attempts(sql, down)
    assert (attempt, status, key, requests) == (1, "pending", f"pay:{down}:1", 2)
    assert sql("SELECT gateway_message FROM payment_attempts WHERE idempotency_key = %s",
               (key,))[0][0].startswith("no outcome yet")
    assert invoice(sql, down) == ("open", None) and payment_gateway.charges_for(down) == []
    assert len(payment_gateway.charges_for(fine)) == 1

    result, _ = run(panel_db, in_run_retries=0)  # the task's retry: same attempt, same key, never a new number

    assert result["unresolved_invoices"] == [down]
    assert [(a[0], a[1], a[2], a[3]) for a in attempts(sql, down)] == [(1, "pending", key, 3)]
    down_card = billing.cards["Down"][1]
    assert {r["idempotency_key"] for r in payment_gateway.requests if r["payment_method"] == down_card} == {key}


def test_rate_limited_request_is_resent_in_the_run_under_the_same_key(billing, panel_db, sql, payment_gateway):
    number = billing.customer("Busy")
    payment_gateway.throttle(1)  # Stripe answers the first request 429: nothing executed

    result, report = run(panel_db)

    assert result["charged"] == 1 and report.counts["gateway_requests"] == 2
    assert [(r["idempotency_key"], r["status"]) for r in payment_gateway.requests] == [
        (f"pay:{number}:1", 429), (f"pay:{number}:1", 200)]
    assert [(a[0], a[1], a[3]) for a in attempts(sql, number)] == [(1, "approved", 2)]
    assert len(payment_gateway.charges_for(number)) == 1


def test_request_stripe_refuses_is_recorded_and_the_invoice_stays_open(billing, panel_db, sql, payment_gateway):
    number = billing.customer("Gone", "pm_card_visa")
    sql("UPDATE payment_profiles SET gateway_token = 'pm_deleted_at_stripe'")

    result, report = run(panel_db)

    assert (result["charged"], result["unresolved"], result["skipped"]) == (0, 0, 1)
    assert report.skipped == {"gateway refused the charge request (HTTP 400)": 1}
    ((attempt, status, _, requests, _, charge_id, code),) = attempts(sql, number)
    assert (attempt, status, requests, charge_id, code) == (1, "error", 1, None, "resource_missing")
    assert invoice(sql, number) == ("open", None) and payment_gateway.charges == []


def test_customer_without_payment_profile_is_reported_and_the_rest_charged(billing, panel_db, sql, payment_gateway):
    first = billing.customer("First")
    cardless = billing.customer("Cardless", None)
    legacy = billing.customer("Legacy", None)
    last = billing.customer("Last")
    sql("INSERT INTO payment_profiles (customer_id, legacy_card_token) SELECT id, 'tok_visa_legacy' FROM customers"
        " WHERE name = 'Legacy'")

    result, report = run(panel_db)

    assert (result["charged"], result["skipped"]) == (2, 2)
    vault = "card not yet in Stripe's vault (ProvisioningWork 27 moves it)"
    assert report.skipped == {"no payment profile": 1, vault: 1}
    assert report.examples == [f"invoice {cardless}: no payment profile", f"invoice {legacy}: {vault}"]
    assert report.as_dict()["skipped"] == {"no payment profile": 1, vault: 1}
    for number in (cardless, legacy):
        assert invoice(sql, number) == ("open", None) and attempts(sql, number) == []
    assert all(len(payment_gateway.charges_for(n)) == 1 and invoice(sql, n)[0] == "paid" for n in (first, last))


CHILD = textwrap.dedent("""
    from datetime import date, datetime, timezone
    from panelflow.step import StepReport
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.hooks.payment_gateway import PaymentGatewayHook
    from panelflow.services.payments import charge_due_invoices

    with PaymentGatewayHook() as hook, PanelDatabaseHook().get_conn() as conn:
        print("charging", flush=True)
        charge_due_invoices(conn, hook, first_day=date(2026, 11, 21), end_day=date(2026, 11, 22),
                            clock=datetime(2026, 11, 22, 1, 30, tzinfo=timezone.utc), report=StepReport())
    print("finished", flush=True)
""")


def test_worker_killed_mid_request_then_retried_charges_once(billing, panel_db, sql, payment_gateway, tmp_path):
    """kill -9 while Stripe still works on the charge: the card is charged, nothing recorded it."""
    held = billing.customer("Held", "pm_sandbox_hold")
    queued = billing.customer("Queued")
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "plugins"),
           "AIRFLOW_CONN_PANEL_DB": os.environ["AIRFLOW_CONN_PANEL_DB"],
           # the worker would wait far longer than the test lets it live
           "AIRFLOW_CONN_PAYMENT_GATEWAY": payment_gateway.connection(extra={"timeout": 60})}
    log = (tmp_path / "worker.log").open("w+")
    worker = subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert payment_gateway.wait_held(1, timeout=120), _output(log)
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    payment_gateway.release()
    assert "finished" not in _output(log)
    # what the dead worker left: a committed pending attempt, and a charge the panel knows nothing of
    assert [(a[0], a[1], a[3]) for a in attempts(sql, held)] == [(1, "pending", 1)]
    assert len(payment_gateway.charges_for(held)) == 1 and payment_gateway.charges_for(queued) == []
    assert invoice(sql, held) == ("open", None)

    result, _ = run(panel_db)  # Airflow's retry of the task

    assert result["charged"] == 2 and result["unresolved"] == 0
    for number in (held, queued):
        (charge,) = payment_gateway.charges_for(number)
        ((amount, _, charge_id, _),) = payments(sql, number)
        assert (amount, charge_id) == (Decimal("12.34"), charge["id"]) and charge["amount"] == 1234
        assert invoice(sql, number)[0] == "paid"
    assert [(a[0], a[1], a[3]) for a in attempts(sql, held)] == [(1, "approved", 2)]
    assert [r["replayed"] for r in payment_gateway.requests if r["idempotency_key"] == f"pay:{held}:1"] == [False,
                                                                                                           True]


def _output(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()


def test_wrong_api_key_is_a_clear_error_and_charges_nothing(billing, panel_db, sql, payment_gateway, monkeypatch):
    number = billing.customer("Ada")
    monkeypatch.setenv("AIRFLOW_CONN_PAYMENT_GATEWAY", payment_gateway.connection(password="sk_test_wrong_key"))

    with pytest.raises(GatewayAuthenticationError, match=r"refused the secret key of connection 'payment_gateway'"
                                                         r" \(HTTP 401\)") as caught:
        run(panel_db)

    assert "sk_test_wrong_key" not in str(caught.value)
    assert payment_gateway.charges == []
    assert [(a[0], a[1]) for a in attempts(sql, number)] == [(1, "pending")]  # nothing executed: safe to resend

    monkeypatch.setenv("AIRFLOW_CONN_PAYMENT_GATEWAY", payment_gateway.connection())
    result, _ = run(panel_db)

    assert result["charged"] == 1 and len(payment_gateway.charges_for(number)) == 1
    assert [(a[0], a[1], a[2]) for a in attempts(sql, number)] == [(1, "approved", f"pay:{number}:1")]


def test_connection_inside_a_transaction_is_refused(billing, panel_db):
    with PaymentGatewayHook() as hook, panel_db.get_conn() as conn:
        conn.autocommit = False
        conn.execute("SELECT 1")
        with pytest.raises(RuntimeError, match="outside a transaction"):
            charge_due_invoices(conn, hook, first_day=DAY, end_day=DAY + timedelta(days=1), clock=CLOCK,
                                report=StepReport())
