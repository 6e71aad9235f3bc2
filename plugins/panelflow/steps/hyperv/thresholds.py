"""ProvisioningWork's "Generate O365/CSP and VPS threshold alerts": the VPS half.

:func:`generate_vps_threshold_alerts` measures each live VPS's CPU (average over
``vps_cpu_window_minutes``), memory (demand against assigned) and fullest growing disk against its
own or the default thresholds (``vps_thresholds``) from the samples of :mod:`.stats` and the disks
of :mod:`.inventory`; one alert (and one e-mail to its customer) per crossing, cleared when the VPS
is back under. The O365/CSP half is :func:`panelflow.steps.microsoft365.licence_alerts.generate_threshold_alerts`.
"""

from __future__ import annotations

import ntpath
from datetime import timedelta

from panelflow.services.outbox import enqueue
from panelflow.step import StepReport

CPU_WINDOW_MINUTES = 30
ALERT_TEMPLATE = "vps_threshold_alert"
EMAIL_RE = r"^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$"
METRIC_LABELS = {"cpu": "CPU", "memory": "memory", "disk": "disk"}

_VPS_STATE = """
CREATE TEMP TABLE vps_state ON COMMIT DROP AS
WITH limits AS (
    SELECT v.id AS vm_id,
           CASE WHEN coalesce(o.enabled, true) THEN coalesce(o.cpu_percent,
                                                              CASE WHEN d.enabled THEN d.cpu_percent END)
           END AS cpu,
           CASE WHEN coalesce(o.enabled, true) THEN coalesce(o.memory_percent,
                                                              CASE WHEN d.enabled THEN d.memory_percent END)
           END AS memory,
           CASE WHEN coalesce(o.enabled, true) THEN coalesce(o.disk_percent,
                                                              CASE WHEN d.enabled THEN d.disk_percent END)
           END AS disk
    FROM hyperv_vms v
    JOIN hyperv_hosts h ON h.id = v.host_id AND h.enabled
    LEFT JOIN vps_thresholds o ON o.vm_id = v.id
    LEFT JOIN vps_thresholds d ON d.vm_id IS NULL
    WHERE v.deleted_at IS NULL
), cpu AS (           -- the average over the window: one busy sample is not a crossing
    SELECT s.vm_id, avg(s.cpu_percent) AS value FROM hyperv_vm_stats s
    WHERE s.sampled_at > %(since)s AND s.sampled_at <= %(at)s AND s.cpu_percent IS NOT NULL
    GROUP BY s.vm_id
), memory AS (        -- the latest sample in the window: demand against what the VM is given
    SELECT DISTINCT ON (s.vm_id) s.vm_id, s.memory_demand_mb * 100.0 / s.memory_assigned_mb AS value
    FROM hyperv_vm_stats s
    WHERE s.sampled_at > %(since)s AND s.sampled_at <= %(at)s AND s.memory_assigned_mb > 0
      AND s.memory_demand_mb IS NOT NULL
    ORDER BY s.vm_id, s.sampled_at DESC
), disk AS (          -- the fullest growing disk (a fixed disk's file is always its full size)
    SELECT DISTINCT ON (d.vm_id) d.vm_id, d.file_size_bytes * 100.0 / d.size_bytes AS value, d.path
    FROM hyperv_vm_disks d
    WHERE d.vhd_type IN ('Dynamic', 'Differencing') AND d.size_bytes > 0 AND d.file_size_bytes IS NOT NULL
    ORDER BY d.vm_id, d.file_size_bytes::numeric / d.size_bytes DESC, d.path
)
SELECT l.vm_id, m.metric, round(least(m.value, 9999), 2) AS value, m.threshold, m.detail,
       m.value >= m.threshold AS over
FROM limits l
LEFT JOIN cpu ON cpu.vm_id = l.vm_id
LEFT JOIN memory ON memory.vm_id = l.vm_id
LEFT JOIN disk ON disk.vm_id = l.vm_id
CROSS JOIN LATERAL (VALUES ('cpu', cpu.value, l.cpu, NULL::text), ('memory', memory.value, l.memory, NULL),
                           ('disk', disk.value, l.disk, disk.path)) AS m(metric, value, threshold, detail)
WHERE m.value IS NOT NULL AND m.threshold IS NOT NULL
"""

# A later run's clock is never overruled: an alert it saw is left as it left it.
_VPS_CLEAR = """
UPDATE vps_threshold_alerts a SET cleared_at = %(at)s
WHERE a.cleared_at IS NULL AND a.opened_at < %(at)s AND a.last_seen_at <= %(at)s
  AND NOT EXISTS (SELECT 1 FROM vps_state s WHERE s.vm_id = a.vm_id AND s.metric = a.metric AND s.over)
RETURNING a.id
"""

