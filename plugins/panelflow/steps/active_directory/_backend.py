"""Active Directory: who the directories are, how a step reaches each one, and what the sync steps share.

Every directory is an ``ad_directories`` row (0015): its Airflow connection (``conn_id``, reached
through :class:`~panelflow.hooks.active_directory.ActiveDirectoryHook`), its managed subtree
``base_dn``, whose child OUs are the hosted organisations, and an optional ``rds_group_dn``. Nothing
outside ``base_dn`` is ever written: a job or a setting naming an object elsewhere
(``CN=Administrator,CN=Users,…``) is refused. A user elsewhere in the subtree (directly in
``base_dn``) belongs to no customer and is reported and skipped.

Every step works the enabled directories with :func:`each_directory`, under the one rule of
:func:`panelflow.step.for_each`: a directory that cannot be reached, refuses the service account or
whose connection is missing is counted (``directories_failed``) and named in the summary while the
others are worked; the step fails (:class:`DirectoriesFailed`) only when every directory failed.
Any other error is a bug or the panel DB failing and fails the step at once.

The sync steps (:func:`sync_each_directory`) also keep a record: each directory's writes are one
transaction with its ``ad_sync_runs`` row, so a directory that fails half-way leaves its rows and
watermark as they were, and gets ``last_error`` and a run row with the error instead.

Clock: ``interval.end`` stamps every row (``synced_at``, ``deleted_at``, notices); due dates are
measured from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from airflow.exceptions import AirflowNotFoundException
from psycopg.types.json import Jsonb

from panelflow.hooks.active_directory import (
    MATCHING_RULE_BIT_AND,
    UF_ACCOUNTDISABLE,
    ActiveDirectoryConfigError,
    ActiveDirectoryError,
    ActiveDirectoryHook,
    ActiveDirectoryRejected,
    dn_components,
    dn_key,
    guid_filter_value,
    parent_under,
)
from panelflow.step import EndpointsFailed, Outcome, StepReport, first_line, for_each

FULL_SYNC_HOURS = 24
GUID_BATCH = 100           # objectGUIDs per OR-filter search
KEEP_DIRECTORIES = 50      # directories a sync summary details
CN_MAX = 64
GROUP_SECURITY = 0x80000000
ENABLED_ONLY = f"(!(userAccountControl:{MATCHING_RULE_BIT_AND}:={UF_ACCOUNTDISABLE}))"

# What makes one directory fail for a run (and only it): the DC unreachable or refusing the run's
# reads, or its connection missing or unusable.


# -- the directories ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Directory:
    id: int
    name: str
    conn_id: str
    base_dn: str
    rds_group_dn: str | None = None
    enabled: bool = True


def read_directories(conn, directory_id: int | None = None) -> list[Directory]:
    """The enabled directories; with ``directory_id`` that one, enabled or not (a job naming a
    disabled directory is refused by name rather than as unknown)."""
    where, args = ("id = %s", (directory_id,)) if directory_id is not None else ("enabled", ())
    return [Directory(*row) for row in conn.execute(
        f"SELECT id, name, conn_id, base_dn, rds_group_dn, enabled FROM ad_directories WHERE {where} ORDER BY id",
        args).fetchall()]


def session(directory: Directory) -> ActiveDirectoryHook:
    """The directory's hook; it fetches its connection when first used, so call this on the task's own thread."""
    return ActiveDirectoryHook(directory.conn_id)


# -- the loop over directories -------------------------------------------------------------------------

class DirectoriesFailed(EndpointsFailed):
    """Every enabled directory failed: the step reached nothing, so the task fails (retried, alerted)."""


def failure_reason(exc: BaseException) -> str | None:
    """The summary's reason for a failed directory; None for an error that is not the directory's."""
    if isinstance(exc, (AirflowNotFoundException, ActiveDirectoryConfigError)):
        return "connection not configured"
    if isinstance(exc, ActiveDirectoryRejected):
        return "directory refused the operation"
    if isinstance(exc, ActiveDirectoryError):
        return "directory unavailable"
    return None


def each_directory(panel_db, report: StepReport, log, work: Callable[[Any, Directory, Any], Any],
                   on_failure: Callable[[Any, Directory, Exception], None] | None = None) -> Outcome:
    """``work(conn, directory, hook)`` for each enabled directory (``conn``: an autocommit panel-DB
    connection) under for_each's rule. ``on_failure(conn, directory, exc)`` records a failed
    directory once its work has been abandoned (its transaction rolled back, its hook closed)."""
    errors: list[str] = []
    with panel_db.get_conn() as conn:
        conn.autocommit = True

        def attempt(directory: Directory):
            with session(directory) as hook:
                return work(conn, directory, hook)

        def failed(directory: Directory, exc: BaseException, _reason: str) -> None:
            errors.append(f"{directory.name}: {first_line(exc)}")
            if log is not None:
                log.warning("AD directory %s (%s) failed: %s", directory.name, directory.conn_id, exc)
            if on_failure is not None:
                on_failure(conn, directory, exc)

        return for_each(read_directories(conn), attempt, report=report, kind="directory", plural="directories",
                        name=lambda d: f"{d.name} ({d.conn_id})", reason=failure_reason, on_failure=failed,
                        everything_failed=DirectoriesFailed,
                        message=lambda _outcome, tried: f"none of the {tried} directories could be worked;"
                                                        f" every AD directory failed: {'; '.join(errors[:5])}")


def sync_each_directory(panel_db, interval, log, step: str, work: Callable) -> dict:
    """``work(conn, hook, directory, report) -> (counts, mode, usn_from, usn_to)`` for each directory,
    each in one transaction with its ``ad_sync_runs`` row. The summary adds ``directories_synced``
    and, under ``directories``, each directory's mode and counts or its error."""
    report = StepReport().zero("directories_synced")
    per_directory: dict[str, dict] = {}

    def worked(conn, d: Directory, ad) -> None:
        with conn.transaction():
            counts, mode, usn_from, usn_to = work(conn, ad, d, report)
            _record_run(conn, d, step, interval.end, mode, usn_from, usn_to, counts, None)
        report.add("directories_synced")
        for key, n in counts.items():
            if isinstance(n, int):
                report.add(key, n)
        if len(per_directory) < KEEP_DIRECTORIES:
            per_directory[d.name] = {"mode": mode, **counts}
        if log is not None:
            log.info("AD %s: directory %s: %s %s", step, d.name, mode, dict(counts))

    def failed(conn, d: Directory, exc: Exception) -> None:
        with conn.transaction():
            conn.execute("UPDATE ad_directories SET last_error = %s, last_error_at = %s WHERE id = %s",
                         (str(exc)[:2000], interval.end, d.id))
            _record_run(conn, d, step, interval.end, "live", None, None, {}, str(exc)[:2000])
        if len(per_directory) < KEEP_DIRECTORIES:
            per_directory[d.name] = {"error": str(exc)[:300]}

    each_directory(panel_db, report, log, worked, on_failure=failed)
    return {**report.as_dict(), "directories": per_directory}


