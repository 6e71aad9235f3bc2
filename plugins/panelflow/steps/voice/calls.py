"""CallDataProcessWork's SIP half: the platform's call records of the run's data interval become the
panel's call records (``sip_usage``), which BillingWork's SIP step rates and the bundle counters count.

:func:`import_sip_call_records`, per enabled platform (one failure rule: :func:`for_each_platform`):
the calls that **ended** in ``[interval.start, interval.end)`` are streamed from the platform with
``COPY … TO STDOUT`` straight into a temporary table here (``COPY … FROM STDIN``), then written by
ONE set-based ``INSERT … SELECT``. No Python touches a record: a million calls cost what the two
COPYs and one join cost. A call is imported once, whatever reruns, retries, backfills or
overlapping intervals do: ``sip_usage`` is unique on (platform, Call-ID), the insert leaves out
the records already there, and the second run counts them as already imported.

Who pays: the caller. ``caller@caller_domain`` (the hook folds domains to lower case, as the panel
stores them) is looked up among the panel's subscribers of the platform's companies (deleted ones
too: a call placed before a deletion is still billed), and the record goes to that company's
subscription. A record whose caller's domain is not a company in the panel, whose caller is not a
subscriber, or whose company has no subscription is not imported: it is counted and named in the
summary (bounded), and found again by any rerun once the panel knows it — nothing is lost silently.

What is rated: ``destination`` holds E.164 digits, as BillingWork's longest-prefix rating needs.
A dialled number (``callee`` all digits, a leading ``+`` dropped) is the destination as dialled;
a call to a subscriber by user name takes that subscriber's number (the lowest, when it has
several); an on-net call to a user without a number has the empty destination, rated by the SIP
rate table's catch-all (the empty prefix) — or reported by BillingWork as "no matching rate" when
the provider has none, never dropped.
"""

from __future__ import annotations

from psycopg.errors import UniqueViolation

from panelflow.step import StepReport
from panelflow.steps.voice._backend import Platform, for_each_platform, summary

_STAGE = """
CREATE TEMP TABLE sip_calls_in (
    callid text, caller text, caller_domain text, callee text, callee_domain text,
    started_at timestamptz, ended_at timestamptz, duration_seconds integer
) ON COMMIT DROP
"""

# The callee's number when it was called by user name: the lowest of its numbers.
_NUMBERS = """
    SELECT cc.sip_domain, cs.username, min(cn.number) AS number
    FROM voice_numbers cn
    JOIN voice_subscribers cs ON cs.id = cn.subscriber_id
    JOIN voice_companies cc ON cc.id = cs.company_id
    WHERE cn.platform_id = %(platform)s
    GROUP BY cc.sip_domain, cs.username
"""

# Why a staged record cannot be billed; NULL: it can. The insert below takes exactly the NULL ones.
_CALLER = r"""
FROM sip_calls_in i
LEFT JOIN voice_companies c ON c.platform_id = %(platform)s AND c.sip_domain = i.caller_domain
LEFT JOIN voice_subscribers s ON s.company_id = c.id AND s.username = i.caller
"""
_SKIP_REASON = """
CASE WHEN coalesce(i.callid, '') = '' THEN 'no Call-ID'
     WHEN i.started_at IS NULL OR i.duration_seconds IS NULL OR i.duration_seconds < 0
         THEN 'no start time or a negative duration'
     WHEN c.id IS NULL THEN 'caller''s SIP domain is not a voice company in the panel'
     WHEN s.id IS NULL THEN 'caller is not a subscriber in the panel'
     WHEN c.subscription_id IS NULL THEN 'voice company has no subscription to bill'
END"""

