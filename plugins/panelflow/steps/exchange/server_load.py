"""ProvisioningWork 20: the mailbox load of each Exchange server, for placing new mailboxes.

Read from the panel, not from Exchange: ExchangeDatabaseStatsWork already samples every database
on the server holding its active copy (``exchange_database_stats``: mounted, size, free space,
mailboxes), and a ten-minute loop asking every server again would double that load for the same
numbers. Per server, the latest sample of each database it hosted, taken at most
``server_load_max_sample_age_hours`` (24) before the run's clock, is summed into one
``exchange_server_load`` row. A server with no such sample has its row removed — placement must
not trust a stale load — and is named in the summary. One statement; a rerun changes nothing.
"""

from __future__ import annotations

from datetime import timedelta

from panelflow.step import StepReport

MAX_SAMPLE_AGE_HOURS = 24

_LOAD = """
WITH latest AS (
    SELECT s.* FROM exchange_databases d
    CROSS JOIN LATERAL (SELECT * FROM exchange_database_stats s
                        WHERE s.database_id = d.id AND s.sampled_at <= %(at)s AND s.sampled_at > %(oldest)s
                        ORDER BY s.sampled_at DESC LIMIT 1) s
), load AS (
    SELECT l.exchange_server_id, count(*) AS databases, count(*) FILTER (WHERE l.mounted) AS mounted,
           sum(l.mailbox_count) AS mailboxes, coalesce(sum(l.size_bytes), 0) AS size_bytes,
           coalesce(sum(l.available_new_mailbox_space_bytes), 0) AS available, max(l.sampled_at) AS sampled_at
    FROM latest l JOIN exchange_servers es ON es.id = l.exchange_server_id AND es.enabled
    GROUP BY l.exchange_server_id
), written AS (
    INSERT INTO exchange_server_load AS x (exchange_server_id, databases, mounted_databases, mailboxes,
        database_size_bytes, available_new_mailbox_space_bytes, sampled_at, updated_at)
    SELECT exchange_server_id, databases, mounted, mailboxes, size_bytes, available, sampled_at, %(at)s FROM load
    ON CONFLICT (exchange_server_id) DO UPDATE SET
        databases = EXCLUDED.databases, mounted_databases = EXCLUDED.mounted_databases,
        mailboxes = EXCLUDED.mailboxes, database_size_bytes = EXCLUDED.database_size_bytes,
        available_new_mailbox_space_bytes = EXCLUDED.available_new_mailbox_space_bytes,
        sampled_at = EXCLUDED.sampled_at, updated_at = EXCLUDED.updated_at
    WHERE x.updated_at <= EXCLUDED.updated_at
      AND (x.databases, x.mounted_databases, x.mailboxes, x.database_size_bytes,
           x.available_new_mailbox_space_bytes, x.sampled_at)
          IS DISTINCT FROM (EXCLUDED.databases, EXCLUDED.mounted_databases, EXCLUDED.mailboxes,
                            EXCLUDED.database_size_bytes, EXCLUDED.available_new_mailbox_space_bytes,
                            EXCLUDED.sampled_at)
    RETURNING 1
), stale AS (
    DELETE FROM exchange_server_load x
    WHERE x.updated_at <= %(at)s
      AND NOT EXISTS (SELECT 1 FROM load WHERE load.exchange_server_id = x.exchange_server_id)
    RETURNING x.exchange_server_id
)
SELECT (SELECT count(*) FROM load), (SELECT count(*) FROM written),
       (SELECT array_agg(es.name ORDER BY es.name) FROM exchange_servers es
        WHERE es.enabled AND NOT EXISTS (SELECT 1 FROM load WHERE load.exchange_server_id = es.id)),
       (SELECT count(*) FROM stale)
"""


def update_mailbox_server_load(panel_db, interval, params=None) -> dict:
    """Update exchange mailbox load on server: databases, mailboxes and size per server from the
    latest database samples."""
    params = params or {}
    hours = int(params.get("server_load_max_sample_age_hours", MAX_SAMPLE_AGE_HOURS))
    if hours < 1:
        raise ValueError("server_load_max_sample_age_hours must be >= 1")
    at = interval.end
    report = StepReport().zero("servers_loaded", "servers_updated", "stale_rows_removed")
    with panel_db.get_conn() as conn:
        loaded, updated, unsampled, stale = conn.execute(
            _LOAD, {"at": at, "oldest": at - timedelta(hours=hours)}).fetchone()
    report.add("servers_loaded", loaded)
    report.add("servers_updated", updated)
    report.add("stale_rows_removed", stale)
    for name in unsampled or []:
        report.skip(f"no database sample in the last {hours} h", f"server {name}")
    return report.as_dict()