_VPS_STILL_OVER = """
UPDATE vps_threshold_alerts a SET last_seen_at = %(at)s
FROM vps_state s
WHERE a.cleared_at IS NULL AND a.last_seen_at < %(at)s AND s.over AND s.vm_id = a.vm_id AND s.metric = a.metric
RETURNING a.id
"""

# Once per crossing: not while an alert is open, nor when a run at or after this clock already saw one
# (a rerun of an earlier run never reopens what a later run cleared).
_NOT_YET_ALERTED = """NOT EXISTS (
        SELECT 1 FROM vps_threshold_alerts a WHERE a.vm_id = s.vm_id AND a.metric = s.metric
          AND (a.cleared_at IS NULL OR a.cleared_at >= %(at)s OR a.opened_at >= %(at)s))"""

_VPS_OPEN = f"""
WITH opened AS (
    INSERT INTO vps_threshold_alerts (vm_id, metric, threshold_percent, value_percent, detail, opened_at, last_seen_at)
    SELECT s.vm_id, s.metric, s.threshold, s.value, s.detail, %(at)s, %(at)s
    FROM vps_state s
    WHERE s.over AND {_NOT_YET_ALERTED}
    ORDER BY s.vm_id, s.metric
    ON CONFLICT DO NOTHING
    RETURNING *)
SELECT o.id, o.metric, o.threshold_percent, o.value_percent, o.detail, v.name, cu.id, cu.name, btrim(cu.email),
       coalesce(btrim(cu.email) ~ %(email_re)s, false), pr.name
FROM opened o
JOIN hyperv_vms v ON v.id = o.vm_id
LEFT JOIN subscriptions sub ON sub.id = v.subscription_id
LEFT JOIN customers cu ON cu.id = coalesce(v.customer_id, sub.customer_id)
LEFT JOIN providers pr ON pr.id = cu.provider_id
ORDER BY o.id
"""


def generate_vps_threshold_alerts(panel_db, interval, params=None, log=None) -> dict:
    """Generate O365/CSP and VPS threshold alerts — the VPS part: each VPS's CPU (average over
    ``vps_cpu_window_minutes``), memory (demand against assigned) and fullest growing disk against its
    own or the default thresholds; one alert (and one e-mail to its customer) per crossing."""
    params = params or {}
    window = timedelta(minutes=int(params.get("vps_cpu_window_minutes", CPU_WINDOW_MINUTES)))
    report = StepReport().zero("measured", "over", "alerts_opened", "alerts_still_open", "alerts_cleared",
                               "emails_queued", "alerts_without_customer")
    at = interval.end
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        with conn.transaction():   # alerts and their e-mails together, or neither
            conn.execute(_VPS_STATE, {"at": at, "since": at - window})
            measured, over = conn.execute("SELECT count(*), count(*) FILTER (WHERE over) FROM vps_state").fetchone()
            cleared = conn.execute(_VPS_CLEAR, {"at": at}).fetchall()
            still = conn.execute(_VPS_STILL_OVER, {"at": at}).fetchall()
            opened = conn.execute(_VPS_OPEN, {"at": at, "email_re": EMAIL_RE}).fetchall()
            for (alert_id, metric, threshold, value, detail, vm_name, customer_id, customer_name, email, mailable,
                 provider) in opened:
                if customer_id is None:
                    report.add("alerts_without_customer")
                    continue
                if not mailable:
                    report.skip("customer has no usable e-mail address",
                                f"customer {customer_id} ({email or 'no address'}), VPS {vm_name}")
                    continue
                key = f"vps-threshold-alert:{alert_id}"
                report.add("emails_queued", enqueue(
                    conn, dedupe_key=key, to=email, template=ALERT_TEMPLATE, not_before=at, context={
                        "customer_name": customer_name, "vm_name": vm_name, "metric": metric,
                        "metric_label": METRIC_LABELS[metric], "value": value, "threshold": threshold,
                        "window_minutes": int(window.total_seconds() // 60),
                        "disk": ntpath.basename(detail) if detail else None, "provider": provider}))
                conn.execute("UPDATE vps_threshold_alerts SET outbox_key = %s WHERE id = %s", (key, alert_id))
    report.add("measured", measured)
    report.add("over", over)
    report.add("alerts_opened", len(opened))
    report.add("alerts_still_open", len(still))
    report.add("alerts_cleared", len(cleared))
    summary = report.as_dict()
    if log is not None and summary["skipped"]:
        log.warning("VPS threshold alerts: %s", summary["skipped"])
    return summary
