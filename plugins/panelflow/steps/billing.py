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
3. charge the day's open invoices through the payment gateway (``panelflow.payments``);
4. e-mail each invoice (text + HTML, and a PDF) through the outbox; SendEmailNotificationsWork
   delivers it within a minute.
"""

from __future__ import annotations

from datetime import date

from panelflow.billing import CUSTOMER_TAX_JOIN, StepReport

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

# The subscriptions due on [first, end) that can be billed, with their billing period. A period
# ends on the subscription's anchor day (started_on + n cycles), so a 31 January start bills
# 28 February and then 31 March, never drifting to the 28th.
_DUE = f"""
due AS MATERIALIZED (
    SELECT s.id AS subscription_id, s.customer_id, c.reseller_id, s.next_bill_date AS billing_date, s.currency,
           s.plan, s.price, s.quantity, s.deferred_billing, s.billing_cycle, tax.rate AS tax_rate,
           (s.started_on + make_interval(months => m.elapsed + m.cycle))::date AS period_end
    FROM subscriptions s
    JOIN customers c ON c.id = s.customer_id
    JOIN currencies cur ON cur.code = s.currency
    CROSS JOIN LATERAL (
        SELECT CASE s.billing_cycle WHEN 'monthly' THEN 1 WHEN 'quarterly' THEN 3 ELSE 12 END AS cycle,
               ((extract(year FROM s.next_bill_date) - extract(year FROM s.started_on)) * 12
                + extract(month FROM s.next_bill_date) - extract(month FROM s.started_on))::int AS elapsed) m
    {CUSTOMER_TAX_JOIN}
    WHERE s.status = 'active' AND c.status = 'active'
      AND s.next_bill_date >= %(first)s AND s.next_bill_date < %(end)s
      AND s.price IS NOT NULL AND s.currency = c.currency
)"""

_LINES = f"""
lines AS MATERIALIZED (
    SELECT l.*, round(l.amount * l.tax_rate, 2) AS tax_amount FROM (
        SELECT subscription_id, 0::bigint AS addon_id, 'subscription' AS kind, customer_id, reseller_id, billing_date,
               currency, plan || ' (' || billing_cycle || ')' AS description, billing_date AS period_start, period_end,
               quantity::numeric AS quantity, price AS unit_price, round(price * quantity, 2) AS amount, tax_rate,
               0 AS credit_days
        FROM due
        UNION ALL
        SELECT d.subscription_id, a.id, 'addon', d.customer_id, d.reseller_id, d.billing_date, d.currency,
               a.name || ' (add-on to ' || d.plan || ')', d.billing_date, d.period_end,
               a.quantity, a.price, round(a.price * a.quantity, 2), d.tax_rate, 0
        FROM due d JOIN subscription_addons a ON a.subscription_id = d.subscription_id AND a.status = 'active'
        UNION ALL
        -- a deferred-billing subscription's first invoice: {DEFERRED_CREDIT_DAYS} days of it are credited,
        -- prorated over the period's days (the whole period when it is shorter)
        SELECT d.subscription_id, 0, 'credit', d.customer_id, d.reseller_id, d.billing_date, d.currency,
               least({DEFERRED_CREDIT_DAYS}, d.period_end - d.billing_date) || ' days credit, deferred billing of '
                   || d.plan,
               d.billing_date, d.period_end, 1, -cr.amount, -cr.amount, d.tax_rate,
               least({DEFERRED_CREDIT_DAYS}, d.period_end - d.billing_date)
        FROM due d CROSS JOIN LATERAL (
            SELECT round(d.price * d.quantity * least({DEFERRED_CREDIT_DAYS}, d.period_end - d.billing_date)
                         / (d.period_end - d.billing_date), 2) AS amount) cr
        WHERE d.deferred_billing AND NOT EXISTS (
            SELECT 1 FROM credit_notes n WHERE n.subscription_id = d.subscription_id
              AND n.reason = '{DEFERRED_CREDIT_REASON}')
    ) l
)"""

INVOICE_DUE_SUBSCRIPTIONS = f"""
WITH {_DUE}, {_LINES},
inv AS (
    INSERT INTO invoices (invoice_number, customer_id, reseller_id, kind, billing_date, currency,
                          subtotal, credit, tax, total, due_date)
    SELECT 'R' || to_char(billing_date, 'YYYYMMDD') || '-' || customer_id, customer_id, reseller_id, 'recurring',
           billing_date, currency,
           coalesce(sum(amount) FILTER (WHERE kind <> 'credit'), 0), coalesce(-sum(amount) FILTER (WHERE kind = 'credit'), 0),
           sum(tax_amount), sum(amount + tax_amount), billing_date
    FROM lines GROUP BY customer_id, reseller_id, billing_date, currency
    ON CONFLICT (customer_id, billing_date, kind) DO NOTHING
    RETURNING id, customer_id, billing_date
),
new_lines AS (
    INSERT INTO invoice_lines (invoice_id, kind, subscription_id, addon_id, description, period_start, period_end,
                               quantity, unit_price, amount, tax_rate, tax_amount)
    SELECT inv.id, l.kind, l.subscription_id, l.addon_id, l.description, l.period_start, l.period_end,
           l.quantity, l.unit_price, l.amount, l.tax_rate, l.tax_amount
    FROM lines l JOIN inv USING (customer_id, billing_date)
    ON CONFLICT DO NOTHING
    RETURNING kind
),
credits AS (
    INSERT INTO credit_notes (customer_id, subscription_id, invoice_id, reason, days, amount, currency, issued_on)
    SELECT l.customer_id, l.subscription_id, inv.id, '{DEFERRED_CREDIT_REASON}', l.credit_days, -l.amount, l.currency,
           l.billing_date
    FROM lines l JOIN inv USING (customer_id, billing_date)
    WHERE l.kind = 'credit'
    ON CONFLICT DO NOTHING
    RETURNING 1
),
advanced AS (
    UPDATE subscriptions s SET next_bill_date = l.period_end
    FROM lines l JOIN inv USING (customer_id, billing_date)
    WHERE l.kind = 'subscription' AND s.id = l.subscription_id AND s.next_bill_date = l.billing_date
    RETURNING 1
)
SELECT (SELECT count(*) FROM inv), (SELECT count(*) FROM new_lines WHERE kind <> 'credit'),
       (SELECT count(*) FROM credits), (SELECT count(*) FROM advanced),
       (SELECT count(*) FROM lines WHERE kind = 'subscription')
