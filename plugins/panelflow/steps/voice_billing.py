"""BillingWork's voice steps: OCS/Lync call-record bills, SIP billing and its export tasks.

Rating rule, the same for both products, chosen so a bill can be checked by hand:

- a call is rated by the **longest** destination prefix in ``voice_rates`` of the product's rate
  table in the subscription's currency (the empty prefix, if present, is the catch-all);
- it is billed **per started minute**: ``minutes = ceil(duration_seconds / 60)`` (61 s → 2 min)
  and ``charge = connection_fee + per_minute × minutes``, kept exact (numeric) per call;
- a call of 0 seconds was never connected: it is counted as unanswered and costs nothing;
- a subscription's line for the day is ``amount = round(Σ charge, 2)``, its tax
  ``round(amount × tax rate, 2)``; the invoice's subtotal and tax are the sums of its lines
  (so they always add up), ``total = subtotal + tax``. A subscriber's voice bill keeps
  ``round(Σ charge, 4)``, the column's precision.

A day is the thread's local calendar day ``[00:00, next 00:00)``; a run covering several days
(a backfill) bills each day on its own, one invoice per customer, day and product.

An invoice, written once, is final: its lines, voice bills and export tasks are written in the
same statement, only for invoices that statement created. A rerun or retry therefore adds
nothing and never changes a total; a record that arrives after its customer's invoice for the
day was written is reported, not slipped into an invoice the customer may already have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from psycopg import sql

from panelflow.services.invoicing import CUSTOMER_TAX_JOIN, invoice_number_sql
from panelflow.step import StepReport


@dataclass(frozen=True)
class VoiceProduct:
    """What differs between OCS and SIP billing; the rating and invoicing SQL is shared."""

    kind: str  # the invoice kind, and the voice_rates rate table
    line_kind: str
    records: str  # the usage table
    subscriber: str  # its column naming who made the call
    label: str  # for line descriptions and report messages
    writes: str  # the product's own rows: CTEs, the last named ``product_rows``, over the day's new invoices
    written: str  # what those rows are called in the step's summary


# A day is a million records, so what depends on less than the record is worked out first, once
# per what it depends on, into small tables the planner has statistics for (a CTE has none, and
# its guessed join sizes made a day's million records sorted to disk): a subscription's terms
# (customer, currency, tax, invoice state) once per subscription, the longest-prefix lookup once
# per currency and destination. The records are then rated in one hash-joined pass.
_IN_DAY = "r.started_at >= %(day_start)s AND r.started_at < %(day_end)s"

_DAY_TERMS = f"""
CREATE TEMP TABLE day_terms ON COMMIT DROP AS
SELECT s.id AS subscription_id, c.id AS customer_id, s.currency, tax.rate AS tax_rate,
       invoiced.id IS NOT NULL AS invoiced,
       CASE
           WHEN c.status <> 'active' THEN 'customer not active'
           WHEN known.code IS NULL THEN 'unknown currency'
           WHEN s.currency <> c.currency THEN 'subscription currency differs from the customer''s'
       END AS bad_terms,
       CASE
           WHEN invoiced.id IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM invoice_lines l WHERE l.invoice_id = invoiced.id
                   AND l.subscription_id = s.id AND l.kind = %(line_kind)s)
               THEN 'arrived after the customer''s invoice for the day was written'
           WHEN invoiced.id IS NULL AND EXISTS (
                SELECT 1 FROM invoice_lines l WHERE l.subscription_id = s.id AND l.addon_id = 0
                   AND l.kind = %(line_kind)s AND l.period_start = %(day)s)
               THEN 'subscription already billed for the day on another customer''s invoice'
       END AS billed_state
FROM subscriptions s
JOIN customers c ON c.id = s.customer_id
LEFT JOIN currencies known ON known.code = s.currency
{{tax_join}}
LEFT JOIN invoices invoiced ON invoiced.customer_id = c.id AND invoiced.billing_date = %(day)s
    AND invoiced.kind = %(kind)s
