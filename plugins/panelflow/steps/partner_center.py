"""Partner Center and Azure prices: CSP offers, O365 subscription reconciliation and renewals, O365
orders and licence alerts (SyncCSPOffers, ReconciliateO365SubsWork, Office365Work, ProvisioningWork),
and Azure retail prices (AzureRateWork).

Each enabled ``csp_profiles`` row is one Partner Center account; its Airflow connection (named by
``conn_id``) holds the app's credentials, and one :class:`~panelflow.hooks.partner_center.PartnerCenterHook`
per profile and run talks to it. A profile that fails — its credentials refused, Partner Center
unavailable through every retry, a malformed page — is reported (the summary's ``skipped``, the
profile's ``csp_profile_syncs.last_error``) with nothing of the failed read written, while the other
profiles sync. A step fails (so Airflow retries it and alerts) only when every profile it tried failed.

- ``sync_csp_offers``: each profile's offers for its country, page by page — each page written in
  one transaction, all of it or none — and, once every page came back, the offers no longer listed
  are marked ``listed = false``. Only offers that changed are written.
- ``reconcile_o365_subscriptions``: each profile's customers (every page of the list) and their
  subscriptions, written in one transaction per profile: tenants and subscriptions as Partner
  Center has them, unlinked subscriptions linked to the panel's (same customer and offer, oldest
  first), and the differences between the two recorded for the run (its interval end): missing in
  the panel, missing at Partner Center, quantity, status, offer. A rerun of the same interval
  replaces that run's record for the profile.
- ``handle_subscription_renewals``: subscriptions whose term has ended (by the run's clock) are
  asked about, each at most hourly: a later end date is a renewal, an expired or deleted one (or a
  suspended one that was not to renew) an expiry that cancels the panel's subscription; either is
  recorded once per term end. One that Partner Center has not acted on yet is asked again later.
- ``process_pending_o365_subscriptions``: ``o365_orders`` rows the panel queued (one per panel
  subscription to provision) become Partner Center orders, each with an ``MS-RequestId`` derived
  from the panel subscription and the order's attempt and the offer/quantity the first try sent, so
  a resend (a lost answer, a killed worker, the next run) is the same request and Partner Center
  places it once; the order and its subscription are recorded in one transaction. Partner Center
  unavailable leaves the order pending (resent next run); a refusal (unknown offer, quantity out of
  range) fails it with the answer; a customer without a tenant yet waits; a subscription cancelled
  before its order was confirmed is never sent again (the reconciliation reports anything a lost
  try placed).
- ``generate_threshold_alerts`` (the O365/CSP part): the licence usage of the tenants read longest
  ago is refreshed (a bounded number per run), then every tenant's SKU whose consumed units reach
  the profile's percentage of its active units opens one alert — and one e-mail to the customer —
  until a run finds it under again; the next crossing is a new alert.
- ``sync_azure_rate_card``: the Azure Retail Prices API (``/api/retail/prices``, the RateCard's
  replacement), every page through ``NextPageLink`` for each configured currency; each page
  upserted in one transaction (a malformed page fails the step with the page and item named, and
  nothing of it is written), prices kept per effective date.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta, timezone

from panelflow.step import StepReport
from panelflow.services.outbox import enqueue

RUN_BUDGET_SECONDS = {"offers": 75 * 60, "reconciliation": 100 * 60, "renewals": 4 * 60, "orders": 5 * 60,
                      "licence_usage": 5 * 60}
RENEWAL_RECHECK = timedelta(hours=1)     # a term's end Partner Center has not acted on yet is asked about again after
MAX_RENEWAL_CHECKS = 500                 # per run
MAX_ORDERS = 200                         # per run
USAGE_REFRESH = timedelta(hours=6)       # a tenant's licence usage is read again after
MAX_USAGE_READS = 200                    # tenants per run
ALERT_TEMPLATE = "o365_licence_threshold"
EMAIL_RE = r"^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$"
ORDER_NAMESPACE = uuid.UUID("1b7a3f52-0d43-4f7e-8c1e-5a0b6f1d2c39")
# Partner Center statuses as the panel's subscription statuses
PANEL_STATUS_SQL = ("CASE WHEN {s} IN ('active', 'pending') THEN 'active' WHEN {s} = 'suspended' THEN 'suspended'"
                    " ELSE 'cancelled' END")
ENDED = ("expired", "deleted", "disabled")


class _BudgetSpent(ValueError):
    """The run's time budget ran out before a profile's read was complete (reported like a failure)."""


class PartnerCenterSyncFailed(RuntimeError):
    """Every CSP profile the step tried failed: the run fails, so Airflow retries it and alerts."""


def order_request_id(subscription_id: int, attempt: int) -> str:
    """The ``MS-RequestId`` of a panel subscription's order: the same for every try of one attempt."""
    return str(uuid.uuid5(ORDER_NAMESPACE, f"panel-subscription:{subscription_id}:order-attempt:{attempt}"))


