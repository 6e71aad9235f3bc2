"""VoiceCurrentLimitSyncWork 2 and 3: the current SIP usage of every subscriber and company.

Current usage is two figures: the calls up right now, read live from each platform (its dialog
counts per caller and per caller domain), and the minutes used in the current bundle period (the
calendar month of the run's clock, in the thread's time zone, up to the clock) from the imported
call records, per started minute as billed. A company over its channel limit is one with more
calls up than the limit allows (``over_channel_limit``; a NULL limit is unlimited) — the platform
refuses the next call, and the panel shows why.

Per platform, one live read and one set-based update of all its subscribers (or companies) that are
not deleted; a platform that cannot be read keeps its last figures (and ``usage_at`` says when they
were taken). Live calls of a user or domain the panel does not know are counted and reported.
A run never overwrites figures a run with a later clock wrote.
"""

from __future__ import annotations

from psycopg import sql

from panelflow.step import StepReport
from panelflow.steps.voice._backend import (CURRENT_PERIOD_START, MINUTES, Platform, clock_params, for_each_platform,
                                            summary)

_LIVE_SUBSCRIBERS = "CREATE TEMP TABLE sip_live_in (domain text, username text, calls integer) ON COMMIT DROP"
_LIVE_COMPANIES = "CREATE TEMP TABLE sip_live_in (domain text, calls integer) ON COMMIT DROP"

_SUBSCRIBER_USAGE = sql.SQL("""
WITH measured AS (
    SELECT vs.id, coalesce(l.calls, 0) AS calls, m.minutes
    FROM voice_subscribers vs
    JOIN voice_companies c ON c.id = vs.company_id AND c.platform_id = %(platform)s
    LEFT JOIN sip_live_in l ON l.domain = c.sip_domain AND l.username = vs.username
    CROSS JOIN LATERAL (
        SELECT {minutes} AS minutes FROM sip_usage r
        WHERE r.voice_subscriber_id = vs.id AND r.started_at >= {period_start} AND r.started_at < %(clock)s) m
    WHERE vs.status <> 'deleted'
), updated AS (
    UPDATE voice_subscribers vs SET current_calls = m.calls, minutes_used = m.minutes, usage_at = %(clock)s
    FROM measured m
    WHERE vs.id = m.id AND (vs.usage_at IS NULL OR vs.usage_at <= %(clock)s)
    RETURNING m.calls
)
SELECT count(*), count(*) FILTER (WHERE calls > 0), coalesce(sum(calls), 0), NULL::text[] FROM updated
""").format(minutes=sql.SQL(MINUTES), period_start=sql.SQL(CURRENT_PERIOD_START))

_UNKNOWN_SUBSCRIBERS = """
SELECT 'live calls of a user the panel does not know', count(*),
       (array_agg(l.username || '@' || l.domain || ' (' || l.calls || ' calls)'
                  ORDER BY l.domain, l.username))[1:%(keep)s]
FROM sip_live_in l
WHERE NOT EXISTS (SELECT 1 FROM voice_subscribers vs JOIN voice_companies c ON c.id = vs.company_id
                  WHERE c.platform_id = %(platform)s AND c.sip_domain = l.domain AND vs.username = l.username
                    AND vs.status <> 'deleted')
HAVING count(*) > 0
"""

_COMPANY_USAGE = sql.SQL("""
WITH measured AS (
    SELECT c.id, coalesce(l.calls, 0) AS calls, m.minutes
    FROM voice_companies c
    LEFT JOIN sip_live_in l ON l.domain = c.sip_domain
    CROSS JOIN LATERAL (
        SELECT {minutes} AS minutes FROM sip_usage r JOIN voice_subscribers vs ON vs.id = r.voice_subscriber_id
        WHERE vs.company_id = c.id AND r.started_at >= {period_start} AND r.started_at < %(clock)s) m
    WHERE c.platform_id = %(platform)s AND c.status <> 'deleted'
), updated AS (
    UPDATE voice_companies c SET current_calls = m.calls, minutes_used = m.minutes,
           over_channel_limit = coalesce(m.calls > c.channel_limit, false), usage_at = %(clock)s
    FROM measured m
    WHERE c.id = m.id AND (c.usage_at IS NULL OR c.usage_at <= %(clock)s)
    RETURNING m.calls, c.over_channel_limit AS over, c.sip_domain, c.channel_limit
)
SELECT count(*), count(*) FILTER (WHERE over), coalesce(sum(calls), 0),
       (array_agg(sip_domain || ': ' || calls || ' calls, limit ' || channel_limit ORDER BY sip_domain)
            FILTER (WHERE over))[1:%(keep)s]
FROM updated
""").format(minutes=sql.SQL(MINUTES), period_start=sql.SQL(CURRENT_PERIOD_START))

_UNKNOWN_COMPANIES = """
SELECT 'live calls of a SIP domain the panel does not know', count(*),
       (array_agg(l.domain || ' (' || l.calls || ' calls)' ORDER BY l.domain))[1:%(keep)s]
FROM sip_live_in l
WHERE NOT EXISTS (SELECT 1 FROM voice_companies c WHERE c.platform_id = %(platform)s AND c.sip_domain = l.domain
                    AND c.status <> 'deleted')
HAVING count(*) > 0
"""


def _measure(panel_db, interval, log, live_of, stage: str, update, unknown, counts: tuple[str, str]) -> dict:
    """Per platform: its live calls staged, then one update of every row it measures."""
    measured, busy = counts
    report = StepReport().zero(measured, busy, "live_calls")
    over: list[str] = []

    def work(platform: Platform) -> None:
        with platform.hook() as hook:
            live = live_of(hook)
        args = clock_params(interval, platform=platform.id, keep=report.keep)
        with conn.transaction():
            conn.execute(stage)
            with conn.cursor().copy("COPY sip_live_in FROM STDIN") as copy:
                for key, calls in live.items():
                    copy.write_row((*key, calls) if isinstance(key, tuple) else (key, calls))
            rows, busy_rows, calls, over_rows = conn.execute(update, args).fetchone()
            report.skip_grouped(conn.execute(unknown, args).fetchall())
        report.add(measured, rows)
        report.add(busy, busy_rows)
        report.add("live_calls", calls)
        over.extend((over_rows or [])[: report.keep - len(over)])

    with panel_db.get_conn() as conn:
        conn.autocommit = True
        outcome = for_each_platform(conn, report, log, work)
    result = summary(report, outcome)
    if over:
        result["over_channel_limit"] = over
        if log is not None:
            log.warning("companies over their channel limit: %s", "; ".join(over))
    return result


def sync_subscriber_sip_usage(panel_db, interval, log=None) -> dict:
    """Sync subscriber current SIP usage of all companies: live calls and the period's minutes."""
    return _measure(panel_db, interval, log, lambda hook: hook.live_calls_by_subscriber(), _LIVE_SUBSCRIBERS,
                    _SUBSCRIBER_USAGE, _UNKNOWN_SUBSCRIBERS, ("subscribers_measured", "subscribers_on_a_call"))


def sync_company_sip_usage(panel_db, interval, log=None) -> dict:
    """Sync company current SIP usage: live calls, the period's minutes, over the channel limit."""
    return _measure(panel_db, interval, log, lambda hook: hook.live_calls_by_company(), _LIVE_COMPANIES,
                    _COMPANY_USAGE, _UNKNOWN_COMPANIES, ("companies_measured", "companies_over_channel_limit"))
