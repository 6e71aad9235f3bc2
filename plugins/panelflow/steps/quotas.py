"""QuotaOverUsedWork and OverusageResourceNotification: resource quota over-use, the
subscriptions' "verify quota usage again" bit, and voice bundle over-usage notices.

Resource quotas (``subscription_quotas``, migration 0009) are checked against the latest usage
sample (``resource_usage_samples``) taken at or before the run's clock (``interval.end``) and
no older than ``SAMPLE_MAX_AGE``. A quota without such a sample is not measured: nothing is
opened or resolved on a guess, an open episode simply stays open. Usage strictly above the
quota is over-use (at the quota is full, not over); a ``NULL`` quota is unlimited.

An over-use episode (``quota_overuse``) is one row from the run that first finds it over until
the run that finds it over no more: back under the quota (``under_quota``), the quota removed
or made unlimited (``quota_removed``), the subscription cancelled (``subscription_cancelled``).
While it stays over, each run refreshes the same row (latest usage, peak seen, last seen).
At most one episode per subscription and resource is open (a unique index), and a run never
acts on an episode a later clock already saw: rerunning or retrying an older run changes
nothing a newer one wrote.

The recheck bit (``subscription_quota_rechecks``, a row = set; see migration 0009 for why a
table) is set for every subscription with an open over-use episode, so the usage collectors
verify its usage again, and cleared — only where QuotaOverUsedWork set it — once none is open.

Voice bundles include ``minutes_per_month`` per calendar month in the thread's time zone. A
month's minutes are the subscription's answered OCS and SIP calls started in the month before
the clock, per started minute (61 s → 2 min, as billed). A notice is sent once per bundle, month
and threshold crossed (80 %, 100 %): a rerun finds the notice row and sends nothing. A run that
finds both crossed at once records both and sends one message, the 100 % one. For
``LATE_RECORDS`` into a month, the previous month is checked too, so calls of its last hours
that arrive late still count for it. A customer without a usable address is reported and gets
no notice row, so once the address is fixed the next run sends it.
"""

from __future__ import annotations

from datetime import date, timedelta

from panelflow.step import StepReport
from panelflow.services.outbox import enqueue

SAMPLE_MAX_AGE = timedelta(hours=48)  # an older latest sample says nothing about usage now
RECHECK_REASON = "quota_overuse"
THRESHOLDS = (80, 100)
LATE_RECORDS = timedelta(days=1)
NOTICE_TEMPLATE = "voice_bundle_usage"
EMAIL_RE = r"^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$"


# --- QuotaOverUsedWork step 1: over-use episodes --------------------------------------------------

# Every quota of a subscription that is not cancelled, with its latest usable sample.
_QUOTA_STATE = """
CREATE TEMP TABLE quota_state ON COMMIT DROP AS
SELECT q.subscription_id, q.resource, q.quota_limit, u.used, u.sampled_at,
       CASE WHEN r.code IS NULL THEN 'unknown resource' END AS skip_reason
FROM subscription_quotas q
JOIN subscriptions s ON s.id = q.subscription_id AND s.status <> 'cancelled'
LEFT JOIN quota_resources r ON r.code = q.resource
LEFT JOIN LATERAL (
    SELECT x.used, x.sampled_at FROM resource_usage_samples x
    WHERE x.subscription_id = q.subscription_id AND x.resource = q.resource
      AND x.sampled_at <= %(clock)s AND x.sampled_at > %(oldest)s
    ORDER BY x.sampled_at DESC LIMIT 1) u ON r.code IS NOT NULL
"""

_QUOTA_TALLY = """
SELECT count(*) FILTER (WHERE skip_reason IS NULL),
       count(*) FILTER (WHERE skip_reason IS NULL AND quota_limit IS NULL),
       count(*) FILTER (WHERE skip_reason IS NULL AND quota_limit IS NOT NULL AND used IS NULL),
       count(*) FILTER (WHERE used > quota_limit)
FROM quota_state
"""

_QUOTA_SKIPPED = """
SELECT skip_reason, count(*),
       (array_agg('subscription ' || subscription_id || ': resource ' || quote_literal(resource)
                  ORDER BY subscription_id, resource))[1:%(keep)s]
FROM quota_state WHERE skip_reason IS NOT NULL GROUP BY skip_reason ORDER BY skip_reason
"""