# -- profiles -------------------------------------------------------------------------------------

_PROFILES = """
SELECT p.id, p.name, p.conn_id, p.country FROM csp_profiles p
LEFT JOIN csp_profile_syncs s ON s.profile_id = p.id AND s.task = %s
WHERE p.enabled ORDER BY s.last_attempt_at NULLS FIRST, p.id
"""

_MARK = """
INSERT INTO csp_profile_syncs AS s (profile_id, task, last_attempt_at, last_synced_at, last_error)
VALUES (%(profile)s, %(task)s, %(at)s, CASE WHEN %(error)s::text IS NULL THEN %(at)s END, %(error)s)
ON CONFLICT (profile_id, task) DO UPDATE
SET last_attempt_at = EXCLUDED.last_attempt_at, last_error = EXCLUDED.last_error,
    last_synced_at = coalesce(EXCLUDED.last_synced_at, s.last_synced_at)
"""


def _profile_errors():
    from airflow.exceptions import AirflowNotFoundException

    from panelflow.hooks.partner_center import PartnerCenterError

    return (PartnerCenterError, AirflowNotFoundException, ValueError)


def _describe(exc: BaseException) -> str:
    from airflow.exceptions import AirflowNotFoundException

    return f"{type(exc).__name__}: {exc}" if isinstance(exc, AirflowNotFoundException) else str(exc)


def _mark(conn, profile_id: int, task: str, at, error: str | None = None) -> None:
    conn.execute(_MARK, {"profile": profile_id, "task": task, "at": at, "error": error[:1000] if error else None})


class _Profiles:
    """Runs ``work(hook, profile)`` for each profile with its own hook, reporting a failing profile
    (summary and ``csp_profile_syncs``) and going on with the next."""

    def __init__(self, conn, task: str, at, report: StepReport, log):
        self.conn, self.task, self.at, self.report, self.log = conn, task, at, report, log
        self.tried = 0
        self.errors: list[str] = []
        self.deadline = time.monotonic() + RUN_BUDGET_SECONDS[task]

    def run(self, profile, work) -> bool:
        from panelflow.hooks.partner_center import PartnerCenterHook

        profile_id, name, conn_id = profile[0], profile[1], profile[2]
        self.report.add("profiles")
        if time.monotonic() > self.deadline:
            self.report.add("profiles_deferred")
            return False
        self.tried += 1
        try:
            with PartnerCenterHook(conn_id) as hook:
                work(hook, profile)
        except _profile_errors() as exc:
            error = _describe(exc)
            self.errors.append(f"{name}: {error}")
            self.report.skip("CSP profile not synced", f"{name}: {error}")
            if self.log is not None:
                self.log.warning("CSP profile %s (%s): %s", name, self.task, error)
            _mark(self.conn, profile_id, self.task, self.at, error)
            return False
        _mark(self.conn, profile_id, self.task, self.at)
        self.report.add("profiles_synced")
        return True

    def finish(self) -> None:
        if self.tried and len(self.errors) == self.tried:
            raise PartnerCenterSyncFailed(f"every CSP profile failed ({self.tried}): " + "; ".join(self.errors))


def _zeros(report: StepReport, *keys: str) -> None:
    for k in keys:
        report.add(k, 0)


def _summary(report: StepReport, log, what: str) -> dict:
    summary = report.as_dict()
    if log is not None and summary["skipped"]:
        log.warning("%s: %s", what, summary["skipped"])
    return summary


