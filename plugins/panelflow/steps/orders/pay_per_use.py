"""ProvisioningWork 21 'Work PPU': pay-per-use usage rated once per record into next-day invoices.

**What is rated** (``ppu_rates``, the panel's price list per plan, resource and currency, the
price valid on the usage's day; a resource without a price for the plan is not pay-per-use):

- *usage samples* (``resource_usage_samples``, written by the backends' collectors): a
  subscription's resource on one day is one record — its **peak** sample of the day over what
  the subscription includes (``subscription_quotas.quota_limit``; no quota row: nothing is
  included; a NULL quota is unlimited, so nothing is over). Billable units =
  ``ceil((peak − included) / per_units)``, charge = units × unit price: over-use is paid per unit
  and day.
- *call minutes over a voice bundle* (``voice_bundle_usage``, GroupActionWorkLync 2): a
  subscription's bundle month is one record, minutes used over the minutes included, priced by
  the plan's ``voice_minutes`` rate. Rated once its count is final: counted at least
  ``BUNDLE_LATE`` after the month ended (the counter recounts a closed month for a day, for calls
  imported late). A plan should price calls either per call (BillingWork's OCS/SIP bills) or by
  bundle over-use here, not both — the rate table decides.
- *Partner Center / Azure usage*: no table of metered usage lines exists in the panel DB yet
  (``csp_licence_usage`` counts licences), so there is nothing to rate.

A day is the thread's local calendar day. The run covers its data interval's days
(``interval.days()``: every 10-minute run of a day covers the day before); a day is rated by the
first run after its usage is complete — ``ppu_grace_minutes`` (60) after it ends, by the run's
clock — which marks it in ``ppu_rated_days`` in the same transaction, so the runs after it (and
reruns, backfills) skip it without reading its samples again. Samples a collector delivers later
than the grace are rated only by a run with the param ``ppu_rerate`` (a backfill after a
collector outage): it reads the days again, and ``ppu_charges``, UNIQUE per subscription,
resource and period start, keeps every record rated once. A record is rated only for an active
or suspended subscription of an active customer in a known currency that is the customer's;
others are counted and named in the summary (and rated by a ``ppu_rerate`` run once put right).

**The invoice rule.** A charge is invoiced on the billing day after its usage period ends: the
run that rates day X writes, for billing day X + 1, one ``ppu`` invoice per customer (number
``P<yyyymmdd>-<customer>``, due that day) holding every charge of the customer not invoiced yet
whose period ended by then, one ``ppu`` line per subscription (amount = round(Σ charges, 2), tax per
line at the customer's rate, totals the sums of the lines). An invoice, once written, is final: a
charge rated after its customer's invoice of the day was written waits for the next day's. The
invoice, its lines and the charges' ``invoice_id`` are written by one statement, together with
the day's rating in one transaction: a killed worker leaves the day rated and invoiced, or not.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from psycopg import sql

from panelflow.services.invoicing import CUSTOMER_TAX_JOIN, invoice_number_sql
from panelflow.step import StepReport

GRACE_MINUTES = 60                   # a collector's sample may arrive this late for its day
BUNDLE_LATE = timedelta(days=1)
BUNDLE_LOOKBACK_DAYS = 62            # closed bundle months looked at for a final count (then left alone)
VOICE_MINUTES = "voice_minutes"

# The rate of ``{resource}`` for subscription ``s`` on ``{day}``: the latest price valid then.
_RATE = """CROSS JOIN LATERAL (
    SELECT r.id, r.unit_price, r.per_units FROM ppu_rates r
    WHERE r.plan = s.plan AND r.resource = {resource} AND r.currency = s.currency AND r.valid_from <= {day}
    ORDER BY r.valid_from DESC LIMIT 1) rate"""

# Every usage record of the day not rated yet, with its charge or why it cannot be rated.
_USAGE = f"""
CREATE TEMP TABLE ppu_usage ON COMMIT DROP AS
WITH records AS (
    SELECT 'usage_sample' AS source, u.subscription_id, u.resource, %(day)s::date AS period_start,
           %(next_day)s::date AS period_end, u.used, coalesce(q.quota_limit, 0) AS included,
           rate.id AS rate_id, rate.unit_price, rate.per_units, NULL::text AS pending_reason
    FROM (SELECT subscription_id, resource, max(used) AS used FROM resource_usage_samples
          WHERE sampled_at >= %(day_start)s AND sampled_at < %(day_end)s
          GROUP BY subscription_id, resource) u
    JOIN subscriptions s ON s.id = u.subscription_id
    LEFT JOIN subscription_quotas q ON q.subscription_id = u.subscription_id AND q.resource = u.resource
    {_RATE.format(resource="u.resource", day="%(day)s")}
    WHERE NOT (q.subscription_id IS NOT NULL AND q.quota_limit IS NULL)      -- unlimited
      AND u.used > coalesce(q.quota_limit, 0)
    UNION ALL
    SELECT 'voice_bundle', b.subscription_id, %(voice)s, v.period_start, v.period_end, v.minutes_used,
           v.minutes_included, rate.id, rate.unit_price, rate.per_units,
           CASE WHEN v.counted_at < (v.period_end::timestamp AT TIME ZONE %(tz)s) + %(bundle_late)s
                THEN 'voice bundle month not finally counted yet' END
    FROM voice_bundle_usage v
    JOIN voice_bundles b ON b.id = v.bundle_id
    JOIN subscriptions s ON s.id = b.subscription_id
    {_RATE.format(resource="%(voice)s", day="v.period_end - 1")}
    WHERE v.period_end <= %(day)s AND v.period_end > %(day)s - %(lookback)s::integer
      AND v.minutes_used > v.minutes_included
)
SELECT r.*, s.customer_id, s.currency, ceil((r.used - r.included) / r.per_units) AS quantity,
       round(ceil((r.used - r.included) / r.per_units) * r.unit_price, 4) AS amount,
       CASE
           WHEN s.status NOT IN ('active', 'suspended') THEN 'subscription is ' || s.status
           WHEN c.status <> 'active' THEN 'customer not active'
           WHEN known.code IS NULL THEN 'unknown currency ' || s.currency
           WHEN s.currency <> c.currency THEN 'subscription currency differs from the customer''s'
           ELSE r.pending_reason
       END AS skip_reason