WHERE s.id IN (SELECT r.subscription_id FROM {{records}} r WHERE {_IN_DAY})
"""

_DAY_RATES = f"""
CREATE TEMP TABLE day_rates ON COMMIT DROP AS
SELECT d.currency, d.destination, rate.prefix, rate.per_minute, rate.connection_fee
FROM (SELECT DISTINCT t.currency, r.destination
      FROM {{records}} r JOIN day_terms t ON t.subscription_id = r.subscription_id WHERE {_IN_DAY}) d
LEFT JOIN LATERAL (
    -- every prefix of the destination, longest first: index probes on (rate_table, currency, prefix)
    SELECT v.prefix, v.per_minute, v.connection_fee FROM voice_rates v
    WHERE v.rate_table = %(kind)s AND v.currency = d.currency
      AND v.prefix IN (SELECT left(d.destination, n) FROM generate_series(0, length(d.destination)) n)
    ORDER BY length(v.prefix) DESC LIMIT 1) rate ON true
"""

# Each record rated, with the reason it cannot be billed (NULL: it can). Validity comes first so a
# bad record is reported on every run of its day, rerun or not. What is kept is summed per
# subscriber (calls, minutes, exact charge); a record that cannot be billed keeps a row of its own
# (its id and destination), for the report.
_RATE_DAY = f"""
CREATE TEMP TABLE rated_calls ON COMMIT DROP AS
SELECT customer_id, subscription_id, subscriber, currency, tax_rate, invoiced, skip_reason,
       CASE WHEN skip_reason IS NOT NULL THEN id END AS record_id,
       CASE WHEN skip_reason IS NOT NULL THEN destination END AS destination,
       duration_seconds = 0 AS unanswered, count(*) AS calls, sum(minutes) AS minutes, sum(charge) AS charge
FROM (
    SELECT r.id, r.subscription_id, r.{{subscriber}} AS subscriber, r.destination, r.duration_seconds,
           t.customer_id, t.currency, t.tax_rate,
           ceil(greatest(r.duration_seconds, 0) / 60.0) AS minutes,
           rate.connection_fee + rate.per_minute * ceil(greatest(r.duration_seconds, 0) / 60.0) AS charge,
           t.invoiced,
           CASE
               WHEN r.duration_seconds < 0 THEN 'negative duration'
               WHEN t.bad_terms IS NOT NULL THEN t.bad_terms
               WHEN rate.prefix IS NULL THEN 'no matching rate'
               ELSE t.billed_state
           END AS skip_reason
    FROM {{records}} r
    JOIN day_terms t ON t.subscription_id = r.subscription_id
    LEFT JOIN day_rates rate ON rate.currency = t.currency AND rate.destination = r.destination
    WHERE {_IN_DAY}
) rated
GROUP BY customer_id, subscription_id, subscriber, currency, tax_rate, invoiced, skip_reason, 8, 9, 10
"""

# Bounded whatever the number of bad records: a count per reason and the first few examples.
_SKIPPED = """
SELECT skip_reason, sum(calls)::bigint,
       (array_agg(%(label)s::text || ' record ' || record_id || ' (subscription ' || subscription_id || ', destination '
                  || destination || ')' ORDER BY record_id))[1:%(keep)s]
FROM rated_calls WHERE skip_reason IS NOT NULL GROUP BY skip_reason ORDER BY skip_reason
"""

_TALLY = """
SELECT coalesce(sum(calls) FILTER (WHERE skip_reason IS NULL AND invoiced AND NOT unanswered), 0)::bigint,
       coalesce(sum(calls) FILTER (WHERE skip_reason IS NULL AND unanswered), 0)::bigint