# Open episodes that no longer hold. Not measured (no recent sample) is not "under".
_RESOLVE = """
WITH ending AS (
    SELECT o.id, st.quota_limit, st.used, st.sampled_at,
           CASE WHEN s.status = 'cancelled' THEN 'subscription_cancelled'
                WHEN q.subscription_id IS NULL OR q.quota_limit IS NULL THEN 'quota_removed'
                WHEN st.used <= st.quota_limit THEN 'under_quota'
           END AS resolution
    FROM quota_overuse o
    JOIN subscriptions s ON s.id = o.subscription_id
    LEFT JOIN subscription_quotas q ON q.subscription_id = o.subscription_id AND q.resource = o.resource
    LEFT JOIN quota_state st ON st.subscription_id = o.subscription_id AND st.resource = o.resource
    WHERE o.resolved_at IS NULL AND o.last_seen_at <= %(clock)s
)
UPDATE quota_overuse o
SET resolved_at = %(clock)s, resolution = e.resolution, quota_limit = coalesce(e.quota_limit, o.quota_limit),
    used = coalesce(e.used, o.used), sampled_at = coalesce(e.sampled_at, o.sampled_at)
FROM ending e
WHERE o.id = e.id AND e.resolution IS NOT NULL
RETURNING e.resolution
"""

# Still over: the same row, brought up to date.
_REFRESH = """
UPDATE quota_overuse o
SET quota_limit = st.quota_limit, used = st.used, peak_used = greatest(o.peak_used, st.used),
    sampled_at = st.sampled_at, last_seen_at = %(clock)s
FROM quota_state st
WHERE st.subscription_id = o.subscription_id AND st.resource = o.resource AND o.resolved_at IS NULL
  AND st.used > st.quota_limit AND o.last_seen_at <= %(clock)s
"""

# Newly over. An episode that a later clock already resolved (or opened) is never reopened by
# an older run replayed; the unique indexes make any overlap a no-op.
_OPEN = """
INSERT INTO quota_overuse (subscription_id, resource, quota_limit, used, peak_used, sampled_at, opened_at,
                           last_seen_at)
SELECT st.subscription_id, st.resource, st.quota_limit, st.used, st.used, st.sampled_at, %(clock)s, %(clock)s
FROM quota_state st
WHERE st.used > st.quota_limit
  AND NOT EXISTS (SELECT 1 FROM quota_overuse later
                  WHERE later.subscription_id = st.subscription_id AND later.resource = st.resource
                    AND (later.resolved_at >= %(clock)s OR later.opened_at >= %(clock)s))
ORDER BY st.subscription_id, st.resource
ON CONFLICT DO NOTHING
"""


def sync_quota_overuse(panel_db, interval) -> dict:
    """Sync subscriptions resource quota over used: open an over-use record for each quota newly
    found exceeded, keep it up to date while it stays exceeded, resolve it once it is not."""
    clock = interval.end
    params = {"clock": clock, "oldest": clock - SAMPLE_MAX_AGE}
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True  # the explicit transaction below commits
        with conn.transaction():
            conn.execute(_QUOTA_STATE, params)
            conn.execute("ANALYZE quota_state")
            checked, unlimited, unmeasured, over = conn.execute(_QUOTA_TALLY).fetchone()
            report.skip_grouped(conn.execute(_QUOTA_SKIPPED, {"keep": report.keep}).fetchall())
            resolved = [r[0] for r in conn.execute(_RESOLVE, params).fetchall()]
            still_over = conn.execute(_REFRESH, params).rowcount
            opened = conn.execute(_OPEN, params).rowcount
            (open_now,) = conn.execute("SELECT count(*) FROM quota_overuse WHERE resolved_at IS NULL").fetchone()
    report.add("quotas_checked", checked)
    report.add("quotas_unlimited", unlimited)
    report.add("quotas_not_measured", unmeasured)
    report.add("quotas_over", over)
    report.add("overuse_opened", opened)
    report.add("overuse_still_open", still_over)
    for resolution in resolved:
        report.add(f"overuse_resolved_{resolution}")
    report.add("overuse_open", open_now)
    return {"clock": clock.isoformat(), **report.as_dict()}