# -- SyncCSPOffers --------------------------------------------------------------------------------

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
    report = StepReport()
    _zeros(report, "profiles", "profiles_synced", "pages", "offers_listed", "offers_added", "offers_changed",
           "offers_unlisted")
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        profiles = _Profiles(conn, "offers", at, report, log)

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

        for profile in conn.execute(_PROFILES, ("offers",)).fetchall():
            profiles.run(profile, work)
        profiles.finish()
    return _summary(report, log, "CSP offers sync")


# -- ReconciliateO365SubsWork ---------------------------------------------------------------------

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
    WHERE s.o365_offer_id IS NOT NULL AND s.status <> 'cancelled'
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
WHERE s.o365_offer_id IS NOT NULL AND s.status <> 'cancelled'
  AND NOT EXISTS (SELECT 1 FROM csp_customers c JOIN csp_profiles p ON p.id = c.profile_id AND p.enabled
                  WHERE c.customer_id = s.customer_id)
"""


def reconcile_o365_subscriptions(panel_db, interval, log) -> dict:
    """Sync O365 subscriptions reconciliation."""
    from panelflow.hooks.partner_center import PartnerCenterNotFound

    report = StepReport()
    _zeros(report, "profiles", "profiles_synced", "customer_pages", "customers", "customers_added",
           "customers_unlisted", "subscriptions", "subscriptions_added", "subscriptions_changed",
           "subscriptions_unlisted", "subscriptions_linked", "differences")
    at = interval.end
    kinds = ("missing_in_panel", "missing_in_partner_center", "quantity", "status", "offer")
    _zeros(report, *(f"differences_{k}" for k in kinds))
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        profiles = _Profiles(conn, "reconciliation", at, report, log)

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
                if time.monotonic() > profiles.deadline:
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

        for profile in conn.execute(_PROFILES, ("reconciliation",)).fetchall():
            profiles.run(profile, work)
        count, examples = conn.execute(_NO_TENANT, {"keep": report.keep}).fetchone()
        if count:
            reason = "customer has no Partner Center tenant"
            for example in examples:
                report.skip(reason, example)
            report.skipped[reason] += count - len(examples)
        profiles.finish()
    return _summary(report, log, "O365 subscription reconciliation")


# -- Office365Work: renewals ----------------------------------------------------------------------

_RENEWALS_DUE = """
SELECT p.id, p.name, p.conn_id, p.country, o.id, o.subscription_id, o.commitment_end_date, o.auto_renew,
       o.panel_subscription_id, c.tenant_id
FROM o365_subscriptions o
JOIN csp_customers c ON c.id = o.csp_customer_id
JOIN csp_profiles p ON p.id = c.profile_id AND p.enabled
WHERE o.listed AND o.status = 'active' AND o.commitment_end_date <= %(today)s
  AND (o.renewal_checked_at IS NULL OR o.renewal_checked_at <= %(at)s::timestamptz - %(recheck)s)
ORDER BY p.id, o.commitment_end_date, o.id
LIMIT %(limit)s
"""

_RENEWED = """
WITH noted AS (
    INSERT INTO o365_subscription_renewals (o365_subscription_id, term_end, outcome, new_term_end, status,
                                            panel_subscription_id, noted_at)
    VALUES (%(id)s, %(term_end)s, 'renewed', %(new_end)s, %(status)s, %(panel)s, %(at)s)
    ON CONFLICT DO NOTHING RETURNING 1)
UPDATE o365_subscriptions
SET commitment_end_date = %(new_end)s, status = %(status)s, auto_renew = %(auto_renew)s, quantity = %(quantity)s,
    term_duration = %(term)s, renewal_checked_at = %(at)s, changed_at = %(at)s
WHERE id = %(id)s AND commitment_end_date = %(term_end)s
RETURNING (SELECT count(*) FROM noted)
"""

_CANCEL_PANEL = """
UPDATE subscriptions SET status = 'cancelled' WHERE id = %(panel)s AND status <> 'cancelled' RETURNING id
"""

_EXPIRED = """
WITH noted AS (
    INSERT INTO o365_subscription_renewals (o365_subscription_id, term_end, outcome, status, panel_subscription_id,
                                            panel_cancelled, noted_at)
    VALUES (%(id)s, %(term_end)s, 'expired', %(status)s, %(panel)s, %(cancelled)s, %(at)s)
    ON CONFLICT DO NOTHING RETURNING 1)
