"""ReconciliateO365SubsWork: the panel's O365 subscriptions against Partner Center's.

``reconcile_o365_subscriptions``: each profile's customers (every page of the list) and their
subscriptions, written in one transaction per profile: tenants and subscriptions as Partner
Center has them, unlinked subscriptions linked to the panel's (same customer and offer, oldest
first), and the differences between the two recorded for the run (its interval end): missing in
the panel, missing at Partner Center, quantity, status, offer. A rerun of the same interval
replaces that run's record for the profile.
"""

from __future__ import annotations

import json

from panelflow.step import StepReport
from panelflow.steps.microsoft365._backend import Profiles, _BudgetSpent, summary

# Partner Center statuses as the panel's subscription statuses
PANEL_STATUS_SQL = ("CASE WHEN {s} IN ('active', 'pending') THEN 'active' WHEN {s} = 'suspended' THEN 'suspended'"
                    " ELSE 'cancelled' END")


_SUB_FIELDS = {"subscription_id": "text", "offer_id": "text", "offer_name": "text", "friendly_name": "text",
               "quantity": "integer", "unit_type": "text", "status": "text", "auto_renew": "boolean",
               "billing_cycle": "text", "term_duration": "text", "creation_date": "timestamptz",
               "effective_start_date": "date", "commitment_end_date": "date", "is_trial": "boolean",
               "order_id": "text"}
_SUB_DATA = [c for c in _SUB_FIELDS if c != "subscription_id"]

_PC_CUSTOMERS = """
CREATE TEMP TABLE pc_customers ON COMMIT DROP AS
SELECT DISTINCT ON (tenant_id) * FROM jsonb_to_recordset(%s::jsonb)
    AS x(tenant_id text, company_name text, domain text, relationship text, read boolean)
"""

_UPSERT_CUSTOMERS = """
INSERT INTO csp_customers AS c (profile_id, tenant_id, company_name, domain, relationship, listed, first_seen_at,
                                synced_at)
SELECT %(profile)s, tenant_id, company_name, domain, relationship, true, %(at)s,
       CASE WHEN read THEN %(at)s::timestamptz END
FROM pc_customers
ON CONFLICT (profile_id, tenant_id) DO UPDATE
SET company_name = EXCLUDED.company_name, domain = EXCLUDED.domain, relationship = EXCLUDED.relationship,
    listed = true, synced_at = coalesce(EXCLUDED.synced_at, c.synced_at)
RETURNING (c.xmax = 0) AS inserted
"""

_UNLIST_CUSTOMERS = """
UPDATE csp_customers c SET listed = false
WHERE c.profile_id = %(profile)s AND c.listed
  AND NOT EXISTS (SELECT 1 FROM pc_customers p WHERE p.tenant_id = c.tenant_id)
RETURNING c.id
"""

_PC_SUBSCRIPTIONS = f"""
CREATE TEMP TABLE pc_subscriptions ON COMMIT DROP AS
SELECT DISTINCT ON (x.subscription_id) x.*, c.id AS csp_customer_id
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(tenant_id text, {", ".join(f"{k} {t}" for k, t in _SUB_FIELDS.items())})
JOIN csp_customers c ON c.profile_id = %(profile)s AND c.tenant_id = x.tenant_id
"""

_UPSERT_SUBSCRIPTIONS = f"""
INSERT INTO o365_subscriptions AS o (csp_customer_id, subscription_id, {", ".join(_SUB_DATA)}, listed, first_seen_at,
                                     changed_at)
SELECT csp_customer_id, subscription_id, {", ".join(_SUB_DATA)}, true, %(at)s, %(at)s FROM pc_subscriptions
ON CONFLICT (subscription_id) DO UPDATE
SET csp_customer_id = EXCLUDED.csp_customer_id, {", ".join(f"{c} = EXCLUDED.{c}" for c in _SUB_DATA)}, listed = true,
    changed_at = EXCLUDED.changed_at
WHERE (o.csp_customer_id, {", ".join(f"o.{c}" for c in _SUB_DATA)}, o.listed)
      IS DISTINCT FROM (EXCLUDED.csp_customer_id, {", ".join(f"EXCLUDED.{c}" for c in _SUB_DATA)}, true)
RETURNING (o.xmax = 0) AS inserted
"""

# Only tenants whose subscriptions were read: a tenant that could not be read keeps what it had.
_UNLIST_SUBSCRIPTIONS = """
UPDATE o365_subscriptions o SET listed = false, changed_at = %(at)s
FROM csp_customers c
WHERE c.id = o.csp_customer_id AND c.profile_id = %(profile)s AND o.listed
  AND NOT EXISTS (SELECT 1 FROM pc_customers p WHERE p.tenant_id = c.tenant_id AND NOT p.read)
  AND NOT EXISTS (SELECT 1 FROM pc_subscriptions s WHERE s.subscription_id = o.subscription_id)
RETURNING o.id
"""