def _record_run(conn, d: Directory, step, at, mode, usn_from, usn_to, counts, error) -> None:
    conn.execute(
        "INSERT INTO ad_sync_runs (directory_id, step, interval_end, mode, usn_from, usn_to, counts, error, finished_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (directory_id, step, interval_end) DO UPDATE SET mode = EXCLUDED.mode,"
        " usn_from = EXCLUDED.usn_from, usn_to = EXCLUDED.usn_to, counts = EXCLUDED.counts, error = EXCLUDED.error,"
        " finished_at = EXCLUDED.finished_at",
        (d.id, step, at, mode, usn_from, usn_to, Jsonb({k: v for k, v in counts.items() if isinstance(v, int)}),
         error, at))


class Watermark:
    """One step's USN watermark for one directory: decides full or incremental, and is saved with
    the pass's writes (same transaction)."""

    def __init__(self, conn, ad, d: Directory, step: str, interval, params, *, periodic_full: bool = True):
        dse = ad.root_dse()
        self.conn, self.d, self.step = conn, d, step
        self.usn_now = dse["highestCommittedUSN"]
        self.invocation = dse["invocationId"]
        self.dse = dse
        row = conn.execute("SELECT usn_watermark, dc_invocation_id, last_full_at FROM ad_sync_state"
                           " WHERE directory_id = %s AND step = %s FOR UPDATE", (d.id, step)).fetchone()
        usn, invocation, last_full = row if row else (None, None, None)
        hours = float((params or {}).get("ad_full_sync_hours", FULL_SYNC_HOURS))
        self.full = (usn is None or invocation != self.invocation or bool((params or {}).get("ad_full_sync"))
                     or (periodic_full and (last_full is None or interval.end - last_full >= timedelta(hours=hours))))
        self.since = None if self.full else usn
        self.at = interval.end

    @property
    def mode(self) -> str:
        return "full" if self.full else "incremental"

    def save(self) -> None:
        self.conn.execute(
            "INSERT INTO ad_sync_state (directory_id, step, usn_watermark, dc_invocation_id, last_full_at, last_synced_at)"
            " VALUES (%(d)s, %(step)s, %(usn)s, %(inv)s, CASE WHEN %(full)s THEN %(at)s::timestamptz END, %(at)s)"
            " ON CONFLICT (directory_id, step) DO UPDATE SET usn_watermark = EXCLUDED.usn_watermark,"
            " dc_invocation_id = EXCLUDED.dc_invocation_id, last_synced_at = EXCLUDED.last_synced_at,"
            " last_full_at = coalesce(EXCLUDED.last_full_at, ad_sync_state.last_full_at)",
            {"d": self.d.id, "step": self.step, "usn": self.usn_now, "inv": self.invocation, "full": self.full,
             "at": self.at})


