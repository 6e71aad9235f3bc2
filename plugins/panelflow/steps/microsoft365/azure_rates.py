"""AzureRateWork: Azure retail prices into ``azure_rates``.

``sync_azure_rate_card``: the Azure Retail Prices API (``/api/retail/prices``, the RateCard's
replacement), every page through ``NextPageLink`` for each configured currency; each page
upserted in one transaction (a malformed page fails the step with the page and item named, and
nothing of it is written), prices kept per effective date.
"""

from __future__ import annotations

import json
from datetime import timedelta

from panelflow.step import StepReport
from panelflow.steps.microsoft365._backend import summary


_RATE_COLUMNS = {"meter_id": "text", "region": "text", "currency": "text", "unit_price": "numeric",
                 "retail_price": "numeric", "tier_minimum_units": "numeric", "effective_date": "date",
                 "price_type": "text", "reservation_term": "text", "meter_name": "text", "location": "text",
                 "sku_id": "text", "sku_name": "text", "arm_sku_name": "text", "product_id": "text",
                 "product_name": "text", "service_name": "text", "service_family": "text", "unit_of_measure": "text",
                 "is_primary_meter_region": "boolean"}
_RATE_KEY = ("currency", "meter_id", "region", "price_type", "sku_id", "reservation_term", "tier_minimum_units",
             "effective_date")
_RATE_DATA = [c for c in _RATE_COLUMNS if c not in _RATE_KEY]
_RATE_COLS = ", ".join(_RATE_COLUMNS)
# A price seen again keeps its row; a corrected price (same effective date) is updated. fetched_at is
# refreshed at most every REFRESH_FETCHED_AT, so a price still listed never ages into the retention
# step's "older than 2 years" while the daily sync rewrites almost nothing.
REFRESH_FETCHED_AT = timedelta(days=30)
_UPSERT_RATES = f"""
INSERT INTO azure_rates AS r (source, {_RATE_COLS}, fetched_at, changed_at)
SELECT 'retail_prices', {_RATE_COLS}, %(at)s, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x({", ".join(f"{c} {t}" for c, t in _RATE_COLUMNS.items())})
ON CONFLICT ({", ".join(_RATE_KEY)}) WHERE source = 'retail_prices' DO UPDATE
SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _RATE_DATA)},
    changed_at = CASE WHEN (r.unit_price, r.retail_price) IS DISTINCT FROM (EXCLUDED.unit_price, EXCLUDED.retail_price)
                      THEN EXCLUDED.changed_at ELSE r.changed_at END,
    fetched_at = greatest(r.fetched_at, EXCLUDED.fetched_at)
WHERE ({", ".join(f"r.{c}" for c in _RATE_DATA)}) IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in _RATE_DATA)})
   OR r.fetched_at < EXCLUDED.fetched_at - %(refresh)s
RETURNING (r.xmax = 0) AS inserted,
          (r.changed_at = %(at)s AND r.xmax <> 0) AS price_changed
"""


def sync_azure_rate_card(panel_db, interval, log) -> dict:
    """Gets Azure rate card from Microsoft and saves in database."""
    from panelflow.hooks.azure_retail_prices import AzureRetailPricesHook

    report = StepReport()
    report.zero("pages", "prices_read", "rates_added", "rates_repriced", "rates_refreshed")
    at = interval.end
    with panel_db.get_conn() as conn, AzureRetailPricesHook() as hook:
        conn.autocommit = True
        hook.get_conn()
        report.counts["currencies"] = len(hook.currencies)
        for currency in hook.currencies:
            for page in hook.price_pages(currency):  # a malformed page raises before any of it is written
                rows: dict[tuple, dict] = {}
                for price in page.items:
                    row = price.as_row()
                    rows[tuple(row[k] for k in _RATE_KEY)] = row  # one row per key within a statement
                with conn.transaction():
                    written = conn.execute(_UPSERT_RATES, {"at": at, "refresh": REFRESH_FETCHED_AT,
                                                           "rows": json.dumps(list(rows.values()))}).fetchall()
                report.add("pages")
                report.add("prices_read", len(page.items))
                report.add("rates_added", sum(1 for i, _ in written if i))
                report.add("rates_repriced", sum(1 for i, c in written if c and not i))
                report.add("rates_refreshed", sum(1 for i, c in written if not i and not c))
    return summary(report, log, "Azure retail prices")
