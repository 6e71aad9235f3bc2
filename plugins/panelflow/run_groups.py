"""Run groups at the level of whole runs: threads whose groups intersect never run at the same time.

JeraSoft: "If two services have intersecting groups, the system will not run them
simultaneously and will put one of the services in queue." A run group is also an Airflow pool,
but a pool only bounds *tasks*: the tasks of two threads' runs would still interleave. So every
DAG of a thread with run groups is wrapped (``guard_run``, called by the factory):

    [wait_for_pending_work] → run_group_guard → the thread's steps → run_group_release (teardown)

**Acquiring.** ``run_group_guard`` (:class:`RunGroupGuardOperator`) takes a *lease* on every group
of its thread at once, in the panel DB (task code cannot use Airflow's metadata DB in Airflow 3):
one ``run_group_leases`` row per group naming the holding DAG run. All or nothing, in one
transaction serialised by one transaction-scoped advisory lock — so two threads with overlapping
multi-group sets (the dining philosophers: A {a, b}, B {b, c}, C {c, a}) can never each hold part
of what the other needs, and no lock order has to be agreed on. If a group is held, the run is
**in queue**: the guard defers to :class:`~panelflow.triggers.RunGroupLeaseTrigger`, which waits in
the triggerer (no worker slot, no pool slot: the guard is in ``default_pool``, whose deferred
tasks take no slot) and retries on every release (``NOTIFY``) and at least every ``poll_seconds``.
Once it holds the groups the trigger ends the guard itself (``TaskSuccessEvent``) instead of
resuming it in a worker: a second or two sooner, and clear of an Airflow 3.3 race in which the
deferral's late executor event fails a task already re-queued under the same try number.

**Fairness.** A waiting run is a ``run_group_waiters`` row with a ``position``. A run that holds
nothing may not acquire while an earlier live waiter wants an intersecting group, even if its
own groups are free: first come, first served, so a run needing two groups is not starved by a
stream of runs each needing one of them.

**Releasing.** ``run_group_release`` (:class:`ReleaseRunGroupsOperator`) is the guard's Airflow
*teardown*: it runs when the steps are done whatever their outcome (succeeded, failed, skipped), its
own state does not decide the run's, and clearing a step in the UI clears guard and release with
it (the rerun queues again). It deletes the run's leases and waiter row and notifies the waiters;
the next run in queue starts its first step 1–3 s after the release ended (median; up to 11 s on
a busy machine), measured on 2 cores. A run marked failed from the UI/REST API still gets its
release (Airflow fails the running step and runs the teardown): its partner held the groups
2.1–2.8 s later.

**Crashes.** A lease the release never removed — the release skipped or failed for good (the
panel DB unreachable just then), a run Airflow stopped running some other way — must not block
forever. Before waiting on a
holder (or on an earlier waiter) the guard and the trigger ask Airflow for the holder's DAG-run
state through the Task SDK's execution API (``RuntimeTaskInstance.get_dagrun_state``: no
credentials, no metadata DB access); a holder whose run is no longer ``queued``/``running`` (or
was deleted) is stale and its rows are removed. Bound: ``poll_seconds`` (2 s) plus one question
through the triggerer's supervisor after Airflow has ended the holder's run — 2.4–7.8 s from the
run's end to the partner holding the groups, measured on 2 cores (tests/test_run_group_exclusion.py).
A killed task process is failed by its supervisor within seconds and the release (a teardown)
still runs: the partner held the groups 2–8 s after the kill. A dead supervisor is failed by the
scheduler after ``[scheduler] task_instance_heartbeat_timeout`` (120 s in ``airflow.cfg.template``).
A run whose killed task still has retries left is still running and keeps its lease, on purpose:
the retry is part of the run and must not meet its partner.

A lease also expires. Every task of the holding run pushes ``expires_at`` forward when it starts
(:class:`RenewRunGroupLease`, the run's heartbeat), by the lease's length: the thread's task
timeout plus the longest retry delay plus a margin (``lease_minutes``, set by the factory). A live
run starts a task at least that often, so an expired lease means a run Airflow still calls
running but that executes nothing (say its tasks sit queued for a worker that never comes); its
partner takes over then rather than never. That is the one case where a partner may start
before the holder ends; the bound is ``lease_minutes`` after the holder's last task start.
Waiters are refreshed on every poll; one not seen for ``WAITER_TTL`` (a waiting trigger that
nobody runs any more) or whose run has ended stops holding its place.

Times here are the database clock (``clock_timestamp()``): these are infrastructure leases, not a
step's business clock (that stays the run's data interval).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from airflow.sdk import BaseOperator

GUARD_TASK_ID = "run_group_guard"
RELEASE_TASK_ID = "run_group_release"
CHANNEL = "panelflow_run_group_leases"   # NOTIFY channel: a lease was released or cleared
ALIVE = frozenset({"queued", "running"})  # DAG-run states that still own their leases
WAITER_TTL = timedelta(seconds=60)
POLL_SECONDS = 2.0
# Margin on top of a thread's task timeout and longest retry delay (factory: max_retry_delay 30 min).
LEASE_MARGIN_MINUTES = 35
_LOCK_KEY = 0x70666C6F77_52470  # pg_advisory_xact_lock key shared by every acquisition ("pflow" "RG")

log = logging.getLogger(__name__)

RunState = Callable[[str, str], "str | None"]


class Attempt(NamedTuple):
    """What one try to acquire found: ``acquired``, or the runs it waits for (``dag_id/run_id``)."""

    acquired: bool
    blockers: tuple[str, ...] = ()
    cleared: tuple[str, ...] = ()   # stale holders/waiters this try removed
    waited_since: datetime | None = None


def lease_minutes(timeout_minutes: int) -> int:
    """A lease's length: a live run starts a task at least this often (see the module doc)."""
    return timeout_minutes + LEASE_MARGIN_MINUTES