# -- panel-DB helpers ------------------------------------------------------------------------------------

def copy(conn, table: str, columns: Iterable[str], rows: Iterable[tuple]) -> int:
    """COPY ``rows`` into ``table`` (usually a temp table a set-based statement then reads) → how many."""
    n = 0
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as out:
        for row in rows:
            out.write_row(row)
            n += 1
    return n


def mark_unseen(conn, table: str, d: Directory, at, seen: list[tuple]) -> int:
    """After a full pass: the table's rows of the directory the pass did not see are deleted in AD
    (or moved out of the managed subtree)."""
    temp = f"_seen_{table}"
    conn.execute(f"CREATE TEMP TABLE {temp} (object_guid uuid PRIMARY KEY) ON COMMIT DROP")
    copy(conn, temp, ("object_guid",), set(seen))
    return conn.execute(f"UPDATE {table} t SET deleted = true, deleted_at = %s WHERE t.directory_id = %s"
                        f" AND NOT t.deleted AND NOT EXISTS (SELECT 1 FROM {temp} s WHERE s.object_guid = t.object_guid)",
                        (at, d.id)).rowcount


def org_ids(conn, d: Directory) -> dict[str, int]:
    return {dn_key(dn): oid for oid, dn in conn.execute(
        "SELECT id, dn FROM ad_organisations WHERE directory_id = %s AND NOT deleted", (d.id,))}


# -- DNs and filters -------------------------------------------------------------------------------------

def organisation_of(dn: str, base_dn: str) -> str | None:
    """The DN of the organisation OU (directly under ``base_dn``) holding ``dn``; None outside any."""
    top = parent_under(dn, base_dn)
    return top if top is not None and top[:3].upper() == "OU=" else None


def within(dn: str, base_dn: str) -> bool:
    """Whether ``dn`` is ``base_dn`` or below it (compared component by component)."""
    key, base = dn_key(dn), dn_key(base_dn)
    return key == base or key.endswith("," + base)


def parent_dn(dn: str) -> str:
    return ",".join(dn_components(dn)[1:])


def rdn(attribute: str, value: str) -> str:
    from ldap3.utils.dn import escape_rdn

    escaped = escape_rdn(value)
    if escaped.startswith("#"):
        escaped = "\\" + escaped
    return f"{attribute}={escaped}"


def guid_or(guids: Iterable[Any]) -> str:
    return "(|" + "".join(f"(objectGUID={guid_filter_value(g)})" for g in guids) + ")"


def chunks(items: list, size: int = GUID_BATCH) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