FROM records r
JOIN subscriptions s ON s.id = r.subscription_id
JOIN customers c ON c.id = s.customer_id
LEFT JOIN currencies known ON known.code = s.currency
WHERE NOT EXISTS (SELECT 1 FROM ppu_charges ch WHERE ch.subscription_id = r.subscription_id
                    AND ch.resource = r.resource AND ch.period_start = r.period_start)
"""

_SKIPPED = """
SELECT skip_reason, count(*),
       (array_agg(source || ' ' || resource || ' of subscription ' || subscription_id || ' from '
                  || to_char(period_start, 'YYYY-MM-DD') ORDER BY subscription_id, resource))[1:%(keep)s]
FROM ppu_usage WHERE skip_reason IS NOT NULL GROUP BY skip_reason ORDER BY skip_reason
"""

_RATE_USAGE = """
INSERT INTO ppu_charges (source, subscription_id, customer_id, resource, period_start, period_end, used, included,
                         quantity, rate_id, unit_price, amount, currency, rated_at)
SELECT source, subscription_id, customer_id, resource, period_start, period_end, used, included, quantity, rate_id,
       unit_price, amount, currency, %(at)s
FROM ppu_usage WHERE skip_reason IS NULL
ON CONFLICT (subscription_id, resource, period_start) DO NOTHING
"""

# Billing day %(bill_day)s: each customer without a ppu invoice that day gets one for every charge
# not invoiced yet whose period has ended; lines only on the invoices this statement writes.
_INVOICE = sql.SQL("""
WITH pending AS MATERIALIZED (
    SELECT ch.id, ch.customer_id, ch.subscription_id, ch.currency, ch.resource, ch.unit_price, ch.quantity, ch.amount
    FROM ppu_charges ch JOIN customers c ON c.id = ch.customer_id AND c.currency = ch.currency
    WHERE ch.invoice_id IS NULL AND ch.period_end <= %(bill_day)s
      AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.customer_id = ch.customer_id
                        AND i.billing_date = %(bill_day)s AND i.kind = 'ppu')
    FOR UPDATE OF ch
), per_price AS (
    SELECT customer_id, subscription_id, currency, resource, unit_price, sum(quantity) AS quantity,
           sum(amount) AS amount
    FROM pending GROUP BY customer_id, subscription_id, currency, resource, unit_price
), lines AS (
    SELECT p.customer_id, p.subscription_id, p.currency, tax.rate AS tax_rate, p.amount,
           round(p.amount * tax.rate, 2) AS tax_amount, p.description
    FROM (SELECT customer_id, subscription_id, currency, round(sum(amount), 2) AS amount,
                 'Pay-per-use to ' || to_char(%(day)s::date, 'YYYY-MM-DD') || ': '
                     || string_agg(resource || ' ' || trim_scale(quantity) || ' × ' || trim_scale(unit_price), ', '
                                   ORDER BY resource, unit_price) AS description
          FROM per_price GROUP BY customer_id, subscription_id, currency) p
    JOIN customers c ON c.id = p.customer_id
    {tax_join}
), new_invoices AS (
    INSERT INTO invoices (invoice_number, customer_id, reseller_id, kind, billing_date, currency, subtotal, tax,
                          total, due_date)
    SELECT {number}, l.customer_id,
           c.reseller_id, 'ppu', %(bill_day)s, l.currency, sum(l.amount), sum(l.tax_amount),
           sum(l.amount) + sum(l.tax_amount), %(bill_day)s
    FROM lines l JOIN customers c ON c.id = l.customer_id
    GROUP BY l.customer_id, c.reseller_id, l.currency
    ON CONFLICT DO NOTHING
    RETURNING id, customer_id
), new_lines AS (
    INSERT INTO invoice_lines (invoice_id, kind, subscription_id, addon_id, description, period_start, period_end,
                               quantity, unit_price, amount, tax_rate, tax_amount)
    SELECT i.id, 'ppu', l.subscription_id, 0, l.description, %(day)s, %(bill_day)s, 1, l.amount, l.amount,
           l.tax_rate, l.tax_amount
    FROM lines l JOIN new_invoices i USING (customer_id)
    ON CONFLICT DO NOTHING
    RETURNING 1
), charged AS (
    UPDATE ppu_charges ch SET invoice_id = i.id, billing_date = %(bill_day)s
    FROM pending p JOIN new_invoices i USING (customer_id)
    WHERE ch.id = p.id
    RETURNING 1
)
SELECT (SELECT count(*) FROM new_invoices), (SELECT count(*) FROM lines JOIN new_invoices USING (customer_id)),
       (SELECT count(*) FROM new_lines), (SELECT count(*) FROM charged)
