"""What every Microsoft 365 thread shares: who the tenants and the CSP profiles are, how a tenant's
Graph pages reach PostgreSQL, and the loops over tenants and over profiles.

Tenants (Microsoft Graph). Every enabled ``m365_tenants`` row is worked through its own Airflow
connection (:mod:`panelflow.hooks.microsoft_graph`: tokens, throttling, paging), tenants in parallel
on a bounded thread pool (``params["tenant_concurrency"]``, default 4), each thread with its own
event loop (the Graph hook is asynchronous) and its own panel-DB connection. A tenant that fails —
credentials refused, throttled past the retries, a malformed page — is recorded on its row
(``last_error``) and named in the summary; the other tenants are worked all the same. The step
fails only when tenants were due and none could be synced (an outage should be seen). This loop is
not :func:`panelflow.step.for_each`: it runs tenants in parallel, records each failure on the
tenant's row whatever it was, and its summary (``tenants_synced``) and message are the threads'.

Page writes use ``synchronous_commit = off``: a crash may lose the last few commits, but never
out of order, so a saved deltaLink is never ahead of the pages it covers — the worst case is
reading those changes again.

CSP profiles (Partner Center). Each enabled ``csp_profiles`` row is one Partner Center account; its
Airflow connection (named by ``conn_id``) holds the app's credentials, and one
:class:`~panelflow.hooks.partner_center.PartnerCenterHook` per profile and run talks to it. A profile
that fails — its credentials refused, Partner Center unavailable through every retry, a malformed
page — is reported (the summary's ``skipped``, the profile's ``csp_profile_syncs.last_error``) with
nothing of the failed read written, while the other profiles sync: :func:`panelflow.step.for_each`'s
rule, so a step fails (Airflow retries it and alerts) only when every profile it tried failed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from typing import NamedTuple

from panelflow.step import StepReport, for_each

CONCURRENCY = 4
PIPELINE_DEPTH = 3      # pages fetched ahead of the one being written
RUN_BUDGET_SECONDS = {"offers": 75 * 60, "reconciliation": 100 * 60, "renewals": 4 * 60, "orders": 5 * 60,
                      "licence_usage": 5 * 60}
EMAIL_RE = r"^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$"


# -- tenants --------------------------------------------------------------------------------------

class RawJson(bytes):
    """A page's body as it came, sent to PostgreSQL as a ``jsonb`` parameter without decoding it here."""


def _raw_json_dumper():
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class RawJsonDumper(Dumper):
        format = Format.TEXT

        def dump(self, obj):
            return obj

    return RawJsonDumper


def prepare_connection(conn) -> None:
    """A sync connection: pages go as raw jsonb, commits do not wait for the disk (see the module's doc)."""
    dumper = _raw_json_dumper()
    dumper.oid = conn.adapters.types["jsonb"].oid
    conn.adapters.register_dumper(RawJson, dumper)
    conn.autocommit = True
    conn.execute("SET synchronous_commit = off")


class TenantSyncFailed(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def graph_errors():
    from panelflow.hooks import microsoft_graph as g

    return g


def page_rejected(entity: str, page, exc: Exception):
    g = graph_errors()
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return g.GraphMalformedResponse(f"{entity} page {page.number} ({page.url}) rejected, nothing of it written: "
                                    f"{detail}", url=page.url)


async def pipelined(pages, write, depth: int = PIPELINE_DEPTH) -> object:
    """Write each page (in a worker thread) while the next ones are fetched; the last page is returned.

    Pages are written in order, one at a time; at most ``depth`` fetched pages wait for their
    write. A failed write stops the fetching (its error is raised) and the pages after it are not
    written; whatever ends the loop, no write is left running.
    """
    inflight: deque = deque()
    last = None

    async def after(previous, page):
        if previous is not None:
            await previous          # a failed write fails every later one, unwritten
        await asyncio.to_thread(write, page)

    try:
        async for page in pages:
            while inflight and (len(inflight) >= depth or inflight[0].done()):
                await inflight.popleft()
            inflight.append(asyncio.ensure_future(after(inflight[-1] if inflight else None, page)))
            last = page
        while inflight:
            await inflight.popleft()
    finally:
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)
    return last


