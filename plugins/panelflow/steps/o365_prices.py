"""BillingWork's O365 price update notifications, and the price lists they compare: Partner Center's price sheets.

Where the prices come from. The step first imports Microsoft's price sheets (Partner Center's "Get a
price sheet", the new-commerce licence-based view) into ``o365_price_lists``: for each market an
enabled CSP profile sells in (``csp_profiles.country``; the lowest-id profile reads it), the
``current`` and the ``future`` sheet. A sheet is imported once per version — its content's SHA-256
in ``o365_price_sheets`` — so a rerun or an unchanged sheet writes nothing. A row becomes a price
of offer ``ProductId:SkuId`` (the panel's ``o365_offer_id``) named by its ``SkuTitle``, in its
``Currency``, at its ``ERP Price`` (Microsoft's estimated retail price: what customers are billed,
not the partner's cost) from its ``EffectiveStartDate``; only the monthly-billed, one-month-term
commercial rows are kept (``o365_price_term``, ``o365_price_billing_plan``, ``o365_price_segment``
params), one per offer, currency and start. ``published_on`` is the first day the run covers, so
the same run announces it. A revised price for a start already stored replaces it. Rows without
a product, SKU, currency, price or start are counted and skipped. A market whose sheet cannot be
read is reported and the others imported; when none can be, the task fails after the notices are
written (they only need what is stored). One market per currency is assumed (the list has no
market column).

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

import csv
import hashlib
import io
import json
from decimal import Decimal, InvalidOperation

from panelflow.step import StepReport, for_each
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


# --- the price sheets ----------------------------------------------------------------------------

PRICE_SHEET_VIEW = "updatedlicensebased"
TIMELINES = ("current", "future")
MAX_SHEET_ROWS = 200_000          # a sheet beyond this is refused, not half-imported

_MARKETS = """
SELECT DISTINCT ON (country) country, conn_id FROM csp_profiles WHERE enabled ORDER BY country, id
"""

_NEW_SHEET = """
INSERT INTO o365_price_sheets (market, view, sha256, profile_id, price_rows, imported_at)
SELECT %(market)s, %(view)s, %(sha)s, (SELECT id FROM csp_profiles WHERE conn_id = %(conn)s), %(rows)s, %(at)s
ON CONFLICT (market, view, sha256) DO NOTHING
RETURNING id
"""

_UPSERT_PRICES = """
INSERT INTO o365_price_lists AS p (offer_id, offer_name, currency, unit_price, effective_from, published_on,
                                   price_sheet_id)
SELECT offer_id, offer_name, currency, unit_price, effective_from, %(published)s, %(sheet)s
FROM jsonb_to_recordset(%(rows)s::jsonb)
    AS x(offer_id text, offer_name text, currency text, unit_price numeric, effective_from date)
ON CONFLICT (offer_id, currency, effective_from) DO UPDATE
SET offer_name = EXCLUDED.offer_name, unit_price = EXCLUDED.unit_price, published_on = EXCLUDED.published_on,
    price_sheet_id = EXCLUDED.price_sheet_id
WHERE (p.offer_name, p.unit_price) IS DISTINCT FROM (EXCLUDED.offer_name, EXCLUDED.unit_price)
RETURNING (p.xmax = 0) AS inserted
"""


class PriceSheetsUnreachable(RuntimeError):
    """No market's price sheet could be read: the task fails (after the notices), Airflow retries it."""


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"ERP Price {text!r} is not a number") from None


def _price_rows(content: bytes, params: dict, report: StepReport, where: str) -> list[dict]:
    """The sheet's kept rows, one per (offer, currency, start): the first the sheet lists."""
    want = (params.get("o365_price_term", "P1M"), params.get("o365_price_billing_plan", "Monthly"),
            params.get("o365_price_segment", "Commercial"))
    kept: dict[tuple, dict] = {}
    for n, row in enumerate(csv.DictReader(io.StringIO(content.decode("utf-8-sig"))), start=2):
        if n > MAX_SHEET_ROWS:
            raise ValueError(f"{where}: more than {MAX_SHEET_ROWS} rows")
        if (row.get("TermDuration"), row.get("BillingPlan"), row.get("Segment")) != want:
            continue
        try:
            product, sku = row["ProductId"].strip(), row["SkuId"].strip()
            currency, start = row["Currency"].strip().upper(), row["EffectiveStartDate"].strip()[:10]
            price = _decimal(row["ERP Price"])
            if not (product and sku and len(currency) == 3 and len(start) == 10 and price >= 0):
                raise ValueError("a product, SKU, currency, start or price is missing")
        except (KeyError, AttributeError, ValueError) as exc:
            report.skip("price sheet row unusable", f"{where} line {n}: {exc}")
            continue
        key = (f"{product}:{sku}", currency, start)
        if key in kept:
            report.add("price_rows_duplicate")
            continue
        name = (row.get("SkuTitle") or row.get("ProductTitle") or key[0]).strip()
        kept[key] = {"offer_id": key[0], "offer_name": name,
                     "currency": currency, "unit_price": str(price), "effective_from": start}
    return list(kept.values())


def import_price_sheets(conn, interval, params: dict, report: StepReport, log) -> None:
    """Each market's current and future price sheet into ``o365_price_lists``, once per sheet version."""
    from airflow.exceptions import AirflowException

    from panelflow.hooks.partner_center import PartnerCenterError, PartnerCenterHook

    report.zero("price_sheets_read", "price_sheets_unchanged", "prices_added", "prices_changed")
    published, _ = interval.days()

    def work(market: tuple[str, str]) -> None:
        country, conn_id = market
        hook = PartnerCenterHook(conn_id)
        try:
            for timeline in TIMELINES:
                content = hook.price_sheet(country, PRICE_SHEET_VIEW, timeline=timeline)
                where = f"{country} {PRICE_SHEET_VIEW} {timeline}"
                rows = _price_rows(content, params, report, where)
                report.add("price_sheets_read")
                with conn.transaction():  # the sheet's version and its prices together, or neither
                    sheet = conn.execute(_NEW_SHEET, {"market": country, "view": PRICE_SHEET_VIEW,
                                                      "sha": hashlib.sha256(content).hexdigest(), "conn": conn_id,
                                                      "rows": len(rows), "at": interval.end}).fetchone()
                    if sheet is None:
                        report.add("price_sheets_unchanged")
                        continue
                    written = conn.execute(_UPSERT_PRICES, {"rows": json.dumps(rows), "published": published,
                                                            "sheet": sheet[0]}).fetchall()
                report.add("prices_added", sum(1 for (i,) in written if i))
                report.add("prices_changed", sum(1 for (i,) in written if not i))
        finally:
            hook.close()

    for_each(conn.execute(_MARKETS).fetchall(), work, report=report, kind="market", name=lambda m: m[0],
             expected=(PartnerCenterError, AirflowException, ValueError, UnicodeDecodeError), log=log,
             what="price sheet market",
             everything_failed=PriceSheetsUnreachable)


def o365_price_update_notifications(panel_db, interval, params=None, log=None) -> dict:
    """Generates O365 price update notifications: Partner Center's price sheets imported first (see the
    module's doc), then for the price lists published on the run's days, one notice (and e-mail) per
    customer and list listing every change to its offers."""
    first, end = interval.days()
    days = {"first": first, "end": end}
    report = StepReport()
    unreachable = None
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        try:
            import_price_sheets(conn, interval, params or {}, report, log)
        except PriceSheetsUnreachable as exc:
            unreachable = exc
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
    if unreachable is not None:
        raise unreachable
    return report.as_dict()
