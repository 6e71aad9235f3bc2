"""VoiceCurrentLimitSyncWork 4: orphan records of SIP subscriptions removed, in bounded batches.

What is an orphan, once the retention (params ``orphan_retention_days``, default 30) has passed
since the run's clock last had a use for it:

1. a bundle's per-subscriber usage (``sip_bundle_subscriber_usage``) whose bundle was cancelled,
   whose subscription was cancelled or whose subscriber was deleted, not counted since;
2. a subscriber deleted (by a job or found gone by VoiceSyncWork) — with its numbers;
3. a company deleted, once none of its subscribers is left.

They are kept for the retention so call records imported late still find the customer who pays
(:mod:`.calls`) and the panel can show what was deleted. Nothing billed is touched: ``sip_usage``
rows and invoices keep their values (``sip_usage`` names its subscriber without a foreign key).

Each delete works ``orphan_batch_size`` rows (default 1000) per statement, at most
``orphan_max_batches`` (default 20) statements per kind and run, each committed on its own: a run
holds no long lock, and what is left is done by the next run (``orphans_left`` says so).
"""

from __future__ import annotations

from datetime import timedelta

from panelflow.step import StepReport
from panelflow.steps.voice._backend import nothing_configured, platforms

RETENTION_DAYS = 30
BATCH_SIZE = 1000
MAX_BATCHES = 20

_ORPHANS = {
    "bundle_subscriber_usage": """
DELETE FROM sip_bundle_subscriber_usage WHERE ctid = ANY(ARRAY(
    SELECT u.ctid FROM sip_bundle_subscriber_usage u
    JOIN voice_bundles b ON b.id = u.bundle_id
    JOIN subscriptions s ON s.id = b.subscription_id
    JOIN voice_subscribers vs ON vs.id = u.subscriber_id
    WHERE u.counted_at < %(before)s AND (b.status <> 'active' OR s.status = 'cancelled' OR vs.status = 'deleted')
    LIMIT %(batch)s))
""",
    "subscribers": """
DELETE FROM voice_subscribers WHERE id = ANY(ARRAY(
    SELECT id FROM voice_subscribers WHERE status = 'deleted' AND deleted_at < %(before)s
    ORDER BY deleted_at LIMIT %(batch)s))
""",
    "companies": """
DELETE FROM voice_companies WHERE id = ANY(ARRAY(
    SELECT c.id FROM voice_companies c
    WHERE c.status = 'deleted' AND c.deleted_at < %(before)s
      AND NOT EXISTS (SELECT 1 FROM voice_subscribers vs WHERE vs.company_id = c.id)
    ORDER BY c.deleted_at LIMIT %(batch)s))
""",
}


def delete_orphan_sip_records(panel_db, interval, params=None, log=None) -> dict:
    """Delete all orphan records against SIP subscriptions (bounded; see the module)."""
    params = params or {}
    batch = int(params.get("orphan_batch_size", BATCH_SIZE))
    max_batches = int(params.get("orphan_max_batches", MAX_BATCHES))
    args = {"before": interval.end - timedelta(days=int(params.get("orphan_retention_days", RETENTION_DAYS))),
            "batch": batch}
    report = StepReport().zero(*(f"{kind}_deleted" for kind in _ORPHANS))
    with panel_db.get_conn() as conn:
        conn.autocommit = True   # each batch commits on its own
        for kind, statement in _ORPHANS.items():   # in this order: a company goes once its subscribers have
            for _ in range(max_batches):
                deleted = conn.execute(statement, args).rowcount
                report.add(f"{kind}_deleted", deleted)
                if deleted < batch:
                    break
            else:
                report.add("orphans_left")
                if log is not None:
                    log.info("orphan %s: %s batches deleted, more are left for the next run", kind, max_batches)
        configured = bool(platforms(conn))
    return report.as_dict() if configured else nothing_configured(report)