# --- QuotaOverUsedWork step 2: the recheck bit ---------------------------------------------------

_FLAG = """
WITH wanted AS (
    SELECT DISTINCT subscription_id FROM quota_overuse WHERE resolved_at IS NULL
), flagged AS (
    INSERT INTO subscription_quota_rechecks (subscription_id, reason, flagged_at)
    SELECT subscription_id, %(reason)s, %(clock)s FROM wanted ORDER BY subscription_id
    ON CONFLICT (subscription_id) DO NOTHING
    RETURNING 1
), cleared AS (
    DELETE FROM subscription_quota_rechecks r
    WHERE r.reason = %(reason)s AND NOT EXISTS (SELECT 1 FROM wanted w WHERE w.subscription_id = r.subscription_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM wanted), (SELECT count(*) FROM flagged), (SELECT count(*) FROM cleared)
"""


def flag_subscriptions_for_quota_recheck(panel_db, interval) -> dict:
    """Mark subscriptions bit to verify quota usage again: set for every subscription with an
    open over-use record, cleared (where this step set it) for those with none left."""
    with panel_db.get_conn() as conn:
        conn.autocommit = True  # the explicit transaction below commits
        with conn.transaction():
            over, flagged, cleared = conn.execute(_FLAG, {"reason": RECHECK_REASON,
                                                          "clock": interval.end}).fetchone()
    return {"subscriptions_over_quota": over, "flagged": flagged, "already_flagged": over - flagged,
            "cleared": cleared}


# --- OverusageResourceNotification ---------------------------------------------------------------

# Each active bundle's minutes in the month of the clock (and, early in a month, the month before),
# counted up to the clock.
_BUNDLE_USAGE = f"""
CREATE TEMP TABLE bundle_usage ON COMMIT DROP AS
WITH months AS (
    SELECT DISTINCT date_trunc('month', t AT TIME ZONE %(tz)s)::date AS month
    FROM unnest(ARRAY[%(clock)s::timestamptz, %(clock)s::timestamptz - %(late)s::interval]) t
), spans AS (
    SELECT month, month::timestamp AT TIME ZONE %(tz)s AS start_ts,
           least((month + interval '1 month')::timestamp AT TIME ZONE %(tz)s, %(clock)s::timestamptz) AS end_ts
    FROM months
)
SELECT b.id AS bundle_id, b.subscription_id, b.name AS bundle_name, b.minutes_per_month, sp.month,
       c.id AS customer_id, c.name AS customer_name, c.email, s.plan, p.name AS provider_name,
       coalesce(c.email ~ '{EMAIL_RE}', false) AS mailable, ocs.minutes + sip.minutes AS minutes_used
FROM voice_bundles b
JOIN subscriptions s ON s.id = b.subscription_id AND s.status = 'active'
JOIN customers c ON c.id = s.customer_id AND c.status = 'active'
JOIN providers p ON p.id = c.provider_id
CROSS JOIN spans sp
CROSS JOIN LATERAL (
    SELECT coalesce(sum(ceil(r.duration_seconds / 60.0)), 0)::bigint AS minutes FROM ocs_call_records r
    WHERE r.subscription_id = b.subscription_id AND r.started_at >= sp.start_ts AND r.started_at < sp.end_ts
      AND r.duration_seconds > 0) ocs
CROSS JOIN LATERAL (
    SELECT coalesce(sum(ceil(r.duration_seconds / 60.0)), 0)::bigint AS minutes FROM sip_usage r
    WHERE r.subscription_id = b.subscription_id AND r.started_at >= sp.start_ts AND r.started_at < sp.end_ts
      AND r.duration_seconds > 0) sip
WHERE b.status = 'active'
"""

# Thresholds reached (used / included >= threshold, in integers: exact), and whether noticed before.
_CROSSED = """
CREATE TEMP TABLE bundle_crossed ON COMMIT DROP AS
SELECT u.*, t.threshold, NOT EXISTS (
           SELECT 1 FROM voice_bundle_notices n
           WHERE n.bundle_id = u.bundle_id AND n.month = u.month AND n.threshold = t.threshold) AS new
FROM bundle_usage u
JOIN unnest(%(thresholds)s::smallint[]) AS t(threshold) ON u.minutes_used * 100 >= u.minutes_per_month::bigint * t.threshold
"""