# -- the lease table ------------------------------------------------------------------------------

_REGISTER = """
INSERT INTO run_group_waiters (dag_id, run_id, run_groups) VALUES (%(dag)s, %(run)s, %(groups)s::text[])
ON CONFLICT (dag_id, run_id) DO UPDATE SET seen_at = clock_timestamp(), run_groups = EXCLUDED.run_groups
RETURNING position, queued_at
"""

_HELD_BY_ME = """
SELECT count(*) FROM run_group_leases WHERE dag_id = %(dag)s AND run_id = %(run)s AND run_group = ANY(%(groups)s::text[])
"""

# Who stands between this run and its groups: other runs' leases on them, and (for a run holding
# nothing yet) live waiters ahead of it wanting any of them.
_BLOCKERS = """
SELECT 'lease' AS kind, dag_id, run_id, bool_or(expires_at < clock_timestamp()) AS expired
FROM run_group_leases
WHERE run_group = ANY(%(groups)s::text[]) AND NOT (dag_id = %(dag)s AND run_id = %(run)s)
GROUP BY dag_id, run_id
UNION ALL
SELECT 'waiter', dag_id, run_id, seen_at < clock_timestamp() - %(waiter_ttl)s
FROM run_group_waiters
WHERE %(fifo)s AND position < %(position)s AND run_groups && %(groups)s::text[]
"""

_CLEAR_STALE = """
WITH ended AS (SELECT * FROM unnest(%(dags)s::text[], %(runs)s::text[]) AS e(dag_id, run_id)),
expired AS (SELECT DISTINCT dag_id, run_id FROM run_group_leases WHERE expires_at < clock_timestamp()),
leases AS (
    DELETE FROM run_group_leases l
    WHERE (l.dag_id, l.run_id) IN (SELECT dag_id, run_id FROM ended UNION SELECT dag_id, run_id FROM expired)
    RETURNING l.dag_id, l.run_id
),
waiters AS (
    DELETE FROM run_group_waiters w
    WHERE (w.dag_id, w.run_id) IN (SELECT dag_id, run_id FROM ended)
       OR w.seen_at < clock_timestamp() - %(waiter_ttl)s
    RETURNING w.dag_id, w.run_id
)
SELECT DISTINCT dag_id || '/' || run_id FROM (SELECT * FROM leases UNION ALL SELECT * FROM waiters) s
"""

_TAKE = """
INSERT INTO run_group_leases (run_group, dag_id, run_id, waited_since, acquired_at, heartbeat_at, expires_at)
SELECT g, %(dag)s, %(run)s, %(since)s, t.now, t.now, t.now + %(ttl)s
FROM unnest(%(groups)s::text[]) g, (SELECT clock_timestamp() AS now) t
ON CONFLICT (run_group) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at, expires_at = EXCLUDED.expires_at
WHERE run_group_leases.dag_id = EXCLUDED.dag_id AND run_group_leases.run_id = EXCLUDED.run_id
"""