FROM rated_calls
"""

# One statement: the day's invoices, their lines and the product's rows commit together, and
# lines are written only for invoices this statement created (see the module docstring).
# A subscription's line sums its subscribers' sums (exact numerics: the same total as its calls').
_INVOICE_DAY = """
WITH per_subscriber AS (
    SELECT customer_id, subscription_id, subscriber, currency, tax_rate, calls, minutes, charge
    FROM rated_calls WHERE skip_reason IS NULL AND NOT invoiced AND NOT unanswered
), lines AS (
    SELECT customer_id, subscription_id, currency, tax_rate, calls, minutes, amount,
           round(amount / minutes, 4) AS unit_price, round(amount * tax_rate, 2) AS tax_amount
    FROM (SELECT customer_id, subscription_id, currency, tax_rate, sum(calls)::bigint AS calls,
                 sum(minutes) AS minutes, round(sum(charge), 2) AS amount
          FROM per_subscriber GROUP BY customer_id, subscription_id, currency, tax_rate) per_subscription
), new_invoices AS (
    INSERT INTO invoices (invoice_number, customer_id, reseller_id, kind, billing_date, currency, subtotal, tax,
                          total, due_date)
    SELECT {number}, l.customer_id, c.reseller_id, %(kind)s, %(day)s, l.currency, sum(l.amount),
           sum(l.tax_amount), sum(l.amount) + sum(l.tax_amount), %(day)s
    FROM lines l JOIN customers c ON c.id = l.customer_id
    GROUP BY l.customer_id, c.reseller_id, l.currency
    ON CONFLICT DO NOTHING
    RETURNING id, customer_id, invoice_number
), new_lines AS (
    INSERT INTO invoice_lines (invoice_id, kind, subscription_id, addon_id, description, period_start, period_end,
                               quantity, unit_price, amount, tax_rate, tax_amount)
    SELECT i.id, %(line_kind)s, l.subscription_id, 0,
           %(label)s::text || ' ' || to_char(%(day)s::date, 'YYYY-MM-DD') || ': ' || l.calls || ' calls, '
               || l.minutes || ' min',
           %(day)s, %(next_day)s, l.minutes, l.unit_price, l.amount, l.tax_rate, l.tax_amount
    FROM lines l JOIN new_invoices i USING (customer_id)
    ON CONFLICT DO NOTHING
    RETURNING 1
), {product_writes}
SELECT (SELECT count(*) FROM new_invoices),
       (SELECT count(*) FROM lines JOIN new_invoices USING (customer_id)),
       (SELECT count(*) FROM new_lines),
       (SELECT count(*) FROM product_rows),
       (SELECT coalesce(sum(calls), 0)::bigint FROM lines JOIN new_invoices USING (customer_id))