UPDATE o365_subscriptions
SET status = %(status)s, auto_renew = %(auto_renew)s, listed = %(listed)s, renewal_checked_at = %(at)s,
    changed_at = %(at)s
WHERE id = %(id)s AND commitment_end_date = %(term_end)s
RETURNING (SELECT count(*) FROM noted)
"""

_CHECKED = """
UPDATE o365_subscriptions SET renewal_checked_at = %(at)s
WHERE id = %(id)s AND (renewal_checked_at IS NULL OR renewal_checked_at < %(at)s)
"""


def handle_subscription_renewals(panel_db, interval, log) -> dict:
    """Handle subscription renewal as per backend."""
    from panelflow.hooks.partner_center import PartnerCenterNotFound

    report = StepReport()
    _zeros(report, "profiles", "profiles_synced", "due", "renewed", "expired", "not_yet_renewed",
           "panel_subscriptions_cancelled")
    at = interval.end
    today = at.astimezone(timezone.utc).date()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        due = conn.execute(_RENEWALS_DUE, {"today": today, "at": at, "recheck": RENEWAL_RECHECK,
                                           "limit": MAX_RENEWAL_CHECKS}).fetchall()
        report.add("due", len(due))
        by_profile: dict[int, list] = {}
        for row in due:
            by_profile.setdefault(row[0], []).append(row)
        profiles = _Profiles(conn, "renewals", at, report, log)

        def work(hook, profile):
            for (*_, o_id, sub_id, term_end, auto_renew, panel_id, tenant) in by_profile[profile[0]]:
                if time.monotonic() > profiles.deadline:
                    report.add("deferred")
                    continue
                try:
                    sub = hook.subscription(tenant, sub_id)
                except PartnerCenterNotFound:
                    sub = None  # Partner Center no longer has it: the term ended without renewal
                args = {"id": o_id, "term_end": term_end, "panel": panel_id, "at": at}
                if sub is not None and sub.commitment_end_date is not None and sub.commitment_end_date > term_end:
                    with conn.transaction():
                        (noted,) = conn.execute(_RENEWED, {**args, "new_end": sub.commitment_end_date,
                                                           "status": sub.status, "auto_renew": sub.auto_renew,
                                                           "quantity": sub.quantity,
                                                           "term": sub.term_duration}).fetchone() or (0,)
                    report.add("renewed", noted)
                elif sub is None or sub.status in ENDED or (sub.status == "suspended" and sub.auto_renew is False):
                    with conn.transaction():  # the term's outcome and the panel's subscription together
                        cancelled = bool(panel_id) and bool(conn.execute(_CANCEL_PANEL, args).fetchall())
                        (noted,) = conn.execute(_EXPIRED, {
                            **args, "status": sub.status if sub else "deleted",
                            "auto_renew": sub.auto_renew if sub else auto_renew, "listed": sub is not None,
                            "cancelled": cancelled}).fetchone() or (0,)
                    report.add("expired", noted)
                    report.add("panel_subscriptions_cancelled", int(cancelled))
                else:
                    conn.execute(_CHECKED, args)
                    report.add("not_yet_renewed")

        seen = []
        for row in due:
            if row[0] not in seen:
                seen.append(row[0])
                profiles.run(row[:4], work)
        profiles.finish()
    return _summary(report, log, "O365 subscription renewals")


# -- ProvisioningWork: pending O365 subscriptions -------------------------------------------------

# What a try of this attempt already sent is what is sent again, whatever the panel changed since.
_PENDING_ORDERS = """
SELECT o.subscription_id, o.attempt, o.tries, coalesce(o.ordered_offer_id, s.o365_offer_id),
       coalesce(o.ordered_quantity, s.quantity), coalesce(o.ordered_billing_cycle, s.billing_cycle), s.plan, s.status,
       s.customer_id, c.id, c.tenant_id, p.id, p.name, p.conn_id, p.enabled