# Unlinked Partner Center subscriptions ↔ unlinked panel subscriptions of the same customer and offer,
# paired oldest with oldest; a panel subscription being ordered is linked by its order, not here.
_LINK = """
WITH pc AS (
    SELECT o.id, c.customer_id, lower(o.offer_id) AS offer,
           row_number() OVER (PARTITION BY c.customer_id, lower(o.offer_id)
                              ORDER BY o.creation_date NULLS LAST, o.subscription_id) AS n
    FROM o365_subscriptions o JOIN csp_customers c ON c.id = o.csp_customer_id
    WHERE c.profile_id = %(profile)s AND c.customer_id IS NOT NULL AND o.listed AND o.panel_subscription_id IS NULL
      AND o.status NOT IN ('expired', 'deleted', 'disabled')
), panel AS (
    SELECT s.id, s.customer_id, lower(s.o365_offer_id) AS offer,
           row_number() OVER (PARTITION BY s.customer_id, lower(s.o365_offer_id) ORDER BY s.started_on, s.id) AS n
    FROM subscriptions s JOIN csp_customers c ON c.customer_id = s.customer_id AND c.profile_id = %(profile)s
    WHERE s.o365_offer_id IS NOT NULL AND s.status NOT IN ('cancelled', 'pending')
      AND NOT EXISTS (SELECT 1 FROM o365_subscriptions l WHERE l.panel_subscription_id = s.id)
      AND NOT EXISTS (SELECT 1 FROM o365_orders r WHERE r.subscription_id = s.id AND r.status = 'pending')
)
UPDATE o365_subscriptions o SET panel_subscription_id = panel.id, changed_at = %(at)s
FROM pc JOIN panel USING (customer_id, offer, n)
WHERE o.id = pc.id
RETURNING o.id
"""

_FORGET_RUN = "DELETE FROM o365_subscription_reconciliations WHERE reconciled_at = %(at)s AND profile_id = %(profile)s"

_PC_AS_PANEL = PANEL_STATUS_SQL.format(s="pc.status")
_DIFFERENCES = f"""
WITH pc AS (
    SELECT o.*, c.tenant_id FROM o365_subscriptions o JOIN csp_customers c ON c.id = o.csp_customer_id
    WHERE c.profile_id = %(profile)s AND o.listed
      AND NOT EXISTS (SELECT 1 FROM pc_customers p WHERE p.tenant_id = c.tenant_id AND NOT p.read)
), panel AS (
    SELECT s.id, s.o365_offer_id, s.quantity, s.status, c.tenant_id
    FROM subscriptions s JOIN csp_customers c ON c.customer_id = s.customer_id AND c.profile_id = %(profile)s
    WHERE s.o365_offer_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM pc_customers p WHERE p.tenant_id = c.tenant_id AND NOT p.read)
), pairs AS (
    SELECT pc.subscription_id AS pc_id, pc.tenant_id AS pc_tenant, pc.offer_id AS pc_offer, pc.quantity AS pc_quantity,
           pc.status AS pc_status, {_PC_AS_PANEL} AS pc_as_panel,
           panel.id AS panel_id, panel.tenant_id AS panel_tenant, panel.o365_offer_id AS panel_offer,
           panel.quantity AS panel_quantity, panel.status AS panel_status
    FROM pc FULL JOIN panel ON panel.id = pc.panel_subscription_id
), described AS (
    SELECT *, (pc_id IS NOT NULL AND panel_id IS NOT NULL
               AND (pc_as_panel <> 'cancelled' OR panel_status <> 'cancelled')) AS live_pair,
           jsonb_build_object(
               'panel', CASE WHEN panel_id IS NOT NULL THEN jsonb_build_object(
                   'subscription_id', panel_id, 'offer_id', panel_offer, 'quantity', panel_quantity,
                   'status', panel_status) END,
               'partner_center', CASE WHEN pc_id IS NOT NULL THEN jsonb_build_object(
                   'subscription_id', pc_id, 'offer_id', pc_offer, 'quantity', pc_quantity, 'status', pc_status) END
           ) AS difference
    FROM pairs
)
INSERT INTO o365_subscription_reconciliations (tenant_id, subscription_id, kind, difference, profile_id,
                                               panel_subscription_id, reconciled_at)
SELECT coalesce(pc_tenant, panel_tenant), coalesce(pc_id, 'panel:' || panel_id), d.kind, difference, %(profile)s,
       panel_id, %(at)s
FROM described CROSS JOIN LATERAL (VALUES
    ('missing_in_panel', panel_id IS NULL AND pc_as_panel <> 'cancelled'),
    ('missing_in_partner_center', pc_id IS NULL AND panel_status <> 'cancelled'),
    ('quantity', live_pair AND pc_quantity <> panel_quantity),
    ('status', live_pair AND pc_as_panel <> panel_status),
    ('offer', live_pair AND lower(pc_offer) <> lower(panel_offer))
) AS d(kind, applies)
WHERE d.applies
ORDER BY 1, 2, 3
RETURNING kind
"""