def _classify(exc: BaseException) -> str:
    g = graph_errors()
    import psycopg

    if isinstance(exc, TenantSyncFailed):
        return exc.reason
    for cls, reason in ((g.GraphAuthenticationError, "credentials refused"),
                        (g.GraphMalformedResponse, "malformed page rejected"),
                        (g.GraphUnavailable, "Graph unavailable (throttled or failing past the retries)"),
                        (g.GraphRequestRejected, "Graph refused a request"),
                        (psycopg.Error, "panel database error")):
        if isinstance(exc, cls):
            return reason
    return "unexpected error"


def _record_failure(panel_db, tenant_id: str, at: datetime, message: str) -> None:
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        conn.execute("UPDATE m365_tenants SET last_error = %s, last_error_at = %s WHERE tenant_id = %s",
                     (message[:2000], at, tenant_id))


def in_thread(panel_db, tenant_id: str, conn_id: str, at: datetime, job) -> dict:
    """Run one tenant's job (a coroutine function) on this thread's own event loop and DB connection."""
    from collections import Counter

    counts: Counter = Counter()
    try:
        with panel_db.get_conn() as conn:
            first = asyncio.run(job(conn, tenant_id, conn_id, at, counts))
    except Exception as exc:  # one tenant's failure, whatever it is, must not stop the others
        message = str(exc) or type(exc).__name__
        try:
            _record_failure(panel_db, tenant_id, at, message)
        except Exception:  # noqa: BLE001 — the DB may be what failed; the report still names the tenant
            pass
        raise TenantSyncFailed(_classify(exc), message) from exc
    counts["first_syncs"] += int(bool(first))
    return counts


def run_tenants(panel_db, interval, params, log, job, label: str) -> dict:
    report = StepReport()
    with panel_db.get_conn() as conn:
        conn.autocommit = True
        tenants = [(str(t), c) for t, c in conn.execute(
            "SELECT tenant_id, conn_id FROM m365_tenants WHERE enabled ORDER BY tenant_id").fetchall()]
        if label == "sync":
            conn.execute("UPDATE m365_tenants SET last_sync_started_at = now() WHERE enabled")
    report.add("tenants", len(tenants))
    notes = []
    default = CONCURRENCY if label == "sync" else 1
    workers = max(1, min(int((params or {}).get("tenant_concurrency") or default), len(tenants) or 1))
    # In an Airflow task, connections are fetched through the task supervisor's channel, which
    # only the task's own thread may use: with one worker the tenants run inline on that thread.
    # (Office365SyncWork's DAG gets its parallelism from one mapped task per tenant instead.)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"m365-{label}") if workers > 1 else None

    class _Done:
        def __init__(self, fn):
            try:
                self.value, self.error = fn(), None
            except Exception as exc:  # noqa: BLE001 - re-raised by result(), as a future does
                self.value, self.error = None, exc

        def result(self):
            if self.error is not None:
                raise self.error
            return self.value

    def submit(t, c):
        if pool is not None:
            return pool.submit(in_thread, panel_db, t, c, interval.end, job)
        return _Done(lambda: in_thread(panel_db, t, c, interval.end, job))

    try:
        futures = {submit(t, c): (t, c) for t, c in tenants}
        done = as_completed(futures) if pool is not None else list(futures)
        for future in done:
            tenant_id, conn_id = futures[future]
            try:
                counts = future.result()
            except TenantSyncFailed as exc:
                report.add("tenants_failed")
                report.skip(exc.reason, f"tenant {tenant_id} ({conn_id}): {exc}")
                if log is not None:
                    log.warning("M365 %s of tenant %s (%s) failed: %s", label, tenant_id, conn_id, exc)
                continue
            report.add("tenants_synced")
            notes += [f"tenant {tenant_id}: {n}" for n in counts.pop("_notes", [])]
            for key, n in counts.items():
                report.add(key, n)
    finally:
        if pool is not None:
            pool.shutdown()
    report.counts.setdefault("tenants_synced", 0)
    report.counts.setdefault("tenants_failed", 0)
    summary = report.as_dict()
    if notes:
        summary["notes"] = notes[: report.keep]
    if tenants and not report.counts["tenants_synced"]:
        raise RuntimeError(f"M365 {label}: none of the {len(tenants)} tenant(s) could be synced: "
                           f"{summary['skipped_examples'][:5]}")
    return summary


# -- CSP profiles ---------------------------------------------------------------------------------

class CspProfile(NamedTuple):
    id: int
    name: str
    conn_id: str
    country: str | None


