"""Run groups and daemons in a real Airflow 3 (scheduler, triggerer, LocalExecutor with 4 worker
slots, API server) started on loopback by this module — DAGs built by the product's factory from
a small catalog, the real guard, the real panel DB.

- Exclusion: four threads in a ring, each sharing a run group with both neighbours (the
  dining-philosophers shape that deadlocks naive per-group locking), triggered 20 times at once:
  from the task instances' start and end times, no two runs of intersecting threads overlap, and
  every run succeeds exactly once.
- Crashes: a holder whose task process is killed with SIGKILL, a holder whose run is marked
  failed over the REST API, and a holder that ends without its release (stale leases, cleared by
  the partner after asking Airflow for the holder's run) block their partner only for seconds.
- Daemons: more idle daemons than worker slots sit deferred (no slot taken; the one with a run
  group holds no lease while idle), a normal thread still runs, and a queued row is picked up
  within 10 s.

The module's Airflow lives only as long as the module (its daemons must not work the queue rows
of the suite's later tests).
"""

from __future__ import annotations

import itertools
import os
import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import psutil
import psycopg
import pytest

from harness.airflow_cluster import DAEMONS, RING, dag_id, local_cluster

RUNS_PER_THREAD = 5  # 4 threads × 5 = 20 runs triggered at once


def when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@pytest.fixture(scope="module")
def cluster(postgres, migrated_panel_db):
    with local_cluster(postgres, migrated_panel_db) as c:
        print(f"\nAirflow up in {c.started_in:.1f} s")
        yield c


@pytest.fixture(autouse=True)
def _empty_leases(migrated_panel_db):
    with psycopg.connect(migrated_panel_db, autocommit=True) as conn:
        conn.execute("TRUNCATE run_group_leases, run_group_waiters RESTART IDENTITY CASCADE")


def spans(api, dag: str, run_ids: list[str]) -> dict[str, dict[str, dict]]:
    """run_id → task_id → task instance, for the given runs of ``dag``."""
    wanted = set(run_ids)
    out: dict[str, dict[str, dict]] = {}
    for ti in api.task_instances(dag):
        if ti["dag_run_id"] in wanted:
            out.setdefault(ti["dag_run_id"], {})[ti["task_id"]] = ti
    return out


def test_intersecting_threads_never_run_together(cluster, migrated_panel_db):
    api = cluster.api
    names = list(RING)
    order = [n for _ in range(RUNS_PER_THREAD) for n in names]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        triggered = list(pool.map(lambda n: (n, api.trigger(dag_id(n))), order))
    runs = {n: [r for m, r in triggered if m == n] for n in names}
    states = {n: api.wait_runs(dag_id(n), runs[n], timeout=200) for n in names}
    took = time.monotonic() - started
    assert {n: set(s.values()) for n, s in states.items()} == dict.fromkeys(names, {"success"}), states

    tis = {n: spans(api, dag_id(n), runs[n]) for n in names}
    sections = {}  # (thread, run) → (first step start, last step end)
    for n in names:
        assert len(tis[n]) == RUNS_PER_THREAD  # none lost
        for run_id, by_task in tis[n].items():
            assert {t: (ti["state"], ti["try_number"]) for t, ti in by_task.items()} == {
                "run_group_guard": ("success", 1), "expire_sessions": ("success", 1)}, (n, run_id)
            step = by_task["expire_sessions"]
            sections[(n, run_id)] = (when(step["start_date"]), when(step["end_date"]))

    overlaps, side_by_side = [], 0
    for (a, ra), (b, rb) in itertools.combinations(sections, 2):
        (s1, e1), (s2, e2) = sections[(a, ra)], sections[(b, rb)]
        together = s1 < e2 and s2 < e1
        if set(RING[a]) & set(RING[b]):
            if together:
                overlaps.append(((a, ra, s1, e1), (b, rb, s2, e2)))
        elif together:
            side_by_side += 1
    assert overlaps == []

    # the exclusion was exercised: runs did queue, and each got its groups once the holder ended
    ended = {(n, r["dag_run_id"]): when(r["end_date"]) for n in names
             for r in api.call("GET", f"/api/v2/dags/{dag_id(n)}/dagRuns?limit=200")["dag_runs"]}
    handoffs = []
    for n in names:
        for run_id, by_task in tis[n].items():
            guard = api.xcom(dag_id(n), run_id, "run_group_guard")
            if not guard["waited"]:
                continue
            start = sections[(n, run_id)][0]
            # the intersecting run that ended last before this one started
            before = [ended[(m, r)] for (m, r) in sections
                      if m != n and set(RING[m]) & set(RING[n]) and sections[(m, r)][1] <= start]
            if before:
                handoffs.append((start - max(before)).total_seconds())
    assert len(handoffs) >= 5
    # every run gave its groups back (the DAG's end callbacks, run by the dag-processor soon after)
    assert _settled(api, migrated_panel_db) == (0, 0)
    print(f"\n{len(order)} runs in {took:.1f} s; {len(handoffs)} waited; holder's run end → waiter's step "
          f"start: median {statistics.median(handoffs):.1f} s, max {max(handoffs):.1f} s; "
          f"disjoint runs side by side: {side_by_side}")


