"""SyncCSPOffers: each CSP profile's Partner Center offers into ``csp_offers``.

``sync_csp_offers``: each profile's offers for its country, page by page — each page written in
one transaction, all of it or none — and, once every page came back, the offers no longer listed
are marked ``listed = false``. Only offers that changed are written.
"""

from __future__ import annotations

import json

from panelflow.step import StepReport
from panelflow.steps.microsoft365._backend import Profiles, summary


_OFFER_COLUMNS = ("name", "description", "category", "product_id", "product_name", "unit_type", "billing",
                  "min_quantity", "max_quantity", "is_trial", "is_addon", "is_auto_renewable", "available_for_purchase",
                  "billing_cycles", "prerequisite_offers", "country", "locale")
_OFFER_TYPES = {"min_quantity": "integer", "max_quantity": "integer", "is_trial": "boolean", "is_addon": "boolean",
                "is_auto_renewable": "boolean", "available_for_purchase": "boolean", "billing_cycles": "text[]",
                "prerequisite_offers": "text[]"}
_OFFER_COLS = ", ".join(_OFFER_COLUMNS)
_UPSERT_OFFERS = f"""
INSERT INTO csp_offers AS o (profile_id, offer_id, {_OFFER_COLS}, listed, first_seen_at, changed_at)
SELECT %(profile)s, offer_id, {_OFFER_COLS}, true, %(at)s, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(offer_id text, {", ".join(f"{c} {_OFFER_TYPES.get(c, 'text')}"
                                                                       for c in _OFFER_COLUMNS)})
ON CONFLICT (profile_id, offer_id) DO UPDATE
SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _OFFER_COLUMNS)}, listed = true, changed_at = EXCLUDED.changed_at
WHERE ({", ".join(f"o.{c}" for c in _OFFER_COLUMNS)}, o.listed)
      IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in _OFFER_COLUMNS)}, true)
RETURNING (o.xmax = 0) AS inserted
"""

_UNLIST_OFFERS = """
UPDATE csp_offers SET listed = false, changed_at = %(at)s
WHERE profile_id = %(profile)s AND listed AND NOT (offer_id = ANY(%(seen)s))
RETURNING offer_id
"""


def sync_csp_offers(panel_db, interval, log) -> dict:
    """Read CSP profiles and sync all offers data."""
    report = StepReport().zero("pages", "offers_listed", "offers_added", "offers_changed", "offers_unlisted")
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        profiles = Profiles(conn, "offers", at, report, log)

        def work(hook, profile):
            profile_id, name, _, country = profile
            seen: list[str] = []
            for page in hook.offer_pages(country):  # a malformed page raises before any of it is written
                rows = {o.id: o.as_row() for o in page.items}  # the last of an id repeated within the page
                with conn.transaction():
                    written = conn.execute(_UPSERT_OFFERS, {"profile": profile_id, "at": at,
                                                            "rows": json.dumps(list(rows.values()))}).fetchall()
                seen.extend(rows)
                inserted = sum(1 for (i,) in written if i)
                report.add("pages")
                report.add("offers_listed", len(rows))
                report.add("offers_added", inserted)
                report.add("offers_changed", len(written) - inserted)
            unlisted = conn.execute(_UNLIST_OFFERS, {"profile": profile_id, "at": at, "seen": seen}).fetchall()
            report.add("offers_unlisted", len(unlisted))

        profiles.each(profiles.listed(), work)
    return summary(report, log, "CSP offers sync")

