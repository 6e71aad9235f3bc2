"""BillingWork steps 1 and 2: the nightly billing run and resellers' commission.

Everything is keyed on the run's billing days (``interval.days()``: the 01:30 run bills the day
before), never on the wall clock, and every write lands on a unique key (see migration 0006),
so a rerun, a retry after a killed worker or a backfill over billed days adds nothing.

Step 2 ("Billing work process") does, in this order, each part committed on its own:

1. copy the provider's tax rates to resellers that lack one for a country (so a reseller's
   invoices are taxed even before it sets its own rates);
2. invoice the subscriptions due on the billing days — one set-based statement: an invoice per
   customer and day, a line per subscription and add-on, the 30-day credit of a deferred-billing
   subscription's first invoice, tax per line, next bill date advanced;
3. charge the day's open invoices through the payment gateway (``panelflow.services.payments``);
4. e-mail each invoice (text + HTML, and a PDF) through the outbox; SendEmailNotificationsWork
   delivers it within a minute.
"""

from __future__ import annotations

from datetime import date

from panelflow.services.invoicing import CUSTOMER_TAX_JOIN
from panelflow.step import StepReport

DEFERRED_CREDIT_REASON = "deferred_billing_30_days"
DEFERRED_CREDIT_DAYS = 30
EMAIL_BATCH = 500
MAX_EMAILS_PER_RUN = 500_000  # bounded; a bigger day continues on the task's retry
MAX_CHARGES_PER_RUN = 50_000  # gateway calls in one attempt (~minutes); the retry charges the rest


# --- 1. tax rates -------------------------------------------------------------------------------

COPY_PROVIDER_TAX_RATES = """
INSERT INTO tax_rates (reseller_id, country, name, rate, copied_from)
SELECT r.id, p.country, p.name, p.rate, p.id
FROM resellers r JOIN tax_rates p ON p.provider_id = r.provider_id AND p.reseller_id IS NULL
WHERE r.status = 'active'
ON CONFLICT (reseller_id, country) WHERE provider_id IS NULL DO NOTHING
"""


def add_missing_reseller_tax_rates(conn) -> int:
    """Give every active reseller the provider's rate for each country it has none for."""
    with conn.transaction():
        return conn.execute(COPY_PROVIDER_TAX_RATES).rowcount


# --- 2. recurring invoices ----------------------------------------------------------------------
#
# One statement per billing day, all of a call's days in one transaction. The statement starts
# by advancing the day's billable subscriptions (the UPDATE is the scan that finds them, and
# RETURNING hands their rows to the rest), then writes the invoice lines, the invoices and the
# credit notes from those rows. Why it is shaped like this (bench/billing.py measures it):
#
# * Claiming by UPDATE: billing reads the subscriptions table once, and a concurrent run for
#   the same day waits on the row locks, then finds the rows no longer due (EvalPlanQual
#   re-checks ``next_bill_date``) and bills nothing twice. ``next_bill_date`` is unindexed and
#   the table leaves room on each page (migration 0006), so the update is HOT.
# * Invoice ids come from the identity sequence before anything is written (one ``nextval``
#   per customer), so lines and credit notes carry their invoice id instead of joining back to
#   what the invoice INSERT returned.
# * A customer whose invoice for the day exists, or a subscription whose line for the day
#   exists, is left out up front (and reported), so invoices and lines are plain INSERTs that
#   cannot collide and totals always equal their lines (ON CONFLICT DO NOTHING could drop a
#   line its invoice total counted). Should a concurrent run still take one of the unique keys
#   (it billed a subscription of the same customer that this run's snapshot had not seen as
#   due), the whole call rolls back and the task's retry reports the invoice as issued.

# A period ends on the subscription's anchor day (started_on + n cycles), so a 31 January start
# bills 28 February and then 31 March, never drifting to the 28th. Over the row being advanced.
_PERIOD_END = """(s.started_on + make_interval(months =>
            (12 * (date_part('year', s.next_bill_date) - date_part('year', s.started_on))
             + date_part('month', s.next_bill_date) - date_part('month', s.started_on))::int
            + CASE s.billing_cycle WHEN 'monthly' THEN 1 WHEN 'quarterly' THEN 3 ELSE 12 END))::date"""

