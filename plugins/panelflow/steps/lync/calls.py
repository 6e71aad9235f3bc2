"""CallDataProcessWork 1 (Lync half): the pools' call records of the run's data interval → ``ocs_call_records``.

:func:`import_lync_call_records` is called by the thread's step (which also imports the SIP
platform's records). For each Monitoring CDR database of the pools (``lync_pools.cdr_sql_instance``),
a Front End runs ``lync/get_cdr_calls``: the outbound PSTN calls (LcsCDR ``VoIPDetails`` with a
``ToGatewayId`` and no ``FromGatewayId``, joined to ``SessionDetails``, ``Users`` and ``Phones``)
that **ended** in the run's data interval, read page by page with a keyset on (SessionEndTime,
SessionIdTime, SessionIdSeq) and typed SqlParameters. The Monitoring service writes a call's record
some time after the call ended (its queue can lag by minutes), so each run reads back
``cdr_lookback_minutes`` (60) before its interval too: a record that arrived late is imported by the
next run, and what an earlier run imported is simply found again.

Several pools may report to one Monitoring store: pools are grouped by store (SQL instance and
database, ``cdr_store``), and each store is read once per run, through the Front End of its first
enabled pool.

Exactly once. A call is keyed by its store and LcsCDR session key (SessionIdTime, SessionIdSeq),
unique in ``ocs_call_records`` (0023): the store's calls go into a temporary table, then one
``INSERT … SELECT … ON CONFLICT DO NOTHING`` — a rerun, the look-back, a retry after a killed
worker or a backfill over the same hours adds nothing. The caller's SIP URI is mapped to the subscription
through ``lync_users``; a caller the panel does not know (or whose user has no subscription yet)
is counted and named in the summary and kept in ``lync_unmatched_call_records``, from where each
later import moves it (bounded) once the user is linked — never lost, never billed twice.

Rating and billing stay with BillingWork (``voice_billing``): started_at is the answer time,
``duration_seconds`` the connected seconds (0 for an unanswered call, which bills nothing), and
``destination`` the E.164 digits of the number called.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta, timezone

from panelflow.hooks.powershell import parse_records, powershell_session
from panelflow.step import StepReport
from panelflow.steps.lync._backend import CdrCall, Pool, for_each_pool, pools, powershell_failure, sip_address

PAGE_ROWS = 5000
CDR_LOOKBACK_MINUTES = 60
MAX_PAGES = 200
REMATCH_BATCH = 5000
CDR_TIME = "%Y-%m-%dT%H:%M:%S.%f"

_COLUMNS = ("session_id_time", "session_id_seq", "caller", "destination", "started_at", "ended_at",
            "duration_seconds")

_INSERT = """
WITH matched AS (
    INSERT INTO ocs_call_records (subscription_id, caller, destination, started_at, duration_seconds, pool_id,
                                  cdr_store, session_id_time, session_id_seq, ended_at)
    SELECT u.subscription_id, c.caller, c.destination, c.started_at, c.duration_seconds, %(pool)s, %(store)s,
           c.session_id_time, c.session_id_seq, c.ended_at
    FROM lync_cdr c JOIN lync_users u ON u.sip_address = c.caller AND u.subscription_id IS NOT NULL
    WHERE c.destination <> ''
    ON CONFLICT (cdr_store, session_id_time, session_id_seq) DO NOTHING
    RETURNING 1
), unmatched AS (
    INSERT INTO lync_unmatched_call_records (cdr_store, pool_id, session_id_time, session_id_seq, caller,
                                             destination, started_at, ended_at, duration_seconds, first_seen_at)
    SELECT %(store)s, %(pool)s, c.session_id_time, c.session_id_seq, c.caller, c.destination, c.started_at,
           c.ended_at, c.duration_seconds, %(at)s
    FROM lync_cdr c
    WHERE c.destination <> ''
      AND NOT EXISTS (SELECT 1 FROM lync_users u WHERE u.sip_address = c.caller AND u.subscription_id IS NOT NULL)
      AND NOT EXISTS (SELECT 1 FROM ocs_call_records r WHERE r.cdr_store = %(store)s
                        AND r.session_id_time = c.session_id_time AND r.session_id_seq = c.session_id_seq)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM matched), (SELECT count(*) FROM unmatched)