FROM o365_orders o
JOIN subscriptions s ON s.id = o.subscription_id
LEFT JOIN csp_customers c ON c.customer_id = s.customer_id
LEFT JOIN csp_profiles p ON p.id = c.profile_id
WHERE o.status = 'pending' AND o.requested_at <= %(at)s
ORDER BY o.requested_at, o.subscription_id
LIMIT %(limit)s
"""

# The request as first sent for this attempt (kept, so every resend is the same request).
_TRYING = """
UPDATE o365_orders
SET tries = tries + 1, last_tried_at = %(at)s, request_id = %(request_id)s,
    ordered_offer_id = coalesce(ordered_offer_id, %(offer)s),
    ordered_quantity = coalesce(ordered_quantity, %(quantity)s),
    ordered_billing_cycle = coalesce(ordered_billing_cycle, %(cycle)s)
WHERE subscription_id = %(subscription)s AND status = 'pending' AND attempt = %(attempt)s
RETURNING ordered_offer_id, ordered_quantity, ordered_billing_cycle
"""

# Linked to the panel's subscription unless another Partner Center subscription already is (the
# reconciliation then reports both).
_RECORD_SUBSCRIPTION = """
INSERT INTO o365_subscriptions AS o (csp_customer_id, subscription_id, panel_subscription_id, offer_id, offer_name,
                                     friendly_name, quantity, status, billing_cycle, order_id, listed, first_seen_at,
                                     changed_at)
SELECT %(csp_customer)s, %(pc_subscription)s,
       CASE WHEN NOT EXISTS (SELECT 1 FROM o365_subscriptions l WHERE l.panel_subscription_id = %(subscription)s
                                                                AND l.subscription_id <> %(pc_subscription)s)
            THEN %(subscription)s::bigint END,
       %(offer)s, %(name)s, %(name)s, %(quantity)s, %(status)s, %(cycle)s, %(order)s, true, %(at)s, %(at)s
ON CONFLICT (subscription_id) DO UPDATE
SET panel_subscription_id = coalesce(o.panel_subscription_id, EXCLUDED.panel_subscription_id),
    order_id = coalesce(o.order_id, EXCLUDED.order_id)
"""

_PLACED = """
UPDATE o365_orders SET status = 'placed', order_id = %(order)s, o365_subscription_id = %(pc_subscription)s,
       placed_at = %(at)s, last_error = NULL