# A deferred-billing subscription's first invoice: DEFERRED_CREDIT_DAYS of it are credited,
# prorated over the period's days (the whole period when it is shorter). Over a ``billed`` row.
_CREDIT = "round(b.price * b.quantity * b.credit_days / (b.period_end - %(day)s::date), 2)"

# The day's billable subscriptions, advanced to the end of the period being billed; RETURNING
# gives the rest of the statement what it bills (``period_end`` is the new next bill date).
# Skipped, and reported afterwards by UNBILLED_DUE_SUBSCRIPTIONS: no price, an unknown or
# mismatched currency, a customer already invoiced for the day, a subscription already billed
# for the day on another invoice (a recurring line is always on an invoice of its own day).
_DUE = f"""
billed AS (
    UPDATE subscriptions s SET next_bill_date = {_PERIOD_END}
    FROM customers c
    JOIN currencies cur ON cur.code = c.currency
    {CUSTOMER_TAX_JOIN}
    WHERE c.id = s.customer_id AND s.status = 'active' AND c.status = 'active' AND s.next_bill_date = %(day)s
      AND s.price IS NOT NULL AND s.currency = c.currency
      AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.customer_id = s.customer_id AND i.billing_date = %(day)s
                        AND i.kind = 'recurring')
      AND NOT EXISTS (SELECT 1 FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id
                      WHERE i.billing_date = %(day)s AND i.kind = 'recurring' AND l.subscription_id = s.id
                        AND l.kind = 'subscription')
    RETURNING s.id AS subscription_id, s.customer_id, c.reseller_id, s.currency, s.plan, s.billing_cycle, s.price,
              s.quantity, tax.rate AS tax_rate, s.next_bill_date AS period_end,
              CASE WHEN s.deferred_billing AND NOT EXISTS (
                       SELECT 1 FROM credit_notes n WHERE n.subscription_id = s.id
                         AND n.reason = '{DEFERRED_CREDIT_REASON}')
                   THEN least({DEFERRED_CREDIT_DAYS}, s.next_bill_date - %(day)s::date) END AS credit_days
),
invoice_ids AS MATERIALIZED (  -- evaluated once: one nextval per customer, whatever the plan
    SELECT customer_id, reseller_id, currency,
           nextval((SELECT pg_get_serial_sequence('invoices', 'id'))::regclass) AS invoice_id
    FROM billed GROUP BY customer_id, reseller_id, currency
)"""

# A line per subscription, per active add-on and per deferred-billing credit, taxed per line;
# RETURNING is what the invoice totals are summed from.
_LINES = f"""
new_lines AS (
    INSERT INTO invoice_lines (invoice_id, kind, subscription_id, addon_id, description, period_start, period_end,
                               quantity, unit_price, amount, tax_rate, tax_amount)
    SELECT i.invoice_id, l.kind, l.subscription_id, l.addon_id, l.description, %(day)s, l.period_end,
           l.quantity, l.unit_price, l.amount, l.tax_rate, round(l.amount * l.tax_rate, 2)
    FROM (
        SELECT customer_id, 'subscription' AS kind, subscription_id, 0::bigint AS addon_id,
               plan || ' (' || billing_cycle || ')' AS description, period_end, quantity::numeric AS quantity,
               price AS unit_price, round(price * quantity, 2) AS amount, tax_rate
        FROM billed
        UNION ALL
        SELECT b.customer_id, 'addon', b.subscription_id, a.id, a.name || ' (add-on to ' || b.plan || ')',
               b.period_end, a.quantity, a.price, round(a.price * a.quantity, 2), b.tax_rate
        FROM billed b JOIN subscription_addons a ON a.subscription_id = b.subscription_id AND a.status = 'active'
        UNION ALL
        SELECT b.customer_id, 'credit', b.subscription_id, 0,
               b.credit_days || ' days credit, deferred billing of ' || b.plan, b.period_end, 1, -{_CREDIT},
               -{_CREDIT}, b.tax_rate
        FROM billed b WHERE b.credit_days IS NOT NULL
    ) l JOIN invoice_ids i USING (customer_id)
    RETURNING invoice_id, kind, amount, tax_amount
)"""