""").format(tax_join=sql.SQL(CUSTOMER_TAX_JOIN),
             number=sql.SQL(invoice_number_sql("ppu", "%(bill_day)s", "l.customer_id")))


# The day's claim: the first transaction to write it rates the day; the others wait for it, then skip.
_CLAIM_DAY = """
INSERT INTO ppu_rated_days (day, rated_at, records, invoices) VALUES (%(day)s, %(at)s, 0, 0)
ON CONFLICT (day) DO NOTHING
"""
_DAY_DONE = "UPDATE ppu_rated_days SET records = records + %(records)s, invoices = invoices + %(invoices)s WHERE day = %(day)s"


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, zone)


def _rate_and_invoice_day(conn, day: date, zone: ZoneInfo, interval, params: dict, rerate: bool,
                          report: StepReport) -> None:
    args = {"day": day, "next_day": day + timedelta(days=1), "bill_day": day + timedelta(days=1),
            "day_start": _midnight(day, zone), "day_end": _midnight(day + timedelta(days=1), zone),
            "tz": interval.tz, "bundle_late": BUNDLE_LATE, "voice": VOICE_MINUTES, "at": interval.end,
            "lookback": int(params.get("ppu_bundle_lookback_days", BUNDLE_LOOKBACK_DAYS)), "keep": report.keep}
    with conn.transaction():
        claimed = conn.execute(_CLAIM_DAY, args).rowcount
        if not claimed and not rerate:
            report.add("days_already_rated")
            return
        conn.execute(_USAGE, args)
        report.skip_grouped(conn.execute(_SKIPPED, args).fetchall())
        rated = conn.execute(_RATE_USAGE, args).rowcount
        invoices, lines_expected, lines, charged = conn.execute(_INVOICE, args).fetchone()
        if lines != lines_expected:  # a line key taken by another writer: the invoice total would be wrong
            raise RuntimeError(f"pay-per-use {args['bill_day']}: {lines} of {lines_expected} invoice lines written;"
                               " the day was rolled back, rerun the task")
        conn.execute(_DAY_DONE, {**args, "records": rated, "invoices": invoices})
    report.add("days_rated")
    report.add("usage_records_rated", rated)
    report.add("invoices", invoices)
    report.add("invoice_lines", lines)
    report.add("charges_invoiced", charged)


def work_ppu(panel_db, interval, params=None, log=None) -> dict:
    """Work PPU: the run's complete days' pay-per-use usage rated once per record, and invoiced
    on the next billing day (a ``ppu`` invoice per customer and day)."""
    params = params or {}
    zone = ZoneInfo(interval.tz)
    grace = timedelta(minutes=int(params.get("ppu_grace_minutes", GRACE_MINUTES)))
    first, end = interval.days()
    rerate = bool(params.get("ppu_rerate", False))
    report = StepReport().zero("days_rated", "usage_records_rated", "invoices", "invoice_lines", "charges_invoiced")
    with panel_db.get_conn() as conn:
        conn.autocommit = True  # each day commits on its own: a later failure keeps the days before
        day = first
        while day < end:
            if _midnight(day + timedelta(days=1), zone) + grace > interval.end:
                report.add("days_not_complete_yet")   # a later run of the next day rates it
                break
            _rate_and_invoice_day(conn, day, zone, interval, params, rerate, report)
            day += timedelta(days=1)
    if log is not None:
        log.info("work ppu %s..%s: %s records rated, %s invoices", first, end, report.counts["usage_records_rated"],
                 report.counts["invoices"])
    return {"days": f"{first}..{end}", **report.as_dict()}
