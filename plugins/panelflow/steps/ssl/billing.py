"""ProvisioningWork step 2's billing halves: SSL order invoices and estimated bills.

**Invoices** — an order whose certificate was verified and stored is billed once, on its
customer's ``ssl`` invoice of the day (numbered by ``panelflow.services.invoicing``): every run
bills the orders issued before the start of its last day (``interval.days()``, the thread's time
zone) that are not billed yet, one invoice per customer dated that day, one ``ssl_certificate``
line per order (the customer's price, the certificate's validity as the period, tax as BillingWork
taxes). An invoice is final once written, so an order issued after its customer's invoice of the
day was written is billed the next day. One statement per batch of customers writes lines,
invoices and each order's ``invoice_id`` together — that column is the "billed once" mark, and
``UNIQUE (customer_id, billing_date, kind)`` and the line's key back it up.

**Estimated bills** — what each active certificate will bring when it renews: per order and
renewal date (the certificate's last day), the customer's price for the renewal and the vendor's
price to the provider (``cost``: what the vendor quoted when the order was placed, refreshed from
DigiCert's order info). "Active": issued, renewing automatically, valid at the run's clock and not
already followed by a later order of its subscription (its renewal). One statement upserts them
and drops the estimates of certificates no longer active.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from panelflow.services.invoicing import CUSTOMER_TAX_JOIN, invoice_number_sql
from panelflow.step import StepReport

CUSTOMERS_PER_BATCH = 500
MAX_BATCHES = 200   # 100,000 customers a run, bounded; the rest are billed by the next run

_UNBILLED = """o.status = 'issued' AND o.invoice_id IS NULL AND o.issued_at < %(cutoff)s"""

CUSTOMERS_TO_BILL = f"""
SELECT DISTINCT o.customer_id FROM ssl_orders o
WHERE {_UNBILLED} AND o.customer_id > %(after)s
ORDER BY o.customer_id LIMIT %(limit)s
"""

# The latest stored certificate of order ``o``.
_CERTIFICATE = """CROSS JOIN LATERAL (
    SELECT (s.not_before AT TIME ZONE 'UTC')::date AS period_start, (s.not_after AT TIME ZONE 'UTC')::date AS period_end,
           s.not_after
    FROM ssl_certificates s WHERE s.ssl_order_id = o.id ORDER BY s.not_after DESC, s.id DESC LIMIT 1) cert"""

INVOICE_ISSUED_ORDERS = f"""
WITH due AS MATERIALIZED (
    SELECT DISTINCT ON (o.subscription_id, cert.period_start)
           o.id AS ssl_order_id, o.customer_id, c.reseller_id, c.currency, o.subscription_id, o.price,
           tax.rate AS tax_rate, cert.period_start, cert.period_end,
           o.product || ' certificate for ' || o.common_name || ' (' || o.validity_years
               || CASE WHEN o.validity_years = 1 THEN ' year)' ELSE ' years)' END AS description
    FROM ssl_orders o
    JOIN customers c ON c.id = o.customer_id
    {CUSTOMER_TAX_JOIN}
    {_CERTIFICATE}
    WHERE {_UNBILLED} AND o.customer_id = ANY(%(customers)s) AND o.currency = c.currency
      AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.customer_id = o.customer_id AND i.billing_date = %(day)s
                        AND i.kind = 'ssl')
      AND NOT EXISTS (SELECT 1 FROM invoice_lines l WHERE l.subscription_id = o.subscription_id AND l.addon_id = 0
                        AND l.kind = 'ssl_certificate' AND l.period_start = cert.period_start)
    ORDER BY o.subscription_id, cert.period_start, o.id
),
invoice_ids AS MATERIALIZED (  -- one nextval per customer
    SELECT customer_id, reseller_id, currency,
           nextval((SELECT pg_get_serial_sequence('invoices', 'id'))::regclass) AS invoice_id
    FROM due GROUP BY customer_id, reseller_id, currency
),
new_lines AS (
    INSERT INTO invoice_lines (invoice_id, kind, subscription_id, addon_id, description, period_start, period_end,
                               quantity, unit_price, amount, tax_rate, tax_amount)
    SELECT i.invoice_id, 'ssl_certificate', d.subscription_id, 0, d.description, d.period_start, d.period_end,
           1, d.price, d.price, d.tax_rate, round(d.price * d.tax_rate, 2)
    FROM due d JOIN invoice_ids i USING (customer_id)
    RETURNING invoice_id, amount, tax_amount
),
new_invoices AS (
    INSERT INTO invoices (id, invoice_number, customer_id, reseller_id, kind, billing_date, currency, subtotal, tax,
                          total, due_date)
    OVERRIDING SYSTEM VALUE
    SELECT i.invoice_id, {invoice_number_sql("ssl", customer="i.customer_id")}, i.customer_id, i.reseller_id, 'ssl',
           %(day)s, i.currency, t.subtotal, t.tax, t.subtotal + t.tax, %(day)s
    FROM invoice_ids i JOIN (SELECT invoice_id, sum(amount) AS subtotal, sum(tax_amount) AS tax
                             FROM new_lines GROUP BY invoice_id) t USING (invoice_id)
    RETURNING id
),
billed AS (
    UPDATE ssl_orders o SET invoice_id = i.invoice_id
    FROM due d JOIN invoice_ids i USING (customer_id)
    WHERE o.id = d.ssl_order_id
    RETURNING o.id
)
SELECT (SELECT count(*) FROM new_invoices), (SELECT count(*) FROM billed)
"""

# After billing: what is still unbilled and why (a count per reason, the first few named).
UNBILLED_ORDERS = f"""
SELECT reason, count(*), (array_agg('order ' || id ORDER BY id))[1:%(keep)s] FROM (
    SELECT o.id, CASE
        WHEN o.currency <> c.currency THEN 'order currency ' || o.currency || ' differs from the customer''s'
        WHEN NOT EXISTS (SELECT 1 FROM ssl_certificates s WHERE s.ssl_order_id = o.id) THEN 'no stored certificate'
        WHEN EXISTS (SELECT 1 FROM invoices i WHERE i.customer_id = o.customer_id AND i.billing_date = %(day)s
                       AND i.kind = 'ssl') THEN 'the customer''s SSL invoice of the day was written; billed next day'
        ELSE 'its subscription was already billed a certificate for the same period' END AS reason
    FROM ssl_orders o JOIN customers c ON c.id = o.customer_id
    WHERE {_UNBILLED}
) unbilled GROUP BY reason ORDER BY reason
"""


def invoice_issued_orders(conn, interval) -> dict:
    """Bill every verified, unbilled SSL order issued before the run's last day began (see above)."""
    _, end = interval.days()
    day = end - timedelta(days=1)
    cutoff = datetime.combine(end, time(), tzinfo=ZoneInfo(interval.tz))
    report = StepReport().zero("ssl_invoices", "ssl_orders_billed")
    args = {"day": day, "cutoff": cutoff}
    after = 0
    for _ in range(MAX_BATCHES):
        customers = [r[0] for r in conn.execute(CUSTOMERS_TO_BILL, {**args, "after": after,
                                                                    "limit": CUSTOMERS_PER_BATCH}).fetchall()]
        if not customers:
            break
        with conn.transaction():
            invoices, billed = conn.execute(INVOICE_ISSUED_ORDERS, {**args, "customers": customers}).fetchone()
        report.add("ssl_invoices", invoices)
        report.add("ssl_orders_billed", billed)
        after = customers[-1]
    report.skip_grouped(conn.execute(UNBILLED_ORDERS, {**args, "keep": report.keep}).fetchall())
    return report.as_dict()