INVOICE_DUE_SUBSCRIPTIONS = f"""
WITH {_DUE}, {_LINES},
inv AS (
    INSERT INTO invoices (id, invoice_number, customer_id, reseller_id, kind, billing_date, currency,
                          subtotal, credit, tax, total, due_date)
    OVERRIDING SYSTEM VALUE
    SELECT i.invoice_id, 'R' || to_char(%(day)s::date, 'YYYYMMDD') || '-' || i.customer_id, i.customer_id,
           i.reseller_id, 'recurring', %(day)s, i.currency, t.subtotal, t.credit, t.tax, t.total, %(day)s
    FROM invoice_ids i JOIN (
        SELECT invoice_id, coalesce(sum(amount) FILTER (WHERE kind <> 'credit'), 0) AS subtotal,
               coalesce(-sum(amount) FILTER (WHERE kind = 'credit'), 0) AS credit, sum(tax_amount) AS tax,
               sum(amount + tax_amount) AS total
        FROM new_lines GROUP BY invoice_id) t USING (invoice_id)
),
credits AS (
    INSERT INTO credit_notes (customer_id, subscription_id, invoice_id, reason, days, amount, currency, issued_on)
    SELECT b.customer_id, b.subscription_id, i.invoice_id, '{DEFERRED_CREDIT_REASON}', b.credit_days, {_CREDIT},
           b.currency, %(day)s
    FROM billed b JOIN invoice_ids i USING (customer_id)
    WHERE b.credit_days IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM invoice_ids), (SELECT count(*) FROM new_lines WHERE kind <> 'credit'),
       (SELECT count(*) FROM credits), (SELECT count(*) FROM billed)
"""

# Run after billing, in the same transaction: what is still due on [first, end) and why (a
# count per reason and the first few by name), and how many are overdue (due before first).
UNBILLED_DUE_SUBSCRIPTIONS = """
SELECT reason, count(*), (array_agg(example ORDER BY id))[1:%(keep)s] FROM (
    SELECT s.id, r.reason,
           'subscription ' || s.id || CASE WHEN r.reason = 'the customer''s invoice for that day was already issued'
                                           THEN ' (' || i.invoice_number || ')'
                                           ELSE ' (customer ' || s.customer_id || ')' END AS example
    FROM subscriptions s
    JOIN customers c ON c.id = s.customer_id
    LEFT JOIN currencies cur ON cur.code = s.currency
    LEFT JOIN invoices i ON i.customer_id = s.customer_id AND i.billing_date = s.next_bill_date
        AND i.kind = 'recurring' AND i.billing_date >= %(first)s AND i.billing_date < %(end)s
    CROSS JOIN LATERAL (SELECT CASE
        WHEN s.next_bill_date < %(first)s THEN 'overdue'
        WHEN s.price IS NULL THEN 'subscription has no price'
        WHEN cur.code IS NULL THEN 'unknown currency ' || s.currency
        WHEN s.currency <> c.currency THEN 'currency ' || s.currency || ' differs from the customer''s ' || c.currency
        WHEN i.id IS NOT NULL THEN 'the customer''s invoice for that day was already issued'
        WHEN EXISTS (SELECT 1 FROM invoice_lines l WHERE l.subscription_id = s.id AND l.addon_id = 0
                       AND l.kind = 'subscription' AND l.period_start = s.next_bill_date)
            THEN 'the subscription was already billed for that day on another invoice'
        ELSE 'changed while the day was billed; billed by a rerun' END AS reason) r
    WHERE s.status = 'active' AND c.status = 'active' AND s.next_bill_date < %(end)s
) unbilled GROUP BY reason ORDER BY reason
"""


