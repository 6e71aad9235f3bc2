"""Voice bundles: GroupActionWorkLync 2 'Process call bundles' (the minutes each bundle used in its
period), ProvisioningWork 15 and VoiceCurrentLimitSyncWork 1 (the same per subscriber, with its
platform reference).

A voice bundle (``voice_bundles``, 0009) includes ``minutes_per_month`` per calendar month in the
thread's time zone. :func:`process_call_bundles` counts, for every active bundle of a subscription
that is not cancelled, the minutes of the subscription's answered SIP and OCS/Lync calls started in
the period up to the run's clock — per started minute, as BillingWork rates them (61 s → 2 min) —
into one ``voice_bundle_usage`` row per bundle and period. A new period is a new row starting from
0: that is the reset at the period boundary, and the old period's row stays as its final count
(counted again for a day into the new period, for calls imported late).

Over-use is more minutes used than included (exactly all of them is full, not over): the row is
flagged ``over_limit`` with ``over_since`` the clock of the run that first found it, which later
runs keep — the flag OverusageResourceNotification and the panel read.

One statement for every bundle: a rerun counts the same and changes nothing, and a run with an
older clock (a backfill) never overwrites what a newer run counted.
"""

from __future__ import annotations

from psycopg import sql

from panelflow.step import StepReport
from panelflow.steps.voice._backend import CALLS, MINUTES, PERIODS, clock_params, nothing_configured, platforms

_COUNT = sql.SQL("""
WITH {periods}, counted AS (
    SELECT b.id AS bundle_id, sp.period_start, sp.period_end, b.minutes_per_month,
           sip.minutes + ocs.minutes AS minutes_used, sip.calls + ocs.calls AS calls
    FROM voice_bundles b
    JOIN subscriptions s ON s.id = b.subscription_id AND s.status <> 'cancelled'
    CROSS JOIN spans sp
    CROSS JOIN LATERAL (
        SELECT {minutes} AS minutes, {calls} AS calls FROM sip_usage r
        WHERE r.subscription_id = b.subscription_id AND r.started_at >= sp.start_ts AND r.started_at < sp.end_ts) sip
    CROSS JOIN LATERAL (
        SELECT {minutes} AS minutes, {calls} AS calls FROM ocs_call_records r
        WHERE r.subscription_id = b.subscription_id AND r.started_at >= sp.start_ts AND r.started_at < sp.end_ts) ocs
    WHERE b.status = 'active'
), written AS (
    INSERT INTO voice_bundle_usage AS u (bundle_id, period_start, period_end, minutes_included, minutes_used, calls,
                                         over_limit, over_since, counted_at)
    SELECT bundle_id, period_start, period_end, minutes_per_month, minutes_used, calls,
           minutes_used > minutes_per_month, CASE WHEN minutes_used > minutes_per_month THEN %(clock)s::timestamptz END,
           %(clock)s
    FROM counted
    ON CONFLICT (bundle_id, period_start) DO UPDATE
    SET minutes_included = EXCLUDED.minutes_included, minutes_used = EXCLUDED.minutes_used, calls = EXCLUDED.calls,
        over_limit = EXCLUDED.over_limit,
        over_since = CASE WHEN EXCLUDED.over_limit THEN coalesce(u.over_since, EXCLUDED.over_since) END,
        counted_at = EXCLUDED.counted_at
    WHERE u.counted_at <= EXCLUDED.counted_at
    RETURNING (xmax = 0) AS started, over_limit
)
SELECT (SELECT count(*) FROM counted), count(*), count(*) FILTER (WHERE started), count(*) FILTER (WHERE over_limit)
FROM written
""").format(periods=sql.SQL(PERIODS), minutes=sql.SQL(MINUTES), calls=sql.SQL(CALLS))


