"""BillingWork's O365 price update notifications.

Microsoft publishes price lists ahead of the date they take effect; a customer hears about every
change to an offer it subscribes to once, in one message per price-list day. A price counts as
changed against the same offer's latest earlier price in the same currency: the first price an
offer ever gets is not a change, and a list that repeats a price changes nothing.

The notification row and its outbox message are written in one transaction, keyed on (customer,
publication day): a rerun, retry or backfill finds both there and adds neither. A customer
without a usable e-mail address gets neither, so once the address is fixed a rerun of that day
sends the notice.
"""

from __future__ import annotations

import json
from decimal import Decimal

from panelflow.step import StepReport
from panelflow.services.outbox import enqueue

TEMPLATE = "o365_price_update"

# One row per (customer, publication day) to notify, with every change that affects it.
_NOTICES = """
CREATE TEMP TABLE o365_price_notices ON COMMIT DROP AS
WITH published AS (
    SELECT p.offer_id, p.offer_name, p.currency, p.effective_from, p.published_on,
           previous.unit_price AS old_price, p.unit_price AS new_price
    FROM o365_price_lists p
    CROSS JOIN LATERAL (
        SELECT q.unit_price FROM o365_price_lists q
        WHERE q.offer_id = p.offer_id AND q.currency = p.currency AND q.effective_from < p.effective_from
        ORDER BY q.effective_from DESC LIMIT 1) previous
    WHERE p.published_on >= %(first)s AND p.published_on < %(end)s
      AND previous.unit_price <> p.unit_price
), affected AS (
    -- DISTINCT: a customer with several subscriptions on one offer hears about it once
    SELECT DISTINCT s.customer_id, ch.*
    FROM published ch
    JOIN subscriptions s ON s.o365_offer_id = ch.offer_id AND s.currency = ch.currency AND s.status = 'active'
)
SELECT a.customer_id, a.published_on, c.name, c.email,
       coalesce(c.email ~ '^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$', false) AS mailable,
       'o365-price:' || a.customer_id || ':' || to_char(a.published_on, 'YYYY-MM-DD') AS outbox_key,
       jsonb_agg(jsonb_build_object(
           'offer_id', a.offer_id, 'offer_name', a.offer_name, 'currency', a.currency,
           'effective_from', a.effective_from, 'old_price', a.old_price, 'new_price', a.new_price,
           'direction', CASE WHEN a.new_price > a.old_price THEN 'increase' ELSE 'decrease' END)
           ORDER BY a.offer_name, a.offer_id, a.currency, a.effective_from) AS changes
FROM affected a JOIN customers c ON c.id = a.customer_id
GROUP BY a.customer_id, a.published_on, c.name, c.email
"""

_TALLY = """
SELECT (SELECT count(*) FROM o365_price_lists WHERE published_on >= %(first)s AND published_on < %(end)s),
       (SELECT count(*) FROM o365_price_notices),
       (SELECT count(*) FROM o365_price_notices n WHERE mailable AND EXISTS (
            SELECT 1 FROM o365_price_notifications d
            WHERE d.customer_id = n.customer_id AND d.published_on = n.published_on))
"""

# Bounded whatever the number of customers concerned: a count and the first few named.
_UNMAILABLE = """
SELECT count(*), (array_agg('customer ' || customer_id || ' (' || coalesce(nullif(email, ''), 'no address')
                            || '), price list of ' || to_char(published_on, 'YYYY-MM-DD')
                            ORDER BY customer_id, published_on))[1:%(keep)s]
FROM o365_price_notices WHERE NOT mailable
"""

# changes::text, not changes: prices are parsed as Decimal, exactly as stored, for the e-mail.
_INSERT = """
WITH inserted AS (
    INSERT INTO o365_price_notifications (customer_id, published_on, changes, outbox_key)
    SELECT customer_id, published_on, changes, outbox_key FROM o365_price_notices WHERE mailable
    ORDER BY customer_id, published_on
    ON CONFLICT (customer_id, published_on) DO NOTHING
    RETURNING customer_id, published_on, changes, outbox_key)
SELECT i.customer_id, i.published_on, i.changes::text, i.outbox_key, n.name, n.email
FROM inserted i JOIN o365_price_notices n USING (customer_id, published_on)
ORDER BY i.customer_id, i.published_on
"""


def _price(value: Decimal) -> str:
    """At least two decimals (12.50), more only when the list has them (0.0425)."""
    return f"{value:.2f}" if value == round(value, 2) else f"{value.normalize():f}"


def _mail_context(name: str, published_on, changes_json: str) -> dict:
    changes = json.loads(changes_json, parse_float=Decimal, parse_int=Decimal)
    return {
        "name": name,
        "published_on": published_on.isoformat(),
        "changes": [{**change, "old_price": _price(change["old_price"]), "new_price": _price(change["new_price"])}
                    for change in changes],
    }


def o365_price_update_notifications(panel_db, interval) -> dict:
    """Generates O365 price update notifications: for the price lists published on the run's
    days, one notice (and e-mail) per customer and list listing every change to its offers."""
    first, end = interval.days()
    days = {"first": first, "end": end}
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():  # notices and their e-mails together, or neither
            conn.execute(_NOTICES, days)
            prices, notices, already = conn.execute(_TALLY, days).fetchone()
            unmailable, examples = conn.execute(_UNMAILABLE, {"keep": report.keep}).fetchone()
            if unmailable:
                report.skip_grouped([("customer has no usable e-mail address", unmailable, examples)])
            written = conn.execute(_INSERT).fetchall()
            queued = 0
            for customer_id, published_on, changes_json, outbox_key, name, email in written:
                queued += enqueue(conn, dedupe_key=outbox_key, to=email, template=TEMPLATE,
                                  context=_mail_context(name, published_on, changes_json), not_before=interval.end)
    report.add("price_rows_published", prices)
    report.add("notices_due", notices)
    report.add("already_notified", already)
    report.add("notifications", len(written))
    report.add("emails_queued", queued)
    return report.as_dict()