# A dialled number is at most 20 digits: the length is tested apart, because a counted repetition
# (``[0-9]{1,20}``) costs PostgreSQL's regex engine about a second per million records.
_IMPORT = rf"""
INSERT INTO sip_usage (subscription_id, sip_account, destination, started_at, duration_seconds, platform_id, callid,
                       ended_at, voice_subscriber_id)
SELECT c.subscription_id, i.caller || '@' || c.sip_domain,
       CASE WHEN length(ltrim(i.callee, '+')) <= 20 AND i.callee ~ '^\+?[0-9]+$' THEN ltrim(i.callee, '+')
            ELSE coalesce(n.number, '') END,
       i.started_at, i.duration_seconds, %(platform)s, i.callid, i.ended_at, s.id
{_CALLER}
LEFT JOIN ({_NUMBERS}) n ON n.sip_domain = i.callee_domain AND n.username = i.callee
WHERE ({_SKIP_REASON}) IS NULL
"""
# ``ON CONFLICT DO NOTHING`` costs a quarter more per row (a speculative insertion each: measured for
# bench/voice.py), so the records already imported leave the stage first (_ALREADY) and the insert
# runs plain; the unique key refuses the rare rest — a Call-ID twice in the day's records, or the
# same calls imported meanwhile — and the insert then runs again, skipping those. (A NOT EXISTS in
# the insert itself could be planned as a rescanned scan of the table it grows.)
_IMPORT_SKIPPING_DUPLICATES = _IMPORT + "ON CONFLICT DO NOTHING\n"
_ANALYZE_AFTER = 10_000   # imported rows
_ALREADY = """
DELETE FROM sip_calls_in i USING sip_usage u WHERE u.platform_id = %(platform)s AND u.callid = i.callid
"""

# One more pass over the staged records: how many were valid, and the others by reason (bounded).
# Only the skipped records are grouped and sorted (for their examples); the rest is read - skipped.
_SKIPPED = f"""
SELECT skip_reason, count(*),
       (array_agg('call ' || coalesce(nullif(callid, ''), '(none)') || ' from ' || coalesce(caller, '') || '@'
                  || coalesce(caller_domain, '') ORDER BY started_at, callid))[1:%(keep)s]
FROM (SELECT i.callid, i.caller, i.caller_domain, i.started_at, {_SKIP_REASON} AS skip_reason {_CALLER}) staged
WHERE skip_reason IS NOT NULL
GROUP BY skip_reason
"""


def import_sip_call_records(panel_db, interval, params=None, log=None) -> dict:
    """SIP call records of the run's data interval into ``sip_usage``, each once (see the module)."""
    report = StepReport().zero("records_read", "records_imported", "records_already_imported", "records_skipped")

    def work(platform: Platform) -> None:
        args = {"platform": platform.id, "keep": report.keep}
        with platform.hook() as hook, conn.transaction():
            conn.execute("SET LOCAL work_mem = '64MB'")   # the joins' hash tables of a big platform stay in memory
            conn.execute(_STAGE)
            with conn.cursor().copy("COPY sip_calls_in FROM STDIN") as copy:
                read = hook.copy_call_records(interval.start, interval.end, copy.write)
            conn.execute("ANALYZE sip_calls_in")   # a temporary table has no statistics of its own
            already = conn.execute(_ALREADY, args).rowcount
            try:
                with conn.transaction():   # a savepoint: only this statement is undone
                    imported = conn.execute(_IMPORT, args).rowcount
            except UniqueViolation:
                imported = conn.execute(_IMPORT_SKIPPING_DUPLICATES, args).rowcount
            skipped = conn.execute(_SKIPPED, args).fetchall()
        not_billable = sum(count for _, count, _ in skipped)
        already += read - already - not_billable - imported   # and the duplicates the second try skipped
        if imported >= _ANALYZE_AFTER:
            # a day's calls are not in the planner's statistics until autovacuum's next analyze (days
            # away on a big table), and BillingWork rates them next: a fixed sample, whatever the size
            conn.execute("ANALYZE sip_usage")
        report.add("records_read", read)
        report.add("records_imported", imported)
        report.add("records_already_imported", already)
        report.add("records_skipped", not_billable)
        report.skip_grouped(skipped)
        if log is not None:
            log.info("SIP platform %s: %s call records read, %s imported, %s already imported, %s skipped",
                     platform.name, read, imported, already, not_billable)

    with panel_db.get_conn() as conn:
        conn.autocommit = True   # each platform's import commits on its own
        # before this session's first temporary table: the staged day of calls is read twice (insert,
        # skipped) and stays in memory instead of going through 8 MB of temporary buffers
        conn.execute("SET temp_buffers = '256MB'")
        outcome = for_each_platform(conn, report, log, work)
    return summary(report, outcome)