def process_call_bundles(panel_db, interval, params=None, log=None) -> dict:
    """Process call bundles: minutes used per bundle and period, the period's reset, over-use flagged."""
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        counted, written, started, over = conn.execute(_COUNT, clock_params(interval)).fetchone()
    report.add("bundle_periods", counted)
    report.add("periods_started", started)
    report.add("bundle_periods_over_limit", over)
    report.add("bundle_periods_counted_later_kept", counted - written)   # a newer run's count is not overwritten
    if log is not None:
        log.info("call bundles: %s bundle periods counted, %s new, %s over their minutes", counted, started, over)
    return report.as_dict()


# -- ProvisioningWork 15 and VoiceCurrentLimitSyncWork 1: the bundle's usage per subscriber ----------

# Every subscriber of the bundle's subscription's companies that existed in the period (deleted
# during it included: its calls count), with its calls in the period up to the clock.
_SUBSCRIBER_COUNT = sql.SQL("""
WITH {periods}, counted AS (
    SELECT b.id AS bundle_id, vs.id AS subscriber_id, sp.period_start, sip.minutes, sip.calls
    FROM voice_bundles b
    JOIN subscriptions s ON s.id = b.subscription_id AND s.status <> 'cancelled'
    JOIN voice_companies c ON c.subscription_id = b.subscription_id
    JOIN voice_subscribers vs ON vs.company_id = c.id
    CROSS JOIN spans sp
    CROSS JOIN LATERAL (
        SELECT {minutes} AS minutes, {calls} AS calls FROM sip_usage r
        WHERE r.voice_subscriber_id = vs.id AND r.started_at >= sp.start_ts AND r.started_at < sp.end_ts) sip
    WHERE b.status = 'active' AND (vs.deleted_at IS NULL OR vs.deleted_at >= sp.start_ts)
), written AS (
    INSERT INTO sip_bundle_subscriber_usage AS u (bundle_id, subscriber_id, period_start, minutes, calls, counted_at)
    SELECT bundle_id, subscriber_id, period_start, minutes, calls, %(clock)s FROM counted
    ON CONFLICT (bundle_id, subscriber_id, period_start) DO UPDATE
    SET minutes = EXCLUDED.minutes, calls = EXCLUDED.calls, counted_at = EXCLUDED.counted_at
    WHERE u.counted_at <= EXCLUDED.counted_at
    RETURNING (xmax = 0) AS started
)
SELECT (SELECT count(*) FROM counted), count(*), count(*) FILTER (WHERE started) FROM written
""").format(periods=sql.SQL(PERIODS), minutes=sql.SQL(MINUTES), calls=sql.SQL(CALLS))

# Only the periods still counted: older rows are history and keep the reference they had.
_EXTERNAL_REFS = sql.SQL("""
WITH {periods}
UPDATE sip_bundle_subscriber_usage u SET external_ref = vs.external_ref
FROM voice_subscribers vs
WHERE vs.id = u.subscriber_id AND u.period_start IN (SELECT period_start FROM periods)
  AND u.external_ref IS DISTINCT FROM vs.external_ref
""").format(periods=sql.SQL(PERIODS))


def update_sip_bundle_subscriber_usage(panel_db, interval) -> dict:
    """Update SIP bundle subscriber usage: minutes and calls per bundle, subscriber and period."""
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        counted, written, started = conn.execute(_SUBSCRIBER_COUNT, clock_params(interval)).fetchone()
        configured = bool(platforms(conn))
    report.add("subscriber_periods", counted)
    report.add("subscriber_periods_started", started)
    report.add("subscriber_periods_counted_later_kept", counted - written)
    return report.as_dict() if configured else nothing_configured(report)


def update_sip_bundle_external_refs(panel_db, interval) -> dict:
    """Update ExternalRef in SIP bundle to subscriber usage: the subscriber's platform reference."""
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        report.add("external_refs_updated", conn.execute(_EXTERNAL_REFS, clock_params(interval)).rowcount)
        configured = bool(platforms(conn))
    return report.as_dict() if configured else nothing_configured(report)
