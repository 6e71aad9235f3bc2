"""Office365TenantFirstSyncWork: one e-mail per tenant, to its customer, once its first complete
sync is done (``m365_tenants.first_synced_at``, set by :mod:`.tenant_sync`); the notice, its e-mail
and the tenant's mark are written together or not at all.
"""

from __future__ import annotations

import json
from datetime import timezone

from panelflow.step import StepReport

FIRST_SYNC_TEMPLATE = "o365_first_sync"

_FIRST_SYNCED = """
SELECT t.tenant_id, t.display_name, t.default_domain, t.first_synced_at, c.id, c.name, c.email,
       coalesce(c.email ~ '^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$', false)
FROM m365_tenants t LEFT JOIN customers c ON c.id = t.customer_id
WHERE t.first_synced_at IS NOT NULL AND t.first_sync_notified_at IS NULL AND t.first_synced_at <= %(end)s
ORDER BY t.first_synced_at, t.tenant_id
LIMIT %(limit)s
FOR UPDATE OF t SKIP LOCKED
"""

_TENANT_FIGURES = """
SELECT (SELECT count(*) FROM m365_users WHERE tenant_id = %(t)s),
       (SELECT count(*) FROM m365_mailboxes WHERE tenant_id = %(t)s AND kind = 'user'),
       (SELECT count(*) FROM m365_groups WHERE tenant_id = %(t)s),
       (SELECT count(*) FROM m365_domains WHERE tenant_id = %(t)s),
       (SELECT coalesce(jsonb_agg(jsonb_build_object('sku', sku_part_number, 'assigned', consumed_units,
                                                     'available', enabled_units) ORDER BY sku_part_number), '[]')
        FROM m365_subscribed_skus WHERE tenant_id = %(t)s)::text
"""

FIRST_SYNC_BATCH = 500


def send_first_sync_notifications(panel_db, interval, log) -> dict:
    """Send O365 tenant first sync notification: one e-mail per tenant, when its first full sync is done."""
    from panelflow.services.outbox import enqueue

    report = StepReport()
    queued = marked = 0
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():  # the notices, their e-mails and the marks together, or none
            due = conn.execute(_FIRST_SYNCED, {"end": interval.end, "limit": FIRST_SYNC_BATCH}).fetchall()
            report.add("tenants_due", len(due))
            for tenant_id, name, domain, first_synced_at, customer_id, customer, email, mailable in due:
                label = f"tenant {tenant_id} ({name or domain or 'unnamed'})"
                if customer_id is None:
                    report.skip("tenant is not linked to a customer", label)
                    continue
                if not mailable:
                    report.skip("customer has no usable e-mail address", f"{label}, customer {customer_id}")
                    continue
                users, mailboxes, groups, domains, skus = conn.execute(_TENANT_FIGURES, {"t": tenant_id}).fetchone()
                context = {"name": customer, "tenant": name or domain or str(tenant_id), "domain": domain,
                           "synced_at": first_synced_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           "users": users, "mailboxes": mailboxes, "groups": groups, "domains": domains,
                           "licences": json.loads(skus)}
                queued += enqueue(conn, dedupe_key=f"o365-first-sync:{tenant_id}", to=email,
                                  template=FIRST_SYNC_TEMPLATE, context=context, not_before=interval.end)
                conn.execute("UPDATE m365_tenants SET first_sync_notified_at = %s WHERE tenant_id = %s",
                             (interval.end, tenant_id))
                marked += 1
    report.add("notified", marked)
    report.add("emails_queued", queued)
    summary = report.as_dict()
    if log is not None and summary["skipped"]:
        log.warning("O365 first-sync notices not sent: %s", summary["skipped"])
    return summary