ESTIMATE_RENEWALS = f"""
WITH active AS MATERIALIZED (
    SELECT o.id, o.customer_id, o.currency, o.price, o.cost_currency, o.cost, cert.period_end AS renewal_date
    FROM ssl_orders o
    {_CERTIFICATE}
    WHERE o.status = 'issued' AND o.auto_renew AND cert.not_after > %(clock)s
      AND NOT EXISTS (SELECT 1 FROM ssl_orders later WHERE later.subscription_id = o.subscription_id
                        AND later.id > o.id AND later.status IN ('pending', 'issued'))
),
upserted AS (
    INSERT INTO ssl_estimated_bills AS b (ssl_order_id, renewal_date, customer_id, currency, estimated_charge,
                                          cost_currency, estimated_cost, computed_at)
    SELECT id, renewal_date, customer_id, currency, price, cost_currency, cost, %(clock)s FROM active
    ON CONFLICT (ssl_order_id, renewal_date) DO UPDATE
        SET currency = EXCLUDED.currency, estimated_charge = EXCLUDED.estimated_charge,
            cost_currency = EXCLUDED.cost_currency, estimated_cost = EXCLUDED.estimated_cost,
            computed_at = EXCLUDED.computed_at
        WHERE (b.currency, b.estimated_charge, b.cost_currency, b.estimated_cost)
              IS DISTINCT FROM (EXCLUDED.currency, EXCLUDED.estimated_charge, EXCLUDED.cost_currency,
                                EXCLUDED.estimated_cost)
    RETURNING (b.xmax = 0) AS inserted
),
dropped AS (
    DELETE FROM ssl_estimated_bills b
    WHERE NOT EXISTS (SELECT 1 FROM active a WHERE a.id = b.ssl_order_id AND a.renewal_date = b.renewal_date)
    RETURNING 1
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), (SELECT count(*) FROM dropped)
FROM upserted
"""


def estimate_renewals(conn, clock: datetime) -> dict:
    """The renewal estimates of every active certificate, as of the run's clock (see above)."""
    with conn.transaction():
        added, changed, dropped = conn.execute(ESTIMATE_RENEWALS, {"clock": clock}).fetchone()
    report = StepReport()
    report.add("estimates_added", added)
    report.add("estimates_changed", changed)
    report.add("estimates_dropped", dropped)
    return report.as_dict()
