"""ProvisioningWork's step 29: the operators are told of provisioning failures, once each.

``send_failure_notifications`` (29): failures found within ``FAILURE_LOOKBACK`` of the clock
that no notice has covered yet, one e-mail per failure and operator (ProvisioningWork's
``alert_to`` in the catalog). A failed group-action job is one failure per attempt; a service-
queue order's ``error`` log entries not in a notice yet are one failure (the notice names them;
every entry is in at most one notice). Reported: no operator addresses (nothing is recorded,
so the notices go once addresses are configured).
"""

from __future__ import annotations

import re
from datetime import timedelta

from panelflow.step import StepReport
from panelflow.services.outbox import enqueue
from panelflow.services.retention import delete_older_than
from panelflow.steps.provisioning import THREAD

FAILURE_LOOKBACK = timedelta(days=7)   # older failures are not noticed any more (a first run included)
MAX_FAILURE_NOTICES = 200              # per run; the rest on the next runs, oldest first
FAILURE_ENTRIES_SHOWN = 20
FAILURE_NOTICE_KEEP = timedelta(days=120)  # notices outlive the 90 days the logs are kept
FAILURE_TEMPLATE = "provisioning_failure"

# New error entries, per order: one notice each, its entries recorded with it.
_ORDER_FAILURES = """
WITH fresh AS (
    SELECT l.id, l.order_id, l.message, l.logged_at FROM service_queue_logs l
    WHERE l.level = 'error' AND l.logged_at > %(since)s AND l.logged_at <= %(at)s
      AND NOT EXISTS (SELECT 1 FROM failure_notice_entries e WHERE e.log_id = l.id)
), orders AS (
    SELECT order_id, min(id) AS first_id, min(logged_at) AS failed_at FROM fresh
    GROUP BY order_id ORDER BY min(logged_at), order_id LIMIT %(limit)s
), notices AS (
    INSERT INTO failure_notices (source, ref_id, occurrence, failed_at, error, recipients, noticed_at)
    SELECT 'service_queue', o.order_id, o.first_id, o.failed_at, f.message, %(to)s, %(at)s
    FROM orders o JOIN fresh f ON f.id = o.first_id
    ORDER BY o.failed_at, o.order_id
    ON CONFLICT (source, ref_id, occurrence) DO NOTHING
    RETURNING id, ref_id, occurrence, failed_at
), entries AS (
    INSERT INTO failure_notice_entries (log_id, notice_id)
    SELECT f.id, n.id FROM fresh f JOIN notices n ON n.ref_id = f.order_id
    ON CONFLICT (log_id) DO NOTHING
    RETURNING log_id, notice_id
)
SELECT n.id, n.ref_id, n.occurrence, n.failed_at,
       (SELECT jsonb_agg(jsonb_build_object('logged_at', f.logged_at, 'message', f.message) ORDER BY f.id)
        FROM entries e JOIN fresh f ON f.id = e.log_id WHERE e.notice_id = n.id)
FROM notices n ORDER BY n.failed_at, n.ref_id
"""

_JOB_FAILURES = """
WITH failed AS (
    SELECT j.id, j.attempts, j.error, coalesce(j.finished_at, j.created_at) AS failed_at
    FROM group_action_jobs j
    WHERE j.status = 'failed'
      AND coalesce(j.finished_at, j.created_at) > %(since)s AND coalesce(j.finished_at, j.created_at) <= %(at)s
      AND NOT EXISTS (SELECT 1 FROM failure_notices n
                      WHERE n.source = 'group_action_job' AND n.ref_id = j.id AND n.occurrence = j.attempts)
    ORDER BY coalesce(j.finished_at, j.created_at), j.id
    LIMIT %(limit)s
), notices AS (
    INSERT INTO failure_notices (source, ref_id, occurrence, failed_at, error, recipients, noticed_at)
    SELECT 'group_action_job', id, attempts, failed_at, error, %(to)s, %(at)s FROM failed
    ON CONFLICT (source, ref_id, occurrence) DO NOTHING
    RETURNING id, ref_id, occurrence, failed_at, error
)
SELECT n.id, n.ref_id, n.occurrence, n.failed_at, n.error, j.backend, j.action
FROM notices n JOIN group_action_jobs j ON j.id = n.ref_id ORDER BY n.failed_at, n.ref_id
"""