def _settled(api, panel_url: str, timeout: float = 60) -> tuple[int, int]:
    """(leases, waiters) left once the release callbacks of ended runs had ``timeout`` to come."""
    def counts():
        with psycopg.connect(panel_url) as conn:
            return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                         for t in ("run_group_leases", "run_group_waiters"))
    try:
        return api.wait_for(lambda: counts() if counts() == (0, 0) else None, timeout, "the releases")
    except AssertionError:
        return counts()


def _running_step(api, dag: str, run_id: str):
    def find():
        for ti in api.task_instances(dag, run_id):
            if ti["task_id"] == "expire_sessions" and ti["state"] == "running" and ti["pid"]:
                return ti
        return None
    return api.wait_for(find, 60, f"{dag}'s step running")


def _guard_deferred(api, dag: str, run_id: str, panel_url: str):
    """The run in queue: its guard deferred (as every guard starts) and its trigger has tried and
    put the run in the waiters' queue."""
    def waiting():
        with psycopg.connect(panel_url) as conn:
            return conn.execute("SELECT 1 FROM run_group_waiters WHERE dag_id = %s AND run_id = %s",
                                (dag, run_id)).fetchone()
    return api.wait_for(lambda: any(ti["task_id"] == "run_group_guard" and ti["state"] == "deferred"
                                    for ti in api.task_instances(dag, run_id)) and waiting(), 60, f"{dag} in queue")


def _partner_start(api, dag: str, run_id: str) -> tuple[datetime, datetime, dict]:
    tis = {ti["task_id"]: ti for ti in api.task_instances(dag, run_id)}
    return when(tis["run_group_guard"]["end_date"]), when(tis["expire_sessions"]["start_date"]), tis


@pytest.fixture
def sessions_locked(migrated_panel_db):
    """Holds the ``sessions`` table locked, so a ring thread's step blocks on its first query
    (a run caught in the middle of its work); ``.release()`` lets it go."""
    conn = psycopg.connect(migrated_panel_db)
    conn.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")

    class Lock:
        def release(self):
            conn.rollback()

    yield Lock()
    conn.rollback()
    conn.close()


