"""UsageReportWork 6: the Lync SPLA report — licensed users per pool, edition and month, once.

The report month is the calendar month before the run's clock (``interval.end``) in the thread's time
zone: the 1 April 03:20 run reports March. Each pool's users come from the server itself
(``lync/get_pool_users``: Get-CsUser of the users homed on the pool), not from the panel's rows, so a
user enabled by hand on the server is licensed too. A user counts when the account is enabled, once,
at the edition :func:`lync_edition` (migration 0023) gives its features — the same rule the panel's
``lync_users.edition`` follows: Enterprise Voice → Plus, a per-user conferencing policy → Enterprise,
else Standard.

Written once: a pool's three editions for the month are inserted together (zero counts included), so
a pool with any row for the month is reported and never asked again — a rerun, a second run the same
day or a backfill changes nothing. A pool that cannot be reached is tried again by the next run
(twice a day) until it answers. The count is the snapshot at that first answer: Lync keeps no
history of who was enabled when, so the first run after the month's end is the report.
"""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

from panelflow.hooks.powershell import parse_records, powershell_session
from panelflow.step import StepReport
from panelflow.steps.lync._backend import EDITIONS, Pool, PoolUser, for_each_pool, pool_report, pools

_REPORTED = "SELECT DISTINCT pool_id FROM lync_spla_reports WHERE month = %s"

_WRITE = """
INSERT INTO lync_spla_reports (pool_id, month, edition, users, reported_at)
SELECT %(pool)s, %(month)s, e.edition,
       count(DISTINCT u.sip_address) FILTER (WHERE u.enabled
                                             AND lync_edition(u.enterprise_voice, u.conferencing_policy) = e.edition),
       %(at)s
FROM unnest(%(editions)s::text[]) AS e(edition)
LEFT JOIN spla_users u ON true
GROUP BY e.edition
ON CONFLICT DO NOTHING
"""


def report_month(interval) -> date:
    """The first day of the month before the run's clock, in the thread's time zone."""
    today = interval.end.astimezone(ZoneInfo(interval.tz)).date()
    return date(today.year - (today.month == 1), (today.month - 2) % 12 + 1, 1)


def lync_spla_report(panel_db, interval, log=None) -> dict:
    """Calculate Lync SPLA report."""
    month = report_month(interval)
    report = pool_report("pools_already_reported", "pools_reported", *(f"users_{e.lower()}" for e in EDITIONS))
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        done = {r[0] for r in conn.execute(_REPORTED, (month,)).fetchall()}
        targets = [p for p in pools(conn) if p.id not in done]
        report.add("pools_already_reported", len(done))

        def work(pool: Pool) -> None:
            with powershell_session(pool.conn_id, log) as hook:
                rows = hook.run_script("lync/get_pool_users", {"RegistrarPool": pool.fqdn})
            users = parse_records(PoolUser, rows, report, "Lync user")
            _write(conn, pool, month, users, interval.end, report)

        outcome = for_each_pool(targets, work, report, log)
    summary = {"month": month.isoformat(), **report.as_dict(), "failed_pools": outcome.failed}
    if log is not None:
        log.info("Lync SPLA report for %s: %s", month, summary)
    return summary


def _write(conn, pool: Pool, month: date, users: list[PoolUser], at, report: StepReport) -> None:
    """The pool's users into a temporary table (COPY), then its three editions in one statement."""
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE spla_users (sip_address text, enabled boolean, enterprise_voice boolean,"
                     " conferencing_policy text) ON COMMIT DROP")
        with conn.cursor().copy("COPY spla_users FROM STDIN") as copy:
            for u in users:
                copy.write_row((u.SipAddress, u.Enabled, u.EnterpriseVoiceEnabled, u.ConferencingPolicy))
        written = conn.execute(_WRITE, {"pool": pool.id, "month": month, "editions": list(EDITIONS),
                                        "at": at}).rowcount
        counts = dict(conn.execute("SELECT edition, users FROM lync_spla_reports WHERE pool_id = %s AND month = %s",
                                   (pool.id, month)).fetchall())
    if written:
        report.add("pools_reported")
        for edition in EDITIONS:
            report.add(f"users_{edition.lower()}", counts.get(edition, 0))