def invoice_due_subscriptions(conn, first: date, end: date, report: StepReport) -> None:
    """Invoice every billable subscription due on ``[first, end)``, in one transaction.

    All or nothing: a worker killed mid-statement leaves no invoice without its lines and no
    subscription advanced without its invoice. Nothing loops over subscriptions in Python (the
    loop is over billing days: one set-based statement each). A concurrent run billing the same
    day makes this call fail on a unique key and roll back; the retry then skips what it billed.
    """
    from datetime import timedelta

    invoices = lines = credits = advanced = 0
    with conn.transaction():
        # the day's lines are sorted and grouped in memory, not spilled to disk (this transaction only)
        conn.execute("SET LOCAL work_mem = '256MB'")
        day = first
        while day < end:
            i, n, c, a = conn.execute(INVOICE_DUE_SUBSCRIPTIONS, {"day": day}).fetchone()
            invoices, lines, credits, advanced = invoices + i, lines + n, credits + c, advanced + a
            day += timedelta(days=1)
        unbilled = conn.execute(UNBILLED_DUE_SUBSCRIPTIONS,
                                {"first": first, "end": end, "keep": report.keep}).fetchall()
    report.add("invoices", invoices)
    report.add("invoice_lines", lines)
    report.add("deferred_credits", credits)
    report.add("subscriptions_advanced", advanced)
    for reason, count, examples in unbilled:
        if reason == "overdue":  # due before this run's days: backfill those days
            report.add("overdue_unbilled_subscriptions", count)
            continue
        for example in examples:  # every one counts; the first few are named
            report.skip(reason, example)
        report.skipped[reason] += count - len(examples)


# --- 4. invoice e-mails -------------------------------------------------------------------------

INVOICES_TO_EMAIL = """
SELECT i.id, i.invoice_number, i.billing_date, i.due_date, i.currency, i.subtotal, i.credit, i.tax, i.total,
       i.status, c.id, c.name, c.email, p.card_brand, p.card_last4,
       (SELECT json_agg(json_build_object('description', l.description, 'period_start', l.period_start,
                                          'period_end', l.period_end, 'quantity', l.quantity,
                                          'unit_price', l.unit_price, 'amount', l.amount, 'tax_rate', l.tax_rate,
                                          'tax_amount', l.tax_amount, 'kind', l.kind)
                        ORDER BY l.kind = 'credit', l.subscription_id, l.addon_id)
        FROM invoice_lines l WHERE l.invoice_id = i.id)
FROM invoices i
JOIN customers c ON c.id = i.customer_id
LEFT JOIN payments pay ON pay.invoice_id = i.id
LEFT JOIN payment_attempts a ON a.id = pay.payment_attempt_id
LEFT JOIN payment_profiles p ON p.id = a.payment_profile_id
WHERE i.kind IN ('recurring', 'ppu', 'ssl') AND i.billing_date >= %(first)s AND i.billing_date < %(end)s AND i.id > %(after)s
  AND NOT EXISTS (SELECT 1 FROM email_outbox o WHERE o.dedupe_key = 'invoice:' || i.invoice_number)
ORDER BY i.id LIMIT %(limit)s
"""

_INVOICE_COLUMNS = ("id", "number", "billing_date", "due_date", "currency", "subtotal", "credit", "tax", "total",
                    "status", "customer_id", "customer_name", "email", "card_brand", "card_last4", "lines")


def email_invoices(conn, first: date, end: date, clock, report: StepReport, provider: dict) -> None:
    """Queue one e-mail per invoice of the billing days (key ``invoice:<number>``: never two)."""
    from panelflow.services.invoice_pdf import invoice_attachments
    from panelflow.services.outbox import enqueue

    after, queued = 0, 0
    while queued < MAX_EMAILS_PER_RUN:
        rows = conn.execute(INVOICES_TO_EMAIL, {"first": first, "end": end, "after": after,
                                                "limit": EMAIL_BATCH}).fetchall()
        if not rows:
            break
        with conn.transaction():
            for row in rows:
                invoice = dict(zip(_INVOICE_COLUMNS, row))
                after = invoice["id"]
                if not invoice["email"]:
                    report.skip("customer has no e-mail address", f"invoice {invoice['number']}")
                    continue
                context = {"invoice": invoice, "provider": provider}
                if enqueue(conn, dedupe_key=f"invoice:{invoice['number']}", to=invoice["email"], template="invoice",
                           context=context, not_before=clock, priority=4,
                           attachments=invoice_attachments(invoice, provider)):
                    queued += 1
    report.add("invoice_emails_queued", queued)