"""

# Due subscriptions that cannot be billed, and why: reported, skipped, the rest billed.
UNBILLABLE_DUE_SUBSCRIPTIONS = """
SELECT s.id, s.customer_id,
       CASE WHEN s.price IS NULL THEN 'subscription has no price'
            WHEN cur.code IS NULL THEN 'unknown currency ' || s.currency
            ELSE 'currency ' || s.currency || ' differs from the customer''s ' || c.currency END
FROM subscriptions s
JOIN customers c ON c.id = s.customer_id
LEFT JOIN currencies cur ON cur.code = s.currency
WHERE s.status = 'active' AND c.status = 'active'
  AND s.next_bill_date >= %(first)s AND s.next_bill_date < %(end)s
  AND (s.price IS NULL OR cur.code IS NULL OR s.currency <> c.currency)
ORDER BY s.id
LIMIT 10000
"""

# Due subscriptions the run could not bill because their customer's invoice for that day was
# written earlier (a backdated subscription after the day was billed): left for an operator.
ALREADY_INVOICED_DAY = """
SELECT s.id, s.customer_id, i.invoice_number
FROM subscriptions s JOIN customers c ON c.id = s.customer_id JOIN currencies cur ON cur.code = s.currency
JOIN invoices i ON i.customer_id = s.customer_id AND i.billing_date = s.next_bill_date AND i.kind = 'recurring'
WHERE s.status = 'active' AND c.status = 'active' AND s.price IS NOT NULL AND s.currency = c.currency
  AND s.next_bill_date >= %(first)s AND s.next_bill_date < %(end)s
ORDER BY s.id LIMIT 1000
"""

OVERDUE = """
SELECT count(*) FROM subscriptions s JOIN customers c ON c.id = s.customer_id
WHERE s.status = 'active' AND c.status = 'active' AND s.next_bill_date < %(first)s
"""


def invoice_due_subscriptions(conn, first: date, end: date, report: StepReport) -> None:
    """Invoice every billable subscription due on ``[first, end)``, in one transaction.

    All or nothing: a worker killed mid-statement leaves no invoice without its lines and no
    subscription advanced without its invoice. Nothing loops over subscriptions in Python.
    """
    days = {"first": first, "end": end}
    with conn.transaction():
        # the day's lines are sorted and grouped in memory, not spilled to disk (this transaction only)
        conn.execute("SET LOCAL work_mem = '256MB'")
        for sub, customer, reason in conn.execute(UNBILLABLE_DUE_SUBSCRIPTIONS, days).fetchall():
            report.skip(reason, f"subscription {sub} (customer {customer})")
        invoices, lines, credits, advanced, due = conn.execute(INVOICE_DUE_SUBSCRIPTIONS, days).fetchone()
    report.add("invoices", invoices)
    report.add("invoice_lines", lines)
    report.add("deferred_credits", credits)
    report.add("subscriptions_advanced", advanced)
    if advanced < due:
        for sub, customer, number in conn.execute(ALREADY_INVOICED_DAY, days).fetchall():
            report.skip("the customer's invoice for that day was already issued", f"subscription {sub} ({number})")
    overdue = conn.execute(OVERDUE, days).fetchone()[0]
    if overdue:
        report.add("overdue_unbilled_subscriptions", overdue)  # due before this run's days: backfill those days


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
WHERE i.kind = 'recurring' AND i.billing_date >= %(first)s AND i.billing_date < %(end)s AND i.id > %(after)s
  AND NOT EXISTS (SELECT 1 FROM email_outbox o WHERE o.dedupe_key = 'invoice:' || i.invoice_number)
ORDER BY i.id LIMIT %(limit)s
"""

_INVOICE_COLUMNS = ("id", "number", "billing_date", "due_date", "currency", "subtotal", "credit", "tax", "total",
                    "status", "customer_id", "customer_name", "email", "card_brand", "card_last4", "lines")


def email_invoices(conn, first: date, end: date, clock, report: StepReport, provider: dict) -> None:
    """Queue one e-mail per invoice of the billing days (key ``invoice:<number>``: never two)."""
    from panelflow.invoice_pdf import invoice_attachments
    from panelflow.mail import enqueue

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
    from panelflow.payments import charge_due_invoices

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