def _alive(run_state: RunState, dag_id: str, run_id: str) -> bool:
    """Whether the run still owns what it holds. When Airflow cannot be asked, assume it does:
    taking a lease from a live run breaks the exclusion, waiting one more poll does not."""
    try:
        return run_state(dag_id, run_id) in ALIVE
    except Exception as exc:  # noqa: BLE001 - any failure to ask is "unknown", never "dead"
        log.warning("cannot read the state of %s/%s (%s); treating it as running", dag_id, run_id, exc)
        return True


def try_acquire(conn, dag_id: str, run_id: str, run_groups: Iterable[str], *, lease: timedelta,
                run_state: RunState) -> Attempt:
    """One try to take every group of ``run_groups`` for the run, all or none.

    ``conn`` is a psycopg 3 connection in autocommit mode; ``run_state(dag_id, run_id)`` gives a
    DAG run's state (None: no such run). Idempotent: a run already holding its groups gets them
    again (a retried guard), with the lease renewed.
    """
    groups = sorted(set(run_groups))
    if not groups:
        return Attempt(True)
    me = {"dag": dag_id, "run": run_id, "groups": groups, "waiter_ttl": WAITER_TTL}
    holds_some = conn.execute(_HELD_BY_ME, me).fetchone()[0] > 0
    position, queued_at = conn.execute(_REGISTER, me).fetchone()
    args = {**me, "position": position, "fifo": not holds_some}

    # Liveness of whoever blocks, asked outside any transaction (it is a call to the API server).
    ended: set[tuple[str, str]] = set()
    for _kind, dag, run, expired in conn.execute(_BLOCKERS, args).fetchall():
        if not expired and not _alive(run_state, dag, run):
            ended.add((dag, run))

    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        cleared = tuple(r[0] for r in conn.execute(_CLEAR_STALE, {
            "dags": [d for d, _ in ended], "runs": [r for _, r in ended], "waiter_ttl": WAITER_TTL}).fetchall())
        if cleared:
            conn.execute("SELECT pg_notify(%s, 'cleared')", (CHANNEL,))
        # under the lock: anything still in the way (including runs that appeared meanwhile) blocks
        blockers = tuple(sorted({f"{d}/{r}" for _k, d, r, _e in conn.execute(_BLOCKERS, args).fetchall()}))
        if blockers:
            conn.execute("UPDATE run_group_waiters SET seen_at = clock_timestamp() WHERE dag_id = %(dag)s"
                         " AND run_id = %(run)s", me)
            return Attempt(False, blockers, cleared)
        conn.execute(_TAKE, {**me, "since": queued_at, "ttl": lease})
        conn.execute("DELETE FROM run_group_waiters WHERE dag_id = %(dag)s AND run_id = %(run)s", me)
    return Attempt(True, (), cleared, queued_at)


