"""BillingWork's billing run end to end on the demo provider: real PostgreSQL, the Stripe sandbox
and the loopback SMTP server. Invoices, charges, declines, invoice e-mails with their PDF,
commissions; reruns and a worker killed mid-step (kill -9) leave one of each. The demo's cards are
first moved into the sandbox's vault by ProvisioningWork 27, as in production."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from datetime import date, datetime, timedelta
from decimal import Decimal as D
from zoneinfo import ZoneInfo

import pytest

from panelflow.dev.demo import load_billing_demo
from panelflow.step import Interval
from panelflow.steps.billing import billing_process, reseller_commissions
from panelflow.steps.payment_profiles import create_pci_credit_profiles

from harness import ROOT
DAY = date(2026, 11, 21)
LONDON = ZoneInfo("Europe/London")
INTERVAL = Interval(datetime(2026, 11, 21, 1, 30, tzinfo=LONDON), datetime(2026, 11, 22, 1, 30, tzinfo=LONDON),
                    "Europe/London")
CUSTOMERS = 120
LOG = logging.getLogger("test_billing_work")


@pytest.fixture
def demo(panel_db, migrated_panel_db, payment_gateway):
    """The demo provider with every subscription due on DAY (5 per customer; a few bad on purpose),
    its cards in the sandbox's vault."""
    import psycopg

    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        load_billing_demo(conn, CUSTOMERS, DAY + timedelta(days=1), due_day=DAY, usage=False)
    vaulted = create_pci_credit_profiles(panel_db=panel_db, log=LOG)
    assert vaulted["profiles_vaulted"] > 0.9 * CUSTOMERS and vaulted["vault_refused"] == 0
    return panel_db


def send_all(panel_db):
    from panelflow.services.outbox import send_due

    with panel_db.get_conn() as conn:
        return send_due(conn, as_of=INTERVAL.end + timedelta(minutes=5), claimer="test", max_messages=10_000)


def state(sql, gateway):
    return {
        "invoices": sql("SELECT count(*), count(DISTINCT customer_id) FROM invoices WHERE kind = 'recurring'")[0],
        "lines": sql("SELECT count(*), sum(amount), sum(tax_amount) FROM invoice_lines")[0],
        "charges": len(gateway.charges),
        "payments": sql("SELECT count(*) FROM payments")[0][0],
        "outbox": sql("SELECT count(*) FROM email_outbox")[0][0],
        "credits": sql("SELECT count(*) FROM credit_notes")[0][0],
    }


def test_billing_run_on_the_demo_provider(demo, sql, payment_gateway, smtp_server):
    summary = billing_process(panel_db=demo, interval=INTERVAL, log=LOG)

    assert summary["days"] == "2026-11-21..2026-11-22"
    # one invoice per customer for the day; its total is its lines'
    assert sql("SELECT count(*), count(DISTINCT customer_id) FROM invoices") == [(CUSTOMERS, CUSTOMERS)]
    assert sql("""SELECT count(*) FROM invoices i WHERE total <> subtotal - credit + tax
                  OR total <> (SELECT sum(amount + tax_amount) FROM invoice_lines l WHERE l.invoice_id = i.id)""") \
        == [(0,)]
    # the demo's bad records: reported by name, skipped, the rest billed
    assert summary["skipped"]["subscription has no price"] == 1
    assert summary["skipped"]["unknown currency XXX"] == 1
    cardless = sql("SELECT invoice_number FROM invoices i WHERE NOT EXISTS"
                   " (SELECT 1 FROM payment_profiles p WHERE p.customer_id = i.customer_id) ORDER BY 1")
    assert len(cardless) == 3 and summary["skipped"]["no payment profile"] == 3
    for (number,) in cardless:
        assert f"invoice {number}: no payment profile" in summary["skipped_examples"]

    # every approved card charged once, for the invoice's total in pence/cents
    paid = dict(sql("SELECT invoice_number, total FROM invoices WHERE status = 'paid'"))
    declined = [n for (n,) in sql("SELECT invoice_number FROM invoices WHERE status = 'payment_declined'")]
    assert len(declined) == 3 and len(paid) == CUSTOMERS - 3 - 3 - len(
        sql("SELECT 1 FROM invoices WHERE total = 0"))
    by_invoice = {c["metadata"]["invoice_number"]: c for c in payment_gateway.charges}
    assert len(payment_gateway.charges) == len(paid) == summary["charged"]
    for number, total in paid.items():
        assert by_invoice[number]["amount"] == int(total * 100)
    assert sql("SELECT count(*) FROM email_outbox WHERE template = 'payment_declined'") == [(3,)]

    # an e-mail per invoice (not to the customers without an address), with its PDF
    no_email = sql("SELECT count(*) FROM invoices i JOIN customers c ON c.id = i.customer_id WHERE c.email IS NULL")[0][0]
    assert summary["invoice_emails_queued"] == CUSTOMERS - no_email
    sent = send_all(demo)
    assert sent["sent"] == CUSTOMERS - no_email + 3
    invoices_mailed = [m for m in smtp_server.messages if m["Subject"].startswith("Demo Hosting Ltd invoice ")]
    assert len(invoices_mailed) == CUSTOMERS - no_email
    msg = invoices_mailed[0]
    number = msg["Subject"].split("invoice ")[1].split()[0]
    (pdf,) = [p for p in msg.iter_attachments() if p.get_content_type() == "application/pdf"]
    assert pdf.get_filename() == f"invoice-{number}.pdf" and pdf.get_content().startswith(b"%PDF")
    total = sql("SELECT total FROM invoices WHERE invoice_number = %s", (number,))[0][0]
    assert f"Total:    {total:.2f}" in msg.get_body(("plain",)).get_content()

    # commission: 10/15/20 % of the net of each paid invoice of a commission-based reseller's customers
    commission = reseller_commissions(panel_db=demo, interval=INTERVAL)
    expected = sql("""SELECT count(*), sum(round((i.subtotal - i.credit) * r.commission_rate, 2)) FROM invoices i
                      JOIN resellers r ON r.id = i.reseller_id WHERE r.commission_based AND i.status = 'paid'""")[0]
    assert commission["commissions_added"] == expected[0] > 0
    assert sql("SELECT count(*), sum(amount) FROM reseller_commissions") == [expected]
    assert reseller_commissions(panel_db=demo, interval=INTERVAL)["commissions_added"] == 0

    # the whole run again (a rerun, or a backfill over a billed day): nothing new anywhere
    before = state(sql, payment_gateway)
    again = billing_process(panel_db=demo, interval=INTERVAL, log=LOG)
    assert again["invoices"] == 0 and again.get("charged", 0) == 0 and again["invoice_emails_queued"] == 0
    assert state(sql, payment_gateway) == before
    assert send_all(demo)["sent"] == 0