"""

OCS = VoiceProduct(
    kind="ocs", line_kind="ocs_calls", records="ocs_call_records", subscriber="caller", label="OCS calls",
    writes="""product_rows AS (
    INSERT INTO voice_bill_records (company_id, subscriber, minutes, amount, currency, billed_at, subscription_id,
                                    bill_date, calls, invoice_id)
    SELECT p.customer_id, p.subscriber, p.minutes, round(p.charge, 4), p.currency, %(day_end)s, p.subscription_id,
           %(day)s, p.calls, i.id
    FROM per_subscriber p JOIN new_invoices i USING (customer_id)
    ON CONFLICT (subscription_id, subscriber, bill_date) WHERE bill_date IS NOT NULL DO NOTHING
    RETURNING 1)""",
    written="voice_bills",
)

# The payload is what the exporter thread sends to the SIP platform: the day's usage per account.
SIP = VoiceProduct(
    kind="sip", line_kind="sip_usage", records="sip_usage", subscriber="sip_account", label="SIP usage",
    writes="""accounts AS (
    SELECT p.subscription_id, jsonb_agg(jsonb_build_object('sip_account', p.subscriber, 'calls', p.calls,
                                                           'minutes', p.minutes, 'amount', round(p.charge, 4))
                                        ORDER BY p.subscriber) AS accounts
    FROM per_subscriber p GROUP BY p.subscription_id
), product_rows AS (
    INSERT INTO sip_export_tasks (subscription_id, invoice_id, period_date, status, payload)
    SELECT l.subscription_id, i.id, %(day)s, 'pending', jsonb_build_object(
               'subscription_id', l.subscription_id, 'customer_id', l.customer_id,
               'period_date', %(day)s::date, 'invoice_number', i.invoice_number, 'currency', l.currency,
               'calls', l.calls, 'minutes', l.minutes, 'amount', l.amount, 'accounts', a.accounts)
    FROM lines l JOIN new_invoices i USING (customer_id) LEFT JOIN accounts a USING (subscription_id)
    ON CONFLICT (subscription_id, period_date) DO NOTHING
    RETURNING 1)""",
    written="export_tasks",
)


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, zone)


def _bill_day(conn, product: VoiceProduct, day: date, zone: ZoneInfo, report: StepReport) -> None:
    params = {
        "kind": product.kind, "line_kind": product.line_kind, "label": product.label, "day": day,
        "next_day": day + timedelta(days=1), "day_start": _local_midnight(day, zone),
        "day_end": _local_midnight(day + timedelta(days=1), zone), "keep": report.keep,
    }
    names = {"records": sql.Identifier(product.records), "subscriber": sql.Identifier(product.subscriber),
             "tax_join": sql.SQL(CUSTOMER_TAX_JOIN)}
    day_terms, day_rates, rate_day = (sql.SQL(q).format(**names) for q in (_DAY_TERMS, _DAY_RATES, _RATE_DAY))
    invoice_day = sql.SQL(_INVOICE_DAY).format(
        number=sql.SQL(invoice_number_sql(product.kind, "%(day)s", "l.customer_id")),
        product_writes=sql.SQL(product.writes))
    with conn.transaction():
        conn.execute("SET LOCAL work_mem = '64MB'")  # a day's sorts and hash tables stay in memory
        conn.execute(day_terms, params)
        conn.execute(day_rates, params)
        conn.execute("ANALYZE day_terms, day_rates")  # a temporary table has no statistics of its own
        conn.execute(rate_day, params)
        conn.execute("ANALYZE rated_calls")
        report.skip_grouped(conn.execute(_SKIPPED, params).fetchall())
        already_billed, unanswered = conn.execute(_TALLY).fetchone()
        invoices, lines_expected, lines, product_rows, calls = conn.execute(invoice_day, params).fetchone()
        if lines != lines_expected:  # a line taken by a concurrent writer: this invoice's total would be wrong
            raise RuntimeError(f"{product.label} {day}: {lines} of {lines_expected} invoice lines written;"
                               " the day was rolled back, rerun the task")
    report.add("days")
    report.add("calls_billed", calls)
    report.add("calls_already_billed", already_billed)
    report.add("calls_unanswered", unanswered)
    report.add("invoices", invoices)
    report.add("invoice_lines", lines)
    report.add(product.written, product_rows)


def _bill(panel_db, interval, product: VoiceProduct) -> dict:
    first, end = interval.days()
    zone = ZoneInfo(interval.tz)
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True  # each day commits on its own: a failure later keeps the days before
        day = first
        while day < end:
            _bill_day(conn, product, day, zone, report)
            day += timedelta(days=1)
    return report.as_dict()


def ocs_call_record_bills(panel_db, interval) -> dict:
    """Generates OCS call record bills: the run's days' Lync calls rated, a voice bill per
    subscriber and day, an 'ocs' invoice per customer and day."""
    return _bill(panel_db, interval, OCS)


def sip_billing_and_exports(panel_db, interval) -> dict:
    """Generates SIP billing and adds SIP export tasks: the run's days' SIP usage rated, a 'sip'
    invoice per customer and day, an export task per subscription and day for the SIP platform."""
    return _bill(panel_db, interval, SIP)