# --- the steps ----------------------------------------------------------------------------------


def _provider(conn) -> dict:
    row = conn.execute("SELECT name, billing_email FROM providers ORDER BY id LIMIT 1").fetchone()
    return {"name": row[0], "email": row[1]} if row else {"name": "panelflow", "email": None}


def billing_process(panel_db, interval, log) -> dict:
    """Billing work process: recurring invoices, 30-day credits for deferred billing, payments,
    invoice e-mails and the provider's missing tax rates in resellers, for the run's days."""
    from panelflow.hooks.payment_gateway import PaymentGatewayHook
    from panelflow.services.payments import charge_due_invoices

    first, end = interval.days()
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True  # each part commits on its own (explicit transactions inside)
        report.add("reseller_tax_rates_added", add_missing_reseller_tax_rates(conn))
        invoice_due_subscriptions(conn, first, end, report)
        with PaymentGatewayHook() as gateway:
            charge_due_invoices(conn, gateway, first_day=first, end_day=end, clock=interval.end, report=report,
                                max_invoices=MAX_CHARGES_PER_RUN)
        email_invoices(conn, first, end, interval.end, report, _provider(conn))
    summary = {"days": f"{first}..{end}", **report.as_dict()}
    if report.counts.get("unresolved") or report.counts.get("max_invoices_reached"):
        # A charge whose outcome the gateway never told us, or a day with more invoices than one
        # attempt may charge: fail so Airflow retries. The retry resends the same idempotency
        # keys (learning outcomes without charging twice) and charges what is left.
        log.error("billing summary: %s", summary)
        raise RuntimeError(f"{report.counts.get('unresolved', 0)} payment(s) with an unknown outcome"
                           f"{', more invoices to charge' if report.counts.get('max_invoices_reached') else ''};"
                           " the retry resends and continues")
    return summary


RESELLER_COMMISSIONS = """
INSERT INTO reseller_commissions (reseller_id, invoice_id, period_date, base_amount, rate, amount, currency)
SELECT r.id, i.id, %(last_day)s, i.subtotal - i.credit, r.commission_rate,
       round((i.subtotal - i.credit) * r.commission_rate, 2), i.currency
FROM invoices i JOIN resellers r ON r.id = i.reseller_id
WHERE r.commission_based AND i.status = 'paid'
  AND i.billing_date >= %(window_start)s AND i.billing_date < %(end)s
ON CONFLICT (invoice_id) DO NOTHING
"""
COMMISSION_WINDOW_DAYS = 90  # a payment that settles later than this earns no automatic commission


def reseller_commissions(panel_db, interval) -> dict:
    """Processes commission for commission-based resellers: each paid invoice of their customers
    (billed up to the run's last day, within the window) earns its reseller's rate once, on the
    net amount (after credits, before tax), recorded against the run's last billing day."""
    from datetime import timedelta

    first, end = interval.days()
    params = {"last_day": end - timedelta(days=1), "end": end,
              "window_start": first - timedelta(days=COMMISSION_WINDOW_DAYS)}
    with panel_db.get_conn() as conn:
        with conn.transaction():
            added = conn.execute(RESELLER_COMMISSIONS, params).rowcount
            totals = conn.execute(
                "SELECT count(DISTINCT reseller_id), coalesce(sum(amount), 0) FROM reseller_commissions"
                " WHERE period_date = %(last_day)s", params).fetchone()
    return {"days": f"{first}..{end}", "commissions_added": added, "resellers_paid_for_day": totals[0],
            "commission_for_day": str(totals[1])}