CHILD = textwrap.dedent("""
    import logging
    from datetime import datetime
    from zoneinfo import ZoneInfo
    from panelflow.hooks.panel_db import PanelDatabaseHook
    from panelflow.step import Interval
    from panelflow.steps.billing import billing_process
    L = ZoneInfo("Europe/London")
    billing_process(PanelDatabaseHook(), Interval(datetime(2026, 11, 21, 1, 30, tzinfo=L),
                    datetime(2026, 11, 22, 1, 30, tzinfo=L), "Europe/London"), logging.getLogger())
    print("finished", flush=True)
""")


def test_worker_killed_mid_billing_then_retried_bills_charges_and_mails_once(demo, sql, payment_gateway,
                                                                             smtp_server, tmp_path):
    # one customer's card answers only when released: the worker dies waiting for it
    ((stripe_customer,),) = sql("SELECT gateway_customer_id FROM payment_profiles WHERE customer_id = 60")
    _, held_card = payment_gateway.saved_card("pm_sandbox_hold", customer=stripe_customer)
    sql("UPDATE payment_profiles SET gateway_token = %s WHERE customer_id = 60", (held_card,))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins"),
           "AIRFLOW_CONN_PAYMENT_GATEWAY": payment_gateway.connection(extra={"timeout": 60})}
    log = (tmp_path / "worker.log").open("w+")
    worker = subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert payment_gateway.wait_held(1, timeout=120), log.read()
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
    payment_gateway.release()
    log.seek(0)
    assert "finished" not in log.read()
    charged_before_retry = len(payment_gateway.charges)
    assert 0 < charged_before_retry < CUSTOMERS
    assert sql("SELECT count(*) FROM email_outbox WHERE template = 'invoice'") == [(0,)]  # died before the mail

    billing_process(panel_db=demo, interval=INTERVAL, log=LOG)  # Airflow's retry
    billing_process(panel_db=demo, interval=INTERVAL, log=LOG)  # and a rerun for good measure
    send_all(demo)

    assert sql("SELECT count(*), count(DISTINCT customer_id) FROM invoices") == [(CUSTOMERS, CUSTOMERS)]
    assert sql("SELECT count(*) FROM (SELECT subscription_id FROM invoice_lines WHERE kind = 'subscription'"
               " GROUP BY subscription_id, period_start HAVING count(*) > 1) d") == [(0,)]
    keys = [c["metadata"]["invoice_number"] for c in payment_gateway.charges]
    assert len(keys) == len(set(keys)) == sql("SELECT count(*) FROM invoices WHERE status = 'paid'")[0][0]
    held = sql("SELECT invoice_number, status FROM invoices WHERE customer_id = 60")[0]
    assert held[1] == "paid" and keys.count(held[0]) == 1
    subjects = [m["Subject"] for m in smtp_server.messages if m["Subject"].startswith("Demo Hosting Ltd invoice ")]
    assert len(subjects) == len(set(subjects)) == sql(
        "SELECT count(*) FROM invoices i JOIN customers c ON c.id = i.customer_id WHERE c.email IS NOT NULL")[0][0]
    assert D(sql("SELECT sum(total) FROM invoices WHERE status = 'paid'")[0][0]) == \
        D(sum(c["amount"] for c in payment_gateway.charges)) / 100