WHERE subscription_id = %(subscription)s AND status = 'pending'
RETURNING 1
"""

_ORDER_PROBLEM = """
UPDATE o365_orders SET status = %(status)s, last_error = %(error)s
WHERE subscription_id = %(subscription)s AND status = 'pending'
"""

# The panel's billing cycles as Partner Center's (it has no quarterly term); an ordered one is already one.
CYCLES = {"monthly": "monthly", "quarterly": "monthly", "yearly": "annual", "annual": "annual"}


def process_pending_o365_subscriptions(panel_db, interval, log) -> dict:
    """Process pending O365 subscriptions."""
    from panelflow.hooks.partner_center import (
        PartnerCenterAuthenticationError,
        PartnerCenterRequestError,
        PartnerCenterResponseError,
        PartnerCenterUnavailable,
    )

    report = StepReport()
    _zeros(report, "profiles", "profiles_synced", "pending", "orders_placed", "orders_replayed", "orders_failed",
           "orders_waiting")
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        pending = conn.execute(_PENDING_ORDERS, {"at": at, "limit": MAX_ORDERS}).fetchall()
        report.add("pending", len(pending))
        orderable: dict[int, list] = {}
        profile_rows: dict[int, tuple] = {}
        for row in pending:
            (sub, _, tries, offer, _, _, plan, status, customer, _, tenant, profile_id, profile_name, conn_id,
             enabled) = row
            record = f"subscription {sub} ({plan}) of customer {customer}"
            if offer is None:
                conn.execute(_ORDER_PROBLEM, {"status": "failed", "subscription": sub,
                                              "error": "not an O365 subscription (no o365_offer_id)"})
                report.add("orders_failed")
                report.skip("not an O365 subscription", record)
            elif status == "cancelled":  # never (re)sent: a resend could place it now; a try that did is
                # a subscription at Partner Center the panel does not have, which the reconciliation reports
                error = "the subscription was cancelled before it was ordered" + (
                    f" (after {tries} unconfirmed tr{'ies' if tries > 1 else 'y'}: see the reconciliation)"
                    if tries else "")
                conn.execute(_ORDER_PROBLEM, {"status": "failed", "subscription": sub, "error": error})
                report.add("orders_failed")
                report.skip("subscription cancelled before it was ordered", record)
            elif tenant is None:
                report.add("orders_waiting")
                report.skip("customer has no Partner Center tenant yet", record)
            elif not enabled:
                report.add("orders_waiting")
                report.skip("the customer's CSP profile is disabled", f"{record}: profile {profile_name}")
            else:
                orderable.setdefault(profile_id, []).append(row)
                profile_rows[profile_id] = (profile_id, profile_name, conn_id, None)
        profiles = _Profiles(conn, "orders", at, report, log)

        def work(hook, profile):
            for row in orderable[profile[0]]:
                (sub, attempt, _, offer, quantity, cycle, plan, _, customer, csp_customer, tenant, *_) = row
                record = f"subscription {sub} ({plan}) of customer {customer}"
                if time.monotonic() > profiles.deadline:
                    report.add("orders_waiting")
                    continue
                request_id = order_request_id(sub, attempt)
                sent = conn.execute(_TRYING, {"at": at, "request_id": request_id, "offer": offer,
                                              "quantity": quantity, "cycle": CYCLES.get(cycle, "monthly"),
                                              "subscription": sub, "attempt": attempt}).fetchone()
                if sent is None:  # another run finished it meanwhile
                    continue
                offer_sent, quantity_sent, cycle_sent = sent
                try:
                    order = hook.place_order(tenant, request_id=request_id, offer_id=offer_sent,
                                             quantity=quantity_sent, billing_cycle=cycle_sent)
                except PartnerCenterAuthenticationError:
                    raise  # the profile's credentials: every order of it would fail the same way
                except (PartnerCenterUnavailable, PartnerCenterResponseError) as exc:
                    # placed or not is unknown: the next run resends the same request, which Partner Center dedupes
                    conn.execute(_ORDER_PROBLEM, {"status": "pending", "subscription": sub, "error": str(exc)[:1000]})
                    report.add("orders_waiting")
                    report.skip("order not confirmed yet; resent next run", f"{record}: {exc}")
                    if isinstance(exc, PartnerCenterUnavailable):
                        raise
                    continue
                except PartnerCenterRequestError as exc:
                    conn.execute(_ORDER_PROBLEM, {"status": "failed", "subscription": sub, "error": str(exc)[:1000]})
                    report.add("orders_failed")
                    report.skip("Partner Center refused the order", f"{record}: {exc}")
                    continue
                line = next((li for li in order.lines if li.subscription_id), None)
                with conn.transaction():  # the order and its subscription together
                    if line is not None:
                        conn.execute(_RECORD_SUBSCRIPTION, {
                            "csp_customer": csp_customer, "pc_subscription": line.subscription_id.lower(),
                            "subscription": sub, "offer": line.offer_id, "name": line.friendly_name or plan,
                            "quantity": line.quantity if line.quantity is not None else quantity_sent,
                            "status": "active" if (order.status or "").lower() == "completed" else "pending",
                            "cycle": cycle_sent, "order": order.id, "at": at})
                    placed = conn.execute(_PLACED, {"order": order.id, "subscription": sub, "at": at,
                                                    "pc_subscription": line.subscription_id.lower() if line else None
                                                    }).fetchone()
                if placed:
                    report.add("orders_placed")
                    report.add("orders_replayed", int(order.replayed))

        for profile_id in orderable:
            profiles.run(profile_rows[profile_id], work)
        profiles.finish()
    return _summary(report, log, "pending O365 subscriptions")


# -- ProvisioningWork: O365/CSP licence threshold alerts ------------------------------------------

_USAGE_DUE = """
SELECT p.id, p.name, p.conn_id, p.country, c.id, c.tenant_id
FROM csp_customers c JOIN csp_profiles p ON p.id = c.profile_id AND p.enabled
WHERE c.customer_id IS NOT NULL AND c.listed
  AND (c.usage_read_at IS NULL OR c.usage_read_at <= %(at)s::timestamptz - %(refresh)s)
ORDER BY c.usage_read_at NULLS FIRST, c.id
LIMIT %(limit)s
"""

_USAGE_WRITE = """
INSERT INTO csp_licence_usage AS u (csp_customer_id, sku_id, sku_name, part_number, active_units, consumed_units,
                                    suspended_units, warning_units, total_units, capability_status, read_at)
