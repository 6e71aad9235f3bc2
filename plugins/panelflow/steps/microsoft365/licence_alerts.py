"""ProvisioningWork: O365/CSP licence threshold alerts.

``generate_threshold_alerts`` (the O365/CSP part): the licence usage of the tenants read longest
ago is refreshed (a bounded number per run), then every tenant's SKU whose consumed units reach
the profile's percentage of its active units opens one alert — and one e-mail to the customer —
until a run finds it under again; the next crossing is a new alert.
"""

from __future__ import annotations

import json
from datetime import timedelta

from panelflow.step import StepReport
from panelflow.services.outbox import enqueue
from panelflow.steps.microsoft365._backend import EMAIL_RE, Profiles, group_by_profile, summary

USAGE_REFRESH = timedelta(hours=6)       # a tenant's licence usage is read again after
MAX_USAGE_READS = 200                    # tenants per run
ALERT_TEMPLATE = "o365_licence_threshold"


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
    by_profile = group_by_profile(due)
    profiles = Profiles(conn, "licence_usage", at, report, log)

    def work(hook, profile):
        for (*_, csp_customer, tenant) in by_profile[profile]:
            if profiles.spent():
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

    # every profile failing does not fail the step: alerts are still computed from what was read before
    profiles.each(by_profile, work, must_reach=False)


def generate_threshold_alerts(panel_db, interval, log) -> dict:
    """Generate O365/CSP and VPS threshold alerts — the O365/CSP part: licence usage against the
    purchased quantity per tenant and SKU, one alert (and one e-mail) per crossing."""
    report = StepReport().zero("tenants_read", "skus_measured", "skus_over", "alerts_opened", "alerts_still_open",
                               "alerts_cleared", "emails_queued")
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
            report.skip_rows((f"customer {r[6]} ({r[8] or 'no address'}), {r[2] or r[1]}",
                              "customer has no usable e-mail address") for r in opened if not r[9])
            for (alert_id, sku_id, sku_name, threshold, active, consumed, customer_id, customer_name, email, _,
                 tenant, company, domain, provider) in (r for r in opened if r[9]):
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
    return summary(report, log, "O365/CSP threshold alerts")