class _BudgetSpent(ValueError):
    """The run's time budget ran out before a profile's read was complete (reported like a failure)."""


class PartnerCenterSyncFailed(RuntimeError):
    """Every CSP profile the step tried failed: the run fails, so Airflow retries it and alerts."""


_PROFILES = """
SELECT p.id, p.name, p.conn_id, p.country FROM csp_profiles p
LEFT JOIN csp_profile_syncs s ON s.profile_id = p.id AND s.task = %s
WHERE p.enabled ORDER BY s.last_attempt_at NULLS FIRST, p.id
"""

_MARK = """
INSERT INTO csp_profile_syncs AS s (profile_id, task, last_attempt_at, last_synced_at, last_error)
VALUES (%(profile)s, %(task)s, %(at)s, CASE WHEN %(error)s::text IS NULL THEN %(at)s END, %(error)s)
ON CONFLICT (profile_id, task) DO UPDATE
SET last_attempt_at = EXCLUDED.last_attempt_at, last_error = EXCLUDED.last_error,
    last_synced_at = coalesce(EXCLUDED.last_synced_at, s.last_synced_at)
"""


def _profile_errors():
    from airflow.exceptions import AirflowNotFoundException

    from panelflow.hooks.partner_center import PartnerCenterError

    return (PartnerCenterError, AirflowNotFoundException, ValueError)


def _describe(exc: BaseException) -> str:
    from airflow.exceptions import AirflowNotFoundException

    return f"{type(exc).__name__}: {exc}" if isinstance(exc, AirflowNotFoundException) else str(exc)


def _mark(conn, profile_id: int, task: str, at, error: str | None = None) -> None:
    conn.execute(_MARK, {"profile": profile_id, "task": task, "at": at, "error": error[:1000] if error else None})


class Profiles:
    """One step's pass over CSP profiles: :func:`panelflow.step.for_each` works them, one hook each,
    and the outcome of each is recorded on ``csp_profile_syncs``.

    The summary keeps the threads' own words — a failed profile is a ``CSP profile not synced``
    entry naming the profile and its error, ``profiles_synced`` counts the others — and a profile
    whose turn comes after the run's time budget (``RUN_BUDGET_SECONDS``) is deferred
    (``profiles_deferred``), not failed.
    """

    def __init__(self, conn, task: str, at, report: StepReport, log):
        self.conn, self.task, self.at, self.report, self.log = conn, task, at, report, log
        self.deadline = time.monotonic() + RUN_BUDGET_SECONDS[task]
        report.zero("profiles", "profiles_synced")

    def listed(self) -> list:
        """The enabled profiles, the one this step tried longest ago first."""
        return self.conn.execute(_PROFILES, (self.task,)).fetchall()

    def spent(self) -> bool:
        return time.monotonic() > self.deadline

    def each(self, profiles, work, *, must_reach: bool = True) -> None:
        """``work(hook, profile)`` for each profile. ``must_reach=False``: every profile failing is
        reported but not raised (a step that still has work to do with what it read before)."""
        from panelflow.hooks.partner_center import PartnerCenterHook

        errors = _profile_errors()

        def one(profile: CspProfile) -> None:
            with PartnerCenterHook(profile.conn_id) as hook:
                work(hook, profile)
            _mark(self.conn, profile.id, self.task, self.at)
            self.report.add("profiles_synced")

        try:
            for_each([CspProfile(*p) for p in profiles], one, report=self.report, kind="profile",
                     reason=lambda exc: _describe(exc) if isinstance(exc, errors) else None,
                     skip_as=lambda who, why: ("CSP profile not synced", f"{who}: {why}"),
                     on_failure=lambda profile, _exc, why: _mark(self.conn, profile.id, self.task, self.at, why),
                     stop=self.spent, log=self.log, everything_failed=PartnerCenterSyncFailed, what="CSP profile")
        except PartnerCenterSyncFailed:
            if must_reach:
                raise


def group_by_profile(rows) -> dict[CspProfile, list]:
    """Rows whose first four columns are their profile's, grouped by it (in the rows' order)."""
    groups: dict[CspProfile, list] = {}
    for row in rows:
        groups.setdefault(CspProfile(*row[:4]), []).append(row)
    return groups


def summary(report: StepReport, log, what: str) -> dict:
    out = report.as_dict()
    if log is not None and out["skipped"]:
        log.warning("%s: %s", what, out["skipped"])
    return out