"""

# What the store's import left out of ocs_call_records, and why (every call counts; a few are named):
# the calls of the run's own interval, so the look-back does not report a call on every run.
_LEFT_OUT = """
SELECT reason, count(*), (array_agg(example ORDER BY example))[1:%(keep)s] FROM (
    SELECT CASE WHEN c.destination = '' THEN 'no number called'
                WHEN u.id IS NULL THEN 'caller is not a panel Lync user'
                ELSE 'the caller''s Lync user has no subscription' END AS reason,
           c.caller || ' at ' || to_char(c.ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS example
    FROM lync_cdr c LEFT JOIN lync_users u ON u.sip_address = c.caller
    WHERE (c.destination = '' OR u.subscription_id IS NULL) AND c.ended_at >= %(start)s
) left_out GROUP BY reason ORDER BY reason
"""

_REMATCH = """
WITH ready AS (
    SELECT m.cdr_store, m.session_id_time, m.session_id_seq, u.subscription_id
    FROM lync_unmatched_call_records m JOIN lync_users u ON u.sip_address = m.caller AND u.subscription_id IS NOT NULL
    ORDER BY m.ended_at LIMIT %(limit)s
    FOR UPDATE OF m SKIP LOCKED
), moved AS (
    DELETE FROM lync_unmatched_call_records m USING ready
    WHERE (m.cdr_store, m.session_id_time, m.session_id_seq)
        = (ready.cdr_store, ready.session_id_time, ready.session_id_seq)
    RETURNING m.*, ready.subscription_id
), added AS (
    INSERT INTO ocs_call_records (subscription_id, caller, destination, started_at, duration_seconds, pool_id,
                                  cdr_store, session_id_time, session_id_seq, ended_at)
    SELECT subscription_id, caller, destination, started_at, duration_seconds, pool_id, cdr_store, session_id_time,
           session_id_seq, ended_at
    FROM moved
    ON CONFLICT (cdr_store, session_id_time, session_id_seq) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM added)
"""


@dataclass(frozen=True)
class CdrStore:
    """A Monitoring CDR database, read through the Front End of ``pool`` (its first enabled pool)."""

    key: str
    pool: Pool

    @property
    def name(self) -> str:
        return self.key


def cdr_stores(every: list[Pool]) -> list[CdrStore]:
    stores: dict[str, CdrStore] = {}
    for pool in every:
        if pool.cdr_sql_instance:
            key = f"{pool.cdr_sql_instance}/{pool.cdr_database}".lower()
            stores.setdefault(key, CdrStore(key, pool))
    return list(stores.values())


class CdrPagesExceeded(RuntimeError):
    """The store has more calls in the window than ``max_cdr_pages`` pages: its import fails rather
    than keeping a part (raise the limit, or run shorter intervals)."""


def _cdr_text(moment) -> str:
    return moment.astimezone(timezone.utc).strftime(CDR_TIME)[:-3]


def _store_failure(exc: BaseException) -> str | None:
    if isinstance(exc, CdrPagesExceeded):
        return str(exc)
    return powershell_failure(exc)


def import_lync_call_records(panel_db, interval, params=None, log=None) -> dict:
    """The Lync call records of the run's data interval, once each, into ``ocs_call_records``."""
    params = params or {}
    page_rows = int(params.get("cdr_page_rows", PAGE_ROWS))
    max_pages = int(params.get("max_cdr_pages", MAX_PAGES))
    since = interval.start - timedelta(minutes=int(params.get("cdr_lookback_minutes", CDR_LOOKBACK_MINUTES)))
    report = StepReport().zero("cdr_stores", "cdr_stores_failed", "pools_without_cdr", "calls_read",
                               "calls_imported", "calls_unmatched", "unmatched_calls_matched")
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        every = pools(conn)
        stores = cdr_stores(every)
        report.add("pools_without_cdr", sum(1 for p in every if not p.cdr_sql_instance))

        def work(store: CdrStore) -> None:
            calls = _read(store.pool, since, interval.end, page_rows, max_pages, report, log)
            _write(conn, store, calls, interval, report)

        outcome = for_each_pool(stores, work, report, log, reason=_store_failure, kind="cdr_store",
                                what="Lync Monitoring CDR store")
        moved, added = conn.execute(_REMATCH, {"limit": int(params.get("rematch_batch", REMATCH_BATCH))}).fetchone()
        report.add("unmatched_calls_matched", added)
        if moved != added:   # imported meanwhile by a rerun of their own interval: already there once
            report.add("unmatched_calls_already_imported", moved - added)
    summary = {"interval": f"{interval.start.isoformat()}..{interval.end.isoformat()}", **report.as_dict(),
               "failed_stores": outcome.failed}
    if log is not None:
        log.info("Lync call records: %s", summary)
    return summary


def _read(pool: Pool, since, until, page_rows: int, max_pages: int, report: StepReport, log) -> list[CdrCall]:
    """The calls that ended in ``[since, until)``, page by page (keyset), validated."""
    calls: list[CdrCall] = []
    after: dict = {}
    with powershell_session(pool.conn_id, log) as hook:
        for _ in range(max_pages):
            rows = hook.run_script("lync/get_cdr_calls", {
                "SqlInstance": pool.cdr_sql_instance, "Database": pool.cdr_database,
                "EndedFrom": _cdr_text(since), "EndedTo": _cdr_text(until), "MaxRows": page_rows,
                **after})
            report.add("calls_read", len(rows))
            page = parse_records(CdrCall, rows, report, "call record")
            calls += page
            if len(rows) < page_rows:
                return calls
            last = rows[-1]   # the keyset continues from the page's last row, valid or not
            after = {"AfterEnd": last.get("SessionEndTime"), "AfterIdTime": last.get("SessionIdTime"),
                     "AfterIdSeq": last.get("SessionIdSeq")}
    raise CdrPagesExceeded(f"more than {max_pages} pages of {page_rows} calls in the interval; nothing imported")


def _write(conn, store: CdrStore, calls: list[CdrCall], interval, report: StepReport) -> None:
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE lync_cdr (session_id_time timestamp, session_id_seq integer, caller text,"
                     " destination text, started_at timestamptz, ended_at timestamptz, duration_seconds integer)"
                     " ON COMMIT DROP")
        with conn.cursor().copy(f"COPY lync_cdr ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
            for c in calls:
                copy.write_row((c.SessionIdTime.replace(tzinfo=None), c.SessionIdSeq, sip_address(c.CallerUri),
                                c.destination, c.started_at, c.SessionEndTime, c.duration_seconds))
        imported, unmatched = conn.execute(_INSERT, {"pool": store.pool.id, "store": store.key,
                                                     "at": interval.end}).fetchone()
        left_out = conn.execute(_LEFT_OUT, {"keep": report.keep, "start": interval.start}).fetchall()
    report.add("calls_imported", imported)
    report.add("calls_unmatched", unmatched)
    report.skip_grouped((f"{store.pool.name}: {reason}", count, examples) for reason, count, examples in left_out)