SELECT %(customer)s, sku_id, sku_name, part_number, active_units, consumed_units, suspended_units, warning_units,
       total_units, capability_status, %(at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(sku_id text, sku_name text, part_number text, active_units integer,
     consumed_units integer, suspended_units integer, warning_units integer, total_units integer,
     capability_status text)
ON CONFLICT (csp_customer_id, sku_id) DO UPDATE
SET sku_name = EXCLUDED.sku_name, part_number = EXCLUDED.part_number, active_units = EXCLUDED.active_units,
    consumed_units = EXCLUDED.consumed_units, suspended_units = EXCLUDED.suspended_units,
    warning_units = EXCLUDED.warning_units, total_units = EXCLUDED.total_units,
    capability_status = EXCLUDED.capability_status, read_at = EXCLUDED.read_at
WHERE u.read_at <= EXCLUDED.read_at
"""

_USAGE_DONE = """
UPDATE csp_customers SET usage_read_at = %(at)s, usage_error = %(error)s
WHERE id = %(customer)s AND (usage_read_at IS NULL OR usage_read_at <= %(at)s)
RETURNING 1
"""

_LICENCE_STATE = """
CREATE TEMP TABLE licence_state ON COMMIT DROP AS
SELECT u.csp_customer_id, u.sku_id, u.sku_name, u.active_units, u.consumed_units,
       p.licence_alert_percent AS threshold,
       (u.consumed_units > 0 AND u.consumed_units * 100 >= u.active_units * p.licence_alert_percent) AS over
FROM csp_licence_usage u
JOIN csp_customers c ON c.id = u.csp_customer_id AND c.listed AND c.customer_id IS NOT NULL
JOIN csp_profiles p ON p.id = c.profile_id AND p.enabled
WHERE u.read_at <= %(at)s
"""

# A later run's clock is never overruled: an alert it saw is left as it left it.
_CLEAR = """
UPDATE csp_licence_alerts a SET cleared_at = %(at)s
WHERE a.cleared_at IS NULL AND a.opened_at < %(at)s AND a.last_seen_at <= %(at)s
  AND NOT EXISTS (SELECT 1 FROM licence_state s WHERE s.csp_customer_id = a.csp_customer_id AND s.sku_id = a.sku_id
                  AND s.over)
RETURNING a.id
"""

_STILL_OVER = """
UPDATE csp_licence_alerts a SET last_seen_at = %(at)s
FROM licence_state s
WHERE a.cleared_at IS NULL AND a.last_seen_at < %(at)s AND s.over
  AND s.csp_customer_id = a.csp_customer_id AND s.sku_id = a.sku_id
RETURNING a.id
"""

_OPEN = f"""
WITH opened AS (
    INSERT INTO csp_licence_alerts (csp_customer_id, sku_id, sku_name, threshold_percent, active_units,
                                    consumed_units, opened_at, last_seen_at)
    SELECT s.csp_customer_id, s.sku_id, s.sku_name, s.threshold, s.active_units, s.consumed_units, %(at)s, %(at)s
    FROM licence_state s
    WHERE s.over AND NOT EXISTS (
        SELECT 1 FROM csp_licence_alerts a WHERE a.csp_customer_id = s.csp_customer_id AND a.sku_id = s.sku_id
          AND (a.cleared_at IS NULL OR a.cleared_at >= %(at)s OR a.opened_at >= %(at)s))
    ORDER BY s.csp_customer_id, s.sku_id
    ON CONFLICT DO NOTHING
    RETURNING *)
SELECT o.id, o.sku_id, o.sku_name, o.threshold_percent, o.active_units, o.consumed_units, cu.id, cu.name,
       btrim(cu.email), coalesce(btrim(cu.email) ~ '{EMAIL_RE}', false), c.tenant_id, c.company_name, c.domain,
       pr.name
FROM opened o JOIN csp_customers c ON c.id = o.csp_customer_id JOIN customers cu ON cu.id = c.customer_id
JOIN providers pr ON pr.id = cu.provider_id
ORDER BY o.id
"""


def _refresh_usage(conn, at, report: StepReport, log) -> None:
    from panelflow.hooks.partner_center import PartnerCenterNotFound, PartnerCenterResponseError

    due = conn.execute(_USAGE_DUE, {"at": at, "refresh": USAGE_REFRESH, "limit": MAX_USAGE_READS}).fetchall()
    by_profile: dict[int, list] = {}
    for row in due:
        by_profile.setdefault(row[0], []).append(row)
    profiles = _Profiles(conn, "licence_usage", at, report, log)

    def work(hook, profile):
        for (*_, csp_customer, tenant) in by_profile[profile[0]]:
            if time.monotonic() > profiles.deadline:
                report.add("usage_deferred")
                continue
            try:
                skus = hook.subscribed_skus(tenant)
            except (PartnerCenterNotFound, PartnerCenterResponseError) as exc:  # this tenant only
                conn.execute(_USAGE_DONE, {"at": at, "error": str(exc)[:1000], "customer": csp_customer})
                report.skip("licence usage not read", f"{profile[1]}/{tenant}: {exc}")
                continue
            rows = {s.sku_id: {"sku_id": s.sku_id, "sku_name": s.name, "part_number": s.part_number,
                               "active_units": s.active_units, "consumed_units": s.consumed_units,
                               "suspended_units": s.suspended_units, "warning_units": s.warning_units,
                               "total_units": s.total_units, "capability_status": s.capability_status} for s in skus}
            with conn.transaction():  # a tenant's licences all together
                if conn.execute(_USAGE_DONE, {"at": at, "error": None, "customer": csp_customer}).fetchone():
                    conn.execute(_USAGE_WRITE, {"customer": csp_customer, "at": at,
                                                "rows": json.dumps(list(rows.values()))})
                    conn.execute("DELETE FROM csp_licence_usage WHERE csp_customer_id = %s AND NOT (sku_id = ANY(%s))",
                                 (csp_customer, list(rows)))
            report.add("tenants_read")

    seen = []
    for row in due:
        if row[0] not in seen:
            seen.append(row[0])
            profiles.run(row[:4], work)
    # no finish(): alerts are still computed from what was read before


def generate_threshold_alerts(panel_db, interval, log) -> dict:
    """Generate O365/CSP and VPS threshold alerts — the O365/CSP part: licence usage against the
    purchased quantity per tenant and SKU, one alert (and one e-mail) per crossing."""
    report = StepReport()
    _zeros(report, "profiles", "profiles_synced", "tenants_read", "skus_measured", "skus_over", "alerts_opened",
           "alerts_still_open", "alerts_cleared", "emails_queued")
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        _refresh_usage(conn, at, report, log)
        with conn.transaction():  # alerts and their e-mails together, or neither
            conn.execute(_LICENCE_STATE, {"at": at})
            measured, over = conn.execute("SELECT count(*), count(*) FILTER (WHERE over) FROM licence_state").fetchone()
            cleared = conn.execute(_CLEAR, {"at": at}).fetchall()
            still = conn.execute(_STILL_OVER, {"at": at}).fetchall()
            opened = conn.execute(_OPEN, {"at": at}).fetchall()
            for (alert_id, sku_id, sku_name, threshold, active, consumed, customer_id, customer_name, email, mailable,
                 tenant, company, domain, provider) in opened:
                if not mailable:
                    report.skip("customer has no usable e-mail address",
                                f"customer {customer_id} ({email or 'no address'}), {sku_name or sku_id}")
                    continue
                key = f"csp-licence-alert:{alert_id}"
                report.add("emails_queued", enqueue(
                    conn, dedupe_key=key, to=email, template=ALERT_TEMPLATE, not_before=at, context={
                        "customer_name": customer_name, "sku_name": sku_name or sku_id, "consumed": consumed,
                        "active": active, "available": max(active - consumed, 0), "threshold": threshold,
                        "percent": round(consumed * 100 / active) if active else None,
                        "tenant": domain or company or tenant, "provider": provider}))
                conn.execute("UPDATE csp_licence_alerts SET outbox_key = %s WHERE id = %s", (key, alert_id))
    report.add("skus_measured", measured)
    report.add("skus_over", over)
    report.add("alerts_opened", len(opened))
    report.add("alerts_still_open", len(still))
    report.add("alerts_cleared", len(cleared))
    return _summary(report, log, "O365/CSP threshold alerts")


# -- AzureRateWork --------------------------------------------------------------------------------

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
    _zeros(report, "pages", "prices_read", "rates_added", "rates_repriced", "rates_refreshed")
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
    return _summary(report, log, "Azure retail prices")
