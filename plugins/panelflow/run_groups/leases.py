"""The run-group lease table: take all of a run's groups or none, give them back, renew them,
and tell a live holder from a stale one (the design is in ``panelflow.run_groups``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

GUARD_TASK_ID = "run_group_guard"
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


def release(conn, dag_id: str, run_id: str, taken_by: datetime | None = None) -> int:
    """Give back every group the run holds and leave the queue; wakes the waiting triggers.

    ``taken_by``: only what the run took (or queued for) by then — the run's end, when the
    release comes after it: a run cleared and re-running meanwhile keeps what it took again.
    """
    args = {"dag": dag_id, "run": run_id, "by": taken_by}
    with conn.transaction():
        released = conn.execute("DELETE FROM run_group_leases WHERE dag_id = %(dag)s AND run_id = %(run)s"
                                " AND (%(by)s::timestamptz IS NULL OR acquired_at <= %(by)s)", args).rowcount
        conn.execute("DELETE FROM run_group_waiters WHERE dag_id = %(dag)s AND run_id = %(run)s"
                     " AND (%(by)s::timestamptz IS NULL OR queued_at <= %(by)s)", args)
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


def panel_conn(conn_id: str):
    from panelflow.hooks.panel_db import PanelDatabaseHook

    conn = PanelDatabaseHook(postgres_conn_id=conn_id).get_conn()
    conn.autocommit = True
    return conn