_BUNDLE_TALLY = """
SELECT (SELECT count(*) FROM bundle_usage), (SELECT count(DISTINCT (bundle_id, month)) FROM bundle_crossed),
       (SELECT count(*) FROM bundle_crossed WHERE NOT new)
"""

_UNMAILABLE = """
SELECT 'customer has no usable e-mail address', count(*),
       (array_agg('customer ' || customer_id || ' (' || coalesce(nullif(email, ''), 'no address') || '), bundle '
                  || bundle_id || ', ' || to_char(month, 'YYYY-MM') || ', ' || threshold || '%%'
                  ORDER BY customer_id, bundle_id, month, threshold))[1:%(keep)s]
FROM bundle_crossed WHERE new AND NOT mailable
HAVING count(*) > 0
"""

# The notice rows and, for the highest new threshold of each bundle and month, its message key.
_NOTICE = """
WITH fresh AS (
    SELECT *, threshold = max(threshold) OVER (PARTITION BY bundle_id, month) AS emailed
    FROM bundle_crossed WHERE new AND mailable
), inserted AS (
    INSERT INTO voice_bundle_notices (bundle_id, month, threshold, minutes_used, minutes_included, noticed_at,
                                      outbox_key)
    SELECT bundle_id, month, threshold, minutes_used, minutes_per_month, %(clock)s,
           CASE WHEN emailed THEN 'voice-bundle-' || bundle_id || '-' || to_char(month, 'YYYY-MM') || '-' || threshold END
    FROM fresh ORDER BY bundle_id, month, threshold
    ON CONFLICT DO NOTHING
    RETURNING bundle_id, month, threshold, outbox_key
)
SELECT i.threshold, i.outbox_key, u.month, u.bundle_name, u.minutes_per_month, u.minutes_used, u.subscription_id,
       u.plan, u.customer_name, u.email, u.provider_name
FROM inserted i JOIN bundle_usage u USING (bundle_id, month)
ORDER BY i.bundle_id, i.month, i.threshold
"""


def _notice_context(threshold, month: date, bundle_name, included, used, subscription_id, plan, customer_name,
                    provider_name) -> dict:
    return {"threshold": threshold, "month": month.isoformat(), "month_label": f"{month:%B %Y}",
            "bundle_name": bundle_name, "minutes_included": included, "minutes_used": used,
            "minutes_left": max(included - used, 0), "percent": used * 100 // included,
            "subscription_id": subscription_id, "plan": plan, "customer_name": customer_name,
            "provider": provider_name}


def send_voice_bundle_overusage_notices(panel_db, interval) -> dict:
    """Handle and send notifications of voice bundle quota over usage: one notice (and e-mail) per
    bundle, month and threshold crossed (80 %, 100 % of the month's minutes), never twice."""
    clock = interval.end
    params = {"tz": interval.tz, "clock": clock, "late": LATE_RECORDS, "thresholds": list(THRESHOLDS)}
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True  # the explicit transaction below commits
        with conn.transaction():  # notices and their e-mails together, or neither
            conn.execute(_BUNDLE_USAGE, params)
            conn.execute(_CROSSED, params)
            bundle_months, reached, already = conn.execute(_BUNDLE_TALLY).fetchone()
            report.skip_grouped(conn.execute(_UNMAILABLE, {"keep": report.keep}).fetchall())
            notices = conn.execute(_NOTICE, params).fetchall()
            queued = 0
            for threshold, outbox_key, month, *details in notices:
                if outbox_key is None:
                    continue  # covered by the higher threshold's message of this run
                *details, email, provider_name = details
                context = _notice_context(threshold, month, *details, provider_name)
                queued += enqueue(conn, dedupe_key=outbox_key, to=email.strip(), template=NOTICE_TEMPLATE,
                                  context=context, not_before=clock, priority=4)
    report.add("bundle_months_checked", bundle_months)
    report.add("bundle_months_over_threshold", reached)
    report.add("thresholds_already_noticed", already)
    report.add("notices", len(notices))
    report.add("emails_queued", queued)
    return {"clock": clock.isoformat(), **report.as_dict()}