# O365 subscriptions of customers no profile has a tenant for: not reconcilable, counted (a few named).
_NO_TENANT = """
SELECT count(*), (array_agg('subscription ' || s.id || ' of customer ' || s.customer_id ORDER BY s.id))[1:%(keep)s]
FROM subscriptions s
WHERE s.o365_offer_id IS NOT NULL AND s.status NOT IN ('cancelled', 'pending')
  AND NOT EXISTS (SELECT 1 FROM csp_customers c JOIN csp_profiles p ON p.id = c.profile_id AND p.enabled
                  WHERE c.customer_id = s.customer_id)
"""


def reconcile_o365_subscriptions(panel_db, interval, log) -> dict:
    """Sync O365 subscriptions reconciliation."""
    from panelflow.hooks.partner_center import PartnerCenterNotFound

    report = StepReport().zero("customer_pages", "customers", "customers_added", "customers_unlisted", "subscriptions",
                               "subscriptions_added", "subscriptions_changed", "subscriptions_unlisted",
                               "subscriptions_linked", "differences")
    at = interval.end
    kinds = ("missing_in_panel", "missing_in_partner_center", "quantity", "status", "offer")
    report.zero(*(f"differences_{k}" for k in kinds))
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        profiles = Profiles(conn, "reconciliation", at, report, log)

        def work(hook, profile):
            profile_id, name = profile[0], profile[1]
            customers: dict[str, dict] = {}
            pages = 0
            for page in hook.customer_pages():
                pages += 1
                for c in page.items:
                    customers.setdefault(c.tenant_id, {"tenant_id": c.tenant_id, "company_name": c.company_name,
                                                       "domain": c.domain, "relationship": c.relationship,
                                                       "read": True})
            subscriptions = []
            for tenant, row in customers.items():
                if profiles.spent():
                    raise _BudgetSpent(f"the run's time budget ran out after {len(subscriptions)} subscriptions;"
                                       " nothing of this profile written")
                try:
                    subs = hook.subscriptions(tenant)
                except PartnerCenterNotFound as exc:  # gone between the list and now: keeps what it had
                    row["read"] = False
                    report.skip("customer's subscriptions not read", f"{name}/{tenant}: {exc}")
                    continue
                subscriptions.extend({"tenant_id": tenant, **s.as_row()} for s in subs)
            args = {"profile": profile_id, "at": at}
            with conn.transaction():  # the profile's whole read, or none of it
                conn.execute(_PC_CUSTOMERS, (json.dumps(list(customers.values())),))
                added = sum(1 for (i,) in conn.execute(_UPSERT_CUSTOMERS, args).fetchall() if i)
                unlisted = conn.execute(_UNLIST_CUSTOMERS, args).fetchall()
                conn.execute(_PC_SUBSCRIPTIONS, {**args, "rows": json.dumps(subscriptions)})
                written = conn.execute(_UPSERT_SUBSCRIPTIONS, args).fetchall()
                gone = conn.execute(_UNLIST_SUBSCRIPTIONS, args).fetchall()
                linked = conn.execute(_LINK, args).fetchall()
                conn.execute(_FORGET_RUN, args)
                found = [k for (k,) in conn.execute(_DIFFERENCES, args).fetchall()]
            inserted = sum(1 for (i,) in written if i)
            report.add("customer_pages", pages)
            report.add("customers", len(customers))
            report.add("customers_added", added)
            report.add("customers_unlisted", len(unlisted))
            report.add("subscriptions", len(subscriptions))
            report.add("subscriptions_added", inserted)
            report.add("subscriptions_changed", len(written) - inserted)
            report.add("subscriptions_unlisted", len(gone))
            report.add("subscriptions_linked", len(linked))
            report.add("differences", len(found))
            for k in found:
                report.add(f"differences_{k}")

        profiles.each(profiles.listed(), work)
        count, examples = conn.execute(_NO_TENANT, {"keep": report.keep}).fetchone()
        if count:
            reason = "customer has no Partner Center tenant"
            for example in examples:
                report.skip(reason, example)
            report.skipped[reason] += count - len(examples)
    return summary(report, log, "O365 subscription reconciliation")