def test_a_holder_killed_mid_run_frees_its_partner(cluster, sessions_locked, migrated_panel_db):
    """SIGKILL to the holder's task process: its supervisor fails the task, the run ends failed,
    and the partner waiting in queue gets the groups."""
    api = cluster.api
    holder = api.trigger("ring_a_work")
    step = _running_step(api, "ring_a_work", holder)
    partner = api.trigger("ring_b_work")  # shares ring_b with ring_a
    _guard_deferred(api, "ring_b_work", partner, migrated_panel_db)
    with psycopg.connect(migrated_panel_db) as conn:  # the step renewed the lease as it started (heartbeat)
        assert conn.execute("SELECT DISTINCT dag_id, run_id, heartbeat_at > acquired_at FROM run_group_leases"
                            ).fetchall() == [("ring_a_work", holder, True)]
        assert conn.execute("SELECT dag_id, run_id FROM run_group_waiters").fetchall() == [("ring_b_work", partner)]
    # the Threads Manager shows the partner "in queue for run group" (read from the cluster's metadata DB)
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from panelflow.manager.data import _airflow_state

    engine = create_engine(cluster.postgres.uri(cluster.name).replace("postgresql://", "postgresql+psycopg://"))
    try:
        with Session(engine) as session:
            shown = _airflow_state(session, ["ring_a_work", "ring_b_work"])
    finally:
        engine.dispose()
    assert (shown["ring_b_work"]["run_group_waits"], shown["ring_a_work"]["run_group_waits"]) == (1, 0)
    assert shown["ring_b_work"]["run_group_waiting_since"] is not None
    victim = psutil.Process(step["pid"])
    assert "python" in victim.name() or "airflow" in " ".join(victim.cmdline())
    killed = datetime.now().astimezone()
    os.kill(victim.pid, signal.SIGKILL)
    sessions_locked.release()
    assert api.wait_runs("ring_b_work", [partner], timeout=60) == {partner: "success"}
    assert api.wait_runs("ring_a_work", [holder], timeout=60) == {holder: "failed"}
    holder_tis = {ti["task_id"]: ti["state"] for ti in api.task_instances("ring_a_work", holder)}
    assert holder_tis == {"run_group_guard": "success", "expire_sessions": "failed"}
    acquired, started, _ = _partner_start(api, "ring_b_work", partner)
    blocked = (acquired - killed).total_seconds()
    assert blocked < 20
    print(f"\nkill -9 of the holder's task → partner holds the groups after {blocked:.1f} s, "
          f"its step starts after {(started - killed).total_seconds():.1f} s")


def test_a_holder_marked_failed_frees_its_partner(cluster, sessions_locked, migrated_panel_db):
    """The holder's run marked failed over the REST API (as from the UI): Airflow fails the
    running step, the run's groups go back, and the partner goes on."""
    api = cluster.api
    holder = api.trigger("ring_c_work")
    _running_step(api, "ring_c_work", holder)
    partner = api.trigger("ring_d_work")  # shares ring_d with ring_c
    _guard_deferred(api, "ring_d_work", partner, migrated_panel_db)
    marked = datetime.now().astimezone()
    api.call("PATCH", f"/api/v2/dags/ring_c_work/dagRuns/{holder}", {"state": "failed"})
    sessions_locked.release()
    assert api.wait_runs("ring_d_work", [partner], timeout=60) == {partner: "success"}
    acquired, started, _ = _partner_start(api, "ring_d_work", partner)
    blocked = (acquired - marked).total_seconds()
    guard = api.xcom("ring_d_work", partner, "run_group_guard")
    holder_tis = {ti["task_id"]: ti["state"] for ti in api.task_instances("ring_c_work", holder)}
    print(f"\nholder marked failed → partner holds the groups after {blocked:.1f} s, its step starts after "
          f"{(started - marked).total_seconds():.1f} s; holder's tasks {holder_tis}; partner cleared {guard['cleared']}")
    assert blocked < 15
    assert api.run_state("ring_c_work", holder) == "failed"
    assert _settled(api, migrated_panel_db)[0] == 0


def test_a_holder_whose_release_never_runs_is_cleared(cluster, sessions_locked, migrated_panel_db):
    """The release never runs (here the dag-processor, which runs the release callback, is
    stopped while the holder's run is failed from the UI/REST; equally a release failing for
    good): the holder's leases stay behind. The partner's trigger asks Airflow for the holder's
    run, finds it ended, clears its leases and takes the groups."""
    api = cluster.api
    holder = api.trigger("ring_b_work")
    _running_step(api, "ring_b_work", holder)
    partner = api.trigger("ring_c_work")  # shares ring_c with ring_b
    _guard_deferred(api, "ring_c_work", partner, migrated_panel_db)
    with psycopg.connect(migrated_panel_db) as conn:
        assert conn.execute("SELECT DISTINCT dag_id, run_id FROM run_group_leases").fetchall() == [("ring_b_work", holder)]
    processor = cluster.procs["dag-processor"].pid
    os.killpg(processor, signal.SIGSTOP)   # no release callback for now
    try:
        ended = datetime.now().astimezone()
        api.call("PATCH", f"/api/v2/dags/ring_b_work/dagRuns/{holder}", {"state": "failed"})
        sessions_locked.release()
        assert api.wait_runs("ring_c_work", [partner], timeout=60) == {partner: "success"}
    finally:
        os.killpg(processor, signal.SIGCONT)
    acquired, started, _ = _partner_start(api, "ring_c_work", partner)
    blocked = (acquired - ended).total_seconds()
    guard = api.xcom("ring_c_work", partner, "run_group_guard")
    holder_tis = {ti["task_id"]: ti["state"] for ti in api.task_instances("ring_b_work", holder)}
    print(f"\nholder failed without its release → partner cleared its leases and holds the groups after "
          f"{blocked:.1f} s; holder's tasks {holder_tis}")
    assert guard["cleared"] == [f"ring_b_work/{holder}"]
    assert blocked < 10  # at most one poll (2 s) after Airflow ended the run, plus the scheduler's round