def release(conn, dag_id: str, run_id: str) -> int:
    """Give back every group the run holds and leave the queue; wakes the waiting triggers."""
    with conn.transaction():
        released = conn.execute("DELETE FROM run_group_leases WHERE dag_id = %s AND run_id = %s",
                                (dag_id, run_id)).rowcount
        conn.execute("DELETE FROM run_group_waiters WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))
        conn.execute("SELECT pg_notify(%s, 'released')", (CHANNEL,))
    return released


def renew(conn, dag_id: str, run_id: str) -> int:
    """The holding run's heartbeat: push its leases' expiry forward by their own length."""
    return conn.execute(
        "UPDATE run_group_leases SET expires_at = t.now + (expires_at - heartbeat_at), heartbeat_at = t.now"
        " FROM (SELECT clock_timestamp() AS now) t WHERE dag_id = %s AND run_id = %s", (dag_id, run_id)).rowcount


def dagrun_state(dag_id: str, run_id: str) -> str | None:
    """A DAG run's state from Airflow's execution API (works in a task and in the triggerer);
    None when the run does not exist (deleted)."""
    from airflow.sdk.exceptions import AirflowRuntimeError
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    try:
        state = RuntimeTaskInstance.get_dagrun_state(dag_id=dag_id, run_id=run_id)
    except AirflowRuntimeError as exc:
        detail = getattr(exc.error, "detail", None) or {}
        if isinstance(detail, dict) and detail.get("status_code") == 404:
            return None
        raise
    return getattr(state, "value", state)


def _panel_conn(conn_id: str):
    from panelflow.hooks.panel_db import PanelDatabaseHook

    conn = PanelDatabaseHook(postgres_conn_id=conn_id).get_conn()
    conn.autocommit = True
    return conn


def _holder(context) -> tuple[str, str]:
    dag_run = context["dag_run"]
    return dag_run.dag_id, dag_run.run_id


# -- the operators --------------------------------------------------------------------------------

class RunGroupGuardOperator(BaseOperator):
    """Takes the run's groups, or waits in queue (deferred, no worker slot) until it can."""

    template_fields = ()
    ui_color = "#fdf3d8"

    def __init__(self, *, run_groups: list[str], lease_minutes: int, poll_seconds: float = POLL_SECONDS,
                 conn_id: str = "panel_db", **kwargs):
        super().__init__(**kwargs)
        self.run_groups = sorted(set(run_groups))
        self.lease_minutes = lease_minutes
        self.poll_seconds = poll_seconds
        self.conn_id = conn_id

    def execute(self, context):
        dag_id, run_id = _holder(context)
        with _panel_conn(self.conn_id) as conn:
            attempt = try_acquire(conn, dag_id, run_id, self.run_groups,
                                  lease=timedelta(minutes=self.lease_minutes), run_state=dagrun_state)
        if attempt.cleared:
            self.log.warning("cleared stale leases of ended runs: %s", ", ".join(attempt.cleared))
        if attempt.acquired:
            self.log.info("holding run groups %s", ", ".join(self.run_groups))
            return {"run_groups": self.run_groups, "waited": False, "cleared": list(attempt.cleared),
                    "waited_since": None}
        self.log.info("in queue: run groups %s are held by %s", ", ".join(self.run_groups), ", ".join(attempt.blockers))
        from panelflow.triggers import RunGroupLeaseTrigger

        # the trigger takes the groups and ends this task itself (TaskSuccessEvent): no resume
        self.defer(
            trigger=RunGroupLeaseTrigger(dag_id=dag_id, run_id=run_id, run_groups=self.run_groups,
                                         lease_seconds=self.lease_minutes * 60, poll_seconds=self.poll_seconds,
                                         conn_id=self.conn_id),
            method_name="execute_complete",
        )

    def execute_complete(self, context, event: Any = None):
        """Reached only if a trigger resumes the task instead of ending it: take the groups here."""
        return self.execute(context)


class ReleaseRunGroupsOperator(BaseOperator):
    """The guard's teardown: gives the run's groups back however its steps ended."""

    template_fields = ()
    ui_color = "#fdf3d8"

    def __init__(self, *, conn_id: str = "panel_db", **kwargs):
        super().__init__(**kwargs)
        self.conn_id = conn_id

    def execute(self, context) -> dict[str, int]:
        dag_id, run_id = _holder(context)
        with _panel_conn(self.conn_id) as conn:
            released = release(conn, dag_id, run_id)
        self.log.info("released %s run group lease(s)", released)
        return {"released": released}


class RenewRunGroupLease:
    """``on_execute_callback`` of a guarded thread's tasks: the holding run's heartbeat.

    Never fails the task: a missed renewal only shortens the lease, which the next task renews.
    """

    def __init__(self, conn_id: str = "panel_db"):
        self.conn_id = conn_id

    def __call__(self, context) -> None:
        if context["ti"].task_id == GUARD_TASK_ID:
            return  # the guard takes (and renews) the lease itself
        try:
            with _panel_conn(self.conn_id) as conn:
                renew(conn, *_holder(context))
        except Exception as exc:  # noqa: BLE001
            log.warning("run group lease not renewed: %s", exc)


def guard_run(dag, run_groups: list[str], *, steps: Iterable, firsts: Iterable, timeout_minutes: int,
              poll_seconds: float = POLL_SECONDS) -> BaseOperator:
    """Put the guard before ``firsts`` (the step tasks nothing else precedes) and its teardown
    after every step; returns the guard (a daemon's wait task goes before it)."""
    guard = RunGroupGuardOperator(
        task_id=GUARD_TASK_ID,
        task_display_name=f"In queue while another thread holds {', '.join(sorted(run_groups))}",
        doc_md="Takes this thread's run groups for the whole run, or waits (deferred, holding no worker slot) "
               "until no thread sharing a run group is running. See `panelflow.run_groups`.",
        run_groups=run_groups, lease_minutes=lease_minutes(timeout_minutes), poll_seconds=poll_seconds,
        dag=dag,
    )
    release = ReleaseRunGroupsOperator(
        task_id=RELEASE_TASK_ID,
        task_display_name="Release run groups",
        doc_md="Gives the run groups back when the steps are done, whatever their outcome.",
        dag=dag,
    )
    steps = list(steps)
    for t in firsts:
        if not t.upstream_list:
            guard >> t
    for t in steps:
        if not t.downstream_list:
            t >> release
    release.as_teardown(setups=guard)
    return guard