_PENDING_FAILURES = """
SELECT (SELECT count(DISTINCT l.order_id) FROM service_queue_logs l
        WHERE l.level = 'error' AND l.logged_at > %(since)s AND l.logged_at <= %(at)s
          AND NOT EXISTS (SELECT 1 FROM failure_notice_entries e WHERE e.log_id = l.id)),
       (SELECT count(*) FROM group_action_jobs j
        WHERE j.status = 'failed'
          AND coalesce(j.finished_at, j.created_at) > %(since)s AND coalesce(j.finished_at, j.created_at) <= %(at)s
          AND NOT EXISTS (SELECT 1 FROM failure_notices n
                          WHERE n.source = 'group_action_job' AND n.ref_id = j.id AND n.occurrence = j.attempts))
"""


def _operators() -> list[str]:
    """ProvisioningWork's alert addresses from the catalog (its own, else its domain's)."""
    from panelflow.catalog.loader import load_catalog

    catalog = load_catalog()
    return list(catalog.alert_to(catalog.thread(THREAD)))


def send_failure_notifications(panel_db, interval, log) -> dict:
    """Send service queue and jobs failure notifications."""
    report = StepReport().zero("order_failures", "job_failures", "emails_queued")
    at = interval.end
    args = {"at": at, "since": at - FAILURE_LOOKBACK}
    try:
        recipients = sorted({a.strip() for a in _operators() if re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", a.strip())})
    except Exception as exc:  # nothing is recorded: the failures are noticed once the catalog loads again
        log.warning("no failure notice recipients: %s", exc)
        recipients = []
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        if not recipients:
            orders, jobs = conn.execute(_PENDING_FAILURES, args).fetchone()
            if orders + jobs:  # one line names them all; each failure counts
                report.skip_grouped([("no operator addresses for failure notices", orders + jobs,
                                      [f"{orders} order(s), {jobs} job(s) not noticed"])])
            return report.as_dict()
        args["to"] = recipients
        context_base = {"noticed_at": at.isoformat(), "more": 0, "entries": [], "error": None, "backend": None,
                        "action": None, "attempt": None}
        with conn.transaction():  # notices and their e-mails together, or neither
            orders = conn.execute(_ORDER_FAILURES, {**args, "limit": MAX_FAILURE_NOTICES}).fetchall()
            jobs = conn.execute(_JOB_FAILURES, {**args, "limit": MAX_FAILURE_NOTICES - len(orders)}).fetchall()
            queued = 0
            for _, order_id, first_id, failed_at, entries in orders:
                entries = entries or []
                context = {**context_base, "source": "service_queue", "ref_id": order_id,
                           "failed_at": failed_at.isoformat(), "entries": entries[:FAILURE_ENTRIES_SHOWN],
                           "more": max(len(entries) - FAILURE_ENTRIES_SHOWN, 0)}
                for address in recipients:
                    queued += enqueue(conn, dedupe_key=f"failure:service_queue:{order_id}:{first_id}:{address}",
                                      to=address, template=FAILURE_TEMPLATE, context=context, not_before=at,
                                      priority=2)
            for _, job_id, attempt, failed_at, error, backend, action in jobs:
                context = {**context_base, "source": "group_action_job", "ref_id": job_id, "attempt": attempt,
                           "failed_at": failed_at.isoformat(), "error": error or "(no error recorded)",
                           "backend": backend, "action": action}
                for address in recipients:
                    queued += enqueue(conn, dedupe_key=f"failure:group_action_job:{job_id}:{attempt}:{address}",
                                      to=address, template=FAILURE_TEMPLATE, context=context, not_before=at,
                                      priority=2)
        left_orders, left_jobs = conn.execute(_PENDING_FAILURES, args).fetchone()
        pruned = delete_older_than(conn, task="prune_failure_notices", table="failure_notices", column="noticed_at",
                                   cutoff=at - FAILURE_NOTICE_KEEP, interval_end=at, max_rows=10_000, batch_size=5000)
    report.add("order_failures", len(orders))
    report.add("job_failures", len(jobs))
    report.add("emails_queued", queued)
    report.add("deferred", left_orders + left_jobs)
    report.add("notices_pruned", pruned["deleted"])
    return report.as_dict()