# -- daemons -------------------------------------------------------------------------------------

def _daemon_waits(api) -> list[dict]:
    """The wait task instances of the daemons' current runs that are deferred."""
    out = []
    for i in range(1, DAEMONS + 1):
        out += [ti for ti in api.task_instances(f"queue_daemon{i}_work")
                if ti["task_id"] == "wait_for_pending_work" and ti["state"] == "deferred"]
    return out


def test_idle_daemons_hold_no_slot_and_pick_up_work_within_10_s(cluster, panel_db, sql):
    api = cluster.api
    # five idle daemons (one more than the four worker slots) all wait in the triggerer …
    waits = api.wait_for(lambda: (w := _daemon_waits(api)) and len(w) == DAEMONS and w, 60, "the daemons idle")
    assert {w["dag_id"] for w in waits} == {f"queue_daemon{i}_work" for i in range(1, DAEMONS + 1)}
    pool = api.call("GET", "/api/v2/pools/default_pool")
    assert pool["deferred_slots"] >= DAEMONS and pool["running_slots"] == 0
    # … the one with a run group neither holds nor queues for it while idle (only once woken) …
    idle = next(w for w in waits if w["dag_id"] == "queue_daemon1_work")
    daemon1 = {ti["task_id"]: ti["state"] for ti in api.task_instances("queue_daemon1_work", idle["dag_run_id"])}
    assert daemon1 == {"wait_for_pending_work": "deferred", "run_group_guard": None,
                       "process_o365_group_actions": None}
    assert sql("SELECT count(*) FROM run_group_leases") == [(0,)]
    assert sql("SELECT count(*) FROM run_group_waiters") == [(0,)]
    # … and a worker slot is still there for everyone else
    run = api.trigger("ring_a_work")
    assert api.wait_runs("ring_a_work", [run], timeout=60) == {run: "success"}

    # one job queued: a daemon wakes, works it (exactly once, though five processors race), and
    # the daemons go back to waiting
    (job, queued_at) = sql("INSERT INTO group_action_jobs (backend, action, payload) VALUES ('o365', "
                           "'no_such_action', '{}') RETURNING id, clock_timestamp()")[0]
    done = api.wait_for(lambda: sql("SELECT status, attempts, error FROM group_action_jobs WHERE id = %s AND "
                                    "status <> 'pending' AND status <> 'running'", (job,)), 30, "the job worked",
                        every=0.1)
    worked = (datetime.now().astimezone() - queued_at).total_seconds()
    assert done == [("failed", 1, "unknown o365 action 'no_such_action'")]

    def worked_by():
        for i in range(1, DAEMONS + 1):
            for ti in api.task_instances(f"queue_daemon{i}_work"):
                if ti["task_id"] == "process_o365_group_actions" and ti["state"] == "success":
                    summary = api.xcom(ti["dag_id"], ti["dag_run_id"], ti["task_id"])
                    if summary.get("claimed"):
                        return ti, summary
        return None

    ti, summary = api.wait_for(worked_by, 30, "the processing task's summary")
    assert summary["failed"] == 1
    wait = next(t for t in api.task_instances(ti["dag_id"], ti["dag_run_id"]) if t["task_id"] == "wait_for_pending_work")
    woke = (when(wait["end_date"]) - queued_at).total_seconds()
    started = (when(ti["start_date"]) - queued_at).total_seconds()
    print(f"\nqueued row → daemon's wait ended after {woke:.1f} s, its processing step started after "
          f"{started:.1f} s, the job was worked after {worked:.1f} s (five processors woken at once)")
    assert woke < 10  # picked up: the wait in the triggerer saw the row and ended
    assert started < 15
    api.wait_for(lambda: len(_daemon_waits(api)) == DAEMONS, 60, "the daemons idle again")
